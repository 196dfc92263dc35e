"""Exact-posterior guides: q is the true posterior under the model's current parameters.

    factor analysis, PPCA:  q(z_n) = p(z_n | x_n; lambda) = N(M^{-1} W^T Psi^{-1}(x_n - loc), M^{-1})
    mixture:                q(c_n) = p(c_n | x_n; lambda), the responsibilities

With q equal to the posterior, KL(q || p(z|x)) = 0 and the ELBO equals log p(x). For the
linear-Gaussian models even a single reparameterised sample gives log p(x, z) - log q(z) =
log p(x) exactly, so SVI with this guide is gradient ascent on the exact log-likelihood. The
guides read the model's own ``pyro.param`` sites and take the model's keyword arguments.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor

from gallery.models import gmm, linear_gaussian
from gallery.models.common import data_plate, resolve_sizes


def _require_data(data: Tensor | None) -> Tensor:
    if data is None:
        raise ValueError("an exact-posterior guide conditions on the data; pass data=")
    return data


def gmm_posterior(
    data: Tensor | None = None,
    *,
    num_components: int,
    num_data: int | None = None,
    obs_dim: int | None = None,
    covariance_type: str = "full",
    init: gmm.GMMParams | None = None,
    subsample: Tensor | None = None,
    subsample_size: int | None = None,
    device: torch.device | str | None = None,
) -> None:
    """q(c_n) = p(c_n | x_n), enumerated; the signature of :func:`gallery.models.gmm.model`."""
    data = _require_data(data)
    num_data, obs_dim = resolve_sizes(data, num_data, obs_dim)
    params = gmm.global_params(
        data,
        num_components=num_components,
        obs_dim=obs_dim,
        covariance_type=covariance_type,
        init=init,
        device=data.device,
    )
    with data_plate(num_data, subsample, subsample_size, data.device) as ind:
        logits = gmm.log_responsibilities(data[ind], params)  # (B, K)
        pyro.sample("c", dist.Categorical(logits=logits), infer={"enumerate": "parallel"})


def _linear_gaussian_posterior(
    data, *, latent_dim, isotropic, num_data, obs_dim, init, subsample, subsample_size
):
    data = _require_data(data)
    num_data, obs_dim = resolve_sizes(data, num_data, obs_dim)
    params = linear_gaussian.global_params(
        data, latent_dim=latent_dim, obs_dim=obs_dim, isotropic=isotropic, init=init, device=data.device
    )
    with data_plate(num_data, subsample, subsample_size, data.device) as ind:
        loc, scale_tril = linear_gaussian.posterior(data[ind], params)  # (B, p), (p, p)
        pyro.sample("z", dist.MultivariateNormal(loc, scale_tril=scale_tril))


def factor_analysis_posterior(
    data: Tensor | None = None,
    *,
    latent_dim: int,
    num_data: int | None = None,
    obs_dim: int | None = None,
    init: linear_gaussian.LinearGaussianParams | None = None,
    subsample: Tensor | None = None,
    subsample_size: int | None = None,
    device: torch.device | str | None = None,
) -> None:
    """q(z_n) = p(z_n | x_n); the signature of :func:`gallery.models.factor_analysis.model`."""
    _linear_gaussian_posterior(
        data,
        latent_dim=latent_dim,
        isotropic=False,
        num_data=num_data,
        obs_dim=obs_dim,
        init=init,
        subsample=subsample,
        subsample_size=subsample_size,
    )


def ppca_posterior(
    data: Tensor | None = None,
    *,
    latent_dim: int,
    num_data: int | None = None,
    obs_dim: int | None = None,
    init: linear_gaussian.LinearGaussianParams | None = None,
    subsample: Tensor | None = None,
    subsample_size: int | None = None,
    device: torch.device | str | None = None,
) -> None:
    """q(z_n) = p(z_n | x_n); the signature of :func:`gallery.models.ppca.model`."""
    _linear_gaussian_posterior(
        data,
        latent_dim=latent_dim,
        isotropic=True,
        num_data=num_data,
        obs_dim=obs_dim,
        init=init,
        subsample=subsample,
        subsample_size=subsample_size,
    )
