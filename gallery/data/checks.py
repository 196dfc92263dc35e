"""Checks on an observation matrix at a public entry point, and a device-aware clock."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

HALF = (torch.float16, torch.bfloat16)  # too coarse for Cholesky factors and sums of squares
SHAPE_ERRORS = (
    "size of tensor",
    "shapes cannot be multiplied",
    "mat1 and mat2",
    "shape '[",
    "must match event_shape",
    "Shape mismatch",
)


def check_data(
    data: Tensor, *, name: str = "data", width: int | None = None, fitted: str = "the parameters"
) -> Tensor:
    """Validate an observation matrix at a public entry point and return it unchanged.

    Checks: a dense tensor with values (not sparse, not on the meta device), float32 or
    float64, 2-D with at least one row and column (``width`` columns when given: those that
    ``fitted`` were built for), all finite, and small enough that sums of squares (variances,
    distances) do not overflow the dtype.
    """
    if not isinstance(data, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(data).__name__}")
    if data.layout != torch.strided:
        raise ValueError(
            f"{name} is a {str(data.layout).removeprefix('torch.')} tensor; pass a dense one (.to_dense())"
        )
    if data.is_meta:
        raise ValueError(f"{name} is on the meta device (a shape without values); create it on cpu or cuda")
    if data.dim() != 2:
        raise ValueError(
            f"{name} must be 2-D (num_data, obs_dim); got shape {tuple(data.shape)}: "
            "reshape it so that each row is one observation"
        )
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(data.shape)}); it needs rows and columns")
    if not data.is_floating_point():
        raise ValueError(f"{name} has dtype {data.dtype}; convert it with .double() or .float()")
    if data.dtype in HALF:
        raise ValueError(
            f"{name} has dtype {str(data.dtype).removeprefix('torch.')}, too coarse for the Cholesky factors "
            "and sums of squares; convert to float32 or float64 (.float() or .double())"
        )
    if width is not None and data.shape[1] != width:
        raise ValueError(
            f"{name} has {data.shape[1]} columns but {fitted} are for {width}; pass data of that width or "
            "build them for this data"
        )
    finite = torch.isfinite(data)
    if not bool(finite.all()):
        bad_rows = (~finite).any(1).nonzero().flatten()
        shown = ", ".join(str(int(i)) for i in bad_rows[:5])
        more = " ..." if len(bad_rows) > 5 else ""
        raise ValueError(
            f"{name} has NaN or inf in {len(bad_rows)} row(s) (rows {shown}{more}); remove or impute them"
        )
    if not bool(torch.isfinite(data.pow(2).sum(0)).all()):
        raise ValueError(
            f"{name} has values too large for {str(data.dtype).removeprefix('torch.')} arithmetic (largest "
            f"magnitude {float(data.abs().max()):.3g}: their squares overflow); rescale the data "
            "(divide it by a power of ten)"
        )
    return data


@contextmanager
def fitting(data: Tensor, what: str = "the model and guide") -> Iterator[None]:
    """Turn a shape mismatch inside the block (data of another width than a network, ``init``
    or a decoder was built for) into one ``ValueError`` naming the data's shape."""
    try:
        yield
    except (RuntimeError, ValueError) as err:  # torch's shape errors; Pyro's, with its trace table
        lines = [line.strip() for line in str(err).splitlines()]
        found = next((line for line in lines if any(phrase in line for phrase in SHAPE_ERRORS)), None)
        if found is None:
            raise
        raise ValueError(
            f"{what} do not fit data of shape {tuple(data.shape)} ({found.rstrip('.')}); build them (the "
            "init, the decoder, the encoder) for this data's columns"
        ) from None


def clock(tensor: Tensor) -> float:
    """Wall-clock seconds, after waiting for the tensor's device to finish queued work."""
    if tensor.is_cuda:
        torch.cuda.synchronize(tensor.device)
    return time.perf_counter()
