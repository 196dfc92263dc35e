"""Exact EM for the mixture, factor analysis and PPCA, and PPCA's closed-form solution.

Each model has a pure ``e_step(data, params) -> (stats, mean log p(x))`` and
``m_step(data, stats) -> params``; :func:`run_em` alternates them and records the mean
log-likelihood of every iterate. The data may be an (N, D) tensor or rows left on disk
(:class:`gallery.data.mapped.MappedRows`, walked in blocks); factor analysis and PPCA need only the
data's column moments, computed once. EM never lowers log p(x) (Dempster, Laird and Rubin 1977),
which the tests check iteration by iteration. Float64 by default, on the data's device.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from gallery.data.checks import check_data, clock
from gallery.data.mapped import MappedRows, Moments, blocks, moments
from gallery.models import gmm, linear_gaussian
from gallery.models.gmm import GMMParams
from gallery.models.linear_gaussian import LinearGaussianParams


@dataclass(frozen=True)
class EMResult:
    params: Any  # GMMParams or LinearGaussianParams, the last iterate
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
    for _ in tqdm(range(max_iters), desc="EM", disable=not progress, leave=False):
        params = m_step(data, stats)
        stats, log_lik = e_step(data, params)
        history.append(log_lik)
        if abs(float(history[-1] - history[-2])) < tol:  # one sync per EM iteration
            converged = True
            break
    if not converged and max_iters > 0:
        warnings.warn(f"EM did not converge to tol={tol} in {max_iters} iterations", stacklevel=2)
    return EMResult(params, torch.stack(history).cpu(), converged, len(history) - 1, clock(data) - start)


# Gaussian mixture ---------------------------------------------------------------------------

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


def gmm_e_step(data: Tensor, params: GMMParams) -> tuple[Tensor, Tensor]:
    """Responsibilities (N, K) and the mean log-likelihood, in log space."""
    joint = gmm.joint_log_prob(data, params)  # (N, K)
    log_norm = joint.logsumexp(-1, keepdim=True)
    return (joint - log_norm).exp(), log_norm.mean()


def gmm_e_step_stats(
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
    const = params.weights.log() + gmm.log_normalizer(params)  # (K,)
    full = params.scale_tril is not None
    if full:
        weight, offset = gmm.whitening(shifted)  # (D, K*D), (K*D,)
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
            joint = params.weights.log() + gmm.component_log_prob(x, shifted)
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


def gmm_e_step_blocks(
    data: MappedRows, params: GMMParams, center: Tensor, chunk_size: int | None = None
) -> tuple[GMMStats, Tensor]:
    """:func:`gmm_e_step_stats` over data left on disk, a block at a time, the sums about one
    ``center`` (D,) added up in place as the blocks go (a list of every block's small sums
    would pin each block's freed memory in the heap: measured +300 MB a pass over 10^7 rows)."""
    total, sums = None, None
    for block in blocks(data):
        stats, mean_log_lik = gmm_e_step_stats(block, params, chunk_size, center)
        if sums is None:
            sums, total = [stats.count, stats.first, stats.second], mean_log_lik * stats.num_data
            continue
        for running, part in zip(sums, (stats.count, stats.first, stats.second), strict=True):
            running.add_(part)
        total.add_(mean_log_lik * stats.num_data)
    return GMMStats(*sums, center, len(data)), total / len(data)


def gmm_stats(data: Tensor, resp: Tensor, covariance_type: str) -> GMMStats:
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


def gmm_m_step_from_stats(
    stats: GMMStats, covariance_type: str, reg_covar: float = 1e-6
) -> tuple[GMMParams, Tensor]:
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


def _check_cholesky(info: Tensor) -> None:
    if bool(info.any()):
        bad = int(info.nonzero()[0])
        raise ValueError(
            f"the covariance of mixture component {bad} is not positive definite; "
            "increase reg_covar, use fewer components, or scale the data"
        )


def gmm_m_step(data: Tensor, resp: Tensor, covariance_type: str, reg_covar: float = 1e-6) -> GMMParams:
    """Weighted maximum likelihood given responsibilities (N, K), as scikit-learn's
    GaussianMixture: ``nk + 10 eps`` guards empty components and ``reg_covar`` is added to
    every variance."""
    params, info = gmm_m_step_from_stats(gmm_stats(data, resp, covariance_type), covariance_type, reg_covar)
    _check_cholesky(info)
    return params


def em_gmm(
    data: Tensor | MappedRows,
    init: GMMParams,
    *,
    reg_covar: float = 1e-6,
    chunk_size: int | None = None,
    **kwargs,
) -> EMResult:
    """Exact EM for :mod:`gallery.models.gmm` from ``init``; ``kwargs`` go to :func:`run_em`.

    Each E-step also accumulates the next M-step's sums (:func:`gmm_e_step_stats`; for data on
    disk, :func:`gmm_e_step_blocks` about the starting mixture's mean, which k-means puts near the
    data's). The only host sync per iteration is :func:`run_em`'s convergence check: a failed
    Cholesky factorisation is read after it, one E-step late, and raised then."""
    pending: list[Tensor] = []  # the last M-step's Cholesky info, finished by the time it is read

    def m_step(x: Tensor, stats: GMMStats) -> GMMParams:
        while pending:
            _check_cholesky(pending.pop())
        params, info = gmm_m_step_from_stats(stats, init.covariance_type, reg_covar)
        pending.append(info)
        return params

    center = init.weights @ init.loc  # (D,)

    def e_step(x: Tensor | MappedRows, params: GMMParams) -> tuple[GMMStats, Tensor]:
        if isinstance(x, Tensor):
            return gmm_e_step_stats(x, params, chunk_size)
        return gmm_e_step_blocks(x, params, center.to(params.loc), chunk_size)

    result = run_em(data, init, e_step, m_step, **kwargs)
    while pending:
        _check_cholesky(pending.pop())
    return result


# Factor analysis and PPCA ---------------------------------------------------------------------


def linear_gaussian_e_step(
    data: Moments, params: LinearGaussianParams
) -> tuple[tuple[Tensor, Tensor, Tensor], Tensor]:
    """The posterior's expected sufficient statistics, averaged over the data, and the mean
    log-likelihood, from the data's moments alone: with B = M^{-1} W^T Psi^{-1} (p, d), r = mean -
    loc and T = S + r r^T (S the 1/N covariance), E[z_n] = B (x_n - loc), so

        1/N sum_n E[z_n] = B r,   1/N sum_n x_n E[z_n]^T = (S + mean r^T) B^T,
        1/N sum_n E[z_n z_n^T] = B T B^T + M^{-1},

    and 1/N sum_n log p(x_n) = -1/2 [d log 2 pi + log|C| + tr(C^{-1} T)], C = W W^T + Psi, by
    the Woodbury identity and the matrix determinant lemma (no d x d factorisation).
    Returns ((B r (p,), cross (d, p), second (p, p)), mean log p(x))."""
    chol, weighted = linear_gaussian.precision_cholesky(params)  # (p, p), A = W^T Psi^{-1} (p, d)
    gain = torch.cholesky_solve(weighted, chol)  # (p, d) = B
    resid = data.mean - params.loc  # (d,)
    spread = data.covariance + torch.outer(resid, resid)  # (d, d) = T
    loc_z = gain @ resid  # (p,)
    cross = (data.covariance + torch.outer(data.mean, resid)) @ gain.T  # (d, p)
    second = gain @ spread @ gain.T + torch.cholesky_inverse(chol)  # (p, p)
    trace = (spread.diagonal() / params.psi).sum() - ((gain @ spread) * weighted).sum()
    log_det = 2 * chol.diagonal().log().sum() + params.psi.log().sum()
    obs_dim = resid.shape[0]
    log_lik = -0.5 * (obs_dim * math.log(2 * math.pi) + log_det + trace)
    return (loc_z, cross, second), log_lik


def linear_gaussian_m_step(
    data: Moments,
    stats: tuple[Tensor, Tensor, Tensor],
    isotropic: bool,
    min_noise_variance: float = 1e-12,
) -> LinearGaussianParams:
    """Maximise E_q[log p(x, z)] jointly over (loading, loc) and the noise.

    With the augmented latent [z; 1] (Ghahramani and Hinton 1996, eq. 7-8), all sums divided
    by N: [loading, loc] = (sum_n x_n E[z~_n]^T)(sum_n E[z~_n z~_n^T])^{-1} and
    psi = diag(sum_n x_n x_n^T - [loading, loc] sum_n E[z~_n] x_n^T), averaged for PPCA.
    """
    loc_z, cross_z, second_z = stats  # (p,), (d, p), (p, p)
    latent_dim = loc_z.shape[0]
    moment = loc_z.new_empty(latent_dim + 1, latent_dim + 1)  # (p + 1, p + 1) = E[z~ z~^T]
    moment[:latent_dim, :latent_dim] = second_z
    moment[:latent_dim, -1] = moment[-1, :latent_dim] = loc_z
    moment[-1, -1] = 1
    cross = torch.cat([cross_z, data.mean[:, None]], 1)  # (d, p + 1) = E[x z~^T]
    coef = torch.linalg.solve(moment, cross.T).T  # (d, p + 1); moment is symmetric
    psi = data.covariance.diagonal() + data.mean.pow(2) - (coef * cross).sum(1)  # (d,)
    noise = psi.mean() if isotropic else psi
    return LinearGaussianParams(coef[:, -1], coef[:, :-1], noise.clamp_min(min_noise_variance))


def em_linear_gaussian(data: Tensor | MappedRows | Moments, init: LinearGaussianParams, **kwargs) -> EMResult:
    """Exact EM for factor analysis (``init.noise_variance``: (d,)) or PPCA (scalar), on the
    data's moments (one pass over the data, then O(d^3) per iteration)."""
    return run_em(
        data if isinstance(data, Moments) else moments(data),
        init,
        linear_gaussian_e_step,
        lambda x, stats: linear_gaussian_m_step(x, stats, init.isotropic),
        **kwargs,
    )


def ppca_closed_form(data: Tensor | MappedRows | Moments, latent_dim: int) -> LinearGaussianParams:
    """PPCA's maximum-likelihood parameters (Tipping and Bishop 1999, eq. 7-8):
    loc = mean, sigma^2 = mean of the d - p smallest eigenvalues of the 1/N sample covariance S,
    loading = U_p (Lambda_p - sigma^2 I)^{1/2} (taking the rotation R = I)."""
    stats = data if isinstance(data, Moments) else moments(data)
    linear_gaussian.check_latent_dim(latent_dim, stats.mean.shape[0])
    eigvals, eigvecs = torch.linalg.eigh(stats.covariance)  # ascending
    eigvals, eigvecs = eigvals.flip(0), eigvecs.flip(1)
    noise_variance = ppca_noise_variance(eigvals, latent_dim)
    loading = eigvecs[:, :latent_dim] * (eigvals[:latent_dim] - noise_variance).clamp_min(0).sqrt()
    return LinearGaussianParams(stats.mean, loading, noise_variance)


def ppca_noise_variance(eigvals: Tensor, latent_dim: int) -> Tensor:
    """sigma^2 = the mean of the d - p smallest eigenvalues (``eigvals`` descending). Raises when
    it is 0 to rounding: the data then lie in a p-dimensional subspace, where the likelihood
    grows without bound as sigma^2 -> 0 and has no maximum."""
    noise_variance = eigvals[latent_dim:].mean()
    if not bool(noise_variance > 1e-12 * eigvals[0].abs().clamp_min(torch.finfo(eigvals.dtype).tiny)):
        raise ValueError(
            f"the data lie in a {latent_dim}-dimensional subspace (the other directions have variance "
            f"{float(noise_variance):.3g}), where PPCA's likelihood has no maximum; use a --latent-dim "
            "below the data's rank, or drop duplicated or collinear columns"
        )
    return noise_variance


def ppca_max_log_likelihood(data: Tensor | MappedRows | Moments, latent_dim: int) -> Tensor:
    """The maximum of the mean log-likelihood in closed form (Tipping and Bishop 1999, eq. 4 at
    eq. 7-8): -1/2 [d log 2 pi + sum_{j<=p} log lambda_j + (d - p) log sigma^2 + d]."""
    stats = data if isinstance(data, Moments) else moments(data)
    obs_dim = stats.mean.shape[0]
    eigvals = torch.linalg.eigvalsh(stats.covariance).flip(0)
    noise_variance = ppca_noise_variance(eigvals, latent_dim)
    return -0.5 * (
        obs_dim * math.log(2 * math.pi)
        + eigvals[:latent_dim].log().sum()
        + (obs_dim - latent_dim) * noise_variance.log()
        + obs_dim
    )


def fit_em(data, init, **kwargs) -> EMResult:
    """Exact EM from ``init`` for the model that owns ``init``; ``kwargs`` go to :func:`run_em`."""
    if isinstance(init, GMMParams):
        return em_gmm(data, init, **kwargs)
    return em_linear_gaussian(data, init, **kwargs)
