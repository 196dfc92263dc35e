"""Factor analysis, fitted by maximum likelihood.

Generative process, for each data point n = 1..N (Ghahramani and Hinton 1996, eq. 1):

    z_n ~ N(0, I_p)                                  z: (N, p)
    x_n | z_n ~ N(loading @ z_n + loc, diag(psi))    loading: (d, p), loc: (d,), psi: (d,)

``loc``, ``loading`` and ``noise_variance`` (psi) are ``pyro.param`` point estimates, the sites
``factor_analysis.loc``, ... (the model's ``name=``). The maths shared with PPCA (posterior,
EM on the moments, the ELBO, variational EM) is in :mod:`gallery.models.linear_gaussian`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gallery.models import linear_gaussian
from gallery.models.linear_gaussian import (
    LinearGaussianParams,
    bound_terms,
    decomposition_terms,
    e_step_from_moments,
    em_steps,
    free_energy,
    log_likelihood,
    m_step,
    mean_field_posterior,
    posterior,
    vem_e_step,
    vem_objective,
)

Params = LinearGaussianParams
NAME, LATENT, PREFIX = "factor-analysis", "z", "factor_analysis"  # see gallery.models.protocol


def init_params(
    data: Tensor, latent_dim: int, *, generator: torch.Generator | None = None
) -> LinearGaussianParams:
    """Starting parameters with one noise variance per dimension; see
    :func:`gallery.models.linear_gaussian.init_params`."""
    return linear_gaussian.init_params(data, latent_dim, isotropic=False, generator=generator)


def model(
    data: Tensor | None = None,
    *,
    latent_dim: int,
    num_data: int | None = None,
    obs_dim: int | None = None,
    init: LinearGaussianParams | None = None,
    name: str = PREFIX,
    subsample: Tensor | None = None,
    subsample_size: int | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Factor analysis: ``z_n ~ N(0, I_p)``, ``x_n ~ N(loading @ z_n + loc, diag(psi))``.

    :param data: (N, d) observations, or None to sample ``num_data`` points of ``obs_dim``.
    :param init: starting parameters; default :func:`init_params` on the data. An ``init``
        other than the one the sites were created from replaces them.
    :param name: the prefix of the ``pyro.param`` sites (``{name}.loc``, ...).
    :param subsample: (B,) indices of the minibatch; or ``subsample_size`` to draw them.
    :returns: (B, d) the observed or sampled x of the subsample.
    """
    return linear_gaussian.model(
        data,
        latent_dim=latent_dim,
        isotropic=False,
        num_data=num_data,
        obs_dim=obs_dim,
        init=init,
        name=name,
        subsample=subsample,
        subsample_size=subsample_size,
        device=device,
    )


def posterior_guide(
    data: Tensor | None = None,
    *,
    latent_dim: int,
    num_data: int | None = None,
    obs_dim: int | None = None,
    init: LinearGaussianParams | None = None,
    name: str = PREFIX,
    subsample: Tensor | None = None,
    subsample_size: int | None = None,
    device: torch.device | str | None = None,
) -> None:
    """The exact posterior q(z_n) = p(z_n | x_n) as a guide; the signature of :func:`model`."""
    linear_gaussian.posterior_guide(
        data,
        latent_dim=latent_dim,
        isotropic=False,
        num_data=num_data,
        obs_dim=obs_dim,
        init=init,
        name=name,
        subsample=subsample,
        subsample_size=subsample_size,
        device=device,
    )


def current_params(name: str = PREFIX) -> LinearGaussianParams:
    """The fitted parameters, detached, read from Pyro's param store under ``name``."""
    return linear_gaussian.current_params(name)


def owns(params: object) -> bool:
    """Whether ``params`` are this model's (:func:`gallery.models.owner`)."""
    return linear_gaussian.owns(params, isotropic=False)


__all__ = [
    "LATENT",
    "LinearGaussianParams",
    "NAME",
    "PREFIX",
    "Params",
    "bound_terms",
    "current_params",
    "decomposition_terms",
    "e_step_from_moments",
    "em_steps",
    "free_energy",
    "init_params",
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
