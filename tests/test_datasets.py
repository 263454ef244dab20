"""fastsoftmax.datasets: every format read from small files written here, and every bad input."""

import gzip
import os

import numpy as np
import pytest
from conftest import assert_close, idx_bytes

from fastsoftmax.datasets import (
    DataError,
    guess_format,
    has_test_split,
    load_csv,
    load_dataset,
    load_digits,
    load_idx,
    load_npz,
    load_svmlight,
    make_synthetic,
    parse_synthetic,
    read_idx,
)

DTYPES = [np.float32, np.float64]


def write_mnist_like(directory, rng, *, split="train", n=12, gz=False, sep="-"):
    """A tiny MNIST-style pair of files: n images of 3x4 uint8 pixels and their labels."""
    images = rng.integers(0, 256, size=(n, 3, 4), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    prefix = "train" if split == "train" else "t10k"
    suffix = ".gz" if gz else ""
    opener = gzip.open if gz else open
    with opener(directory / f"{prefix}-images{sep}idx3-ubyte{suffix}", "wb") as f:
        f.write(idx_bytes(images, 0x08))
    with opener(directory / f"{prefix}-labels{sep}idx1-ubyte{suffix}", "wb") as f:
        f.write(idx_bytes(labels, 0x08))
    return images, labels


# ----------------------------------------------------------------------------- built-in data


@pytest.mark.parametrize("dtype", DTYPES)
def test_digits(dtype):
    X, y = load_digits(dtype=dtype)
    assert X.shape == (1797, 64) and X.dtype == dtype
    assert X.min() == 0.0 and X.max() == 1.0
    assert y.dtype == np.int64 and set(np.unique(y)) == set(range(10))
    data = load_dataset("digits", dtype=dtype, labels=False)
    assert data.y is None and data.X.dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES)
def test_synthetic_shapes_dtype_and_determinism(dtype):
    X, y = make_synthetic(500, 7, 4, seed=3, dtype=dtype)
    assert X.shape == (500, 7) and X.dtype == dtype
    assert y.shape == (500,) and y.dtype == np.int64
    assert set(np.unique(y)) == {0, 1, 2, 3}
    X2, y2 = make_synthetic(500, 7, 4, seed=3, dtype=dtype)
    np.testing.assert_array_equal(X, X2)
    np.testing.assert_array_equal(y, y2)
    X3, _ = make_synthetic(500, 7, 4, seed=4, dtype=dtype)
    assert not np.array_equal(X, X3)


def test_synthetic_is_learnable_and_seed_draws_fresh_samples_of_one_problem():
    from sklearn.linear_model import LogisticRegression

    X, y = make_synthetic(3000, 5, 3, seed=0)
    X_new, y_new = make_synthetic(3000, 5, 3, seed=1)
    model = LogisticRegression().fit(X, y)
    # Bayes accuracy of this problem is about 0.9: far above chance (1/3), below 1.
    assert 0.8 < model.score(X_new, y_new) < 0.99


def test_synthetic_spec():
    assert parse_synthetic("synthetic:100,5,3") == (100, 5, 3, 0)
    assert parse_synthetic("synthetic:100,5,3,7") == (100, 5, 3, 7)
    data = load_dataset("synthetic:50,4,3,1", dtype=np.float32)
    assert data.X.shape == (50, 4) and data.X.dtype == np.float32
    for bad in [
        "synthetic:",
        "synthetic:1,2",
        "synthetic:a,b,c",
        "synthetic:10,5,1",
        "synthetic:0,5,3",
    ]:
        with pytest.raises(DataError, match="synthetic"):
            parse_synthetic(bad)


def test_synthetic_data_is_pinned():
    """`synthetic:8,3,4,7` stays the same data release to release (saved models, papers, bugs)."""
    X, y = make_synthetic(8, 3, 4, seed=7)
    assert y.tolist() == [2, 2, 2, 0, 3, 3, 3, 3]
    assert X[0].tolist() == [0.0012301533574825742, 0.2987455375084699, -0.2741378553622176]


