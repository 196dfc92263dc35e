"""Mixture of probabilistic PCA, fitted by maximum likelihood (exact EM).

Generative process, for each data point n = 1..N (Tipping and Bishop 1999b, eq. 1-3):

    c_n ~ Categorical(weights)                                    weights: (K,)
    z_n ~ N(0, I_p)                                               z: (N, p)
    x_n | c_n = k, z_n ~ N(loading[k] z_n + loc[k], sigma_k^2 I)  sigma^2: (K,)

Discrete and continuous latents together: c is enumerated (``TraceEnum_ELBO`` sums it out) and
z, in the same data plate, broadcasts over the enumerated c. Sites ``mppca.weights``, ``mppca.loc``,
``mppca.loading``, ``mppca.noise_variance`` (the model's ``name=``). :mod:`gallery.models.mfa.model`
has the densities and the exact posterior, :mod:`gallery.models.mfa.em` EM and the ELBO;
:mod:`gallery.models.mfa` is the same mixture with diagonal noise.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gallery.models.mfa.em import (
    MFAStats,
    bound_terms,
    component_elbos,
    e_step,
    em_steps,
    free_energy,
    guide_q,
    m_step,
    mean_field_posterior,
    vem_e_step,
    vem_objective,
)
from gallery.models.mfa.model import MFAParams, joint_log_prob, log_likelihood, posterior
from gallery.models.mfa.model import current_params as _current_params
from gallery.models.mfa.model import init_params as _init_params
from gallery.models.mfa.model import model as _model
from gallery.models.mfa.model import owns as _owns
from gallery.models.mfa.model import posterior_guide as _posterior_guide

NAME, LATENT, PREFIX = "mppca", "c", "mppca"  # see gallery.models.protocol; z is local too (LATENTS)
LATENTS = ("c", "z")  # c enumerated, z | c Gaussian: guides.mixture builds its guides
ISOTROPIC = True
Params = MFAParams


def init_params(
    data: Tensor, num_components: int, latent_dim: int, *, generator: torch.Generator | None = None, **options
) -> MFAParams:
    """k-means clusters, then a PPCA start in each (:func:`gallery.models.mfa.model.init_params`)."""
    return _init_params(data, num_components, latent_dim, isotropic=ISOTROPIC, generator=generator, **options)


def model(data: Tensor | None = None, *, name: str = PREFIX, **kwargs) -> Tensor:
    """The mixture of PPCA (:func:`gallery.models.mfa.model.model`): keyword
    arguments ``num_components``, ``latent_dim``, ``init``, ``subsample``, ..."""
    return _model(data, isotropic=ISOTROPIC, name=name, **kwargs)


def posterior_guide(data: Tensor | None = None, *, name: str = PREFIX, **kwargs) -> None:
    """The exact posterior q(c | x) q(z | x, c) as a guide; the signature of :func:`model`."""
    _posterior_guide(data, isotropic=ISOTROPIC, name=name, **kwargs)


def current_params(name: str = PREFIX) -> MFAParams:
    return _current_params(name, ISOTROPIC)


def owns(params: object) -> bool:
    return _owns(params, ISOTROPIC)


__all__ = [
    "LATENT",
    "LATENTS",
    "MFAParams",
    "MFAStats",
    "NAME",
    "PREFIX",
    "Params",
    "bound_terms",
    "component_elbos",
    "current_params",
    "e_step",
    "em_steps",
    "free_energy",
    "guide_q",
    "init_params",
    "joint_log_prob",
    "log_likelihood",
    "m_step",
    "mean_field_posterior",
    "model",
    "owns",
    "posterior",
    "posterior_guide",
    "vem_e_step",
    "vem_objective",
]
