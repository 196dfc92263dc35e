"""The linear-Gaussian latent variable model shared by factor analysis and probabilistic PCA.

Generative process, for each data point n = 1..N (Tipping and Bishop 1999, eq. 2-3):

    z_n ~ N(0, I_p)                                  z: (N, p)
    x_n | z_n ~ N(loading @ z_n + loc, diag(psi))    loading: (d, p), loc: (d,)

Factor analysis has one noise variance per dimension, psi: (d,); PPCA ties them,
psi = sigma^2 (a scalar). Marginally x_n ~ N(loc, loading @ loading.T + diag(psi)), and the
posterior is Gaussian (eq. 6 of the same paper):

    z_n | x_n ~ N(M^{-1} loading.T diag(psi)^{-1} (x_n - loc), M^{-1}),
    M = I_p + loading.T diag(psi)^{-1} loading.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor
from torch.distributions import constraints

from gallery.data.checks import check_data
from gallery.models.common import data_plate, fresh, resolve_device, resolve_sizes


@dataclass(frozen=True)
class LinearGaussianParams:
    """Parameters of factor analysis (``noise_variance``: (d,)) or PPCA (``noise_variance``: ())."""

    loc: Tensor  # (d,)
    loading: Tensor  # (d, p)
    noise_variance: Tensor  # (d,) for factor analysis, () for PPCA

    @property
    def latent_dim(self) -> int:
        return self.loading.shape[-1]

    @property
    def isotropic(self) -> bool:
        return self.noise_variance.dim() == 0

    @property
    def psi(self) -> Tensor:
        """(d,) noise variances, broadcast for PPCA."""
        return self.noise_variance.expand(self.loc.shape)

    def covariance(self) -> Tensor:
        """(d, d) marginal covariance loading @ loading.T + diag(psi)."""
        return self.loading @ self.loading.T + torch.diag(self.psi)

    def to(self, *args, **kwargs) -> LinearGaussianParams:
        return replace(
            self,
            loc=self.loc.to(*args, **kwargs),
            loading=self.loading.to(*args, **kwargs),
            noise_variance=self.noise_variance.to(*args, **kwargs),
        )


def check_latent_dim(latent_dim: int, obs_dim: int) -> None:
    if not 1 <= latent_dim < obs_dim:
        raise ValueError(
            f"latent_dim={latent_dim} must satisfy 1 <= latent_dim < obs_dim={obs_dim}; "
            "choose a smaller latent dimension"
        )


def init_params(
    data: Tensor,
    latent_dim: int,
    *,
    isotropic: bool,
    generator: torch.Generator | None = None,
) -> LinearGaussianParams:
    """loc at the data mean, a small random loading (entries N(0, 0.1^2 var)), noise at the
    data variance (its mean for PPCA). Same dtype and device as ``data`` (N, d)."""
    obs_dim = check_data(data).shape[1]
    check_latent_dim(latent_dim, obs_dim)
    var = data.var(0, correction=0).clamp_min(1e-6)  # (d,)
    noise = torch.randn(obs_dim, latent_dim, generator=generator, dtype=data.dtype)
    loading = 0.1 * var.sqrt()[:, None] * noise.to(data.device)
    noise_variance = var.mean() if isotropic else var.clone()
    return LinearGaussianParams(data.mean(0), loading, noise_variance)


def global_params(
    data: Tensor | None,
    *,
    latent_dim: int,
    obs_dim: int,
    isotropic: bool,
    init: LinearGaussianParams | None,
    device: torch.device,
) -> LinearGaussianParams:
    """The ``pyro.param`` sites, created from ``init`` on first use (shared with the exact guide).

    Without data or ``init`` the starting point is loc 0, loading entries N(0, 1), unit noise."""
    check_latent_dim(latent_dim, obs_dim)

    @functools.cache
    def start() -> LinearGaussianParams:
        if init is not None:
            return init
        if data is not None:
            return init_params(data, latent_dim, isotropic=isotropic)
        dtype = torch.get_default_dtype()
        noise = torch.ones((), device=device, dtype=dtype)
        return LinearGaussianParams(
            torch.zeros(obs_dim, device=device, dtype=dtype),
            torch.randn(obs_dim, latent_dim, device=device, dtype=dtype),
            noise if isotropic else noise.expand(obs_dim).clone(),
        )

    loc = pyro.param("loc", lambda: fresh(start().loc))
    loading = pyro.param("loading", lambda: fresh(start().loading))
    noise_variance = pyro.param(
        "noise_variance", lambda: fresh(start().noise_variance), constraint=constraints.positive
    )
    return LinearGaussianParams(loc, loading, noise_variance)


def model(
    data: Tensor | None = None,
    *,
    latent_dim: int,
    isotropic: bool,
    num_data: int | None = None,
    obs_dim: int | None = None,
    init: LinearGaussianParams | None = None,
    subsample: Tensor | None = None,
    subsample_size: int | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """``z_n ~ N(0, I_p)``, ``x_n ~ N(loading @ z_n + loc, diag(psi))``; returns (B, d) x."""
    num_data, obs_dim = resolve_sizes(data, num_data, obs_dim)
    device = resolve_device(data, device)
    params = global_params(
        data, latent_dim=latent_dim, obs_dim=obs_dim, isotropic=isotropic, init=init, device=device
    )
    zeros = params.loading.new_zeros(latent_dim)
    with data_plate(num_data, subsample, subsample_size, device) as ind:
        z = pyro.sample("z", dist.Normal(zeros, torch.ones_like(zeros)).to_event(1))  # (..., B, p)
        mean = params.loc + z @ params.loading.T  # (..., B, d)
        obs = None if data is None else data[ind]
        scale = params.psi.sqrt()
        return pyro.sample("x", dist.Normal(mean, scale).to_event(1), obs=obs)


def current_params() -> LinearGaussianParams:
    """The fitted parameters, detached, read from Pyro's param store."""
    store = pyro.get_param_store()
    return LinearGaussianParams(
        *(store[name].detach().clone() for name in ("loc", "loading", "noise_variance"))
    )