@pytest.mark.parametrize("dtype", DTYPES)
def test_synthetic_coef_generator_seed_and_separation(dtype):
    """The one problem generator of tests and benchmarks: the true W and b on request, a Generator
    as seed (used as given), and the size of W set by `separation`."""
    X, y = make_synthetic(400, 6, 5, seed=2, dtype=dtype)
    X2, y2, W, b = make_synthetic(400, 6, 5, seed=np.random.default_rng(2), dtype=dtype, coef=True)
    np.testing.assert_array_equal(X, X2)
    np.testing.assert_array_equal(y, y2)
    assert W.shape == (5, 6) and b.shape == (5,) and W.dtype == b.dtype == dtype
    *_, W1, _ = make_synthetic(10, 6, 5, dtype=dtype, separation=1.0, coef=True)
    assert_close(W1 * 8, W)  # the same draw, rescaled
    rng = np.random.default_rng(5)
    a, _ = make_synthetic(10, 6, 5, seed=rng)
    b_, _ = make_synthetic(10, 6, 5, seed=rng)
    assert not np.array_equal(a, b_)  # the Generator advanced


# ----------------------------------------------------------------------------- npz


def test_npz_roundtrip(tmp_path, rng):
    X = rng.standard_normal((6, 3))
    y = np.array([0, 1, 2, 0, 1, 2])
    np.savez(tmp_path / "d.npz", X=X, y=y)
    X32, y_read = load_npz(tmp_path / "d.npz", dtype=np.float32)
    assert X32.dtype == np.float32
    np.testing.assert_array_equal(X32, X.astype(np.float32))
    np.testing.assert_array_equal(y_read, y)
    _, none = load_npz(tmp_path / "d.npz", labels=False)
    assert none is None


