"""Evaluation: exact log p(x), the ELBO with K particles, Gaussian KL in closed form, and the
decomposition log p(x) = ELBO + KL(q || p(z | x)) term by term where the posterior is exact.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pyro.distributions as dist
import torch
from pyro import poutine
from torch import Tensor

from gallery.data.checks import check_data
from gallery.data.mapped import MappedRows, blocks, mean_over_rows
from gallery.models import gmm, linear_gaussian
from gallery.models.gmm import GMMParams
from gallery.models.linear_gaussian import LinearGaussianParams
from guides.amortised import CholeskyAffine
from inference.svi import make_elbo, uses_enumeration


def log_likelihood(data: Tensor, params: GMMParams | LinearGaussianParams) -> Tensor:
    """(N,) exact log p(x_n) under a mixture, factor analysis or PPCA."""
    check_data(data)
    if isinstance(params, GMMParams):
        return gmm.log_likelihood(data, params)
    if isinstance(params, LinearGaussianParams):
        return linear_gaussian.log_likelihood(data, params)
    raise ValueError(f"no exact log-likelihood for parameters of type {type(params).__name__}")


def mean_log_likelihood(data: Tensor | MappedRows, params: GMMParams | LinearGaussianParams) -> Tensor:
    """1/N sum_n log p(x_n), a block of rows at a time (for data on disk too)."""
    return mean_over_rows(data, lambda block: log_likelihood(block, params))


ROW_PARTICLES = 1 << 18  # (particle, row) pairs evaluated at once: bounds the memory of elbo()


def elbo(
    model: Callable,
    guide: Callable,
    data: Tensor | MappedRows,
    *,
    num_particles: int = 1,
    chunk_size: int = 100,
    **model_kwargs,
) -> float:
    """The ELBO of the whole data set, averaged over ``num_particles`` samples. Samples are
    drawn in vectorised chunks of at most ``chunk_size``, over at most ``ROW_PARTICLES`` /
    ``chunk_size`` rows at a time (passed as ``subsample=``, the estimate rescaled), so memory
    stays bounded as N grows. For data on disk, the sum of the ELBOs of its blocks of rows (every
    model's terms sit in the data plate; a guide with a q per row cannot read such data)."""
    if isinstance(data, MappedRows):
        kwargs = dict(num_particles=num_particles, chunk_size=chunk_size, **model_kwargs)
        return sum(elbo(model, guide, block, **kwargs) for block in blocks(data))
    num_data = check_data(data).shape[0]
    rows = max(1, ROW_PARTICLES // min(chunk_size, num_particles))
    first = None if num_data <= rows else torch.arange(rows, device=data.device)
    enumerated = uses_enumeration(model, guide, data, subsample=first, **model_kwargs)
    if num_data <= rows:
        return _elbo_of_rows(enumerated, model, guide, data, num_particles, chunk_size, None, model_kwargs)
    return sum(
        _elbo_of_rows(enumerated, model, guide, data, num_particles, chunk_size, index, model_kwargs)
        * (len(index) / num_data)
        for index in torch.arange(num_data, device=data.device).split(rows)
    )


def _elbo_of_rows(enumerated, model, guide, data, num_particles, chunk_size, subsample, model_kwargs):
    """The ELBO estimate on the rows ``subsample`` (None: all), scaled to the whole data."""
    if subsample is not None:
        model_kwargs = {**model_kwargs, "subsample": subsample}
    total, remaining = 0.0, num_particles
    while remaining > 0:
        size = min(chunk_size, remaining)
        total += -make_elbo(enumerated, size).loss(model, guide, data, **model_kwargs) * size
        remaining -= size
    return total / num_particles


def gaussian_kl(loc_q: Tensor, scale_tril_q: Tensor, loc_p: Tensor, scale_tril_p: Tensor) -> Tensor:
    """KL(N(loc_q, S_q) || N(loc_p, S_p)) for batches of k-dim Gaussians (the lecture formula):

        1/2 [ tr(S_p^{-1} S_q) + (mu_p - mu_q)^T S_p^{-1} (mu_p - mu_q) - k + ln(|S_p| / |S_q|) ]

    computed from Cholesky factors by triangular solves. Shapes (..., k) and (..., k, k)."""
    k = loc_q.shape[-1]
    batch = torch.broadcast_shapes(
        loc_q.shape[:-1], loc_p.shape[:-1], scale_tril_q.shape[:-2], scale_tril_p.shape[:-2]
    )
    lp, lq = scale_tril_p.expand(*batch, k, k), scale_tril_q.expand(*batch, k, k)
    diff = (loc_p - loc_q).expand(*batch, k).unsqueeze(-1)  # (..., k, 1)
    trace = torch.linalg.solve_triangular(lp, lq, upper=False).pow(2).sum((-2, -1))
    maha = torch.linalg.solve_triangular(lp, diff, upper=False).pow(2).sum((-2, -1))
    log_det_p = 2 * scale_tril_p.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    log_det_q = 2 * scale_tril_q.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return 0.5 * (trace + maha - k + log_det_p - log_det_q)


@dataclass(frozen=True)
class BoundDecomposition:
    """Per-datum terms of log p(x_n) = ELBO_n + KL(q(.|x_n) || p(.|x_n)), each (N,)."""

    log_likelihood: Tensor
    elbo: Tensor
    kl: Tensor

    @property
    def gap(self) -> Tensor:
        """log p(x_n) - ELBO_n; equals ``kl`` up to rounding."""
        return self.log_likelihood - self.elbo


def guide_distribution(guide: Callable, data: Tensor, site: str, **model_kwargs) -> dist.Distribution:
    """The distribution a guide puts on ``site`` for every data point (batch shape (N,))."""
    trace = poutine.trace(guide).get_trace(data, **model_kwargs)
    if site not in trace.nodes:
        raise ValueError(f"the guide has no sample site {site!r}")
    # Pyro's AutoNormal samples N(loc, scale) at "<site>_unconstrained" and puts a Delta at the
    # site through the support's transform, the identity for our real-valued latents.
    auxiliary = trace.nodes.get(f"{site}_unconstrained")
    if auxiliary is not None and auxiliary["infer"].get("is_auxiliary"):
        return auxiliary["fn"]
    return trace.nodes[site]["fn"]


@torch.no_grad()
def decompose(
    guide: Callable, data: Tensor, params: GMMParams | LinearGaussianParams, **model_kwargs
) -> BoundDecomposition:
    """Term-by-term decomposition under fixed model ``params`` and the guide's current q.

    Linear-Gaussian models with Gaussian q(z_n) = N(m, S) (any of our guides but AutoDelta):
    the ELBO in closed form, E_q[log N(x; W z + mu, Psi)] + E_q[log N(z; 0, I)] + H[q], and the
    KL to the exact posterior by :func:`gaussian_kl`. Mixtures with q(c_n) = r_n: the ELBO
    sum_k r_nk [log w_k + log N(x_n; mu_k, Sigma_k) - log r_nk] and KL(r_n || p(c_n | x_n));
    a guide without a site ``c`` leaves c to the model's enumeration, which is exact.
    """
    check_data(data)
    if isinstance(params, GMMParams):
        joint = gmm.joint_log_prob(data, params)  # (N, K)
        log_post = joint - joint.logsumexp(-1, keepdim=True)
        if "c" in poutine.trace(guide).get_trace(data, **model_kwargs).nodes:
            q = guide_distribution(guide, data, "c", **model_kwargs)
            log_q = q.logits - q.logits.logsumexp(-1, keepdim=True)  # (N, K)
        else:  # c is left to the model, which sums it out exactly: q(c) is the posterior
            log_q = log_post
        elbo_n = (log_q.exp() * (joint - log_q)).sum(-1)
        kl = (log_q.exp() * (log_q - log_post)).sum(-1)
        return BoundDecomposition(joint.logsumexp(-1), elbo_n, kl)
    loc_q, scale_tril_q = _gaussian_parts(guide_distribution(guide, data, "z", **model_kwargs))
    loc_post, scale_tril_post = linear_gaussian.posterior(data, params)
    kl = gaussian_kl(loc_q, scale_tril_q, loc_post, scale_tril_post)
    return BoundDecomposition(
        linear_gaussian.log_likelihood(data, params),
        linear_gaussian_elbo(data, params, loc_q, scale_tril_q),
        kl,
    )


@dataclass(frozen=True)
class DecompositionTerms:
    """Per-datum terms, each (N,): log p(x_n) = reconstruction - encoding + error."""

    log_likelihood: Tensor  # log p(x_n), exact
    reconstruction: Tensor  # E_q[log p(x_n | z)], decoding
    encoding: Tensor  # KL(q(z | x_n) || p(z))
    error: Tensor  # KL(q(z | x_n) || p(z | x_n)), the gap log p(x_n) - ELBO_n


@torch.no_grad()
def decomposition_terms(
    guide, data: Tensor, params: LinearGaussianParams, **model_kwargs
) -> DecompositionTerms:
    """The three terms of log p(x_n) for the guide's Gaussian q(z | x_n) = N(m, S), S = L L^T, in
    closed form for factor analysis and PPCA (x | z ~ N(W z + mu, Psi), z ~ N(0, I_p)):

        E_q[log p(x|z)] = -1/2 [d log 2 pi + log|Psi| + (x - mu - W m)^T Psi^{-1} (x - mu - W m)
                                + tr(W^T Psi^{-1} W S)]
        KL(q || p(z))   = 1/2 [tr S + m^T m - p - log|S|]
        KL(q || p(z|x)) = gaussian_kl(q, N(M^{-1} W^T Psi^{-1} (x - mu), M^{-1}))

    Raises ``RuntimeError`` unless they sum to the exact log p(x_n) within 1e-8 for every n
    (float64 rounding of terms of a few nats is ~1e-14)."""
    data, params = data.double(), params.to(torch.float64)
    loc, scale_tril = _gaussian_parts(guide_distribution(guide, data, "z", **model_kwargs))
    loc, scale_tril = loc.double(), scale_tril.double()  # (N, p), (N, p, p)
    latent_dim = params.latent_dim
    reconstruction = expected_log_likelihood(data, params, loc, scale_tril @ scale_tril.transpose(-1, -2))
    eye = torch.eye(latent_dim, dtype=data.dtype, device=data.device)
    encoding = gaussian_kl(loc, scale_tril, torch.zeros_like(loc), eye)
    error = gaussian_kl(loc, scale_tril, *linear_gaussian.posterior(data, params))
    log_likelihood = linear_gaussian.log_likelihood(data, params)
    mismatch = float((reconstruction - encoding + error - log_likelihood).abs().max())
    if not mismatch <= 1e-8:
        raise RuntimeError(
            f"the decomposition terms miss log p(x) by {mismatch:.3g} nats for some datum (allowed 1e-8)"
        )
    return DecompositionTerms(log_likelihood, reconstruction, encoding, error)


def _gaussian_parts(q: dist.Distribution) -> tuple[Tensor, Tensor]:
    """loc (N, p) and scale_tril (N, p, p) of a Gaussian guide distribution."""
    if isinstance(q, dist.MultivariateNormal):
        return q.loc, q.scale_tril.expand(*q.loc.shape, q.loc.shape[-1])
    if isinstance(q, dist.TransformedDistribution) and len(q.transforms) == 1:
        affine = q.transforms[0]  # guides.amortised.full_covariance_normal
        if isinstance(affine, CholeskyAffine):
            return affine.loc, affine.scale_tril.expand(*affine.loc.shape, affine.loc.shape[-1])
    if isinstance(q, dist.Independent) and isinstance(q.base_dist, dist.Normal):
        return q.base_dist.loc, torch.diag_embed(q.base_dist.scale.expand_as(q.base_dist.loc))
    raise ValueError(f"q(z|x) must be Gaussian for the decomposition, got {type(q).__name__}")


def expected_log_likelihood(data: Tensor, params: LinearGaussianParams, loc: Tensor, cov: Tensor) -> Tensor:
    """(N,) E_q[log N(x_n; W z + mu, Psi)] for q(z_n) = N(loc_n, cov_n), loc (N, p), cov (N, p, p):

    -1/2 [d log 2 pi + log|Psi| + r^T Psi^{-1} r + tr(W^T Psi^{-1} W cov)],  r = x - mu - W loc
    """
    obs_dim = params.loading.shape[0]
    resid = data - params.loc - loc @ params.loading.T  # (N, d)
    weighted = params.loading.T / params.psi @ params.loading  # (p, p) W^T Psi^{-1} W
    return -0.5 * (
        obs_dim * math.log(2 * math.pi)
        + params.psi.log().sum()
        + (resid.pow(2) / params.psi).sum(-1)
        + (weighted * cov).sum((-2, -1))
    )


def linear_gaussian_elbo(
    data: Tensor, params: LinearGaussianParams, loc: Tensor, scale_tril: Tensor
) -> Tensor:
    """(N,) E_q[log p(x_n, z_n) - log q(z_n)] in closed form for q = N(loc_n, L_n L_n^T)."""
    latent_dim = params.latent_dim
    cov = scale_tril @ scale_tril.transpose(-1, -2)  # (N, p, p)
    expected_lik = expected_log_likelihood(data, params, loc, cov)
    expected_prior = -0.5 * (
        latent_dim * math.log(2 * math.pi) + loc.pow(2).sum(-1) + cov.diagonal(dim1=-2, dim2=-1).sum(-1)
    )
    entropy = 0.5 * latent_dim * (1 + math.log(2 * math.pi)) + scale_tril.diagonal(
        dim1=-2, dim2=-1
    ).log().sum(-1)
    return expected_lik + expected_prior + entropy


__all__ = [
    "BoundDecomposition",
    "DecompositionTerms",
    "decompose",
    "decomposition_terms",
    "linear_gaussian_elbo",
    "elbo",
    "gaussian_kl",
    "guide_distribution",
    "log_likelihood",
    "mean_log_likelihood",
]
