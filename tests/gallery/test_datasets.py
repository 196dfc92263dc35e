"""Loading data: the bundled sets, the user's .npy / .npz / .csv files, and what is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gallery.data import datasets
from gallery.data.checks import check_data

TABLE = np.array([[5.1, 3.5, -1.25], [4.9, 3.0, 0.0], [1e-3, 2.5e4, 7.0]])
UNPICKLED = []


def _record_unpickling():
    """Called if a pickled object is ever loaded; the object .npy test watches for it."""
    UNPICKLED.append(True)
    return "unpickled"


class Tripwire:
    def __reduce__(self):
        return (_record_unpickling, ())


def csv_text(table: np.ndarray, header: str | None = None) -> str:
    rows = [",".join(repr(float(v)) for v in row) for row in table]
    return "\n".join(([header] if header else []) + rows) + "\n"


# --- bundled ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name, shape, num_classes", [("iris", (150, 4), 3), ("digits", (1797, 64), 10)])
def test_bundled(name, shape, num_classes):
    """Bundled sets have the documented shape, float64 data and int64 labels 0..K-1."""
    dataset = datasets.load(name)
    assert dataset.name == name
    assert dataset.data.shape == shape and dataset.data.dtype == torch.float64
    assert torch.isfinite(dataset.data).all()
    assert dataset.labels.shape == (shape[0],) and dataset.labels.dtype == torch.int64
    assert dataset.labels.unique().tolist() == list(range(num_classes))


def test_iris_values():
    """Iris has 50 flowers of each species and its first row is the textbook one."""
    dataset = datasets.load("iris")
    assert torch.bincount(dataset.labels).tolist() == [50, 50, 50]
    assert dataset.data[0].tolist() == [5.1, 3.5, 1.4, 0.2]


def test_digits_pixel_range():
    """Digits pixels are counts 0..16."""
    data = datasets.load("digits").data
    assert data.min() == 0 and data.max() == 16
    assert torch.equal(data, data.round())


# --- files -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["npy", "npz", "csv", "csv-with-header", "npy-float32", "npy-int"])
def test_file_formats_agree(kind, tmp_path):
    """The same table read from each format gives the same float64 (N, D) tensor."""
    expected = torch.from_numpy(TABLE)
    if kind == "npy":
        path = tmp_path / "t.npy"
        np.save(path, TABLE)
    elif kind == "npz":
        path = tmp_path / "t.npz"
        np.savez(path, anything=TABLE)
    elif kind == "csv":
        path = tmp_path / "t.csv"
        path.write_text(csv_text(TABLE))
    elif kind == "csv-with-header":
        path = tmp_path / "t.csv"
        path.write_text(csv_text(TABLE, header="length,width,depth"))
    elif kind == "npy-float32":
        path = tmp_path / "t.npy"
        np.save(path, TABLE.astype(np.float32))
        expected = torch.from_numpy(TABLE.astype(np.float32).astype(np.float64))
    else:
        path = tmp_path / "t.npy"
        np.save(path, np.arange(6).reshape(3, 2))
        expected = torch.arange(6, dtype=torch.float64).reshape(3, 2)
    dataset = datasets.load(str(path))
    assert dataset.name == path.name and dataset.labels is None
    assert dataset.data.dtype == torch.float64
    assert torch.equal(dataset.data, expected)


def test_csv_blank_lines_are_skipped(tmp_path):
    """Blank lines (a trailing one, or in between) are not rows."""
    path = tmp_path / "t.csv"
    path.write_text("\n" + csv_text(TABLE).replace("\n", "\n\n", 1) + "\n\n")
    assert torch.equal(datasets.load(str(path)).data, torch.from_numpy(TABLE))


def test_csv_with_byte_order_mark(tmp_path):
    """A CSV saved with a byte-order mark keeps its first row."""
    path = tmp_path / "t.csv"
    path.write_text(csv_text(TABLE), encoding="utf-8-sig")
    assert datasets.load(str(path)).data.shape == TABLE.shape


def test_csv_first_row_with_a_typo_is_an_error_not_a_header(tmp_path):
    """Only a first line with no number in it is a header; '1,x' is a bad data row."""
    path = tmp_path / "t.csv"
    path.write_text("1,x\n3,4\n")
    with pytest.raises(ValueError, match="not a number"):
        datasets.load(str(path))


# --- refusals --------------------------------------------------------------------------------


def _write(tmp_path, name: str, content) -> str:
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content)
    elif name.endswith(".npz"):
        np.savez(path, **content)
    else:
        np.save(path, content)
    return str(path)


BAD_FILES = [
    pytest.param("t.npz", {"a": TABLE, "b": TABLE}, r"expected one array in the \.npz", id="npz-two"),
    pytest.param("t.npz", {}, r"found none", id="npz-empty"),
    pytest.param("t.csv", "1,2\n3,4,5\n", r"different numbers of columns", id="csv-ragged"),
    pytest.param("t.csv", "1,2\n3,x\n", r"not a number", id="csv-word"),
    pytest.param("t.csv", "a,b,c\n", r"no rows of numbers", id="csv-header-only"),
    pytest.param("t.csv", "", r"no rows of numbers", id="csv-empty"),
    pytest.param("t.csv", "1,2\nnan,4\n", r"NaN or inf in 1 row\(s\) \(rows 1\)", id="csv-nan"),
    pytest.param("t.npy", np.array([["abc", "def"]]), r"holds <U3 values; it must be numbers", id="npy-str"),
    pytest.param("t.npy", np.arange(4.0), r"must be 2-D .*got shape \(4,\)", id="npy-1d"),
    pytest.param("t.npy", np.zeros((2, 2, 2)), r"must be 2-D", id="npy-3d"),
    pytest.param("t.npy", np.zeros((0, 3)), r"is empty \(shape \(0, 3\)\)", id="npy-0-rows"),
    pytest.param("t.npy", np.array([[1.0, np.inf]]), r"NaN or inf", id="npy-inf"),
    pytest.param("t.npy", np.array([[1 + 2j, 0j]]), r"it must be numbers", id="npy-complex"),
]


@pytest.mark.parametrize("name, content, message", BAD_FILES)
def test_bad_file(name, content, message, tmp_path):
    """Each broken file gives a ValueError that says what is wrong."""
    path = _write(tmp_path, name, content)
    with pytest.raises(ValueError, match=message):
        datasets.load(path)


def test_missing_file(tmp_path):
    """A path that does not exist is named as such."""
    with pytest.raises(ValueError, match="does not exist; check the path"):
        datasets.load(str(tmp_path / "nowhere.npy"))


@pytest.mark.parametrize("name", ["data.txt", "data", "iris.json", "Iris"])
def test_unsupported_name(name, tmp_path):
    """Neither a bundled name nor a supported suffix: the message lists both."""
    (tmp_path / name).write_text("1,2\n")
    with pytest.raises(ValueError, match=r"neither a bundled data set \(iris, digits\).*\.npy, \.npz, \.csv"):
        datasets.load(str(tmp_path / name))


def test_object_npy_refused_without_unpickling(tmp_path):
    """An object array is refused and its pickle is never run."""
    path = tmp_path / "objects.npy"
    np.save(path, np.array([[Tripwire(), 1.0]], dtype=object), allow_pickle=True)
    UNPICKLED.clear()
    with pytest.raises(ValueError, match="allow_pickle=False"):
        datasets.load(str(path))
    assert UNPICKLED == []
    np.load(path, allow_pickle=True)  # the tripwire works when unpickling is allowed
    assert UNPICKLED == [True]


# --- check_data ------------------------------------------------------------------------------


def test_check_data_returns_its_input():
    """A good matrix comes back as the same object."""
    data = torch.zeros(3, 2)
    assert check_data(data) is data


def test_check_data_int_tensor():
    """Integer data is refused with the conversion to use."""
    with pytest.raises(ValueError, match=r"dtype torch.int64; convert it with \.double\(\)"):
        check_data(torch.ones(3, 2, dtype=torch.int64))


@pytest.mark.parametrize("value", [np.zeros((3, 2)), [[1.0, 2.0]]])
def test_check_data_not_a_tensor(value):
    """Arrays and lists are refused by type name."""
    with pytest.raises(ValueError, match=r"must be a torch\.Tensor, got (ndarray|list)"):
        check_data(value, name="x")
