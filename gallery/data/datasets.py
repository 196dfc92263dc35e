"""Data sets: the bundled ones (iris, digits) and the user's own files (.npy, .npz, .csv).

The bundled files are scikit-learn's copies (BSD licence), shipped inside this package so that
nothing is downloaded at run time.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from gallery.data.checks import check_data

BUNDLED = {
    "iris": "Fisher's iris: 150 flowers, 4 measurements in cm, 3 species as labels.",
    "digits": "UCI handwritten digits: 1,797 images of 8x8 pixels with values 0-16, labels 0-9.",
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
    observation). Raises ``ValueError`` with what to change when it cannot."""
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
    try:
        array = _read_file(path)
    except (OSError, ValueError, EOFError) as err:
        raise ValueError(f"cannot read {str(path)!r} as {path.suffix}: {err}") from None
    if array.dtype.kind not in "biuf":
        raise ValueError(
            f"{str(path)!r} holds {array.dtype} values; it must be numbers, one row per observation"
        )
    data = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float64))
    return Dataset(path.name, check_data(data, name=f"data in {str(path)!r}"))


def _read_file(path: Path) -> np.ndarray:
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            keys = list(archive.keys())
            if len(keys) != 1:
                raise ValueError(f"expected one array in the .npz, found {keys or 'none'}")
            return archive[keys[0]]
    return _read_csv(path.read_text(encoding="utf-8-sig"))


def _read_csv(text: str) -> np.ndarray:
    """Numbers separated by commas. A first line with no number in it is a header; a line that
    mixes numbers and text is an error, not a header, so no data row is dropped silently."""
    lines = [line for line in text.splitlines() if line.strip()]
    if lines and not any(_is_number(v) for v in lines[0].split(",")):
        lines = lines[1:]
    if not lines:
        raise ValueError("no rows of numbers")
    rows = [line.split(",") for line in lines]
    widths = {len(row) for row in rows}
    if len(widths) != 1:
        raise ValueError(f"rows have different numbers of columns ({sorted(widths)})")
    try:
        return np.array([[float(v) for v in row] for row in rows])
    except ValueError as err:
        raise ValueError(f"a value is not a number ({err})") from None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _load_bundled(name: str) -> Dataset:
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
