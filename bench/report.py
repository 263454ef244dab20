"""Turn pytest-benchmark JSON into the README's markdown tables and a throughput plot.

    python bench/report.py RUN.json [MORE.json ...]   # bench/results.md + bench/throughput.png
    python bench/report.py RUN.json --markdown OUT.md --plot OUT.png

For every operation, one table with a row per shape and dtype: the floor's median time, every
implementation as a ratio to the floor, fastsoftmax's speed-up over each peer, and peak extra
memory; then the issue's targets checked one by one, the cold-start groups, any other group (the
training benchmarks) as plain tables, and every group in full detail. The plot shows throughput
against K per implementation (GFLOP/s of the matrix products for the linear operations, GB/s of one
read and one write of the logits for the elementwise ones), float32 and float64 side by side.
Only the standard library and matplotlib are needed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

OPERATIONS = (
    "linear_cross_entropy",
    "linear_cross_entropy+dX",
    "linear_softmax",
    "cross_entropy_grad",
    "softmax",
)
TITLES = {
    "linear_cross_entropy": "linear_cross_entropy (loss, dW, db); floor: 2 GEMMs",
    "linear_cross_entropy+dX": "linear_cross_entropy with return_dX=True; floor: 3 GEMMs",
    "linear_softmax": "linear_softmax (predict_proba); floor: 1 GEMM",
    "cross_entropy_grad": "cross_entropy_grad on given logits; floor: one read + one write of NxK",
    "softmax": "softmax on given logits; floor: one read + one write of NxK",
}
IMPLS = ("floor", "fastsoftmax", "reference", "scikit-learn", "torch", "torch-chunked")
PEERS = ("reference", "scikit-learn", "torch", "torch-chunked")
LABELS = {
    "floor": "floor",
    "fastsoftmax": "fastsoftmax",
    "reference": "reference",
    "scikit-learn": "scikit-learn",
    "torch": "PyTorch",
    "torch-chunked": "PyTorch chunked",
}
MB = 2**20


@dataclass
class Case:
    """One timed (operation, shape, dtype, implementation)."""

    op: str
    impl: str
    n: int
    d: int | None
    k: int
    dtype: str
    median: float
    iqr: float
    rounds: int
    flops: float | None = None
    bytes: float | None = None
    peak_extra: float | None = None

    @property
    def key(self):
        return (self.op, self.n, self.d, self.k, self.dtype)

    @property
    def throughput(self) -> float:
        """GFLOP/s (linear operations) or GB/s (elementwise ones), from the nominal counts."""
        work = self.flops if self.flops is not None else self.bytes
        return (work or 0.0) / self.median / 1e9


@dataclass
class Results:
    cases: dict = field(default_factory=dict)  # key -> {impl: Case}
    skipped: dict = field(default_factory=dict)  # (key, impl) -> reason
    cold: dict = field(default_factory=lambda: defaultdict(dict))  # group -> {impl: median}
    other: dict = field(default_factory=lambda: defaultdict(list))  # group -> [benchmark dicts]
    busy: dict = field(default_factory=lambda: defaultdict(dict))  # group -> {(impl, load): median}
    machine: dict = field(default_factory=dict)
    commit: dict = field(default_factory=dict)
    datetime: str = ""
    runs: list = field(default_factory=list)  # (file stem, datetime, commit id, dirty) per input


def load(paths) -> Results:
    """Read one or more pytest-benchmark JSON files (later files win for a repeated case)."""
    res = Results()
    for path in paths:
        doc = json.loads(Path(path).read_text())
        if not res.machine:
            res.machine = dict(doc.get("machine_info", {}))
            res.machine["fastsoftmax"] = doc.get("fastsoftmax_machine", {})
        res.commit = res.commit or doc.get("commit_info", {})
        res.datetime = res.datetime or doc.get("datetime", "")
        commit = doc.get("commit_info", {})
        res.runs.append((Path(path).stem, doc.get("datetime", ""), str(commit.get("id", "?"))[:10],
                         bool(commit.get("dirty"))))
        for b in doc.get("benchmarks", []):
            info, stats = b.get("extra_info", {}), b["stats"]
            if info.get("op") in OPERATIONS:
                case = Case(
                    op=info["op"],
                    impl=info["impl"],
                    n=info["n"],
                    d=info.get("d"),
                    k=info["k"],
                    dtype=info["dtype"],
                    median=stats["median"],
                    iqr=stats.get("iqr", 0.0),
                    rounds=stats.get("rounds", 0),
                    flops=info.get("flops"),
                    bytes=info.get("bytes"),
                    peak_extra=info.get("peak_extra_bytes"),
                )
                res.cases.setdefault(case.key, {})[case.impl] = case
            elif info.get("op") == "busy neighbour":
                res.busy[b["group"]][(info["impl"], info["load"])] = stats["median"]
            elif info.get("op") == "cold start":
                res.cold[b["group"]][info["impl"]] = stats["median"]
            else:
                res.other[b.get("group") or b["name"]].append(b)
        for s in doc.get("fastsoftmax_skipped", []):
            key = (s["op"], s["n"], s.get("d"), s["k"], s["dtype"])
            res.skipped[(key, s["impl"])] = s["reason"]
    return res


# --------------------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------------------


def fmt_time(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds * 1e6:.3g} µs"


def fmt_ratio(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "—"
    if x < 0.1:
        return f"{x:.2g}×"
    return f"{x:.2f}×" if x < 10 else f"{x:.0f}×"


def fmt_mb(b: float | None) -> str:
    if b is None:
        return "—"
    return f"{b / MB:.3g}" if b < 1000 * MB else f"{b / MB:,.0f}"


def shape_label(key) -> str:
    _, n, d, k, _ = key
    return f"{n:,} × {d:,} × {k:,}" if d is not None else f"{n:,} × {k:,}"


def _sorted_keys(res: Results, op: str):
    keys = {key for key in res.cases if key[0] == op} | {
        key for key, _ in res.skipped if key[0] == op
    }
    return sorted(keys, key=lambda key: (key[3], key[1], key[2] or 0, key[4]))


def ratio(res: Results, key, impl: str, to: str) -> float | None:
    row = res.cases.get(key, {})
    if impl in row and to in row:
        return row[impl].median / row[to].median
    return None


def _cell(res: Results, key, impl: str, notes: list) -> str:
    row = res.cases.get(key, {})
    if impl in row:
        return (
            fmt_time(row[impl].median)
            if impl == "floor"
            else fmt_ratio(ratio(res, key, impl, "floor"))
        )
    reason = res.skipped.get((key, impl))
    if reason is None:
        return "—"
    if reason not in notes:
        notes.append(reason)
    return f"skipped [{notes.index(reason) + 1}]"


def operation_table(res: Results, op: str) -> str:
    head = [
        "N × d × K" if op not in ("softmax", "cross_entropy_grad") else "N × K",
        "dtype",
        "floor (median)",
        *(f"{LABELS[i]} ×floor" for i in IMPLS[1:]),
        "fastsoftmax speed-up vs " + " / ".join(LABELS[p] for p in PEERS),
        "peak extra MB: " + " / ".join(LABELS[i] for i in IMPLS[1:]),
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes: list[str] = []
    for key in _sorted_keys(res, op):
        cells = [shape_label(key), key[4]] + [_cell(res, key, impl, notes) for impl in IMPLS]
        cells.append(" / ".join(fmt_ratio(ratio(res, key, p, "fastsoftmax")) for p in PEERS))
        row = res.cases.get(key, {})
        cells.append(" / ".join(fmt_mb(row[i].peak_extra if i in row else None) for i in IMPLS[1:]))
        lines.append("| " + " | ".join(cells) + " |")
    lines += [f"\n[{i + 1}] {reason}" for i, reason in enumerate(notes)]
    return "\n".join(lines)


def detail_table(res: Results, key) -> str:
    row = res.cases.get(key, {})
    unit = "GFLOP/s" if any(c.flops for c in row.values()) else "GB/s"
    head = [
        "implementation",
        "median",
        "IQR",
        "rounds",
        "samples/s",
        unit,
        "×floor",
        "×fastsoftmax",
        "peak extra MB",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for impl in IMPLS:
        if impl not in row:
            reason = res.skipped.get((key, impl))
            if reason:
                lines.append(f"| {LABELS[impl]} | skipped: {reason} |" + " |" * (len(head) - 2))
            continue
        c = row[impl]
        lines.append(
            "| "
            + " | ".join(
                [
                    LABELS[impl],
                    fmt_time(c.median),
                    fmt_time(c.iqr),
                    str(c.rounds),
                    f"{c.n / c.median:.3g}",
                    f"{c.throughput:.3g}",
                    fmt_ratio(ratio(res, key, impl, "floor")),
                    fmt_ratio(ratio(res, key, impl, "fastsoftmax")),
                    fmt_mb(c.peak_extra),
                ]
            )
            + " |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# The targets
# --------------------------------------------------------------------------------------------------


def _check(ok: bool) -> str:
    return "met" if ok else "**missed**"


def targets(res: Results) -> str:
    out = []

    def lines_for(op, pred, what):
        rows = []
        for key in _sorted_keys(res, op):
            r = pred(key)
            if r is not None:
                value, ok, goal = r
                what_value = f"{what} {value}" if what else value
                rows.append(
                    f"  - {shape_label(key)} {key[4]}: {what_value} (target {goal}): {_check(ok)}"
                )
        return rows or ["  - (not in this run)"]

    def lce_floor(key):
        x = ratio(res, key, "fastsoftmax", "floor")
        if x is None or 16 < key[3] < 100:
            return None
        goal = 1.10 if key[3] >= 100 else 0.7
        return fmt_ratio(x), x <= goal, f"≤ {goal:.2f}×"

    out.append(
        "- fused `linear_cross_entropy` against the two-GEMM floor (≤ 1.10× where K ≥ 100, "
        "≤ 0.7× where K ≤ 16):"
    )
    out += lines_for("linear_cross_entropy", lce_floor, "fastsoftmax")

    def ceg(key):
        speed, floor = (
            ratio(res, key, "reference", "fastsoftmax"),
            ratio(res, key, "fastsoftmax", "floor"),
        )
        if speed is None and floor is None:
            return None
        ok = (speed is None or speed >= 3) and (floor is None or floor <= 1.5)
        return (
            f"{fmt_ratio(speed)} faster than the reference, {fmt_ratio(floor)} the floor",
            ok,
            "≥ 3× and ≤ 1.5×",
        )

    out.append(
        "- `cross_entropy_grad` ≥ 3× faster than the reference and within 1.5× of the floor:"
    )
    out += lines_for("cross_entropy_grad", ceg, "")

    slower = []
    for key in sorted(
        res.cases, key=lambda key: (OPERATIONS.index(key[0]), key[3], key[1], key[4])
    ):
        for peer in ("scikit-learn", "torch", "torch-chunked"):
            x = ratio(res, key, peer, "fastsoftmax")
            if x is not None and x <= 1.0:
                slower.append(
                    f"  - {key[0]} {shape_label(key)} {key[4]}: {LABELS[peer]} takes "
                    f"{fmt_ratio(x)} fastsoftmax's time"
                )
    n_groups = sum(1 for row in res.cases.values() if "fastsoftmax" in row)
    out.append(
        f"- fastsoftmax faster than scikit-learn and PyTorch in every group ({n_groups} groups): "
        + (_check(not slower) + (":" if slower else ""))
    )
    out += slower

    out.append(
        "- peak extra memory of fastsoftmax's linear operations, beyond its outputs, independent "
        "of N (tens of MB) where the peers need N × K arrays:"
    )
    for key in _sorted_keys(res, "linear_cross_entropy"):
        row = res.cases.get(key, {})
        if "fastsoftmax" not in row or row["fastsoftmax"].peak_extra is None:
            continue
        _, n, d, k, dtype = key
        item = 4 if dtype == "float32" else 8
        work = row["fastsoftmax"].peak_extra - (k * d + k) * item
        peers = ", ".join(
            f"{LABELS[p]} {fmt_mb(row[p].peak_extra)} MB"
            for p in PEERS
            if p in row and row[p].peak_extra is not None
        )
        out.append(
            f"  - {shape_label(key)} {dtype}: {fmt_mb(max(work, 0))} MB beyond dW and db "
            f"(peak {fmt_mb(row['fastsoftmax'].peak_extra)} MB; {peers}): "
            f"{_check(work <= 100 * MB)}"
        )
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------
# Machine, cold start, other groups
# --------------------------------------------------------------------------------------------------


def machine_text(res: Results) -> str:
    m = res.machine
    fs = m.get("fastsoftmax", {})
    cpu = m.get("cpu", {})
    blas = "; ".join(
        f"{b.get('internal_api')} {b.get('version') or ''} ({b.get('architecture') or '?'}, "
        f"{b.get('num_threads')} threads, {Path(b.get('filepath') or '').name})"
        for b in fs.get("blas", [])
    )
    env = fs.get("env", {})
    versions = ", ".join(f"{k} {v}" for k, v in fs.get("versions", {}).items())
    return "\n".join(
        [
            f"- machine: {cpu.get('brand_raw', m.get('processor', '?'))}, "
            f"{fs.get('cores', cpu.get('count', '?'))} cores, {m.get('system', '')} "
            f"{m.get('release', '')}, Python {m.get('python_version', '?')}",
            f"- BLAS: {blas or 'unknown'}",
            f"- threads: Numba {fs.get('numba_threads', '?')} "
            f"({fs.get('numba_threading_layer') or '?'} layer), "
            f"PyTorch {fs.get('torch_threads', '?')}, scikit-learn's loss n_threads="
            f"{fs.get('scikit_learn_n_threads', 1)} (as LogisticRegression runs it)",
            f"- environment: OPENBLAS_CORETYPE={env.get('OPENBLAS_CORETYPE', '(not set)')}"
            + "".join(f", {k}={v}" for k, v in env.items() if k != "OPENBLAS_CORETYPE"),
            f"- versions: {versions}",
            _runs_line(res),
        ]
    )


def _runs_line(res: Results) -> str:
    """When and at which commit the inputs were measured: one run, or each input file's when
    they come from different commits (tables merged from several runs say which is which)."""
    if len({(commit, dirty) for _, _, commit, dirty in res.runs}) <= 1:
        return (f"- run: {res.datetime}, commit {str(res.commit.get('id', '?'))[:10]}"
                + (" (dirty)" if res.commit.get("dirty") else ""))
    return "- runs: " + "; ".join(
        f"{stem} {when}, commit {commit}" + (" (dirty)" if dirty else "")
        for stem, when, commit, dirty in res.runs
    )


def cold_table(res: Results) -> str:
    impls = sorted(
        {i for g in res.cold.values() for i in g}, key=lambda i: (i != "python + numpy", i)
    )
    lines = ["| case | " + " | ".join(impls) + " |", "|---|" + "---|" * len(impls)]
    for group in sorted(res.cold):
        lines.append(
            f"| {group.removeprefix('cold start ')} | "
            + " | ".join(
                fmt_time(res.cold[group][i]) if i in res.cold[group] else "—" for i in impls
            )
            + " |"
        )
    return "\n".join(lines)


def busy_table(res: Results) -> str:
    """Per group and implementation: the quiet time, and each busy load's time over it."""
    loads = ("quiet", "busy pinned", "busy")
    lines = ["| case | implementation | quiet | busy, pinned to one core | busy, unpinned |",
             "|---|---|---|---|---|"]
    for group in sorted(res.busy):
        times = res.busy[group]
        for impl in [i for i in IMPLS if any((i, load) in times for load in loads)]:
            quiet = times.get((impl, "quiet"))
            cells = [fmt_time(quiet) if quiet else "—"]
            for load in loads[1:]:
                t = times.get((impl, load))
                rel = f" ({fmt_ratio(t / quiet)})" if t and quiet else ""
                cells.append(fmt_time(t) + rel if t else "—")
            lines.append(f"| {group.removeprefix('busy neighbour ')} | {LABELS[impl]} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines)


_DESCRIBED = ("op", "impl", "n", "d", "k", "dtype")


def other_tables(res: Results) -> str:
    """The training benchmarks (and any group the suite does not know): median per row and its
    ratio to fastsoftmax's row in the same group."""
    out = []
    for group in sorted(res.other):
        rows = sorted(res.other[group], key=lambda b: b["stats"]["median"])
        fs = [b for b in rows if b.get("extra_info", {}).get("impl") == "fastsoftmax"]
        out.append(f"**{group}**\n\n| benchmark | median | rounds | ×fastsoftmax | extra |")
        out.append("|---|---|---|---|---|")
        for b in rows:
            info = b.get("extra_info", {})
            extra = ", ".join(f"{k}={v}" for k, v in info.items() if k not in _DESCRIBED)
            median, rounds = b["stats"]["median"], b["stats"]["rounds"]
            rel = fmt_ratio(median / fs[0]["stats"]["median"]) if fs else "—"
            name = info.get("impl", b["name"])
            out.append(f"| {name} | {fmt_time(median)} | {rounds} | {rel} | {extra} |")
        out.append("")
    return "\n".join(out)


def markdown(res: Results, plot_name: str | None = None) -> str:
    parts = [
        "## Benchmark results\n",
        machine_text(res),
        "",
        "Medians; ×floor is the time over the floor's in the same run (lower is better); "
        "speed-up is the peer's time over fastsoftmax's (higher is better); peak extra memory is "
        "the resident-set growth during one call in a fresh process, outputs included. "
        "Ratio differences under 10% are noise on this machine.",
        "",
    ]
    if plot_name:
        parts += [f"![throughput against K]({plot_name})", ""]
    for op in OPERATIONS:
        if _sorted_keys(res, op):
            parts += [f"### {TITLES[op]}\n", operation_table(res, op), ""]
    if res.cases:
        parts += ["### Targets (issue #4)\n", targets(res), ""]
    if res.cold:
        parts += [
            "### Cold start: import + first `linear_cross_entropy` call in a fresh process\n",
            cold_table(res),
            "",
        ]
    if res.busy:
        parts += [
            "### A busy neighbour: one process spinning on a core beside the call\n",
            busy_table(res),
            "",
        ]
    if res.other:
        parts += ["### Training and other benchmarks\n", other_tables(res)]
    if res.cases:
        parts.append("<details><summary>Every group in detail</summary>\n")
        for op in OPERATIONS:
            for key in _sorted_keys(res, op):
                parts += [f"**{op} {shape_label(key)} {key[4]}**\n", detail_table(res, key), ""]
        parts.append("</details>")
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------------------------------
# Plot
# --------------------------------------------------------------------------------------------------


def plot(res: Results, path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ops = [op for op in OPERATIONS if _sorted_keys(res, op)]
    if not ops:  # e.g. a run of the training benchmarks only: nothing to plot against K
        print(f"no per-operation results: {path} not written")
        return False
    dtypes = ("float32", "float64")
    fig, axes = plt.subplots(
        len(ops),
        2,
        figsize=(11, 3.2 * len(ops)),
        squeeze=False,
        sharex=True,
        constrained_layout=True,
    )
    styles = {
        "floor": ("k", "--"),
        "fastsoftmax": ("C3", "-"),
        "reference": ("C7", ":"),
        "scikit-learn": ("C0", "-"),
        "torch": ("C1", "-"),
        "torch-chunked": ("C1", "--"),
    }
    for r, op in enumerate(ops):
        for c, dtype in enumerate(dtypes):
            ax = axes[r][c]
            for impl in IMPLS:
                pts = sorted(
                    (key[3], key[1], case.throughput)
                    for key, row in res.cases.items()
                    if key[0] == op and key[4] == dtype and (case := row.get(impl))
                )
                if pts:
                    color, ls = styles[impl]
                    ax.plot(
                        [p[0] for p in pts],
                        [p[2] for p in pts],
                        color=color,
                        ls=ls,
                        marker="o",
                        ms=4,
                        label=LABELS[impl],
                    )
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.grid(True, which="both", alpha=0.3)
            unit = "GB/s (N×K read+write)" if op in ("softmax", "cross_entropy_grad") else "GFLOP/s"
            ax.set_title(f"{op}, {dtype}", fontsize=10)
            ax.set_ylabel(unit)
            if r == len(ops) - 1:
                ax.set_xlabel("K (classes)")
    legend = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    if legend:
        axes[0][0].legend(legend.values(), legend.keys(), fontsize=8)
    fig.suptitle("Throughput against K (higher is better)")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json", nargs="+", help="pytest-benchmark JSON (--benchmark-json) files")
    parser.add_argument("--markdown", default="bench/results.md", help="markdown output")
    parser.add_argument("--plot", default="bench/throughput.png", help="PNG output ('' for none)")
    args = parser.parse_args(argv)
    res = load(args.json)
    for out in (args.markdown, args.plot):
        if out:
            Path(out).resolve().parent.mkdir(parents=True, exist_ok=True)
    plot_name = None
    if args.plot and plot(res, args.plot):
        # the image link is relative to the markdown file, so the table can be pasted next to it
        md_dir = Path(args.markdown).resolve().parent
        plot_name = os.path.relpath(Path(args.plot).resolve(), md_dir)
    Path(args.markdown).write_text(markdown(res, plot_name))
    print(f"wrote {args.markdown}" + (f" and {args.plot}" if plot_name else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
