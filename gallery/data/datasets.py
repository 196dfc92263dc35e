"""Data sets: the bundled ones (iris, digits) and the user's own files (.npy, .npz, .csv).

The bundled files are scikit-learn's copies (BSD licence), shipped inside this package so that
nothing is downloaded at run time.
"""

from __future__ import annotations

import gzip
import math
import re
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from gallery.data.checks import check_data
from gallery.data.digits28 import SIDE, make_digits28

BUNDLED = {
    "iris": "Fisher's iris: 150 flowers, 4 measurements in cm, 3 species as labels.",
    "digits": "UCI handwritten digits: 1,797 images of 8x8 pixels with values 0-16, labels 0-9.",
    "digits28": "10,000 binarised 28x28 digits made from the 8x8 digits (upsampled, jittered; not MNIST).",
}
FILE_SUFFIXES = (".npy", ".npz", ".csv")


@dataclass(frozen=True)
class Dataset:
    """An observation matrix and, for bundled data, the known labels."""

    name: str
    data: Tensor  # (N, D) float64 on the CPU
    labels: Tensor | None = None  # (N,) int64
    image_shape: tuple[int, int] | None = None  # (height, width) when each row is an image


def load(name_or_path: str) -> Dataset:
    """Load a bundled data set by name or a ``.npy`` / ``.npz`` / ``.csv`` file (one row per
    observation). The name must end in one of those suffixes; the content decides how the file
    is read (see :func:`_read_file`). Raises ``ValueError`` with what to change when it cannot."""
    if name_or_path in BUNDLED:
        return _load_bundled(name_or_path)
    path = Path(name_or_path)
    if path.suffix not in FILE_SUFFIXES:
        raise ValueError(
            f"--data {name_or_path!r} is neither a bundled data set ({', '.join(BUNDLED)}) "
            f"nor a file ending in {', '.join(FILE_SUFFIXES)}"
        )
    if not path.is_file():
        raise ValueError(f"data file {str(path)!r} does not exist; check the path")
    array = _read_file(path)
    if array.dtype.kind not in "biuf":
        hint = _BFLOAT16_HINT if array.dtype == np.dtype("V2") else ""
        raise ValueError(
            f"{str(path)!r} holds {array.dtype} values; it must be numbers, one row per observation{hint}"
        )
    data = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float64))  # float16 too
    return Dataset(path.name, check_data(data, name=f"data in {str(path)!r}"))