def test_npz_errors(tmp_path, rng):
    np.savez(tmp_path / "noX.npz", features=rng.standard_normal((3, 2)))
    with pytest.raises(DataError, match="no array 'X'.*features"):
        load_npz(tmp_path / "noX.npz")
    np.savez(tmp_path / "noy.npz", X=rng.standard_normal((3, 2)))
    with pytest.raises(DataError, match="no array 'y'"):
        load_npz(tmp_path / "noy.npz")
    assert load_npz(tmp_path / "noy.npz", labels=False)[1] is None
    np.savez(tmp_path / "bady.npz", X=rng.standard_normal((3, 2)), y=np.arange(4))
    with pytest.raises(DataError, match=r"y must have shape \(3,\)"):
        load_npz(tmp_path / "bady.npz")
    np.savez(tmp_path / "obj.npz", X=np.array([[1, "a"]], dtype=object), y=np.arange(1))
    with pytest.raises(DataError, match="not a readable .npz"):
        load_npz(tmp_path / "obj.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(DataError, match="not an .npz file"):
        load_npz(tmp_path / "text.npz")


# ----------------------------------------------------------------------------- CSV / TSV


def test_csv_with_header_and_label_column_by_name(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a,label,b\n1,0,2\n3,1,4.5\n5,0,-6\n")
    X, y = load_csv(path, label_column="label")
    np.testing.assert_array_equal(X, [[1, 2], [3, 4.5], [5, -6]])
    np.testing.assert_array_equal(y, [0, 1, 0])
    assert y.dtype == np.int64
    X_idx, y_idx = load_dataset(path, label_column=1, dtype=np.float32)[:2]
    np.testing.assert_array_equal(X_idx, X.astype(np.float32))
    np.testing.assert_array_equal(y_idx, y)


def test_csv_without_header_default_last_column_and_string_labels(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("1,2,cat\n3,4,dog\n5,6,cat\n")
    X, y = load_csv(path)
    np.testing.assert_array_equal(X, [[1, 2], [3, 4], [5, 6]])
    np.testing.assert_array_equal(y, ["cat", "dog", "cat"])
    X0, y0 = load_csv(path, label_column=-1)
    np.testing.assert_array_equal(y0, y)


def test_csv_header_with_string_labels(tmp_path):
    path = tmp_path / "iris.csv"
    path.write_text('x1,x2,species\n1.0,2.0,"setosa"\n3.0,4.0,virginica\n')
    X, y = load_csv(path, label_column="species")
    np.testing.assert_array_equal(X, [[1, 2], [3, 4]])
    np.testing.assert_array_equal(y, ["setosa", "virginica"])


def test_csv_features_only_and_dropped_column(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("1,2,3\n4,5,6\n")
    X, y = load_csv(path, labels=False)
    assert y is None
    np.testing.assert_array_equal(X, [[1, 2, 3], [4, 5, 6]])
    X, y = load_csv(path, labels=False, label_column=0)
    assert y is None
    np.testing.assert_array_equal(X, [[2, 3], [5, 6]])
    single = tmp_path / "single.csv"
    single.write_text("1,2,0\n")
    X, y = load_csv(single)
    assert X.shape == (1, 2) and y.tolist() == [0]


@pytest.mark.parametrize("gz", [False, True])
def test_csv_with_a_byte_order_mark(tmp_path, gz):
    opener = gzip.open if gz else open
    suffix = ".gz" if gz else ""
    with opener(tmp_path / f"plain.csv{suffix}", "wb") as f:
        f.write("\ufeff1,2,0\n3,4,1\n".encode())
    X, y = load_csv(tmp_path / f"plain.csv{suffix}")
    np.testing.assert_array_equal(X, [[1, 2], [3, 4]])  # the first row is data, not a header
    np.testing.assert_array_equal(y, [0, 1])
    with opener(tmp_path / f"named.csv{suffix}", "wb") as f:
        f.write("\ufeffspecies,a\ncat,1\ndog,2\n".encode())
    X, y = load_csv(tmp_path / f"named.csv{suffix}", label_column="species")
    np.testing.assert_array_equal(X, [[1], [2]])
    np.testing.assert_array_equal(y, ["cat", "dog"])


@pytest.mark.parametrize("gz", [False, True])
def test_tsv_and_gzip(tmp_path, gz):
    text = "f1\tf2\ty\n0.5\t1\t2\n1.5\t2\t1\n"
    path = tmp_path / ("d.tsv.gz" if gz else "d.tsv")
    if gz:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    assert guess_format(path) == "tsv"
    X, y, _ = load_dataset(path)
    np.testing.assert_array_equal(X, [[0.5, 1], [1.5, 2]])
    np.testing.assert_array_equal(y, [2, 1])


def _write(path, text: str):
    path.write_text(text)
    return path


def test_csv_errors(tmp_path):
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("a,b,y\n1,2,0\n3,4,1\n5,1\n")
    with pytest.raises(DataError, match="row 4: expected 3 fields, found 2"):
        load_csv(ragged)
    extra = tmp_path / "extra.csv"
    extra.write_text("1,2,0\n3,4,5,1\n")
    with pytest.raises(DataError, match="row 2: expected 3 fields, found 4"):
        load_csv(extra)
    word = tmp_path / "word.csv"
    word.write_text("a,b,y\n1,2,0\n3,oops,1\n")
    with pytest.raises(DataError, match=r"row 3, column 2 \('b'\): 'oops' is not a number"):
        load_csv(word)
    with pytest.raises(DataError, match=r"unknown label column 'target' \(columns: a, b, y\)"):
        load_csv(word, label_column="target")
    with pytest.raises(DataError, match="unknown label column 7: the file has 3 columns"):
        load_csv(word, label_column=7)
    bare = tmp_path / "bare.csv"
    bare.write_text("1,2,0\n3,oops,1\n")  # no header: no name to quote
    with pytest.raises(DataError, match="bare.csv: row 2, column 2: 'oops' is not a number$"):
        load_csv(bare)
    first = tmp_path / "first.csv"
    first.write_text("y,a,b\n0,1,2\n\n1,3,1e300\n")  # label first, a blank line
    with pytest.raises(DataError, match=r"row 4, column 3 \('b'\) is inf .*float32"):
        load_dataset(first, label_column="y", dtype=np.float32)
    with pytest.raises(DataError, match=r"row 3, column 2 is nan"):
        load_dataset(_write(tmp_path / "nan.csv", "1,2,0\n3,4,1\n5,nan,1\n"))
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match="empty file"):
        load_csv(empty)
    header_only = tmp_path / "header.csv"
    header_only.write_text("a,b,y\n")
    with pytest.raises(DataError, match="no data rows"):
        load_csv(header_only)


def test_csv_numeric_header_names_over_numeric_labels(tmp_path):
    """A header of numbers (pandas' default names, wavelengths) is recognized by its label field:
    not a number, while every later row's label is. It used to be read as a row of class
    'label'."""
    rows = "0.5,1.5,2.5,1\n-1.25,0.25,3,0\n2,1e-3,4.75,1\n"
    expected_X = [[0.5, 1.5, 2.5], [-1.25, 0.25, 3], [2, 1e-3, 4.75]]
    for first in ("0,1,2,label", "400,410.5,420,species"):
        path = _write(tmp_path / "d.csv", f"{first}\n{rows}")
        X, y = load_csv(path)
        np.testing.assert_array_equal(X, expected_X)
        np.testing.assert_array_equal(y, [1, 0, 1])
        assert y.dtype == np.int64
    label_first = _write(tmp_path / "first.csv", "label,0,1,2\n1,0.5,1.5,2.5\n0,-1.25,0.25,3\n")
    X, y = load_csv(label_first, label_column=0)
    np.testing.assert_array_equal(X, [[0.5, 1.5, 2.5], [-1.25, 0.25, 3]])
    np.testing.assert_array_equal(y, [1, 0])
    # String labels: a first row with a word in the label field is data like the others.
    X, y = load_csv(_write(tmp_path / "s.csv", "1,2,cat\n3,4,dog\n"))
    np.testing.assert_array_equal(y, ["cat", "dog"])
    # One row: nothing to compare its label with, so it stays data (a string label).
    X, y = load_csv(_write(tmp_path / "one.csv", "1,2,label\n"))
    assert X.tolist() == [[1, 2]] and y.tolist() == ["label"]


def test_csv_pandas_default_column_names(tmp_path):
    """``DataFrame(X).to_csv(index=False)`` writes the column names 0,1,2,... as the first row:
    over decimals it is a header (with a note), as pandas reads it back."""
    pd = pytest.importorskip("pandas")
    X = np.array([[0.125, -1.5, 2.0], [1.0, 0.25, -0.5], [3.5, 4.0, 0.0], [-2.0, 1.75, 0.5]])
    y = np.array([1, 0, 1, 0])
    frames = {
        "features.csv": (pd.DataFrame(X), {"labels": False}),
        "stacked.csv": (pd.DataFrame(np.column_stack([X, y])), {}),  # names 0,1,2,3; y floats
        "assigned.csv": (pd.DataFrame(X).assign(label=y), {}),
        "species.csv": (pd.DataFrame(X).assign(species=np.array(["a", "b"])[y]), {}),
    }
    for name, (frame, options) in frames.items():
        frame.to_csv(tmp_path / name, index=False)
        notes = []
        X_read, y_read = load_csv(tmp_path / name, note=notes.append, **options)
        np.testing.assert_array_equal(X_read, X, err_msg=name)
        if name == "features.csv":
            assert y_read is None
        elif name == "species.csv":
            np.testing.assert_array_equal(y_read, np.array(["a", "b"])[y])
        else:
            np.testing.assert_array_equal(y_read, y)
            assert y_read.dtype == np.int64
        if name != "assigned.csv":  # its label name tells, no guess
            assert len(notes) == 1 and "is read as a header: pandas' default column names" in notes[0]
    # Told otherwise, the first row is data.
    X_data, _ = load_csv(tmp_path / "features.csv", labels=False, header=False)
    np.testing.assert_array_equal(X_data, np.vstack([[0, 1, 2], X]))


def test_csv_pandas_names_over_integers_are_ambiguous(tmp_path):
    """Over rows of integers the names 0,1,2 could as well be a row of data: an error asking
    which, and either answer is taken."""
    path = _write(tmp_path / "counts.csv", "0,1,2\n3,4,5\n6,7,8\n")
    with pytest.raises(DataError, match=r"counts.csv: the first row \(0,1,2\) may be a header .*"
                       r"say which \(--csv-header yes/no, header=True/False\)"):
        load_csv(path, labels=False)
    with pytest.raises(DataError, match="may be a header"):
        load_dataset(path, labels=False)
    told = load_dataset(path, labels=False, header=True)
    np.testing.assert_array_equal(told.X, [[3, 4, 5], [6, 7, 8]])
    assert load_dataset(path, labels=False, header=False).X.shape == (3, 3)
    # Other integer rows stay data, as before: only pandas' exact names are in doubt.
    X, y = load_csv(_write(tmp_path / "d.csv", "1,2,3\n0,1,2\n"))
    np.testing.assert_array_equal(X, [[1, 2], [0, 1]])
    np.testing.assert_array_equal(y, [3, 2])
    wide = _write(tmp_path / "wide.csv", ",".join(map(str, range(10))) + "\n" + "1," * 9 + "1\n")
    with pytest.raises(DataError, match=r"the first row \(0,1,2,...,9\)"):
        load_csv(wide, labels=False)


def test_csv_header_told(tmp_path):
    path = _write(tmp_path / "d.csv", "a,b,y\n1,2,0\n3,4,1\n")
    with pytest.raises(DataError, match=r"row 1, column 1: 'a' is not a number"):
        load_csv(path, header=False)
    with pytest.raises(DataError, match="label column 'y' is a header name, but the file is read "
                       "without a header"):
        load_csv(path, header=False, label_column="y")
    plain = _write(tmp_path / "plain.csv", "1,2,0\n3,4,1\n")
    X, y = load_csv(plain, header=True)
    assert X.tolist() == [[3, 4]] and y.tolist() == [1]
    with pytest.raises(DataError, match="header must be None, True or False"):
        load_csv(plain, header="yes")


@pytest.mark.parametrize("labels", ["0,1", "x,y"], ids=["numeric", "string"])
def test_csv_blank_lines_before_the_header(tmp_path, labels):
    """csv.reader skips blank lines and np.loadtxt counts them: the header is skipped by its line
    (it used to be read as data, a plain ValueError)."""
    first, second = labels.split(",")
    path = _write(tmp_path / "d.csv", f"\n\r\na,b,label\n1.0,2.0,{first}\n\n4.0,5.0,{second}\n")
    X, y = load_csv(path)
    np.testing.assert_array_equal(X, [[1, 2], [4, 5]])
    assert y.tolist() == ([0, 1] if first == "0" else ["x", "y"])
    bad = _write(tmp_path / "bad.csv", f"\n\na,b,label\n1.0,2.0,{first}\n4.0,oops,{second}\n")
    with pytest.raises(DataError, match=r"bad.csv: row 5, column 2 \('b'\): 'oops' is not a number"):
        load_csv(bad)


def test_csv_numbers_as_np_loadtxt_reads_them(tmp_path):
    """Python's float() takes 1_000, np.loadtxt does not: the field is named, not a traceback."""
    path = _write(tmp_path / "d.csv", "a,b,y\n1_000,2,cat\n3,4,dog\n")
    with pytest.raises(DataError, match=r"d.csv: row 2, column 1 \('a'\): '1_000' is not a number"):
        load_csv(path)


@pytest.mark.parametrize("fmt", ["csv", "npz", "svmlight"])
def test_a_pipe_is_read_once(tmp_path, fmt):
    """A named pipe can be read only once: every loader must read it once, then parse."""
    import threading

    X = np.array([[1.0, 2.0], [3.0, 4.5], [0.5, 6.0]])
    y = np.array([0, 1, 0])
    if fmt == "csv":
        content = b"a,b,y\n1,2,0\n3,4.5,1\n0.5,6,0\n"
    elif fmt == "npz":
        np.savez(tmp_path / "d.npz", X=X, y=y)
        content = (tmp_path / "d.npz").read_bytes()
    else:
        content = b"0 1:1 2:2\n1 1:3 2:4.5\n0 1:0.5 2:6\n"
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    done = threading.Event()

    def write():
        with open(pipe, "wb") as f:
            f.write(content)
        # A reader that opens the pipe again would wait forever for a writer: give it one that
        # writes nothing, so it reads an empty stream and the test fails instead of hanging.
        while not done.wait(0.05):
            try:
                os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:  # no reader waiting
                pass

    writer = threading.Thread(target=write)
    writer.start()
    try:
        data = load_dataset(pipe, fmt=fmt)
    finally:
        done.set()
        writer.join(timeout=10)
    np.testing.assert_array_equal(data.X.toarray() if fmt == "svmlight" else data.X, X)
    np.testing.assert_array_equal(data.y, y)


# ----------------------------------------------------------------------------- svmlight


def test_svmlight(tmp_path):
    path = tmp_path / "d.svm"
    path.write_text("1 1:0.5 3:2\n0 2:1.5\n2 1:-1 2:1 3:1\n")
    X, y = load_svmlight(path, dtype=np.float32)
    assert X.format == "csr"  # svmlight data stays sparse
    assert X.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_array_equal(X.toarray(), [[0.5, 0, 2], [0, 1.5, 0], [-1, 1, 1]])
    np.testing.assert_array_equal(y, [1, 0, 2])
    X5, _, _ = load_dataset(path, n_features=5, zero_based=False)
    assert X5.shape == (3, 5)
    assert X5.format == "csr"
    np.testing.assert_array_equal(X5.toarray()[:, :3], X.toarray())
    bad = tmp_path / "bad.libsvm"
    bad.write_text("1 1:0.5 nonsense\n")
    with pytest.raises(DataError, match="not a readable svmlight"):
        load_dataset(bad)


def test_svmlight_index_base(tmp_path):
    """A zero-based file whose feature 0 is always zero looks one-based: auto says so, and
    refuses to pad it to a wider model; zero_based=True reads it right."""
    from sklearn.datasets import dump_svmlight_file

    X = np.array([[0.0, 1.0, 2.0, 0.0], [0.0, 0.0, 3.0, 4.0]])
    path = tmp_path / "zero.svm"
    dump_svmlight_file(X, [0, 1], str(path), zero_based=True)
    notes = []
    X_auto, _, _ = load_dataset(path, note=notes.append)
    np.testing.assert_array_equal(X_auto.toarray(), X[:, 1:])
    assert len(notes) == 1 and "read as one-based (3 features)" in notes[0]
    with pytest.raises(DataError, match="3 features read as one-based.*4 expected"):
        load_dataset(path, n_features=4)
    X_zero, _, _ = load_dataset(path, n_features=4, zero_based=True, note=notes.append)
    np.testing.assert_array_equal(X_zero.toarray(), X)
    assert len(notes) == 1  # no guess, no note
    with pytest.raises(DataError, match="3 features, expected 1"):
        load_svmlight(path, n_features=1, zero_based=False)
    with pytest.raises(DataError, match="zero_based must be"):
        load_svmlight(path, zero_based="yes")


# ----------------------------------------------------------------------------- IDX


@pytest.mark.parametrize(
    ("type_code", "values"),
    [
        (0x08, np.array([0, 7, 255], dtype=np.uint8)),
        (0x09, np.array([-128, 0, 127], dtype=np.int8)),
        (0x0B, np.array([-300, 2, 30000], dtype=np.int16)),
        (0x0C, np.array([-(2**31), 1, 2**31 - 1], dtype=np.int32)),
        (0x0D, np.array([-1.5, 0.25, 3e38], dtype=np.float32)),
        (0x0E, np.array([-1e300, 0.1, np.pi], dtype=np.float64)),
    ],
)
def test_read_idx_every_type(tmp_path, type_code, values):
    array = np.stack([values, values[::-1]])
    path = tmp_path / "x.idx"
    path.write_bytes(idx_bytes(array, type_code))
    read = read_idx(path)
    assert read.shape == (2, 3) and read.dtype == values.dtype and read.dtype.isnative
    np.testing.assert_array_equal(read, array)


def test_read_idx_errors(tmp_path, rng):
    images = rng.integers(0, 256, size=(4, 2, 2), dtype=np.uint8)
    data = idx_bytes(images, 0x08)
    for name, content, message in [
        ("truncated", data[:-1], "truncated IDX file"),
        ("header", data[:6], "truncated IDX header"),
        ("magic", b"\x01" + data[1:], "bad magic number"),
        ("type", data[:2] + b"\x42" + data[3:], "unknown element type code 0x42"),
        # 2**31 x 2**31 x 4 bytes wraps to 0 in int64: must read as truncated, not as empty.
        ("overflow", bytes([0, 0, 8, 3]) + b"\x80\0\0\0\x80\0\0\0\0\0\0\x04", "truncated"),
        ("trailing", data + b"\x00", "1 unexpected bytes"),
    ]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(DataError, match=message):
            read_idx(tmp_path / name)
    (tmp_path / "fake.gz").write_bytes(data)
    with pytest.raises(DataError, match="cannot read"):
        read_idx(tmp_path / "fake.gz")


@pytest.mark.parametrize(("gz", "sep"), [(False, "-"), (True, "-"), (False, ".")])
def test_idx_directory(tmp_path, rng, gz, sep):
    images, labels = write_mnist_like(tmp_path, rng, gz=gz, sep=sep)
    assert not has_test_split(tmp_path)
    test_images, test_labels = write_mnist_like(tmp_path, rng, split="test", n=5, gz=gz, sep=sep)
    assert has_test_split(tmp_path)
    assert guess_format(tmp_path) == "idx"
    X, y, _ = load_dataset(tmp_path, dtype=np.float32)
    assert X.shape == (12, 12) and X.dtype == np.float32
    np.testing.assert_array_equal(X, images.reshape(12, 12).astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(y, labels)
    X_test, y_test = load_idx(tmp_path, split="test")
    np.testing.assert_array_equal(X_test, test_images.reshape(5, 12) / 255.0)
    np.testing.assert_array_equal(y_test, test_labels)
    # One images file names its labels file.
    images_file = next(tmp_path.glob("train-images*"))
    X_file, y_file, _ = load_dataset(images_file)
    np.testing.assert_array_equal(y_file, labels)


def test_idx_directory_errors(tmp_path, rng):
    with pytest.raises(DataError, match="no train IDX files"):
        load_idx(tmp_path)
    write_mnist_like(tmp_path, rng)
    with pytest.raises(DataError, match="no test IDX files"):
        load_idx(tmp_path, split="test")
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(3, np.uint8), 0x08))
    with pytest.raises(DataError, match="3 labels for 12 images"):
        load_idx(tmp_path)
    for images in (np.zeros((0, 2, 2)), np.zeros((3, 0, 2))):
        (tmp_path / "train-images-idx3-ubyte").write_bytes(idx_bytes(images, 0x08))
        labels = np.zeros(len(images), np.uint8)
        (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(labels, 0x08))
        with pytest.raises(DataError, match="no pixels"):
            load_idx(tmp_path)


# ----------------------------------------------------------------------------- dispatch


def test_guess_format_and_missing_files(tmp_path):
    assert guess_format("a.npz") == "npz"
    assert guess_format("a.CSV") == "csv"
    assert guess_format("a.csv.gz") == "csv"
    assert guess_format("a.libsvm") == "svmlight"
    assert guess_format("t10k-images-idx3-ubyte.gz") == "idx"
    with pytest.raises(DataError, match="cannot tell the format"):
        guess_format("a.parquet")
    with pytest.raises(DataError, match="no such file or directory"):
        load_dataset(tmp_path / "missing.csv")
    with pytest.raises(DataError, match="built-in data: digits"):
        load_dataset("digitz")
    with pytest.raises(DataError, match="unknown format"):
        load_dataset("digits", fmt="xls")
    with pytest.raises(DataError, match="float32 or float64"):
        load_dataset("digits", dtype=np.int32)


def test_explicit_format_overrides_the_name(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("1,2,0\n3,4,1\n")
    with pytest.raises(DataError, match="cannot tell the format"):
        load_dataset(path)
    X, y, _ = load_dataset(path, fmt="csv")
    np.testing.assert_array_equal(y, [0, 1])
