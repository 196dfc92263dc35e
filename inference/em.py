"""Exact EM: the one generic loop, for any model module with ``em_steps``.

Each model has a pure ``e_step(data, params) -> (stats, mean log p(x))`` and
``m_step(data, stats) -> params`` (its module's ``em_steps``: :mod:`gallery.models.gmm.em`,
:mod:`gallery.models.linear_gaussian`); :func:`run_em` alternates them and records the mean
log-likelihood of every iterate, and :func:`fit_em` finds the model from ``init``. The data may
be an (N, D) tensor or rows left on disk (:class:`gallery.data.mapped.MappedRows`, walked in
blocks); factor analysis and PPCA need only the data's column moments, computed once. EM never
lowers log p(x) (Dempster, Laird and Rubin 1977), which the tests check iteration by iteration.
Float64 by default, on the data's device. The models' steps are re-exported here under their
old names (``gmm_e_step``, ``linear_gaussian_m_step``, ``ppca_closed_form``, ...).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from gallery.data.checks import check_data, clock
from gallery.data.mapped import MappedRows, Moments
from gallery.models import gmm, linear_gaussian, owner
from gallery.models.gmm import CHUNK_BYTES, GMMStats
from gallery.models.linear_gaussian import e_step_from_moments as linear_gaussian_e_step
from gallery.models.linear_gaussian import m_step as linear_gaussian_m_step
from gallery.models.ppca import ppca_closed_form, ppca_max_log_likelihood, ppca_noise_variance


@dataclass(frozen=True)
class EMResult:
    params: Any  # the model's Params (GMMParams, LinearGaussianParams), the last iterate
    log_likelihoods: Tensor  # (num_iters + 1,) mean log p(x) of the start and of every iterate
    converged: bool
    num_iters: int
    seconds: float


def run_em(
    data: Tensor,
    init: Any,
    e_step: Callable[[Tensor, Any], tuple[Any, Tensor]],
    m_step: Callable[[Tensor, Any], Any],
    *,
    max_iters: int = 100,
    tol: float = 1e-8,
    dtype: torch.dtype | None = torch.float64,
    progress: bool = False,
) -> EMResult:
    """Alternate M- and E-steps from ``init`` until the mean log-likelihood changes by less than
    ``tol`` nats per datum, or ``max_iters`` M-steps; warn if not converged."""
    if isinstance(data, Tensor):
        check_data(data)
    if dtype is not None:
        data, init = data.to(dtype), init.to(dtype)
    start = clock(data)
    params = init
    stats, log_lik = e_step(data, params)
    history = [log_lik]
    converged = False
    for _ in tqdm(range(max_iters), desc="EM", disable=None if progress else True, leave=False):
        params = m_step(data, stats)
        stats, log_lik = e_step(data, params)
        history.append(log_lik)
        if abs(float(history[-1] - history[-2])) < tol:  # one sync per EM iteration
            converged = True
            break
    if not converged and max_iters > 0:
        warnings.warn(f"EM did not converge to tol={tol} in {max_iters} iterations", stacklevel=2)
    return EMResult(params, torch.stack(history).cpu(), converged, len(history) - 1, clock(data) - start)


def fit_em(
    data: Tensor | MappedRows | Moments,
    init: Any,
    *,
    max_iters: int = 100,
    tol: float = 1e-8,
    dtype: torch.dtype | None = torch.float64,
    progress: bool = False,
    **options,
) -> EMResult:
    """Exact EM from ``init`` for the model that owns ``init`` (:func:`gallery.models.owner`):
    :func:`run_em` on the module's ``em_steps(data, init, **options)`` (the mixture's options:
    ``reg_covar``, ``chunk_size``)."""
    loc = getattr(init, "loc", None)
    if isinstance(data, Tensor):
        check_data(data, width=None if loc is None else loc.shape[-1], fitted="init's parameters")
    steps = owner(init).em_steps(data, init, **options)
    result = run_em(
        steps.data,
        init,
        steps.e_step,
        steps.m_step,
        max_iters=max_iters,
        tol=tol,
        dtype=dtype,
        progress=progress,
    )
    steps.finish()
    return result


def em_gmm(data: Tensor | MappedRows, init: gmm.GMMParams, **kwargs) -> EMResult:
    """Exact EM for :mod:`gallery.models.gmm` (:func:`fit_em`; options ``reg_covar``, ``chunk_size``)."""
    return fit_em(data, init, **kwargs)


def em_linear_gaussian(
    data: Tensor | MappedRows | Moments, init: linear_gaussian.LinearGaussianParams, **kwargs
) -> EMResult:
    """Exact EM for factor analysis or PPCA, on the data's moments (:func:`fit_em`)."""
    return fit_em(data, init, **kwargs)


# The models' steps under their old names.
gmm_e_step = gmm.responsibilities
gmm_e_step_stats = gmm.e_step
gmm_e_step_blocks = gmm.e_step_blocks
gmm_stats = gmm.sums
gmm_m_step_from_stats = gmm.m_step
gmm_m_step = gmm.m_step_from_responsibilities
_check_cholesky = gmm.check_cholesky

__all__ = [
    "CHUNK_BYTES",
    "EMResult",
    "GMMStats",
    "em_gmm",
    "em_linear_gaussian",
    "fit_em",
    "gmm_e_step",
    "gmm_e_step_blocks",
    "gmm_e_step_stats",
    "gmm_m_step",
    "gmm_m_step_from_stats",
    "gmm_stats",
    "linear_gaussian_e_step",
    "linear_gaussian_m_step",
    "ppca_closed_form",
    "ppca_max_log_likelihood",
    "ppca_noise_variance",
    "run_em",
]