NPY_MAGIC = b"\x93NUMPY"
_BFLOAT16_HINT = " (raw 2-byte records, as bfloat16 from JAX or ml_dtypes is saved; save float32 instead)"
_BINARY_KINDS = (  # leading bytes of files often given by mistake, named in the refusal
    (b"\x1f\x8b", "gzip-compressed data"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file"),
    (b"\x89PNG", "a PNG image"),
    (b"%PDF", "a PDF document"),
    (b"\x80", "a Python pickle"),
    (b"\xff\xfe", "UTF-16 text"),
    (b"\xfe\xff", "UTF-16 text"),
    (b"\xfd7zXZ", "xz-compressed data"),
    (b"(\xb5/\xfd", "zstd-compressed data"),
)


def _read_file(path: Path) -> np.ndarray:
    """Read ``path`` by its content, whatever its suffix: a ``.npy`` array (its magic bytes), an
    ``.npz`` (a zip archive of ``.npy`` members), else UTF-8 text (CSV). Refuses anything else,
    and every failure, with a one-line ``ValueError`` naming the file and what it holds."""
    with path.open("rb") as handle:
        head = handle.read(len(NPY_MAGIC))
    if head == NPY_MAGIC:
        kind, read = "a .npy array", _read_npy
    elif zipfile.is_zipfile(path):
        kind, read = "an .npz archive", _read_npz
    else:
        kind, read = "CSV text", _read_text
    try:
        return read(path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        message = " ".join(str(err).split())  # numpy's messages may span lines
        raise ValueError(f"cannot read {str(path)!r} as {kind}: {message}") from None


def _read_npy(path: Path) -> np.ndarray:
    with path.open("rb") as handle:
        _check_npy_header(handle, path.stat().st_size)
        handle.seek(0)
        return np.lib.format.read_array(handle, allow_pickle=False)


def _read_npz(path: Path) -> np.ndarray:
    with zipfile.ZipFile(path) as archive:
        members = archive.infolist()
        others = [m.filename for m in members if not m.filename.endswith(".npy")]
        if others:
            shown = ", ".join(others[:3]) + (" ..." if len(others) > 3 else "")
            torch_file = any(name.endswith("data.pkl") for name in others)
            what = "a PyTorch file (torch.save)" if torch_file else "a zip archive"
            raise ValueError(f"it is {what} holding {shown}, not .npy arrays; save it with numpy.savez")
        keys = [m.filename.removesuffix(".npy") for m in members]
        if len(keys) != 1:
            raise ValueError(f"expected one array in the .npz, found {keys or 'none'}")
        with archive.open(members[0]) as handle:
            if handle.read(len(NPY_MAGIC)) != NPY_MAGIC:
                raise ValueError(f"its member {members[0].filename!r} is not a .npy array")
            handle.seek(0)
            _check_npy_header(handle, members[0].file_size)
        with archive.open(members[0]) as handle:
            return np.lib.format.read_array(handle, allow_pickle=False)


def _check_npy_header(handle, size: int) -> None:
    """Parse a ``.npy`` header and refuse, before reading the values, object arrays (they need
    unpickling) and a shape that needs more bytes than the ``size``-byte file holds."""
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
    else:  # 2.0 and 3.0 share the header layout
        shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
    if dtype.hasobject:
        raise ValueError(
            "it holds Python objects, which only unpickling could read, and allow_pickle=False "
            "refuses that; save an array of numbers"
        )
    needed, available = math.prod(shape) * dtype.itemsize, size - handle.tell()
    if needed > available:
        raise ValueError(
            f"its header claims shape {shape} of {dtype} ({needed:,} bytes) but {available:,} bytes "
            "follow it; the file is truncated or corrupt, save it again"
        )


def _read_text(path: Path) -> np.ndarray:
    raw = path.read_bytes()
    bad = raw.find(b"\x00")
    if bad < 0:
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as err:
            bad = err.start
        else:
            return _read_csv(text)
    what = next((name for magic, name in _BINARY_KINDS if raw.startswith(magic)), None)
    what = what or f"binary or non-UTF-8 data (byte {raw[bad]:#04x} at offset {bad})"
    raise ValueError(
        f"it is {what}, not a .npy array, an .npz archive or UTF-8 CSV text; save the data with "
        "numpy.save or as comma-separated numbers in UTF-8"
    )


# Numbers as CSV writers everywhere spell them; Python's float() also takes '1_000', ' 1',
# unicode digits and any capitalisation of nan/infinity, which other readers do not.
_PLAIN = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", re.ASCII)
_PLAIN_LINE = re.compile(r"[0-9eE.+\-, \t]*")  # a line that needs no check cell by cell
_NON_FINITE = {"nan", "NaN", "NAN"} | {
    sign + word for sign in ("", "+", "-") for word in ("inf", "Inf", "INF", "infinity", "Infinity")
}
_MISSING = {"", "na", "n/a", "#n/a", "null", "none", "nil", "missing", "-", "?", "."}  # lower case


def _read_csv(text: str) -> np.ndarray:
    """Numbers separated by commas. A first line of names (see :func:`_is_header`) is a header;
    a line that mixes numbers and text is an error, not a header, and so is a first line of
    missing-value marks such as ``NA,NA``, so no data row is dropped silently."""
    lines = [(i, line) for i, line in enumerate(text.splitlines(), 1) if line.strip()]
    if lines and _is_header(lines[0][1].split(",")):
        lines = lines[1:]
    if not lines:
        raise ValueError("no rows of numbers")
    rows = [(i, line, line.split(",")) for i, line in lines]
    widths = {len(cells) for _, _, cells in rows}
    if len(widths) != 1:
        first, odd = rows[0], next(row for row in rows if len(row[2]) != len(rows[0][2]))
        raise ValueError(
            f"rows have different numbers of columns ({sorted(widths)}): line {odd[0]} has "
            f"{len(odd[2])} values, line {first[0]} has {len(first[2])}"
        )
    return np.array([_parse_row(*row) for row in rows])


def _is_header(cells: list[str]) -> bool:
    """Names: a letter somewhere, no number anywhere, and not only missing-value marks."""
    if any(_is_python_number(c) for c in cells) or all(c.strip().lower() in _MISSING for c in cells):
        return False
    return any(char.isalpha() for c in cells for char in c)


def _parse_row(line_number: int, line: str, cells: list[str]) -> list[float]:
    if _PLAIN_LINE.fullmatch(line):
        try:
            return [float(c) for c in cells]
        except ValueError:
            pass  # found cell by cell below
    return [_parse_cell(c, line_number, column) for column, c in enumerate(cells, 1)]


def _parse_cell(cell: str, line_number: int, column: int) -> float:
    value = cell.strip(" \t")
    if _PLAIN.fullmatch(value) or value in _NON_FINITE:
        return float(value)
    where, shown = f"line {line_number}, column {column}", repr(cell[:40])
    if value.lower() in _MISSING:
        raise ValueError(f"{where} is a missing value ({shown}); fill in or drop the rows with gaps")
    if _is_python_number(value):
        raise ValueError(
            f"{where}: {shown} is not a plain number (a Python-only spelling); write ASCII digits "
            "with an optional sign, '.' and exponent, e.g. 1000, -2.5, 1e-3"
        )
    hint = "; separate values with commas" if any(c in value for c in ";\t|") else ""
    raise ValueError(f"{where}: {shown} is not a number{hint}")


def _is_python_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _load_bundled(name: str) -> Dataset:
    if name == "digits28":
        small = _load_bundled("digits")
        data, labels = make_digits28(small.data, small.labels)
        return Dataset(name, data, labels, (SIDE, SIDE))
    folder = resources.files("gallery") / "data"
    if name == "iris":
        text = (folder / "iris.csv").read_text()
        table = np.array([[float(v) for v in line.split(",")] for line in text.splitlines()[1:]])
    else:
        with (folder / "digits.csv.gz").open("rb") as raw, gzip.open(raw, "rt") as text:
            table = np.loadtxt(text, delimiter=",")
    data = torch.from_numpy(table[:, :-1].copy())
    labels = torch.from_numpy(table[:, -1].astype(np.int64))
    return Dataset(name, data, labels, (8, 8) if name == "digits" else None)


MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")


def load_mnist(data_dir: str | Path) -> Dataset:
    """MNIST's 60,000 training images (784 pixels, 0-255) and labels from a local folder in
    torchvision's layout (``DIR/MNIST/raw/``, ``DIR/raw/`` or ``DIR/`` holding
    ``train-images-idx3-ubyte`` and ``train-labels-idx1-ubyte``, optionally ``.gz``). Nothing is
    downloaded."""
    root = Path(data_dir)
    for folder in (root / "MNIST" / "raw", root / "raw", root):
        found = [_find_idx(folder, name) for name in MNIST_FILES]
        if all(found):
            break
    else:
        raise ValueError(
            f"no MNIST files under {str(root)!r}: expected {MNIST_FILES[0]}[.gz] and {MNIST_FILES[1]}[.gz] "
            "in DIR/MNIST/raw, DIR/raw or DIR (torchvision's layout); nothing is downloaded, so fetch them "
            "first, e.g. with torchvision.datasets.MNIST(DIR, download=True) on a machine with network"
        )
    try:
        images, labels = _read_idx(found[0]), _read_idx(found[1])
    except (OSError, ValueError, EOFError) as err:
        raise ValueError(f"cannot read the MNIST files in {str(found[0].parent)!r}: {err}") from None
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(
            f"MNIST files in {str(found[0].parent)!r} have shapes {images.shape} and {labels.shape}"
        )
    data = torch.from_numpy(images.reshape(len(images), -1).astype(np.float64))
    return Dataset("mnist", data, torch.from_numpy(labels.astype(np.int64)), images.shape[1:])


def _find_idx(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (LeCun's format: magic 0x0000 08 ndim, big-endian sizes, unsigned bytes)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 8:
        raise ValueError(f"{path.name} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(raw) != header + int(np.prod(shape)):
        raise ValueError(f"{path.name} is truncated: {len(raw) - header} bytes of data for shape {shape}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)
