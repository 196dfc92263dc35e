"""Evaluation: exact log p(x), the ELBO with K particles, and the decomposition
log p(x) = ELBO + KL(q || p(z | x)) term by term where the posterior is exact. Generic: the
model's maths is its module's (``log_likelihood``, ``bound_terms``, ``decomposition_terms``),
found from the parameters by :func:`gallery.models.owner`; this module reads the guide's q.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pyro.distributions as dist
import torch
from pyro import poutine
from torch import Tensor

from gallery.data.checks import check_data, fitting
from gallery.data.mapped import MappedRows, blocks, mean_over_rows
from gallery.models import owner
from gallery.models.common import gaussian_kl
from gallery.models.linear_gaussian import LinearGaussianParams, expected_log_likelihood
from gallery.models.linear_gaussian import elbo as linear_gaussian_elbo
from guides.amortised import CholeskyAffine
from inference.svi import make_elbo, uses_enumeration


def log_likelihood(data: Tensor, params) -> Tensor:
    """(N,) exact log p(x_n) under the model that owns ``params`` (mixture, factor analysis, PPCA)."""
    loc = getattr(params, "loc", None)
    check_data(data, width=None if loc is None else loc.shape[-1])
    try:
        module = owner(params)
    except ValueError:
        raise ValueError(f"no exact log-likelihood for parameters of type {type(params).__name__}") from None
    return module.log_likelihood(data, params)


def mean_log_likelihood(data: Tensor | MappedRows, params) -> Tensor:
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
    if isinstance(data, MappedRows) and num_particles >= 1:
        kwargs = dict(num_particles=num_particles, chunk_size=chunk_size, **model_kwargs)
        return sum(elbo(model, guide, block, **kwargs) for block in blocks(data))
    num_data = check_data(data).shape[0]
    if num_particles < 1 or chunk_size < 1:
        raise ValueError(f"num_particles={num_particles} and chunk_size={chunk_size} must be at least 1")
    rows = max(1, ROW_PARTICLES // min(chunk_size, num_particles))
    first = None if num_data <= rows else torch.arange(rows, device=data.device)
    with fitting(data):
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
def decompose(guide: Callable, data: Tensor, params, **model_kwargs) -> BoundDecomposition:
    """Term-by-term decomposition under fixed model ``params`` and the guide's current q.

    Linear-Gaussian models with Gaussian q(z_n) = N(m, S) (any of our guides but AutoDelta):
    the ELBO in closed form, E_q[log N(x; W z + mu, Psi)] + E_q[log N(z; 0, I)] + H[q], and the
    KL to the exact posterior by :func:`gaussian_kl`. Mixtures with q(c_n) = r_n: the ELBO
    sum_k r_nk [log w_k + log N(x_n; mu_k, Sigma_k) - log r_nk] and KL(r_n || p(c_n | x_n));
    a guide without a site ``c`` leaves c to the model's enumeration, which is exact. The
    terms are the model's ``bound_terms``.
    """
    check_data(data)
    module = owner(params)
    if hasattr(module, "guide_q"):  # a model that reads its guide's q itself (mfa: q(c) q(z | c))
        q = module.guide_q(guide, data, model_kwargs)
    else:
        q = _guide_q(guide, data, module.LATENT, model_kwargs)
    return BoundDecomposition(*module.bound_terms(data, params, q))


def _guide_q(guide: Callable, data: Tensor, site: str, model_kwargs: dict):
    """The guide's q on ``site`` as the model's ``bound_terms`` takes it: normalised logits
    (N, K) for a discrete ``"c"`` (``None`` when the guide leaves c to the model's
    enumeration), ``(loc (N, p), scale_tril (N, p, p))`` for a Gaussian ``"z"``."""
    if site == "c":
        if site not in poutine.trace(guide).get_trace(data, **model_kwargs).nodes:
            return None
        q = guide_distribution(guide, data, site, **model_kwargs)
        return q.logits - q.logits.logsumexp(-1, keepdim=True)  # (N, K)
    return _gaussian_parts(guide_distribution(guide, data, site, **model_kwargs))


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
    module = owner(params)
    if not hasattr(module, "decomposition_terms"):
        raise ValueError(f"no reconstruction/encoding terms for the {module.NAME} model")
    log_likelihood, reconstruction, encoding, error = module.decomposition_terms(
        data, params, loc, scale_tril
    )
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


__all__ = [
    "BoundDecomposition",
    "DecompositionTerms",
    "decompose",
    "decomposition_terms",
    "expected_log_likelihood",
    "linear_gaussian_elbo",
    "elbo",
    "gaussian_kl",
    "guide_distribution",
    "log_likelihood",
    "mean_log_likelihood",
]
