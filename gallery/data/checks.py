"""Checks on an observation matrix at a public entry point, and a device-aware clock."""

from __future__ import annotations

import time

import torch
from torch import Tensor


def check_data(data: Tensor, *, name: str = "data") -> Tensor:
    """Validate an observation matrix at a public entry point and return it unchanged.

    Checks: a tensor, floating point, 2-D with at least one row and column, all finite, and
    small enough that sums of squares (variances, distances) do not overflow the dtype.
    """
    if not isinstance(data, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(data).__name__}")
    if data.dim() != 2:
        raise ValueError(
            f"{name} must be 2-D (num_data, obs_dim); got shape {tuple(data.shape)}: "
            "reshape it so that each row is one observation"
        )
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(data.shape)}); it needs rows and columns")
    if not data.is_floating_point():
        raise ValueError(f"{name} has dtype {data.dtype}; convert it with .double() or .float()")
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


def clock(tensor: Tensor) -> float:
    """Wall-clock seconds, after waiting for the tensor's device to finish queued work."""
    if tensor.is_cuda:
        torch.cuda.synchronize(tensor.device)
    return time.perf_counter()
