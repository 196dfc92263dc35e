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

from gallery.common import check_data

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
    return Dataset(name, data, labels)
