"""bench/report.py on a tiny synthetic pytest-benchmark JSON: tables, ratios, targets, plot."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPORT = Path(__file__).resolve().parents[1] / "bench" / "report.py"


@pytest.fixture(scope="module")
def report():
    spec = importlib.util.spec_from_file_location("fastsoftmax_bench_report", REPORT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def _bench(group, impl, median, **info):
    return {
        "group": group,
        "name": f"test[{impl}]",
        "fullname": f"bench/x.py::test[{impl}]",
        "stats": {"median": median, "iqr": median / 10, "rounds": 5, "mean": median},
        "extra_info": {"impl": impl, **info},
    }


def _lce(impl, median, peak, k=1000, n=20000, d=512, dtype="float32"):
    info = dict(
        op="linear_cross_entropy",
        n=n,
        d=d,
        k=k,
        dtype=dtype,
        flops=4 * n * d * k,
        bytes=None,
        peak_extra_bytes=peak,
    )
    return _bench(f"linear_cross_entropy n={n}-d={d}-k={k}-{dtype}", impl, median, **info)


def _ceg(impl, median):
    info = dict(
        op="cross_entropy_grad",
        n=1000,
        d=None,
        k=100,
        dtype="float64",
        flops=None,
        bytes=2 * 1000 * 100 * 8,
        peak_extra_bytes=800_000,
    )
    return _bench("cross_entropy_grad n=1000-k=100-float64", impl, median, **info)


@pytest.fixture
def results_json(tmp_path):
    mb = 2**20
    doc = {
        "machine_info": {
            "cpu": {"brand_raw": "Test CPU", "count": 2},
            "python_version": "3.11",
        },
        "fastsoftmax_machine": {
            "cores": 2,
            "env": {"OPENBLAS_CORETYPE": "Haswell"},
            "numba_threads": 2,
            "numba_threading_layer": "omp",
            "torch_threads": 2,
            "blas": [
                {
                    "internal_api": "openblas",
                    "version": "0.3",
                    "num_threads": 2,
                    "architecture": "Zen",
                    "filepath": "/x/libopenblas.so",
                }
            ],
            "versions": {"numpy": "2.0"},
        },
        "commit_info": {"id": "abcdef1234567890", "dirty": False},
        "datetime": "2026-01-01T00:00:00",
        "benchmarks": [
            _lce("floor", 0.010, 170 * mb),
            _lce("fastsoftmax", 0.0105, 30 * mb),  # 1.05x the floor at K = 1000: met
            _lce("reference", 0.040, 900 * mb),
            _lce("scikit-learn", 0.021, 400 * mb),
            _lce("torch", 0.005, 500 * mb),  # faster than fastsoftmax: reported as missed
            _lce("floor", 0.010, 0, k=10),
            _lce("fastsoftmax", 0.008, 2 * mb, k=10),  # 0.8x where K <= 16: missed
            _ceg("floor", 0.001),
            _ceg("fastsoftmax", 0.0012),
            _ceg("reference", 0.006),
            _bench(
                "cold start linear_cross_entropy k=10-float32",
                "fastsoftmax (cold cache)",
                9.0,
                op="cold start",
            ),
            _bench(
                "cold start linear_cross_entropy k=10-float32",
                "fastsoftmax (warm cache)",
                1.2,
                op="cold start",
            ),
            _bench("training lbfgs", "fastsoftmax", 2.5, solver="lbfgs"),
        ],
        "fastsoftmax_skipped": [
            {
                "op": "cross_entropy_grad",
                "impl": "torch",
                "n": 1000,
                "d": None,
                "k": 100,
                "dtype": "float64",
                "reason": "needs about 9 GiB",
            },
        ],
    }
    path = tmp_path / "run.json"
    path.write_text(json.dumps(doc))
    return path


def test_report_tables_targets_and_plot(report, results_json, tmp_path):
    md, png = tmp_path / "out" / "results.md", tmp_path / "out" / "throughput.png"
    assert report.main([str(results_json), "--markdown", str(md), "--plot", str(png)]) == 0
    text = md.read_text()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![throughput against K](throughput.png)" in text
    # machine description, with the environment that slows BLAS
    assert "Test CPU, 2 cores" in text and "OPENBLAS_CORETYPE=Haswell" in text
    # ratios to the floor and speed-ups over each peer, peak memory in MB
    row = next(line for line in text.splitlines() if line.startswith("| 20,000 × 512 × 1,000 |"))
    assert "| 10 ms | 1.05× | 4.00× | 2.10× | 0.50× |" in row
    assert "3.81× / 2.00× / 0.48×" in row
    assert "30 / 900 / 400 / 500" in row
    # the skipped case shows its reason instead of vanishing
    assert "skipped [1]" in text and "[1] needs about 9 GiB" in text
    # targets
    assert "1.05× (target ≤ 1.10×): met" in text
    assert "0.80× (target ≤ 0.70×): **missed**" in text
    assert "5.00× faster than the reference, 1.20× the floor (target ≥ 3× and ≤ 1.5×): met" in text
    assert "PyTorch takes 0.48× fastsoftmax's time" in text
    assert "MB beyond dW and db" in text
    # cold start and other groups
    assert "| linear_cross_entropy k=10-float32 | 9.00 s | 1.20 s |" in text
    assert (
        "training lbfgs" in text and "| fastsoftmax | 2.50 s | 5 | 1.00× | solver=lbfgs |" in text
    )
    # details: throughput from the nominal flops (4 N d K / median)
    assert f"| {4 * 20000 * 512 * 1000 / 0.0105 / 1e9:.3g} |" in text


def test_report_without_plot(report, results_json, tmp_path):
    md = tmp_path / "results.md"
    assert report.main([str(results_json), "--markdown", str(md), "--plot", ""]) == 0
    assert "![" not in md.read_text()


def test_report_names_the_run_of_each_input_from_different_commits(report, results_json,
                                                                   tmp_path):
    """Tables merged from runs at different commits say which input came from which."""
    md = tmp_path / "results.md"
    assert report.main([str(results_json), "--markdown", str(md), "--plot", ""]) == 0
    assert "- run: 2026-01-01T00:00:00, commit abcdef1234" in md.read_text()
    later = json.loads(results_json.read_text())
    later.update(commit_info={"id": "0123456789abcdef", "dirty": True},
                 datetime="2026-01-02T00:00:00")
    second = tmp_path / "sparse.json"
    second.write_text(json.dumps(later))
    assert report.main([str(results_json), str(second), "--markdown", str(md), "--plot", ""]) == 0
    assert ("- runs: run 2026-01-01T00:00:00, commit abcdef1234; sparse 2026-01-02T00:00:00, "
            "commit 0123456789 (dirty)") in md.read_text()
