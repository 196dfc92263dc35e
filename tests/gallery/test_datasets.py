"""Loading data: the bundled sets, the user's .npy / .npz / .csv files, and what is refused."""

from __future__ import annotations

import gzip
import io
import zipfile

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
    bundled = r"neither a bundled data set \(iris, digits, digits28\)"
    with pytest.raises(ValueError, match=bundled + r".*\.npy, \.npz, \.csv"):
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


# --- read by content, not by name --------------------------------------------------------------


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _npz_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _huge_npy_header(shape: tuple[int, ...]) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f8", "fortran_order": False, "shape": shape})
    return buffer.getvalue() + bytes(64)


@pytest.mark.parametrize(
    "name, content",
    [
        pytest.param("t.npz", _npy_bytes(TABLE), id="npy-named-npz"),
        pytest.param("t.npy", _npz_bytes(x=TABLE), id="npz-named-npy"),
        pytest.param("t.csv", _npy_bytes(TABLE), id="npy-named-csv"),
        pytest.param("t.npy", csv_text(TABLE).encode(), id="csv-named-npy"),
    ],
)
def test_content_decides_the_format(name, content, tmp_path):
    """A file whose suffix names another of the three formats is read by what it holds."""
    path = tmp_path / name
    path.write_bytes(content)
    assert torch.equal(datasets.load(str(path)).data, torch.from_numpy(TABLE))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.int8, np.uint16, np.bool_])
def test_npy_dtypes_become_float64(dtype, tmp_path):
    """Every numeric dtype, half precision included, arrives as float64 with the same values."""
    path = tmp_path / "t.npy"
    array = (TABLE > 0) if dtype is np.bool_ else np.round(np.abs(TABLE[:, :2]) % 100)
    np.save(path, array.astype(dtype))
    data = datasets.load(str(path)).data
    assert data.dtype == torch.float64
    assert torch.equal(data, torch.from_numpy(array.astype(dtype).astype(np.float64)))


BAD_CONTENT = [
    pytest.param("t.npz", _zip_bytes({"a.txt": b"1,2\n"}), r"a zip archive holding a\.txt, not \.npy arrays",
                 id="zip-of-text"),
    pytest.param("t.npz", _zip_bytes({"a.npy": b"1,2\n"}), r"its member 'a\.npy' is not a \.npy array",
                 id="zip-member-not-npy"),
    pytest.param("t.npy", gzip.compress(b"1,2\n"), r"t\.npy' as CSV text: it is gzip-compressed data",
                 id="gzip"),
    pytest.param("t.csv", b"1,2\n\xe9,3\n", r"binary or non-UTF-8 data \(byte 0xe9 at offset 4\)",
                 id="latin-1"),
    pytest.param("t.csv", b"\x80\x04K\x01.", r"it is a Python pickle", id="pickle"),
    pytest.param("t.npy", _huge_npy_header((10**13,)), r"header claims shape \(10000000000000,\) of float64 "
                 r"\(80,000,000,000,000 bytes\) but 64 bytes follow", id="npy-absurd-size"),
    pytest.param("t.npy", _npy_bytes(TABLE)[:-8], r"\(72 bytes\) but 64 bytes follow it; the file is trunc",
                 id="npy-truncated"),
    pytest.param("t.npz", _zip_bytes({"x.npy": _huge_npy_header((10**7, 10**6))}), r"header claims shape",
                 id="npz-member-absurd-size"),
    pytest.param("t.npy", _npy_bytes(np.zeros((3, 2), dtype="V2")), r"holds \|V2 values.*bfloat16",
                 id="npy-bfloat16-as-raw-bytes"),
]  # fmt: skip


@pytest.mark.parametrize("name, content, message", BAD_CONTENT)
def test_bad_content_is_one_line_naming_the_file(name, content, message, tmp_path):
    """What a file actually holds, when it is none of the three formats, is named in one line."""
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as caught:
        datasets.load(str(path))
    assert "\n" not in str(caught.value) and repr(str(path)) in str(caught.value)


def test_torch_file_is_named(tmp_path):
    """A torch.save file under a data suffix is named as one."""
    path = tmp_path / "t.npy"
    torch.save(torch.eye(2), path)
    with pytest.raises(ValueError, match=r"it is a PyTorch file \(torch\.save\)"):
        datasets.load(str(path))


# --- CSV: headers, missing values, spellings ---------------------------------------------------


BAD_CSV = [
    pytest.param("NA,NA,NA,NA\n1,2,3,4\n", r"line 1, column 1 is a missing value \('NA'\)",
                 id="first-row-NA"),
    pytest.param(",,\n1,2,3\n", r"line 1, column 1 is a missing value \(''\)", id="first-row-empty-cells"),
    pytest.param("a,b\n1,2\n3,\n", r"line 3, column 2 is a missing value", id="trailing-comma"),
    pytest.param("1,2\nnull,4\n", r"line 2, column 1 is a missing value \('null'\)", id="null"),
    pytest.param("1_000,2\n", r"line 1, column 1: '1_000' is not a plain number", id="underscore"),
    pytest.param("1,2\n3,-nan\n", r"line 2, column 2: '-nan' is not a plain number", id="signed-nan"),
    pytest.param("1,2\n3,iNfInItY\n", r"line 2, column 2: 'iNfInItY' is not a plain number", id="odd-inf"),
    pytest.param("1,2\n3,\u0661\u0662\n", r"line 2, column 2: '\u0661\u0662' is not a plain number",
                 id="arabic-digits"),
    pytest.param("1;2\n3;4\n", r"line 1, column 1: '1;2' is not a number; separate values with commas",
                 id="semicolons"),
    pytest.param("1,2\n3,4,5\n", r"line 2 has 3 values, line 1 has 2", id="ragged-line"),
]  # fmt: skip


@pytest.mark.parametrize("text, message", BAD_CSV)
def test_bad_csv_names_line_and_column(text, message, tmp_path):
    """Gaps and Python-only spellings are refused in one line naming where they are."""
    path = tmp_path / "t.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=message) as caught:
        datasets.load(str(path))
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("spelling", ["nan", "NaN", "inf", "-inf", "Infinity", "-Inf"])
def test_csv_plain_non_finite_spellings_reach_the_finite_check(spelling, tmp_path):
    """NaN and inf as numpy, R and pandas write them are read, then refused as non-finite."""
    path = tmp_path / "t.csv"
    path.write_text(f"1,2\n3,{spelling}\n")
    with pytest.raises(ValueError, match=r"NaN or inf in 1 row\(s\) \(rows 1\)"):
        datasets.load(str(path))


def test_csv_plain_spellings_are_read(tmp_path):
    """Signs, exponents, leading and trailing dots and spaces after commas are plain numbers."""
    path = tmp_path / "t.csv"
    path.write_text("x,y,z\n+1, -2.5,1e-3\n.5,5.,-1E+2\n")
    assert datasets.load(str(path)).data.tolist() == [[1.0, -2.5, 1e-3], [0.5, 5.0, -100.0]]


def test_csv_header_with_words_and_gaps_is_a_header(tmp_path):
    """A first row with words in it (pandas writes an empty name for the index) is a header."""
    path = tmp_path / "t.csv"
    path.write_text(",a,b\n0,1,2\n1,3,4\n")
    assert datasets.load(str(path)).data.tolist() == [[0.0, 1.0, 2.0], [1.0, 3.0, 4.0]]
