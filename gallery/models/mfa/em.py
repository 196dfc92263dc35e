"""Exact EM for the mixtures of factor analysers and of PPCA (Ghahramani and Hinton 1996,
sec. 3; Tipping and Bishop 1999b, sec. 3), the ELBO of a guide's q(c) q(z | c) in closed form,
and the best factorised q.

E-step: r_nk = p(c_n = k | x_n) (log space), and given c_n = k, E[z_n] = B_k (x_n - loc_k),
E[z_n z_n^T] = M_k^{-1} + E[z_n] E[z_n]^T, B_k = M_k^{-1} W_k^T Psi_k^{-1}. With the augmented
latent z~ = [z; 1], the M-step is the weighted factor-analysis update per component, on the
responsibility-weighted sums:

    [W_k, loc_k] = (sum_n r_nk x_n E[z~_n]^T) (sum_n r_nk E[z~_n z~_n^T])^{-1},
    Psi_k = diag(sum_n r_nk x_n x_n^T - [W_k, loc_k] sum_n r_nk E[z~_n] x_n^T) / n_k + reg_covar,
    w_k = n_k / N,

Psi_k averaged over the D dimensions for MPPCA. ``reg_covar`` (1e-6, the mixture's) keeps a
component from collapsing onto a subspace where a pixel is constant.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pyro.distributions as dist
import torch
from pyro import poutine
from torch import Tensor

from gallery.models.linear_gaussian import LinearGaussianParams
from gallery.models.linear_gaussian import elbo as linear_gaussian_elbo
from gallery.models.mfa.model import (
    MFAParams,
    chunk_rows,
    component_terms,
    joint_log_prob,
    log_likelihood,
    posterior,
    precision_cholesky,
)
from gallery.models.protocol import EMSteps


@dataclass(frozen=True)
class MFAStats:
    """Responsibility-weighted sums about ``center`` (D,): all the M-step needs."""

    count: Tensor  # (K,) sum_n r_nk
    first: Tensor  # (K, D) sum_n r_nk x_n
    square: Tensor  # (K, D) sum_n r_nk x_n^2
    latent: Tensor  # (K, p) sum_n r_nk E[z_n | k]
    cross: Tensor  # (K, D, p) sum_n r_nk x_n E[z_n | k]^T
    second: Tensor  # (K, p, p) sum_n r_nk E[z_n z_n^T | k]
    center: Tensor  # (D,)
    num_data: int


def e_step(data: Tensor, params: MFAParams, chunk_size: int | None = None) -> tuple[MFAStats, Tensor]:
    """One pass over the rows in chunks: the sums of the next M-step and the mean log p(x).
    Never stores the (N, K) responsibilities nor a (rows, K, D) intermediate."""
    num_data, obs_dim = data.shape
    num_components, latent_dim = params.num_components, params.latent_dim
    center = data.mean(0)
    shifted = replace(params, loc=params.loc - center)
    chol, weighted = precision_cholesky(shifted)  # (K, p, p), (K, p, D)
    covariance = torch.cholesky_inverse(chol)  # (K, p, p) M_k^{-1}
    new = data.new_zeros
    count, first, square = new(num_components), new(num_components, obs_dim), new(num_components, obs_dim)
    latent, second = new(num_components, latent_dim), new(num_components, latent_dim, latent_dim)
    cross = new(num_components, obs_dim, latent_dim)
    total = new(())
    log_weights = params.weights.log()
    for rows in data.split(chunk_size or chunk_rows(params)):
        x = rows - center  # (B, D)
        log_comp, proj = component_terms(x, shifted, chol, weighted)
        joint = log_weights + log_comp  # (B, K)
        log_norm = joint.logsumexp(-1, keepdim=True)
        resp = (joint - log_norm).exp()  # (B, K)
        total += log_norm.sum()
        mean_z = proj.transpose(0, 1) @ covariance  # (K, B, p) E[z | x, k]; M^{-1} is symmetric
        weighted_z = resp.T[:, :, None] * mean_z
        count += resp.sum(0)
        first += resp.T @ x
        square += resp.T @ x.square()
        latent += weighted_z.sum(1)
        cross += x.T @ weighted_z  # (K, D, p)
        second += weighted_z.transpose(1, 2) @ mean_z
    second += count[:, None, None] * covariance
    stats = MFAStats(count, first, square, latent, cross, second, center, num_data)
    return stats, total / num_data


def m_step(stats: MFAStats, isotropic: bool, reg_covar: float = 1e-6) -> MFAParams:
    """The weighted factor-analysis update per component on the augmented latent [z; 1],
    by a Cholesky solve of the (p + 1, p + 1) moment; ``10 eps`` on its diagonal guards an
    empty component (for p = 0 it is the mixture's ``n_k + 10 eps``)."""
    num_components, latent_dim = stats.latent.shape
    eps = 10 * torch.finfo(stats.count.dtype).eps
    moment = stats.count.new_zeros(num_components, latent_dim + 1, latent_dim + 1)
    moment[:, :latent_dim, :latent_dim] = stats.second
    moment[:, :latent_dim, -1] = moment[:, -1, :latent_dim] = stats.latent
    moment[:, -1, -1] = stats.count
    moment = moment + eps * torch.eye(latent_dim + 1, dtype=moment.dtype, device=moment.device)
    cross = torch.cat([stats.cross, stats.first[:, :, None]], -1)  # (K, D, p + 1)
    chol = torch.linalg.cholesky_ex(moment).L
    coef = torch.cholesky_solve(cross.transpose(1, 2), chol).transpose(1, 2)  # (K, D, p + 1)
    nk = stats.count + eps  # (K,)
    psi = (stats.square - (coef * cross).sum(-1)) / nk[:, None] + reg_covar  # (K, D)
    noise = psi.mean(-1) if isotropic else psi
    loc = coef[:, :, -1] + stats.center
    return MFAParams(nk / stats.num_data, loc, coef[:, :, :-1], noise.clamp_min(1e-12))


def em_steps(
    data: Tensor, init: MFAParams, *, reg_covar: float = 1e-6, chunk_size: int | None = None
) -> EMSteps:
    """Exact EM's steps from ``init`` for :func:`inference.em.run_em` (data in memory)."""
    if not isinstance(data, Tensor):
        raise ValueError("mfa/mppca EM needs the data in memory; drop --stream")
    return EMSteps(
        data,
        lambda x, params: e_step(x, params, chunk_size),
        lambda x, stats: m_step(stats, init.isotropic, reg_covar),
    )


# The ELBO of q(c_n) q(z_n | c_n) in closed form --------------------------------------------


def component_elbos(data: Tensor, params: MFAParams, loc: Tensor, scale_tril: Tensor) -> Tensor:
    """(N, K) the linear-Gaussian ELBO of component k for q(z_n | c_n = k) = N(loc_nk, L_nk L_nk^T)."""
    return torch.stack(
        [
            linear_gaussian_elbo(
                data,
                LinearGaussianParams(params.loc[k], params.loading[k], params.psi[k]),
                loc[:, k],
                scale_tril[:, k],
            )
            for k in range(params.num_components)
        ],
        -1,
    )


def bound_terms(data: Tensor, params: MFAParams, q) -> tuple[Tensor, Tensor, Tensor]:
    """(log p(x_n), ELBO_n, KL(q || p(c, z | x_n))), each (N,), for q given as
    (log q(c_n) (N, K), loc (N, K, p), scale_tril (N, K, p, p)) of Gaussian q(z_n | c_n = k):

        ELBO_n = sum_k q_nk [log w_k - log q_nk + E_{q(z|k)}[log N(x_n; W_k z + loc_k, Psi_k)
                 + log N(z; 0, I)] + H[q(z | k)]],

    each component's bracket the linear-Gaussian ELBO in closed form; KL = log p(x_n) - ELBO_n.
    ``None``: the exact posterior (KL 0 up to rounding)."""
    if q is None:
        log_q, loc, scale_tril = posterior(data, params)
        scale_tril = scale_tril.expand(*loc.shape, loc.shape[-1])
    else:
        log_q, loc, scale_tril = q
    per_component = component_elbos(data, params, loc, scale_tril)  # (N, K)
    probs = log_q.exp()
    elbo = (probs * (params.weights.log() + per_component)).sum(-1) - torch.special.xlogy(probs, probs).sum(
        -1
    )
    log_lik = log_likelihood(data, params)
    return log_lik, elbo, log_lik - elbo


def guide_q(guide, data: Tensor, model_kwargs: dict):
    """A guide's q as :func:`bound_terms` takes it, read from its trace with c enumerated:
    q(c | x) from the site ``c`` and the Gaussian q(z | x, c = k) from the site ``z``."""
    trace = poutine.trace(poutine.enum(guide, first_available_dim=-2)).get_trace(data, **model_kwargs)
    if "c" not in trace.nodes or "z" not in trace.nodes:
        raise ValueError("an mfa guide needs the sites c (enumerated) and z")
    logits = trace.nodes["c"]["fn"].logits
    log_q = logits - logits.logsumexp(-1, keepdim=True)  # (N, K)
    q_z = trace.nodes["z"]["fn"]
    if isinstance(q_z, dist.MultivariateNormal):
        loc, scale_tril = q_z.loc, q_z.scale_tril
    elif isinstance(q_z, dist.Independent) and isinstance(q_z.base_dist, dist.Normal):
        loc, scale_tril = q_z.base_dist.loc, torch.diag_embed(q_z.base_dist.scale)
    else:
        raise ValueError(f"q(z | x, c) must be Gaussian, got {type(q_z).__name__}")
    num_data, num_components = log_q.shape
    latent_dim = loc.shape[-1]
    loc = loc.expand(num_components, num_data, latent_dim).transpose(0, 1)  # (N, K, p)
    scale_tril = scale_tril.expand(num_components, num_data, latent_dim, latent_dim).transpose(0, 1)
    return log_q, loc, scale_tril


def mean_field_posterior(data: Tensor, params: MFAParams) -> tuple[Tensor, Tensor, Tensor]:
    """The best q(c_n) prod_i q(z_ni | c_n): given c = k the factorised optimum of each
    component, N(posterior mean, 1 / (M_k)_ii) (Bishop 2006, sec. 10.1.2), and
    q(c_n = k) proportional to w_k exp(ELBO_nk). Returns log q(c) (N, K), loc (N, K, p), scale (K, p)."""
    _, loc, _ = posterior(data, params)
    chol, _ = precision_cholesky(params)
    precision = chol @ chol.transpose(-1, -2)
    scale = precision.diagonal(dim1=-2, dim2=-1).rsqrt()  # (K, p)
    tril = torch.diag_embed(scale).expand(*loc.shape, loc.shape[-1])
    component_elbo = component_elbos(data, params, loc, tril)  # (N, K)
    joint = params.weights.log() + component_elbo
    return joint - joint.logsumexp(-1, keepdim=True), loc, scale


def vem_e_step(data: Tensor, params: MFAParams, family: str = "exact"):
    """argmax_q F(q, params) within ``family`` (``"exact"`` or ``"mean-field"``), as
    :func:`bound_terms` takes q."""
    if family == "mean-field":
        log_q, loc, scale = mean_field_posterior(data, params)
        return log_q, loc, torch.diag_embed(scale).expand(*loc.shape, loc.shape[-1])
    log_q, loc, scale_tril = posterior(data, params)
    return log_q, loc, scale_tril.expand(*loc.shape, loc.shape[-1])


def free_energy(data: Tensor, q, params: MFAParams) -> Tensor:
    """(N,) F_n(q, params), the ELBO of :func:`bound_terms`."""
    return bound_terms(data, params, q)[1]


def vem_objective(data: Tensor, q, params: MFAParams, *, reg_covar: float = 1e-6):
    """Not implemented: exact EM (``run``) is this model's maximum-likelihood fit."""
    raise ValueError("variational EM is not implemented for mfa/mppca; use exact EM (python -m gallery run)")


__all__ = [
    "MFAStats",
    "bound_terms",
    "component_elbos",
    "e_step",
    "em_steps",
    "free_energy",
    "guide_q",
    "joint_log_prob",
    "m_step",
    "mean_field_posterior",
    "vem_e_step",
    "vem_objective",
]
