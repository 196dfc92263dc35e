"""Probabilistic PCA, fitted by maximum likelihood.

Generative process, for each data point n = 1..N (Tipping and Bishop 1999, eq. 2):

    z_n ~ N(0, I_p)                                  z: (N, p)
    x_n | z_n ~ N(loading @ z_n + loc, sigma^2 I_d)  loading: (d, p), loc: (d,), sigma^2: ()

``loc``, ``loading`` and ``noise_variance`` (sigma^2) are ``pyro.param`` point estimates, the
sites ``ppca.loc``, ... (the model's ``name=``). The maximum-likelihood solution is in closed
form: :func:`ppca_closed_form`. The maths shared with factor analysis is in
:mod:`gallery.models.linear_gaussian`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gallery.data.mapped import MappedRows, Moments, moments
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
NAME, LATENT, PREFIX = "ppca", "z", "ppca"  # see gallery.models.protocol


def init_params(
    data: Tensor, latent_dim: int, *, generator: torch.Generator | None = None
) -> LinearGaussianParams:
    """Starting parameters with one shared noise variance; see
    :func:`gallery.models.linear_gaussian.init_params`."""
    return linear_gaussian.init_params(data, latent_dim, isotropic=True, generator=generator)


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
    """PPCA: ``z_n ~ N(0, I_p)``, ``x_n ~ N(loading @ z_n + loc, sigma^2 I)``.

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
        isotropic=True,
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
        isotropic=True,
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
    return linear_gaussian.owns(params, isotropic=True)


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
    "ppca_closed_form",
    "ppca_max_log_likelihood",
    "ppca_noise_variance",
    "vem_e_step",
    "vem_objective",
]
