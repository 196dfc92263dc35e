"""The linear-Gaussian latent variable model shared by factor analysis and probabilistic PCA.

Generative process, for each data point n = 1..N (Tipping and Bishop 1999, eq. 2-3):

    z_n ~ N(0, I_p)                                  z: (N, p)
    x_n | z_n ~ N(loading @ z_n + loc, diag(psi))    loading: (d, p), loc: (d,)

Factor analysis has one noise variance per dimension, psi: (d,); PPCA ties them,
psi = sigma^2 (a scalar). Marginally x_n ~ N(loc, loading @ loading.T + diag(psi)), and the
posterior is Gaussian (eq. 6 of the same paper):

    z_n | x_n ~ N(M^{-1} loading.T diag(psi)^{-1} (x_n - loc), M^{-1}),
    M = I_p + loading.T diag(psi)^{-1} loading.

This module has everything the two models share: the parameters, the Pyro model and exact
posterior guide (sites ``{name}.loc``, ``{name}.loading``, ``{name}.noise_variance``), the
exact log-likelihood, EM on the data's moments, the ELBO in closed form, and variational EM's
pieces. :mod:`gallery.models.factor_analysis` and :mod:`gallery.models.ppca` fix ``isotropic``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor
from torch.distributions import constraints

from gallery.data.checks import check_data
from gallery.data.mapped import MappedRows, Moments, moments
from gallery.models.common import (
    TensorFields,
    check_init,
    claim,
    data_plate,
    fresh,
    gaussian_kl,
    release,
    resolve_device,
    resolve_sizes,
)
from gallery.models.protocol import EMSteps


@dataclass(frozen=True)
class LinearGaussianParams(TensorFields):
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
    name: str,
) -> LinearGaussianParams:
    """The ``pyro.param`` sites ``{name}.loc``, ``{name}.loading``, ``{name}.noise_variance``,
    created from ``init`` on first use; an ``init`` other than the one they were created from
    replaces them (:func:`gallery.models.common.claim`). Shared with the exact guide.

    Without data or ``init`` the starting point is loc 0, loading entries N(0, 1), unit noise."""
    check_latent_dim(latent_dim, obs_dim)
    if init is not None:
        check_init(init.loc, data)
        claim(name, init)

    @functools.cache
    def start() -> LinearGaussianParams:
        if init is not None:
            return init
        release(name)  # created from the data: a later init= replaces them
        if data is not None:
            return init_params(data, latent_dim, isotropic=isotropic)
        dtype = torch.get_default_dtype()
        noise = torch.ones((), device=device, dtype=dtype)
        return LinearGaussianParams(
            torch.zeros(obs_dim, device=device, dtype=dtype),
            torch.randn(obs_dim, latent_dim, device=device, dtype=dtype),
            noise if isotropic else noise.expand(obs_dim).clone(),
        )

    loc = pyro.param(f"{name}.loc", lambda: fresh(start().loc))
    loading = pyro.param(f"{name}.loading", lambda: fresh(start().loading))
    noise_variance = pyro.param(
        f"{name}.noise_variance", lambda: fresh(start().noise_variance), constraint=constraints.positive
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
    name: str,
    subsample: Tensor | None = None,
    subsample_size: int | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """``z_n ~ N(0, I_p)``, ``x_n ~ N(loading @ z_n + loc, diag(psi))``; returns (B, d) x."""
    num_data, obs_dim = resolve_sizes(data, num_data, obs_dim)
    device = resolve_device(data, device)
    params = global_params(
        data, latent_dim=latent_dim, obs_dim=obs_dim, isotropic=isotropic, init=init, device=device, name=name
    )
    # the prior's constants, not made from a parameter (``render_model`` would draw loading -> z)
    zeros = torch.zeros(latent_dim, dtype=params.loading.dtype, device=params.loading.device)
    with data_plate(num_data, subsample, subsample_size, device) as ind:
        z = pyro.sample("z", dist.Normal(zeros, torch.ones_like(zeros)).to_event(1))  # (..., B, p)
        mean = params.loc + z @ params.loading.T  # (..., B, d)
        obs = None if data is None else data[ind]
        scale = params.psi.sqrt()
        return pyro.sample("x", dist.Normal(mean, scale).to_event(1), obs=obs)


def posterior_guide(
    data: Tensor | None = None,
    *,
    latent_dim: int,
    isotropic: bool,
    num_data: int | None = None,
    obs_dim: int | None = None,
    init: LinearGaussianParams | None = None,
    name: str,
    subsample: Tensor | None = None,
    subsample_size: int | None = None,
    device: torch.device | str | None = None,
) -> None:
    """The exact posterior as a guide, q(z_n) = p(z_n | x_n), reading the model's sites."""
    if data is None:
        raise ValueError("an exact-posterior guide conditions on the data; pass data=")
    num_data, obs_dim = resolve_sizes(data, num_data, obs_dim)
    params = global_params(
        data,
        latent_dim=latent_dim,
        obs_dim=obs_dim,
        isotropic=isotropic,
        init=init,
        device=data.device,
        name=name,
    )
    with data_plate(num_data, subsample, subsample_size, data.device) as ind:
        loc, scale_tril = posterior(data[ind], params)  # (B, p), (p, p)
        pyro.sample("z", dist.MultivariateNormal(loc, scale_tril=scale_tril))


