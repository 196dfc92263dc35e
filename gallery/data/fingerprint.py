"""A fingerprint of an observation matrix, stored in a checkpoint so that a resumed run on
other data is refused: the shape, the dtype and a SHA-256 of the bytes (for rows left in a
memory-mapped file, of a fixed sample of ``SAMPLE_ROWS`` rows spread evenly through it, read as
the run reads them, so that a changed file, column selection or scaling shows)."""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import Tensor

from gallery.data.mapped import MappedRows

SAMPLE_ROWS = 4096  # rows hashed of a memory-mapped file: one read of at most this many rows


def fingerprint(data: Tensor | MappedRows) -> dict:
    """``{"shape": [N, D], "dtype": "float64", "sha256": hex, "rows": "all" | "sample"}``."""
    if isinstance(data, MappedRows):
        num_data = len(data)
        index = np.unique(np.linspace(0, num_data - 1, min(num_data, SAMPLE_ROWS)).astype(np.int64))
        values, rows = data.rows(torch.from_numpy(index)), "sample"
    else:
        values, rows = data, "all"
    digest = hashlib.sha256(np.ascontiguousarray(values.detach().cpu().numpy()))
    dtype = str(data.dtype).removeprefix("torch.")
    return {"shape": list(data.shape), "dtype": dtype, "sha256": digest.hexdigest(), "rows": rows}


__all__ = ["SAMPLE_ROWS", "fingerprint"]
