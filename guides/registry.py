"""Which guides fit which model, by the names the command line uses."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import torch
from pyro import poutine

import guides
from gallery.models import factor_analysis, gmm, linear_gaussian, ppca
from inference import em


@dataclass(frozen=True)
class ModelSpec:
    module: ModuleType  # has model, init_params, current_params, log_likelihood
    exact_guide: Callable
    latent: str  # "c" (discrete, one of K) or "z" (continuous, latent_dim)
    fit_em: Callable  # (data, init, **run_em kwargs) -> EMResult


MODELS = {
    "gmm": ModelSpec(gmm, guides.gmm_posterior, "c", em.em_gmm),
    "factor-analysis": ModelSpec(
        factor_analysis, guides.factor_analysis_posterior, "z", em.em_linear_gaussian
    ),
    "ppca": ModelSpec(ppca, guides.ppca_posterior, "z", em.em_linear_gaussian),
}

GUIDES = {
    "exact": "the exact posterior p(latent | x) under the current parameters: ELBO = log p(x)",
    "mean-field": "one factor per data point: N(loc_n, diag(scale_n^2)), or Categorical(probs_n)",
    "amortised": "a density network q(z|x) with diagonal covariance, or q(c|x)",
    "amortised-full": "a density network q(z|x) with full (Cholesky) covariance (z models only)",
    "auto-normal": "Pyro's AutoNormal (for the mixture, c is summed out in the model)",
}


def check_guide(model_name: str, guide_name: str) -> None:
    """Raise ``ValueError`` unless ``guide_name`` is a guide that fits ``model_name``."""
    if model_name not in MODELS:
        raise ValueError(f"unknown model {model_name!r}; choose one of {', '.join(MODELS)}")
    if guide_name not in GUIDES:
        raise ValueError(f"unknown guide {guide_name!r}; choose one of {', '.join(GUIDES)}")
    if guide_name == "amortised-full" and MODELS[model_name].latent == "c":
        raise ValueError("guide 'amortised-full' is for continuous z; for gmm use 'amortised'")


def make_guide(
    model_name: str,
    guide_name: str,
    *,
    data: torch.Tensor,
    init,
    size: int,
    hidden: tuple[int, ...] = (),
    model_kwargs: dict,
    scaling: dict[str, torch.Tensor] | None = None,
) -> Callable:
    """Build guide ``guide_name`` for ``model_name`` on ``data`` (N, D) with the model starting at
    ``init``; ``size`` is K (mixture) or p (z models). An amortised guide reads x standardised
    by ``scaling`` (default: :func:`guides.input_scaling` of ``data``)."""
    check_guide(model_name, guide_name)
    spec = MODELS[model_name]
    discrete = spec.latent == "c"
    if guide_name == "exact":
        return spec.exact_guide
    if guide_name == "mean-field":
        return mean_field_at_e_step(spec, data, init)
    if guide_name == "auto-normal":
        model = functools.partial(spec.module.model, **model_kwargs)
        return guides.auto_normal(poutine.block(model, hide=["c"]) if discrete else model)
    obs_dim = data.shape[1]
    scaling = guides.input_scaling(data) if scaling is None else scaling
    if discrete:
        net = guides.AmortisedCategorical(obs_dim, size, hidden=hidden, **scaling)
    else:
        covariance = "full" if guide_name == "amortised-full" else "diag"
        net = guides.AmortisedNormal(obs_dim, size, hidden=hidden, covariance=covariance, **scaling)
    return net.to(device=data.device, dtype=data.dtype)


def mean_field_at_e_step(spec: ModelSpec, data: torch.Tensor, init) -> Callable:
    """A mean-field guide starting where EM's first E-step starts: at the best factorised q for
    the initial parameters. For the mixture that is the responsibilities; for z the posterior
    means with variances 1 / Lambda_ii (Bishop 2006, sec. 10.1.2), Lambda the posterior
    precision. A uniform start instead lets all components drift to the data mean first."""
    num_data = data.shape[0]
    if spec.latent == "c":
        logits = gmm.log_responsibilities(data, init.to(data.dtype))
        return guides.MeanFieldCategorical(num_data, init.num_components, init_logits=logits)
    init = init.to(data.dtype)
    loc, _ = linear_gaussian.posterior(data, init)
    scale = linear_gaussian.posterior_precision(init).diagonal().rsqrt().expand_as(loc)
    return guides.MeanFieldNormal(num_data, init.latent_dim, init_loc=loc, init_scale=scale)
