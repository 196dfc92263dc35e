"""Which guides fit which model, by the names the command line uses.

Every guide :func:`make_guide` builds is named under its model (``ppca.guide``, with sites
``ppca.guide_loc`` or ``ppca.guide$$$net.0.weight``), the same in every process, so that
checkpoints, which store parameters by their param-store name, load again."""

from __future__ import annotations

import functools
from collections.abc import Callable
from types import ModuleType

import torch
from pyro import poutine

import guides
from gallery.models import EM_MODELS
from guides.flow import FLOW_LAYERS, AmortisedFlow


def check_guide(model_name: str, guide_name: str) -> None:
    """Raise ``ValueError`` unless ``guide_name`` is a guide that fits ``model_name``."""
    if model_name not in EM_MODELS:
        raise ValueError(f"unknown model {model_name!r}; choose one of {', '.join(EM_MODELS)}")
    if guide_name not in GUIDES:
        raise ValueError(f"unknown guide {guide_name!r}; choose one of {', '.join(GUIDES)}")
    if getattr(EM_MODELS[model_name], "LATENTS", None) == ("c", "z") and guide_name not in MIXTURE_GUIDES:
        raise ValueError(f"{model_name} takes the guides {', '.join(MIXTURE_GUIDES)}, not {guide_name!r}")
    if guide_name in ("amortised-full", "amortised-flow") and EM_MODELS[model_name].LATENT == "c":
        raise ValueError(f"guide {guide_name!r} is for continuous z; for {model_name} use 'amortised'")


GUIDES = {
    "exact": "the exact posterior p(latent | x) under the current parameters: ELBO = log p(x)",
    "mean-field": "one factor per data point: N(loc_n, diag(scale_n^2)), or Categorical(probs_n)",
    "amortised": "a density network q(z|x) with diagonal covariance, or q(c|x)",
    "amortised-full": "a density network q(z|x) with full (Cholesky) covariance (z models only)",
    "amortised-flow": "a density network's diagonal Gaussian through --flow-layers inverse autoregressive "
    "flow layers conditioned on x (z models only)",
    "auto-normal": "Pyro's AutoNormal (for the mixture, c is summed out in the model)",
}
MIXTURE_GUIDES = ("exact", "mean-field", "amortised")  # for c and z | c together (mfa, mppca)


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
    flow_layers: int = FLOW_LAYERS,
) -> Callable:
    """Build guide ``guide_name`` for ``model_name`` on ``data`` (N, D) with the model starting at
    ``init``; ``size`` is K (mixture) or p (z models). An amortised guide reads x standardised
    by ``scaling`` (default: :func:`guides.input_scaling` of ``data``); ``amortised-flow`` has
    ``flow_layers`` layers. The guide is named
    ``f"{module.PREFIX}.guide"``."""
    check_guide(model_name, guide_name)
    module = EM_MODELS[model_name]
    name = f"{module.PREFIX}.guide"
    discrete = module.LATENT == "c"
    if guide_name == "exact":
        return module.posterior_guide
    if getattr(module, "LATENTS", None) == ("c", "z"):
        return mixture_guide(module, guide_name, data, init, hidden, scaling, name)
    if guide_name == "mean-field":
        return mean_field_at_e_step(module, data, init, name=name)
    if guide_name == "auto-normal":
        model = functools.partial(module.model, **model_kwargs)
        return guides.auto_normal(poutine.block(model, hide=["c"]) if discrete else model, name=name)
    obs_dim = data.shape[1]
    scaling = guides.input_scaling(data) if scaling is None else scaling
    if guide_name == "amortised-flow":
        net = AmortisedFlow(obs_dim, size, hidden=hidden, flow_layers=flow_layers, name=name, **scaling)
    elif discrete:
        net = guides.AmortisedCategorical(obs_dim, size, hidden=hidden, name=name, **scaling)
    else:
        covariance = "full" if guide_name == "amortised-full" else "diag"
        net = guides.AmortisedNormal(
            obs_dim, size, hidden=hidden, covariance=covariance, name=name, **scaling
        )
    return net.to(device=data.device, dtype=data.dtype)


def mixture_guide(module, guide_name, data, init, hidden, scaling, name) -> Callable:
    """q(c | x) q(z | x, c) for mfa / mppca: per-datum tables starting at the best factorised q
    of the initial parameters, or a network with K heads."""
    from guides.mixture import AmortisedMixture, MeanFieldMixture

    init = init.to(data.dtype)
    if guide_name == "mean-field":
        log_q, loc, scale = module.mean_field_posterior(data, init)  # (N, K), (N, K, p), (K, p)
        return MeanFieldMixture(
            *loc.shape, init_logits=log_q, init_loc=loc, init_scale=scale.expand_as(loc), name=name
        )
    scaling = guides.input_scaling(data) if scaling is None else scaling
    net = AmortisedMixture(
        data.shape[1], init.num_components, init.latent_dim, hidden=hidden, name=name, **scaling
    )
    return net.to(device=data.device, dtype=data.dtype)


def mean_field_at_e_step(
    module: ModuleType, data: torch.Tensor, init, *, name: str | None = None
) -> Callable:
    """A mean-field guide starting where EM's first E-step starts (the guides' ``at_e_step``): at
    the model's best factorised q for the initial parameters. A uniform start instead lets all
    components drift to the data mean first."""
    module = getattr(module, "module", module)  # a ModelSpec, as before
    family = guides.MeanFieldCategorical if module.LATENT == "c" else guides.MeanFieldNormal
    return family.at_e_step(data, init, model=module, name=name)
