"""Factor analysis, fitted by maximum likelihood.

Generative process, for each data point n = 1..N (Ghahramani and Hinton 1996, eq. 1):

    z_n ~ N(0, I_p)                                  z: (N, p)
    x_n | z_n ~ N(loading @ z_n + loc, diag(psi))    loading: (d, p), loc: (d,), psi: (d,)

``loc``, ``loading`` and ``noise_variance`` (psi) are ``pyro.param`` point estimates.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gallery.models import linear_gaussian
from gallery.models.linear_gaussian import LinearGaussianParams, current_params, log_likelihood

__all__ = ["LinearGaussianParams", "current_params", "init_params", "log_likelihood", "model"]

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
    subsample: Tensor | None = None,
    subsample_size: int | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Factor analysis: ``z_n ~ N(0, I_p)``, ``x_n ~ N(loading @ z_n + loc, diag(psi))``.

    :param data: (N, d) observations, or None to sample ``num_data`` points of ``obs_dim``.
    :param init: starting parameters; default :func:`init_params` on the data.
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
        subsample=subsample,
        subsample_size=subsample_size,
        device=device,
    )
