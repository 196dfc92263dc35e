"""Probabilistic PCA, fitted by maximum likelihood.

Generative process, for each data point n = 1..N (Tipping and Bishop 1999, eq. 2):

    z_n ~ N(0, I_p)                                  z: (N, p)
    x_n | z_n ~ N(loading @ z_n + loc, sigma^2 I_d)  loading: (d, p), loc: (d,), sigma^2: ()

``loc``, ``loading`` and ``noise_variance`` (sigma^2) are ``pyro.param`` point estimates. The
maximum-likelihood solution is in closed form: :func:`inference.em.ppca_closed_form`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gallery.models import linear_gaussian
from gallery.models.linear_gaussian import LinearGaussianParams, current_params, log_likelihood

__all__ = ["LinearGaussianParams", "current_params", "init_params", "log_likelihood", "model"]

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
    subsample: Tensor | None = None,
    subsample_size: int | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """PPCA: ``z_n ~ N(0, I_p)``, ``x_n ~ N(loading @ z_n + loc, sigma^2 I)``.

    :param data: (N, d) observations, or None to sample ``num_data`` points of ``obs_dim``.
    :param init: starting parameters; default :func:`init_params` on the data.
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
        subsample=subsample,
        subsample_size=subsample_size,
        device=device,
    )
