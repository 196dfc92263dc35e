"""The importance-weighted estimate of log p(x) (Burda et al. 2016), for any model whose latents
the guide samples (continuous z), in chunks so that memory stays bounded for K up to thousands.

With z_1..K ~ q(z | x_n) and log w_k = log p(x_n, z_k) - log q(z_k | x_n),

    log p(x_n) ~ log (1/K) sum_k w_k   (a lower bound in expectation, tightening as K grows)
    ELBO_n     ~ (1/K) sum_k log w_k   (the same samples' unbiased ELBO estimate)

With the exact posterior as q every w_k equals p(x_n), and the estimate is exact for any K.
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
    batch_size: int = 512,
    **kwargs,
) -> ImportanceEstimate:
    """Importance-weighted log p(x_n) and ELBO_n for every row of ``data`` (N, d), drawing the K
    = ``num_samples`` samples ``chunk_size`` at a time for ``batch_size`` rows at a time (memory
    O(chunk_size * batch_size * d)), and combining chunks by a running logsumexp."""
    check_data(data)
    if num_samples < 1:
        raise ValueError(f"num_samples={num_samples} must be at least 1")
    if chunk_size < 1 or batch_size < 1:
        raise ValueError(f"chunk_size={chunk_size} and batch_size={batch_size} must be at least 1")
    num_data = data.shape[0]
    log_likelihood = data.new_empty(num_data)
    elbo = data.new_empty(num_data)
    with fitting(data):  # data of another width than the decoder or encoder: one line
        for rows in torch.arange(num_data, device=data.device).split(batch_size):
            running_lse = data.new_full((len(rows),), -math.inf)
            running_sum = data.new_zeros(len(rows))
            remaining = num_samples
            while remaining > 0:
                size = min(chunk_size, remaining)
                weights = log_weights(model, guide, data, rows, size, **kwargs)  # (size, B)
                running_lse = torch.logaddexp(running_lse, weights.logsumexp(0))
                running_sum += weights.sum(0)
                remaining -= size
            log_likelihood[rows] = running_lse - math.log(num_samples)
            elbo[rows] = running_sum / num_samples
    return ImportanceEstimate(log_likelihood, elbo, num_samples)


__all__ = ["ImportanceEstimate", "importance_estimate", "log_weights"]
