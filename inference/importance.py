"""The importance-weighted estimate of log p(x) (Burda et al. 2016), for any model whose latents
the guide samples (continuous z), in chunks so that memory stays bounded for K up to thousands.

With z_1..K ~ q(z | x_n) and log w_k = log p(x_n, z_k) - log q(z_k | x_n),

    log p(x_n) ~ log (1/K) sum_k w_k   (a lower bound in expectation, tightening as K grows)
    ELBO_n     ~ (1/K) sum_k log w_k   (the same samples' unbiased ELBO estimate)

With the exact posterior as q every w_k equals p(x_n), and the estimate is exact for any K.

A chunk's largest tensors are (samples, rows, d) (the decoder's output and its log-density):
their size is kept under ``CHUNK_BYTES``, so that the allocator reuses the same buffers from
chunk to chunk. Larger ones are mapped from the kernel and returned to it on every chunk (glibc
maps each block above its threshold, at most 32 MiB, afresh): on 784-pixel images with 512
rows and 100 samples a chunk (160 MB) spent a third of the evaluation's CPU time in the kernel.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pyro
import torch
from pyro import poutine
from torch import Tensor

from gallery.data.checks import check_data, fitting

CHUNK_BYTES = 8 << 20  # the largest tensor of one chunk: under glibc's 32 MiB mapping threshold
MAX_ROWS = 512  # rows per batch at most
SAMPLES_PER_CHUNK = 32  # the fewest samples (or all K) that a default batch of rows leaves room for


@dataclass(frozen=True)
class ImportanceEstimate:
    """Per-datum estimates from the same K samples, each (N,)."""

    log_likelihood: Tensor  # log (1/K) sum_k w_k
    elbo: Tensor  # (1/K) sum_k log w_k
    num_samples: int


def log_weights(
    model: Callable, guide: Callable, data: Tensor, subsample: Tensor, num_samples: int, **kwargs
) -> Tensor:
    """(num_samples, B) log p(x_n, z) - log q(z | x_n) for the rows ``subsample`` (B,), with the
    samples vectorised over a ``"particles"`` plate left of the data plate."""
    with pyro.plate("particles", num_samples, dim=-2):
        guide_trace = poutine.trace(guide).get_trace(data, subsample=subsample, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            data, subsample=subsample, **kwargs
        )
    shape = (num_samples, len(subsample))
    total = data.new_zeros(shape)
    for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
        for site in trace.nodes.values():
            if site["type"] != "sample" or (sign < 0 and site["is_observed"]):
                continue
            if site["infer"].get("enumerate"):
                raise ValueError(
                    f"site {site['name']!r} is enumerated; importance weights need sampled latents"
                )
            log_prob = site["fn"].log_prob(site["value"])
            total = total + sign * log_prob.expand(shape)
    return total


@torch.no_grad()
def importance_estimate(
    model: Callable,
    guide: Callable,
    data: Tensor,
    *,
    num_samples: int,
    chunk_size: int = 100,
    batch_size: int | None = None,
    rows: Tensor | None = None,
    **kwargs,
) -> ImportanceEstimate:
    """Importance-weighted log p(x_n) and ELBO_n for every row of ``data`` (N, d), drawing the K
    = ``num_samples`` samples at most ``chunk_size`` at a time (fewer where a (samples, rows, d)
    tensor would pass ``CHUNK_BYTES``) for ``batch_size`` rows at a time, and combining chunks
    by a running logsumexp kept in buffers allocated once. ``batch_size`` defaults to the most
    rows, up to :data:`MAX_ROWS`, for which one chunk holds :data:`SAMPLES_PER_CHUNK` samples
    (or all K): the guide (an encoder) runs once per chunk, and wide rows (784 pixels) would
    otherwise leave a chunk of 512 rows room for 5 samples.
    ``rows``: (M,) indices of the rows to estimate (default all), passed as ``subsample=`` so
    that a guide with a q per row reads its own; the estimates are then (M,)."""
    check_data(data)
    if num_samples < 1:
        raise ValueError(f"num_samples={num_samples} must be at least 1")
    if chunk_size < 1 or (batch_size is not None and batch_size < 1):
        raise ValueError(f"chunk_size={chunk_size} and batch_size={batch_size} must be at least 1")
    num_data, obs_dim = data.shape
    if rows is None:
        rows = torch.arange(num_data, device=data.device)
    num_data = len(rows)
    row_bytes = max(obs_dim, 1) * data.element_size()
    if batch_size is None:
        samples = min(num_samples, chunk_size, SAMPLES_PER_CHUNK)
        batch_size = min(MAX_ROWS, CHUNK_BYTES // (samples * row_bytes))
    batch_size = max(1, min(batch_size, num_data))
    per_sample = batch_size * row_bytes
    chunk_size = max(1, min(chunk_size, CHUNK_BYTES // per_sample))
    log_likelihood = data.new_empty(num_data)
    elbo = data.new_empty(num_data)
    running_lse, running_sum = data.new_empty(batch_size), data.new_empty(batch_size)
    with fitting(data):  # data of another width than the decoder or encoder: one line
        for start in range(0, num_data, batch_size):
            batch = rows[start : start + batch_size]
            lse, total = running_lse[: len(batch)].fill_(-math.inf), running_sum[: len(batch)].zero_()
            remaining = num_samples
            while remaining > 0:
                size = min(chunk_size, remaining)
                weights = log_weights(model, guide, data, batch, size, **kwargs)  # (size, B)
                torch.logaddexp(lse, weights.logsumexp(0), out=lse)
                total += weights.sum(0)
                remaining -= size
            log_likelihood[start : start + len(batch)] = lse - math.log(num_samples)
            elbo[start : start + len(batch)] = total / num_samples
    return ImportanceEstimate(log_likelihood, elbo, num_samples)


__all__ = ["ImportanceEstimate", "importance_estimate", "log_weights"]
