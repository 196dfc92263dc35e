"""The Gaussian mixture's exact algorithms: EM's E-step fused with the M-step's sums, the M-step
(scikit-learn's), and variational EM's pieces (the free energy and the M-step objective in
unconstrained parameters; :mod:`inference.vem` has the loop and the maximiser).

E-step, for responsibilities r_nk = p(c_n = k | x_n) (Bishop 2006, eq. 9.23) and M-step
(eq. 9.24-9.27, with scikit-learn's ``reg_covar`` added to every covariance):

    n_k = sum_n r_nk,  w_k = n_k / N,  mu_k = sum_n r_nk x_n / n_k,
    Sigma_k = sum_n r_nk (x_n - mu_k)(x_n - mu_k)^T / n_k + reg_covar I.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from gallery.data.mapped import MappedRows, blocks
from gallery.models.gmm.model import (
    GMMParams,
    component_log_prob,
    joint_log_prob,
    log_normalizer,
    log_responsibilities,
    whitening,
)
from gallery.models.protocol import EMSteps

CHUNK_BYTES = {"cpu": 2**22, "cuda": 2**28}  # per (rows, K*D) intermediate: CPU cache, GPU memory


@dataclass(frozen=True)
class GMMStats:
    """Responsibility-weighted sums over the data, about the data mean ``center``: all the
    M-step needs (sums about the mean, not the origin, for accuracy)."""

    count: Tensor  # (K,) sum_n r_nk
    first: Tensor  # (K, D) sum_n r_nk (x_n - center)
    second: Tensor  # (K, D, D) sum_n r_nk (x_n - center)(x_n - center)^T; (K, D) its diagonal for diag
    center: Tensor  # (D,)
    num_data: int


def e_step(
    data: Tensor, params: GMMParams, chunk_size: int | None = None, center: Tensor | None = None
) -> tuple[GMMStats, Tensor]:
    """The E-step fused with the sums of the next M-step: one pass over the data in chunks of
    ``chunk_size`` rows (default: ~4 MiB of intermediates on CPU, to stay in cache, 256 MiB on
    a GPU), so the (N, K) responsibilities are never stored. Full covariance costs two matrix
    products per chunk for all components at once: the whitened residuals
    ``(x - center) @ W - b``, (B, K*D), and the second moments ``(x - center)^T (r * (x - center))``,
    (D, K*D). No host sync. Returns the sums (about ``center``, default the data mean) and the
    mean log-likelihood."""
    num_data, obs_dim = data.shape
    num_components = params.num_components
    center = data.mean(0) if center is None else center
    shifted = replace(params, loc=params.loc - center)  # the same mixture for x - center
    const = params.weights.log() + log_normalizer(params)  # (K,)
    full = params.scale_tril is not None
    if full:
        weight, offset = whitening(shifted)  # (D, K*D), (K*D,)
    if chunk_size is None:
        budget = CHUNK_BYTES["cuda" if data.is_cuda else "cpu"]
        chunk_size = max(1, budget // (num_components * obs_dim * data.element_size()))
    count = data.new_zeros(num_components)
    first = data.new_zeros(num_components, obs_dim)
    second = data.new_zeros(obs_dim, num_components * obs_dim) if full else first.clone()
    total = data.new_zeros(())
    for rows in data.split(chunk_size):
        x = rows - center  # (B, D)
        if full:
            residual = torch.addmm(offset, x, weight, beta=-1)  # (B, K*D)
            maha = residual.square_().view(-1, num_components, obs_dim).sum(-1)  # (B, K)
            joint = const - 0.5 * maha
        else:
            joint = params.weights.log() + component_log_prob(x, shifted)
        log_norm = joint.logsumexp(-1, keepdim=True)  # (B, 1)
        resp = joint.sub_(log_norm).exp_()  # (B, K)
        total += log_norm.sum()
        count += resp.sum(0)
        first.addmm_(resp.T, x)
        if full:  # (D, B) @ (B, K*D): this orientation is 3x faster than its transpose on MKL
            second.addmm_(x.T, (resp[:, :, None] * x[:, None, :]).view(-1, num_components * obs_dim))
        else:
            second.addmm_(resp.T, x.square())
    if full:
        second = second.view(obs_dim, num_components, obs_dim).transpose(0, 1)  # (K, D, D)
    return GMMStats(count, first, second, center, num_data), total / num_data


def e_step_blocks(
    data: MappedRows, params: GMMParams, center: Tensor, chunk_size: int | None = None
) -> tuple[GMMStats, Tensor]:
    """:func:`e_step` over data left on disk, a block at a time, the sums about one
    ``center`` (D,) added up in place as the blocks go (a list of every block's small sums
    would pin each block's freed memory in the heap: measured +300 MB a pass over 10^7 rows)."""
    total, sums = None, None
    for block in blocks(data):
        stats, mean_log_lik = e_step(block, params, chunk_size, center)
        if sums is None:
            sums, total = [stats.count, stats.first, stats.second], mean_log_lik * stats.num_data
            continue
        for running, part in zip(sums, (stats.count, stats.first, stats.second), strict=True):
            running.add_(part)
        total.add_(mean_log_lik * stats.num_data)
    return GMMStats(*sums, center, len(data)), total / len(data)


def sums(data: Tensor, resp: Tensor, covariance_type: str) -> GMMStats:
    """The M-step's sums from responsibilities (N, K)."""
    center = data.mean(0)
    centred = data - center  # (N, D)
    first = resp.T @ centred  # (K, D)
    if covariance_type == "diag":
        second = resp.T @ centred.pow(2)  # (K, D)
    else:
        num_data, obs_dim = data.shape
        outer = (resp[:, :, None] * centred[:, None, :]).view(num_data, -1)  # (N, K*D)
        second = (centred.T @ outer).view(obs_dim, -1, obs_dim).transpose(0, 1)  # (K, D, D)
    return GMMStats(resp.sum(0), first, second, center, data.shape[0])


def m_step(stats: GMMStats, covariance_type: str, reg_covar: float = 1e-6) -> tuple[GMMParams, Tensor]:
    """Weighted maximum likelihood from the sums, as scikit-learn's GaussianMixture: ``nk + 10 eps``
    guards empty components and ``reg_covar`` is added to every variance. Returns the parameters
    and, for full covariance, the (K,) ``info`` of the Cholesky factorisations (nonzero: not
    positive definite), left on the device for the caller to check."""
    nk = stats.count + 10 * torch.finfo(stats.count.dtype).eps  # (K,)
    loc_c = stats.first / nk[:, None]  # (K, D), about the data mean
    weights = nk / stats.num_data
    loc = loc_c + stats.center
    if covariance_type == "diag":
        var = stats.second / nk[:, None] - loc_c.pow(2) + reg_covar
        return GMMParams(weights, loc, scale=var.sqrt()), torch.zeros_like(nk, dtype=torch.int32)
    obs_dim = loc.shape[-1]
    eye = torch.eye(obs_dim, dtype=loc.dtype, device=loc.device)
    cov = stats.second / nk[:, None, None] - loc_c[:, :, None] * loc_c[:, None, :] + reg_covar * eye
    scale_tril, info = torch.linalg.cholesky_ex(cov)
    return GMMParams(weights, loc, scale_tril=scale_tril), info


def check_cholesky(info: Tensor) -> None:
    if bool(info.any()):
        bad = int(info.nonzero()[0])
        raise ValueError(
            f"the covariance of mixture component {bad} is not positive definite; "
            "increase reg_covar, use fewer components, or scale the data"
        )


def m_step_from_responsibilities(
    data: Tensor, resp: Tensor, covariance_type: str, reg_covar: float = 1e-6
) -> GMMParams:
    """Weighted maximum likelihood given responsibilities (N, K), as scikit-learn's
    GaussianMixture: ``nk + 10 eps`` guards empty components and ``reg_covar`` is added to
    every variance."""
    params, info = m_step(sums(data, resp, covariance_type), covariance_type, reg_covar)
    check_cholesky(info)
    return params


def em_steps(
    data: Tensor | MappedRows,
    init: GMMParams,
    *,
    reg_covar: float = 1e-6,
    chunk_size: int | None = None,
) -> EMSteps:
    """Exact EM's steps from ``init`` for :func:`inference.em.run_em`.

    Each E-step also accumulates the next M-step's sums (:func:`e_step`; for data on disk,
    :func:`e_step_blocks` about the starting mixture's mean, which k-means puts near the
    data's). The only host sync per iteration is the loop's convergence check: a failed
    Cholesky factorisation is read after it, one E-step late, and raised then (``finish``
    reads the last one)."""
    pending: list[Tensor] = []  # the last M-step's Cholesky info, finished by the time it is read

    def finish() -> None:
        while pending:
            check_cholesky(pending.pop())

    def m_step_(x: Tensor, stats: GMMStats) -> GMMParams:
        finish()
        params, info = m_step(stats, init.covariance_type, reg_covar)
        pending.append(info)
        return params

    center = init.weights @ init.loc  # (D,)

    def e_step_(x: Tensor | MappedRows, params: GMMParams) -> tuple[GMMStats, Tensor]:
        if isinstance(x, Tensor):
            return e_step(x, params, chunk_size)
        return e_step_blocks(x, params, center.to(params.loc), chunk_size)

    return EMSteps(data, e_step_, m_step_, finish)


# Variational EM -----------------------------------------------------------------------------


def free_energy(data: Tensor, resp: Tensor, params: GMMParams) -> Tensor:
    """(N,) F_n(q, lambda) = sum_k r_nk [log p(x_n, c_n = k) - log r_nk] for q = r (N, K)."""
    return (resp * joint_log_prob(data, params)).sum(-1) - torch.special.xlogy(resp, resp).sum(-1)


def vem_e_step(data: Tensor, params: GMMParams, family: str = "exact") -> Tensor:
    """argmax_q F(q, params): the responsibilities (N, K), in either family (a categorical per
    datum already contains the posterior)."""
    return log_responsibilities(data, params).exp()


def vem_objective(
    data: Tensor, resp: Tensor, params: GMMParams, *, reg_covar: float = 1e-6
) -> tuple[Callable[..., Tensor], tuple[Tensor, ...], Callable[..., GMMParams]]:
    """Variational EM's M-step problem: ``(objective, start, unpack)``, the per-datum F less the
    ``reg_covar`` smear (:mod:`inference.vem`) as a function of the unconstrained parameters,
    their value at ``params``, and the map back to parameters."""
    unpack = _unpack(params.covariance_type)
    return _objective(data, resp, unpack, reg_covar), _pack(params), unpack


def _objective(
    data: Tensor, resp: Tensor, unpack: Callable[..., GMMParams], reg_covar: float
) -> Callable[..., Tensor]:
    """F(r, lambda) - H[r] less the smear, per datum, from r's fixed statistics n_k = sum_n r_nk,
    xbar_k = sum_n r_nk x_n / n_k and S_k = sum_n r_nk (x_n - xbar_k)(x_n - xbar_k)^T (K, D, D):

        sum_n r_nk log N(x_n; mu_k, Sigma_k)
            = -1/2 [n_k (D log 2 pi + log|Sigma_k|) + tr(Sigma_k^{-1} C_k)],
        C_k = S_k + n_k (xbar_k - mu_k)(xbar_k - mu_k)^T,

    and the smear adds n_k reg_covar I to C_k. Scatter about xbar_k, not raw moments, so that
    F has no cancellation and the line search can resolve it near the optimum."""
    num_data, obs_dim = data.shape
    nk = resp.sum(0)  # (K,)
    mean = resp.T @ data / (nk + 10 * torch.finfo(data.dtype).eps)[:, None]  # (K, D); EM's guard
    centred = data[:, None, :] - mean  # (N, K, D)
    eye = torch.eye(obs_dim, dtype=data.dtype, device=data.device)
    scatter = torch.einsum("nk,nkd,nke->kde", resp, centred, centred) + reg_covar * nk[:, None, None] * eye

    def objective(*raw: Tensor) -> Tensor:
        params = unpack(*raw)
        shift = mean - params.loc  # (K, D)
        if params.scale_tril is not None:
            prec_tril = torch.linalg.solve_triangular(params.scale_tril, eye, upper=False)  # L^{-1}
            maha = ((prec_tril @ scatter) * prec_tril).sum((-2, -1))  # (K,) tr(Sigma^{-1} S)
            maha = maha + nk * (prec_tril @ shift[:, :, None]).pow(2).sum((-2, -1))
        else:
            variance = params.scale.pow(2)
            maha = ((scatter.diagonal(dim1=-2, dim2=-1) + nk[:, None] * shift.pow(2)) / variance).sum(-1)
        log_norm = log_normalizer(params)  # (K,)
        return (nk * (params.weights.log() + log_norm) - 0.5 * maha).sum() / num_data

    return objective


def _pack(params: GMMParams) -> tuple[Tensor, ...]:
    """(logits (K - 1,) of the weights against the last, loc (K, D), and the lower triangle of
    scale_tril with log diagonal (K, D (D + 1) / 2), or log scale (K, D) for ``"diag"``)."""
    logits = params.weights[:-1].log() - params.weights[-1].log()
    if params.scale_tril is None:
        return logits, params.loc, params.scale.log()
    obs_dim = params.loc.shape[-1]
    raw = params.scale_tril.tril(-1) + torch.diag_embed(params.scale_tril.diagonal(dim1=-2, dim2=-1).log())
    rows, cols = torch.tril_indices(obs_dim, obs_dim, device=raw.device)
    return logits, params.loc, raw[:, rows, cols]


def _unpack(covariance_type: str) -> Callable[..., GMMParams]:
    def unpack(logits: Tensor, loc: Tensor, raw_scale: Tensor) -> GMMParams:
        weights = torch.cat([logits, logits.new_zeros(1)]).softmax(-1)
        if covariance_type == "diag":
            return GMMParams(weights, loc, scale=raw_scale.exp())
        num_components, obs_dim = loc.shape
        rows, cols = torch.tril_indices(obs_dim, obs_dim, device=loc.device)
        raw = loc.new_zeros(num_components, obs_dim, obs_dim)
        raw[:, rows, cols] = raw_scale
        diag = torch.diag_embed(raw.diagonal(dim1=-2, dim2=-1).exp())
        return GMMParams(weights, loc, scale_tril=raw.tril(-1) + diag)

    return unpack