def current_params(name: str) -> LinearGaussianParams:
    """The fitted parameters, detached, read from Pyro's param store under ``name``."""
    store = pyro.get_param_store()
    sites = [f"{name}.{site}" for site in ("loc", "loading", "noise_variance")]
    if not all(site in store for site in sites):
        raise ValueError(f"no parameters {name}.* in Pyro's param store; fit the model first")
    return LinearGaussianParams(*(store[site].detach().clone() for site in sites))


def owns(params: object, isotropic: bool) -> bool:
    """Whether ``params`` are PPCA's (``isotropic``) or factor analysis's."""
    return isinstance(params, LinearGaussianParams) and params.isotropic == isotropic


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


def mean_field_posterior(data: Tensor, params: LinearGaussianParams) -> tuple[Tensor, Tensor]:
    """The best factorised q(z_n) = prod_i N(m_ni, s_i^2): the posterior means m (N, p) and
    s = Lambda_ii^{-1/2} (p,), Lambda = M the posterior precision (Bishop 2006, sec. 10.1.2)."""
    chol, weighted = precision_cholesky(params)
    loc = torch.cholesky_solve(weighted @ (data - params.loc).T, chol).T  # (N, p)
    return loc, posterior_precision(params).diagonal().rsqrt()


def posterior(data: Tensor, params: LinearGaussianParams) -> tuple[Tensor, Tensor]:
    """Exact p(z_n | x_n): returns loc (N, p) and the shared scale_tril (p, p) of M^{-1}."""
    chol, weighted = precision_cholesky(params)
    loc = torch.cholesky_solve(weighted @ (data - params.loc).T, chol).T  # (N, p)
    covariance = torch.cholesky_inverse(chol)
    return loc, torch.linalg.cholesky_ex(covariance).L  # M^{-1} is positive definite as M is


def log_likelihood(data: Tensor, params: LinearGaussianParams) -> Tensor:
    """(N,) exact log N(x_n; loc, W W^T + diag(psi)), by the Woodbury identity and the matrix
    determinant lemma: O(N d p), no d x d factorisation."""
    check_data(data, width=params.loc.shape[-1])
    chol, weighted = precision_cholesky(params)
    resid = data - params.loc  # (N, d)
    projected = resid @ weighted.T  # (N, p) = W^T Psi^{-1} r
    solved = torch.cholesky_solve(projected.T, chol).T  # (N, p) = M^{-1} W^T Psi^{-1} r
    maha = (resid.pow(2) / params.psi).sum(-1) - (projected * solved).sum(-1)
    log_det = 2 * chol.diagonal().log().sum() + params.psi.log().sum()
    obs_dim = data.shape[-1]
    return -0.5 * (obs_dim * math.log(2 * math.pi) + log_det + maha)


# Exact EM, on the data's moments --------------------------------------------------------------


