"""Observations left on disk: a memory-mapped ``.npy`` file read a block or a minibatch at a time.

``run MODEL --data FILE.npy --stream`` keeps the (N, D) array in the file. SVI reads each
minibatch's rows from the map and moves them to the device (:meth:`MappedRows.rows`); everything
that needs the whole data (the input checks, the column moments, EM, the evaluation) walks it in
blocks of ``block_rows`` (:func:`blocks`), and the starting parameters come from a seeded sample
of at most ``INIT_ROWS`` rows (:func:`init_sample`). Host and device memory then stay flat as N
grows, apart from each epoch's permutation of the row indices (8 bytes a row).

:func:`blocks`, :func:`moments` and :func:`init_sample` take an in-memory (N, D) tensor too, so
the in-memory and the streamed runs share one code path.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from gallery.data.checks import check_data

BLOCK_ROWS = 1 << 16  # rows read at a time for the whole-data passes: 2 MiB at D = 4 in float64
INIT_ROWS = 100_000  # at most this many rows (a seeded sample) for the starting parameters


@dataclass(frozen=True)
class MappedRows:
    """An (N, D) observation matrix in a memory-mapped file, read on demand.

    ``array`` is the (N, D_file) map (or a contiguous range of its rows: a data-parallel
    process's shard); ``columns`` are the columns kept (``None``: all), and a read returns
    ``(x[:, columns] - shift) / divisor`` on ``device`` in ``dtype``."""

    array: np.ndarray  # (N, D_file), memory-mapped
    device: torch.device
    dtype: torch.dtype
    columns: tuple[int, ...] | None = None
    shift: Tensor | None = None  # (D,) on device
    divisor: Tensor | None = None  # (D,) on device
    block_rows: int = BLOCK_ROWS

    @property
    def shape(self) -> torch.Size:
        width = self.array.shape[1] if self.columns is None else len(self.columns)
        return torch.Size((self.array.shape[0], width))

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def __len__(self) -> int:
        return self.array.shape[0]

    def __getitem__(self, rows: slice) -> MappedRows:
        """The contiguous rows ``rows`` (a slice with step 1), still on disk."""
        if not isinstance(rows, slice) or rows.step not in (None, 1):
            raise TypeError("MappedRows takes a contiguous slice of rows; read others with .rows(index)")
        return replace(self, array=self.array[rows])

    def to(self, dtype: torch.dtype) -> MappedRows:
        """The same rows, read in ``dtype``."""
        return replace(self, dtype=dtype)

    def double(self) -> MappedRows:
        return self.to(torch.float64)

    def rows(self, index: Tensor) -> Tensor:
        """(B, D) the rows ``index`` (B,) on the device. The indices are sorted first (a minibatch
        is a set: its order does not change the ELBO, and sorted reads walk the file forwards),
        so row b of the result is row ``sorted(index)[b]``."""
        order = np.sort(index.cpu().numpy())
        return self._finish(self.array[order])  # fancy indexing copies the rows out of the map

    def block_iter(self) -> Iterator[Tensor]:
        """The rows in file order, ``block_rows`` at a time, each (<= block_rows, D) on the device."""
        for start in range(0, len(self), self.block_rows):
            yield self._finish(self.array[start : start + self.block_rows])

    def _finish(self, raw: np.ndarray) -> Tensor:
        """Rows read from the map: copied out of it into native-order floats of the dtype (the
        file may hold ints, bools, float16 or big-endian values), then moved and transformed."""
        if self.columns is not None:
            raw = raw[:, list(self.columns)]
        raw = np.array(raw, dtype=np.float64 if self.dtype == torch.float64 else np.float32, order="C")
        rows = torch.from_numpy(raw)
        if self.is_cuda:  # from page-locked memory the copy is queued, and the host runs on
            rows = rows.pin_memory().to(self.device, non_blocking=True)
        rows = rows.to(device=self.device, dtype=self.dtype)
        if self.shift is not None:
            rows = (rows - self.shift.to(rows)) / self.divisor.to(rows)
        return rows


def open_npy(path: str | Path, device: torch.device, dtype: torch.dtype) -> MappedRows:
    """Map a ``.npy`` file of numbers (N, D) for reading; raises ``ValueError`` saying what to
    change when it is not one. The values are checked by :func:`moments`, which reads them all."""
    path = Path(path)
    if path.suffix != ".npy":
        raise ValueError(
            f"--stream reads a .npy file, which can be memory-mapped; {str(path)!r} is not one "
            "(save it with numpy.save, or drop --stream to read it into memory)"
        )
    if not path.is_file():
        raise ValueError(f"data file {str(path)!r} does not exist; check the path")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise ValueError(f"cannot map {str(path)!r} as .npy: {err}") from None
    if array.dtype.kind not in "biuf":
        raise ValueError(
            f"{str(path)!r} holds {array.dtype} values; it must be numbers, one row per observation"
        )
    if array.ndim != 2 or 0 in array.shape:
        raise ValueError(
            f"{str(path)!r} has shape {array.shape}; it must be 2-D (num_data, obs_dim) with rows and columns"
        )
    if array.shape[1] > 1 and not array.flags.c_contiguous:
        raise ValueError(
            f"{str(path)!r} is stored column by column (Fortran order), so each row's values lie "
            f"{array.shape[0]} values apart and every minibatch would read across the whole file; "
            "rewrite it row by row: numpy.save(path, numpy.ascontiguousarray(x))"
        )
    return MappedRows(array, torch.device(device), dtype)


def blocks(data: Tensor | MappedRows) -> Iterator[Tensor]:
    """The rows of in-memory or mapped data in order, a block at a time."""
    if isinstance(data, Tensor):
        return iter(data.split(BLOCK_ROWS))
    return data.block_iter()


@dataclass(frozen=True)
class Moments:
    """The column moments of an (N, D) data set: all that factor analysis and PPCA need of it."""

    num_data: int
    mean: Tensor  # (D,)
    covariance: Tensor  # (D, D), 1/N sum (x_n - mean)(x_n - mean)^T
    minimum: Tensor  # (D,)
    maximum: Tensor  # (D,)

    def to(self, *args, **kwargs) -> Moments:
        move = lambda t: t.to(*args, **kwargs)  # noqa: E731
        return replace(
            self,
            mean=move(self.mean),
            covariance=move(self.covariance),
            minimum=move(self.minimum),
            maximum=move(self.maximum),
        )

    @property
    def device(self) -> torch.device:
        return self.mean.device

    @property
    def is_cuda(self) -> bool:
        return self.mean.is_cuda

    @property
    def constant(self) -> Tensor:
        """(D,) True where a column has one value."""
        return self.minimum == self.maximum

    def input_scaling(self, device: torch.device, dtype: torch.dtype) -> dict[str, Tensor]:
        """:func:`guides.input_scaling` of the data from its moments: mean and std (D,)."""
        move = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
        return {"input_loc": move(self.mean), "input_scale": move(self.covariance.diagonal().sqrt())}

    def select(self, columns: Tensor) -> Moments:
        """The moments of the columns ``columns`` (D,) bool."""
        return Moments(
            self.num_data,
            self.mean[columns],
            self.covariance[columns][:, columns],
            self.minimum[columns],
            self.maximum[columns],
        )

    def standardized(self) -> tuple[Moments, Tensor]:
        """The moments of ``(x - mean) / std`` (a std of 0 left at 1), and that std (D,)."""
        std = self.covariance.diagonal().sqrt()
        std = torch.where(std > 0, std, torch.ones_like(std))
        return (
            Moments(
                self.num_data,
                torch.zeros_like(self.mean),
                self.covariance / std[:, None] / std,
                (self.minimum - self.mean) / std,
                (self.maximum - self.mean) / std,
            ),
            std,
        )


def moments(data: Tensor | MappedRows, *, name: str = "data") -> Moments:
    """One pass over the data in blocks, in float64: every block checked as :func:`check_data`
    checks a tensor (a bad row is named by its number in the whole data), and the moments merged
    by Chan, Golub and LeVeque's pairwise update, which keeps the accuracy of a two-pass
    centred sum."""
    count, mean, scatter = 0, None, None
    minimum = maximum = None
    for block in blocks(data):
        try:
            check_data(block, name=name)
        except ValueError as err:
            raise ValueError(_at_row(str(err), count)) from None
        block = block.double()
        rows = block.shape[0]
        block_mean = block.mean(0)
        centred = block - block_mean
        block_scatter = centred.T @ centred
        if mean is None:
            mean, scatter = block_mean, block_scatter
            minimum, maximum = block.amin(0), block.amax(0)
        else:
            delta = block_mean - mean
            total = count + rows
            scatter = scatter + block_scatter + torch.outer(delta, delta) * (count * rows / total)
            mean = mean + delta * (rows / total)
            minimum, maximum = torch.minimum(minimum, block.amin(0)), torch.maximum(maximum, block.amax(0))
        count += rows
    return Moments(count, mean, scatter / count, minimum, maximum)


def _at_row(message: str, offset: int) -> str:
    """``check_data``'s message for a block, with its row numbers made those of the whole data."""
    if offset == 0 or "(rows " not in message:
        return message
    head, rest = message.split("(rows ", 1)
    numbers, tail = rest.split(")", 1)
    shifted = ", ".join(str(int(v) + offset) if v.strip().isdigit() else v for v in numbers.split(", "))
    return f"{head}(rows {shifted}){tail}"


def init_sample(data: Tensor | MappedRows, generator: torch.Generator | None) -> Tensor:
    """The rows the starting parameters are computed from: all of in-memory data of at most
    ``INIT_ROWS`` rows, else ``INIT_ROWS`` rows drawn without replacement with ``generator``
    (so the in-memory and the streamed run of one file start from the same parameters)."""
    num_data = len(data)
    if num_data <= INIT_ROWS:
        return data if isinstance(data, Tensor) else data.rows(torch.arange(num_data))
    index = torch.randperm(num_data, generator=generator)[:INIT_ROWS].sort().values
    return data[index.to(data.device)] if isinstance(data, Tensor) else data.rows(index)


def mean_over_rows(data: Tensor | MappedRows, per_row) -> Tensor:
    """The mean over the rows of ``per_row(block)`` (B,), computed a block at a time."""
    total = None
    for block in blocks(data):
        part = per_row(block).sum()
        total = part if total is None else total + part
    return total / len(data)


__all__ = [
    "BLOCK_ROWS",
    "INIT_ROWS",
    "MappedRows",
    "Moments",
    "blocks",
    "init_sample",
    "mean_over_rows",
    "moments",
    "open_npy",
]