def posterior_precision(params: LinearGaussianParams) -> Tensor:
    """(p, p) precision M = I + W^T Psi^{-1} W of p(z_n | x_n), the same for every n."""
    weighted = params.loading.T / params.psi  # (p, d)
    eye = torch.eye(params.latent_dim, dtype=weighted.dtype, device=weighted.device)
    return eye + weighted @ params.loading


def precision_cholesky(params: LinearGaussianParams) -> tuple[Tensor, Tensor]:
    """``(L, A)`` with L the (p, p) Cholesky factor of M = I + W^T Psi^{-1} W and A = W^T Psi^{-1}.
    M >= I is positive definite for any finite parameters, so the factorisation is not checked
    (``cholesky_ex``: checking would wait for the GPU every step); NaN parameters give NaN here
    and are caught by the loop's finiteness check."""
    return torch.linalg.cholesky_ex(posterior_precision(params)).L, params.loading.T / params.psi


def posterior(data: Tensor, params: LinearGaussianParams) -> tuple[Tensor, Tensor]:
    """Exact p(z_n | x_n): returns loc (N, p) and the shared scale_tril (p, p) of M^{-1}."""
    chol, weighted = precision_cholesky(params)
    loc = torch.cholesky_solve(weighted @ (data - params.loc).T, chol).T  # (N, p)
    covariance = torch.cholesky_inverse(chol)
    return loc, torch.linalg.cholesky_ex(covariance).L  # M^{-1} is positive definite as M is


def log_likelihood(data: Tensor, params: LinearGaussianParams) -> Tensor:
    """(N,) exact log N(x_n; loc, W W^T + diag(psi)), by the Woodbury identity and the matrix
    determinant lemma: O(N d p), no d x d factorisation."""
    chol, weighted = precision_cholesky(params)
    resid = data - params.loc  # (N, d)
    projected = resid @ weighted.T  # (N, p) = W^T Psi^{-1} r
    solved = torch.cholesky_solve(projected.T, chol).T  # (N, p) = M^{-1} W^T Psi^{-1} r
    maha = (resid.pow(2) / params.psi).sum(-1) - (projected * solved).sum(-1)
    log_det = 2 * chol.diagonal().log().sum() + params.psi.log().sum()
    obs_dim = data.shape[-1]
    return -0.5 * (obs_dim * math.log(2 * math.pi) + log_det + maha)