def e_step_from_moments(
    data: Moments, params: LinearGaussianParams
) -> tuple[tuple[Tensor, Tensor, Tensor], Tensor]:
    """The posterior's expected sufficient statistics, averaged over the data, and the mean
    log-likelihood, from the data's moments alone: with B = M^{-1} W^T Psi^{-1} (p, d), r = mean -
    loc and T = S + r r^T (S the 1/N covariance), E[z_n] = B (x_n - loc), so

        1/N sum_n E[z_n] = B r,   1/N sum_n x_n E[z_n]^T = (S + mean r^T) B^T,
        1/N sum_n E[z_n z_n^T] = B T B^T + M^{-1},

    and 1/N sum_n log p(x_n) = -1/2 [d log 2 pi + log|C| + tr(C^{-1} T)], C = W W^T + Psi, by
    the Woodbury identity and the matrix determinant lemma (no d x d factorisation).
    Returns ((B r (p,), cross (d, p), second (p, p)), mean log p(x))."""
    chol, weighted = precision_cholesky(params)  # (p, p), A = W^T Psi^{-1} (p, d)
    gain = torch.cholesky_solve(weighted, chol)  # (p, d) = B
    resid = data.mean - params.loc  # (d,)
    spread = data.covariance + torch.outer(resid, resid)  # (d, d) = T
    loc_z = gain @ resid  # (p,)
    cross = (data.covariance + torch.outer(data.mean, resid)) @ gain.T  # (d, p)
    second = gain @ spread @ gain.T + torch.cholesky_inverse(chol)  # (p, p)
    trace = (spread.diagonal() / params.psi).sum() - ((gain @ spread) * weighted).sum()
    log_det = 2 * chol.diagonal().log().sum() + params.psi.log().sum()
    obs_dim = resid.shape[0]
    log_lik = -0.5 * (obs_dim * math.log(2 * math.pi) + log_det + trace)
    return (loc_z, cross, second), log_lik


def m_step(
    data: Moments,
    stats: tuple[Tensor, Tensor, Tensor],
    isotropic: bool,
    min_noise_variance: float = 1e-12,
) -> LinearGaussianParams:
    """Maximise E_q[log p(x, z)] jointly over (loading, loc) and the noise.

    With the augmented latent [z; 1] (Ghahramani and Hinton 1996, eq. 7-8), all sums divided
    by N: [loading, loc] = (sum_n x_n E[z~_n]^T)(sum_n E[z~_n z~_n^T])^{-1} and
    psi = diag(sum_n x_n x_n^T - [loading, loc] sum_n E[z~_n] x_n^T), averaged for PPCA.
    """
    loc_z, cross_z, second_z = stats  # (p,), (d, p), (p, p)
    latent_dim = loc_z.shape[0]
    moment = loc_z.new_empty(latent_dim + 1, latent_dim + 1)  # (p + 1, p + 1) = E[z~ z~^T]
    moment[:latent_dim, :latent_dim] = second_z
    moment[:latent_dim, -1] = moment[-1, :latent_dim] = loc_z
    moment[-1, -1] = 1
    cross = torch.cat([cross_z, data.mean[:, None]], 1)  # (d, p + 1) = E[x z~^T]
    coef = torch.linalg.solve(moment, cross.T).T  # (d, p + 1); moment is symmetric
    psi = data.covariance.diagonal() + data.mean.pow(2) - (coef * cross).sum(1)  # (d,)
    noise = psi.mean() if isotropic else psi
    return LinearGaussianParams(coef[:, -1], coef[:, :-1], noise.clamp_min(min_noise_variance))


def em_steps(data: Tensor | MappedRows | Moments, init: LinearGaussianParams) -> EMSteps:
    """Exact EM's steps for factor analysis (``init.noise_variance``: (d,)) or PPCA (scalar),
    on the data's moments (one pass over the data, then O(d^3) per iteration)."""
    return EMSteps(
        data if isinstance(data, Moments) else moments(data),
        e_step_from_moments,
        lambda x, stats: m_step(x, stats, init.isotropic),
    )


# The ELBO and its terms in closed form, for a Gaussian q(z_n) = N(loc_n, L_n L_n^T) -------------


def expected_log_likelihood(data: Tensor, params: LinearGaussianParams, loc: Tensor, cov: Tensor) -> Tensor:
    """(N,) E_q[log N(x_n; W z + mu, Psi)] for q(z_n) = N(loc_n, cov_n), loc (N, p), cov (N, p, p):

    -1/2 [d log 2 pi + log|Psi| + r^T Psi^{-1} r + tr(W^T Psi^{-1} W cov)],  r = x - mu - W loc
    """
    obs_dim = params.loading.shape[0]
    resid = data - params.loc - loc @ params.loading.T  # (N, d)
    weighted = params.loading.T / params.psi @ params.loading  # (p, p) W^T Psi^{-1} W
    return -0.5 * (
        obs_dim * math.log(2 * math.pi)
        + params.psi.log().sum()
        + (resid.pow(2) / params.psi).sum(-1)
        + (weighted * cov).sum((-2, -1))
    )


def elbo(data: Tensor, params: LinearGaussianParams, loc: Tensor, scale_tril: Tensor) -> Tensor:
    """(N,) E_q[log p(x_n, z_n) - log q(z_n)] in closed form for q = N(loc_n, L_n L_n^T)."""
    latent_dim = params.latent_dim
    cov = scale_tril @ scale_tril.transpose(-1, -2)  # (N, p, p)
    expected_lik = expected_log_likelihood(data, params, loc, cov)
    expected_prior = -0.5 * (
        latent_dim * math.log(2 * math.pi) + loc.pow(2).sum(-1) + cov.diagonal(dim1=-2, dim2=-1).sum(-1)
    )
    entropy = 0.5 * latent_dim * (1 + math.log(2 * math.pi)) + scale_tril.diagonal(
        dim1=-2, dim2=-1
    ).log().sum(-1)
    return expected_lik + expected_prior + entropy


def bound_terms(
    data: Tensor, params: LinearGaussianParams, q: tuple[Tensor, Tensor] | None
) -> tuple[Tensor, Tensor, Tensor]:
    """(log p(x_n), ELBO_n, KL(q(z_n) || p(z_n | x_n))), each (N,), for a guide's Gaussian q
    given as (loc (N, p), scale_tril (N, p, p)): the ELBO by :func:`elbo`, the KL to the exact
    posterior by :func:`gallery.models.common.gaussian_kl`."""
    if q is None:
        raise ValueError("the guide has no sample site 'z'")
    loc_q, scale_tril_q = q
    loc_post, scale_tril_post = posterior(data, params)
    kl = gaussian_kl(loc_q, scale_tril_q, loc_post, scale_tril_post)
    return log_likelihood(data, params), elbo(data, params, loc_q, scale_tril_q), kl


def decomposition_terms(
    data: Tensor, params: LinearGaussianParams, loc: Tensor, scale_tril: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """log p(x_n) = reconstruction - encoding + error, each (N,), for q(z | x_n) = N(m, S),
    m = loc (N, p), S = L L^T, L = scale_tril (N, p, p):

        E_q[log p(x|z)] = -1/2 [d log 2 pi + log|Psi| + (x - mu - W m)^T Psi^{-1} (x - mu - W m)
                                + tr(W^T Psi^{-1} W S)]
        KL(q || p(z))   = 1/2 [tr S + m^T m - p - log|S|]
        KL(q || p(z|x)) = gaussian_kl(q, N(M^{-1} W^T Psi^{-1} (x - mu), M^{-1}))

    Returns (log p(x_n), reconstruction, encoding, error)."""
    reconstruction = expected_log_likelihood(data, params, loc, scale_tril @ scale_tril.transpose(-1, -2))
    eye = torch.eye(params.latent_dim, dtype=data.dtype, device=data.device)
    encoding = gaussian_kl(loc, scale_tril, torch.zeros_like(loc), eye)
    error = gaussian_kl(loc, scale_tril, *posterior(data, params))
    return log_likelihood(data, params), reconstruction, encoding, error


# Variational EM ------------------------------------------------------------------------------


def free_energy(data: Tensor, q: tuple[Tensor, Tensor], params: LinearGaussianParams) -> Tensor:
    """(N,) F_n(q, lambda) in closed form for q(z_n) = N(loc_n, L L^T), q = (loc, L)."""
    loc, scale_tril = q
    return elbo(data, params, loc, scale_tril)


def vem_e_step(data: Tensor, params: LinearGaussianParams, family: str = "exact") -> tuple[Tensor, Tensor]:
    """argmax_q F(q, params) within ``family``: the posterior loc (N, p) with the posterior's
    scale_tril (p, p) (``"exact"``) or diag(Lambda_ii^{-1/2}) (``"mean-field"``)."""
    if family == "mean-field":
        loc, scale = mean_field_posterior(data, params)
        return loc, torch.diag(scale)
    return posterior(data, params)


def vem_objective(
    data: Tensor, q: tuple[Tensor, Tensor], params: LinearGaussianParams, *, reg_covar: float = 0.0
):
    """Variational EM's M-step problem ``(objective, start, unpack)``: the mean F as a function
    of (loc, loading, log noise_variance), its start at ``params``, and the map back.
    ``reg_covar`` is the mixture's; unused here."""
    unpack = lambda loc, loading, log_noise: LinearGaussianParams(loc, loading, log_noise.exp())  # noqa: E731
    objective = lambda *raw: free_energy(data, q, unpack(*raw)).mean()  # noqa: E731
    return objective, (params.loc, params.loading, params.noise_variance.log()), unpack
