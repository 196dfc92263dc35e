"""Mixtures of factor analysers and of probabilistic PCA: the parameters, densities, starting
point, Pyro model and exact posterior (EM's steps are in :mod:`gallery.models.mfa.em`).

Generative process, for each data point n = 1..N (Ghahramani and Hinton 1996, eq. 9;
Tipping and Bishop 1999b, eq. 1-3 for the mixture of PPCA):

    c_n ~ Categorical(weights)                               weights: (K,)
    z_n ~ N(0, I_p)                                          z: (N, p)
    x_n | c_n = k, z_n ~ N(loading[k] z_n + loc[k], Psi_k)   loading: (K, D, p), loc: (K, D)

with Psi_k = diag(noise_variance[k]) (MFA, noise_variance: (K, D)) or sigma_k^2 I (MPPCA,
noise_variance: (K,)). Marginally x_n | c_n = k ~ N(loc_k, C_k), C_k = W_k W_k^T + Psi_k, and

    z_n | x_n, c_n = k ~ N(M_k^{-1} W_k^T Psi_k^{-1} (x_n - loc_k), M_k^{-1}),
    M_k = I_p + W_k^T Psi_k^{-1} W_k,

so every density needs only the K (p, p) Cholesky factors of M_k (Woodbury and the matrix
determinant lemma: log|C_k| = log|M_k| + log|Psi_k|), never a (D, D) factorisation.
``latent_dim=0`` is allowed: loading (K, D, 0), and the model is the diagonal (MFA) or
spherical (MPPCA) Gaussian mixture.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

import pyro
import pyro.distributions as dist
import torch
from pyro.ops.indexing import Vindex
from torch import Tensor
from torch.distributions import constraints

from gallery.data.checks import check_data
from gallery.models.common import (
    TensorFields,
    check_init,
    claim,
    data_plate,
    fresh,
    release,
    resolve_device,
    resolve_sizes,
)
from gallery.models.gmm.model import _kmeans

CHUNK_BYTES = 2**22  # per (rows, K * max(D, p)) intermediate of the E-step: about the CPU cache


@dataclass(frozen=True)
class MFAParams(TensorFields):
    """Mixture of factor analysers (``noise_variance``: (K, D)) or of PPCA (``noise_variance``: (K,))."""

    weights: Tensor  # (K,)
    loc: Tensor  # (K, D)
    loading: Tensor  # (K, D, p)
    noise_variance: Tensor  # (K, D) for MFA, (K,) for MPPCA

    @property
    def num_components(self) -> int:
        return self.weights.shape[-1]

    @property
    def latent_dim(self) -> int:
        return self.loading.shape[-1]

    @property
    def isotropic(self) -> bool:
        return self.noise_variance.dim() == 1

    @property
    def psi(self) -> Tensor:
        """(K, D) noise variances, broadcast for MPPCA."""
        return self.noise_variance[:, None].expand(self.loc.shape) if self.isotropic else self.noise_variance

    def covariance(self) -> Tensor:
        """(K, D, D) marginal covariances W_k W_k^T + Psi_k (for tests and small D only)."""
        return self.loading @ self.loading.transpose(-1, -2) + torch.diag_embed(self.psi)


def owns(params: object, isotropic: bool) -> bool:
    return isinstance(params, MFAParams) and params.isotropic == isotropic


STARTS = ("kmeans", "random")


def init_params(
    data: Tensor,
    num_components: int,
    latent_dim: int,
    *,
    isotropic: bool,
    generator: torch.Generator | None = None,
    start: str = "kmeans",
    kmeans_iters: int = 10,
) -> MFAParams:
    """Hard clusters, then a PPCA-like start in each: k-means (the mixture's: k-means++ seeding,
    ``kmeans_iters`` Lloyd steps; ``start="random"``: centres at K distinct random rows), loc at
    the cluster mean, weights the cluster fractions, noise at the cluster's variance plus 1e-6
    (its mean for MPPCA) and a small random loading, entries N(0, 0.1^2 var)."""
    num_data, obs_dim = check_data(data).shape
    if not 1 <= num_components <= num_data:
        raise ValueError(
            f"num_components={num_components} needs 1 <= num_components <= num_data={num_data}; "
            "use fewer components or more data"
        )
    check_latent_dim(latent_dim, obs_dim)
    if start == "kmeans":
        centres = _kmeans(data, num_components, kmeans_iters, generator)
    elif start == "random":
        centres = data[torch.randperm(num_data, generator=generator)[:num_components].to(data.device)]
    else:
        raise ValueError(f"start={start!r} is not one of {', '.join(STARTS)}")
    labels = torch.cdist(data, centres).argmin(1)
    resp = torch.nn.functional.one_hot(labels, num_components).to(data.dtype)  # (N, K)
    count = resp.sum(0).clamp_min(1)  # (K,)
    loc = resp.T @ data / count[:, None]  # (K, D)
    var = resp.T @ data.square() / count[:, None] - loc.square() + 1e-6  # (K, D)
    noise = torch.randn(num_components, obs_dim, latent_dim, generator=generator, dtype=data.dtype)
    loading = 0.1 * var.sqrt()[:, :, None] * noise.to(data.device)
    noise_variance = var.mean(-1) if isotropic else var
    return MFAParams(count / count.sum(), loc, loading, noise_variance)


def check_latent_dim(latent_dim: int, obs_dim: int) -> None:
    if not 0 <= latent_dim < obs_dim:
        raise ValueError(
            f"latent_dim={latent_dim} must satisfy 0 <= latent_dim < obs_dim={obs_dim}; "
            "choose a smaller latent dimension"
        )


def global_params(
    data: Tensor | None,
    *,
    num_components: int,
    latent_dim: int,
    obs_dim: int,
    isotropic: bool,
    init: MFAParams | None,
    device: torch.device,
    name: str,
) -> MFAParams:
    """The ``pyro.param`` sites ``{name}.weights``, ``.loc``, ``.loading``, ``.noise_variance``,
    created from ``init`` on first use and replaced by another ``init`` (:func:`claim`)."""
    if init is not None:
        check_init(init.loc, data)
        claim(name, init)

    @functools.cache
    def start() -> MFAParams:
        if init is not None:
            return init
        release(name)
        if data is not None:
            return init_params(data, num_components, latent_dim, isotropic=isotropic)
        dtype = torch.get_default_dtype()
        shape = (num_components,) if isotropic else (num_components, obs_dim)
        return MFAParams(
            torch.full((num_components,), 1.0 / num_components, device=device, dtype=dtype),
            3.0 * torch.randn(num_components, obs_dim, device=device, dtype=dtype),
            torch.randn(num_components, obs_dim, latent_dim, device=device, dtype=dtype),
            torch.ones(shape, device=device, dtype=dtype),
        )

    return MFAParams(
        pyro.param(f"{name}.weights", lambda: fresh(start().weights), constraint=constraints.simplex),
        pyro.param(f"{name}.loc", lambda: fresh(start().loc)),
        pyro.param(f"{name}.loading", lambda: fresh(start().loading)),
        pyro.param(
            f"{name}.noise_variance", lambda: fresh(start().noise_variance), constraint=constraints.positive
        ),
    )


def model(
    data: Tensor | None = None,
    *,
    num_components: int,
    latent_dim: int,
    isotropic: bool,
    num_data: int | None = None,
    obs_dim: int | None = None,
    init: MFAParams | None = None,
    name: str,
    subsample: Tensor | None = None,
    subsample_size: int | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """``c_n ~ Cat(weights)`` (enumerated), ``z_n ~ N(0, I_p)``,
    ``x_n ~ N(loading[c_n] z_n + loc[c_n], Psi[c_n])``; returns (B, D) x. Under enumeration c
    is (K, 1) and z (..., B, p) or (K, B, p) when a guide draws it given c; both broadcast."""
    num_data, obs_dim = resolve_sizes(data, num_data, obs_dim)
    device = resolve_device(data, device)
    params = global_params(
        data,
        num_components=num_components,
        latent_dim=latent_dim,
        obs_dim=obs_dim,
        isotropic=isotropic,
        init=init,
        device=device,
        name=name,
    )
    # not params.loc.new_zeros: render_model would draw a false edge loc -> z
    zeros = torch.zeros(latent_dim, dtype=params.loc.dtype, device=params.loc.device)
    with data_plate(num_data, subsample, subsample_size, device) as ind:
        c = pyro.sample("c", dist.Categorical(params.weights), infer={"enumerate": "parallel"})
        z = pyro.sample("z", dist.Normal(zeros, torch.ones_like(zeros)).to_event(1))  # (..., B, p)
        mean = params.loc[c] + (params.loading[c] @ z.unsqueeze(-1)).squeeze(-1)  # (..., B, D)
        obs = None if data is None else data[ind]
        return pyro.sample("x", dist.Normal(mean, params.psi[c].sqrt()).to_event(1), obs=obs)


def posterior_guide(
    data: Tensor | None = None,
    *,
    num_components: int,
    latent_dim: int,
    isotropic: bool,
    num_data: int | None = None,
    obs_dim: int | None = None,
    init: MFAParams | None = None,
    name: str,
    subsample: Tensor | None = None,
    subsample_size: int | None = None,
    device: torch.device | str | None = None,
) -> None:
    """The exact posterior as a guide: q(c_n) = p(c_n | x_n), enumerated, and
    q(z_n | c_n) = p(z_n | x_n, c_n), batched over the enumerated c; the model's sites."""
    if data is None:
        raise ValueError("an exact-posterior guide conditions on the data; pass data=")
    num_data, obs_dim = resolve_sizes(data, num_data, obs_dim)
    params = global_params(
        data,
        num_components=num_components,
        latent_dim=latent_dim,
        obs_dim=obs_dim,
        isotropic=isotropic,
        init=init,
        device=data.device,
        name=name,
    )
    with data_plate(num_data, subsample, subsample_size, data.device) as ind:
        log_resp, loc, scale_tril = posterior(data[ind], params)  # (B, K), (B, K, p), (K, p, p)
        c = pyro.sample("c", dist.Categorical(logits=log_resp), infer={"enumerate": "parallel"})
        rows = torch.arange(len(ind), device=data.device)
        loc_c = Vindex(loc.transpose(0, 1))[c, rows]  # (..., B, p)
        pyro.sample("z", dist.MultivariateNormal(loc_c, scale_tril=scale_tril[c]))


def current_params(name: str, isotropic: bool) -> MFAParams:
    """The fitted parameters, detached, read from Pyro's param store under ``name``."""
    store = pyro.get_param_store()
    sites = [f"{name}.{site}" for site in ("weights", "loc", "loading", "noise_variance")]
    if not all(site in store for site in sites):
        raise ValueError(f"no parameters {name}.* in Pyro's param store; fit the model first")
    params = MFAParams(*(store[site].detach().clone() for site in sites))
    if params.isotropic != isotropic:
        raise ValueError(f"the parameters {name}.* are not those of this model; fit the model first")
    return params


# Densities, by Woodbury ---------------------------------------------------------------------


def precision_cholesky(params: MFAParams) -> tuple[Tensor, Tensor]:
    """``(L, A)``: the (K, p, p) Cholesky factors of M_k = I + W_k^T Psi_k^{-1} W_k and
    A_k = W_k^T Psi_k^{-1} (K, p, D). M_k >= I, so the factorisation cannot fail."""
    weighted = params.loading.transpose(-1, -2) / params.psi[:, None, :]  # (K, p, D)
    eye = torch.eye(params.latent_dim, dtype=weighted.dtype, device=weighted.device)
    return torch.linalg.cholesky_ex(eye + weighted @ params.loading).L, weighted


def chunk_rows(params: MFAParams) -> int:
    width = params.num_components * max(params.loc.shape[-1], params.latent_dim, 1)
    return max(1, CHUNK_BYTES // (width * params.loc.element_size()))


def component_terms(x: Tensor, params: MFAParams, chol: Tensor, weighted: Tensor) -> tuple[Tensor, Tensor]:
    """For rows x (B, D): log N(x_n; loc_k, C_k) (B, K) and the projections A_k (x_n - loc_k)
    (B, K, p). The Mahalanobis term r^T Psi^{-1} r - |L^{-1} A r|^2 is expanded in x, so no
    (B, K, D) intermediate is formed; pass x and params centred near the data (the E-step does)."""
    num_components, obs_dim, latent_dim = *params.loc.shape, params.latent_dim
    inv_psi = params.psi.reciprocal()  # (K, D)
    maha = x.square() @ inv_psi.T - 2 * x @ (params.loc * inv_psi).T + (params.loc.square() * inv_psi).sum(-1)
    offset = (weighted @ params.loc[:, :, None]).squeeze(-1)  # (K, p)
    proj = (x @ weighted.permute(2, 0, 1).reshape(obs_dim, -1)).view(
        len(x), num_components, latent_dim
    ) - offset
    white = torch.linalg.solve_triangular(
        chol, proj.transpose(0, 1).transpose(1, 2), upper=False
    )  # (K, p, B)
    maha = maha - white.square().sum(1).T  # (B, K)
    log_det = 2 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1) + params.psi.log().sum(-1)  # (K,)
    return -0.5 * (obs_dim * math.log(2 * math.pi) + log_det + maha), proj


def joint_log_prob(data: Tensor, params: MFAParams) -> Tensor:
    """(N, K) log w_k + log N(x_n; loc_k, W_k W_k^T + Psi_k), in chunks of rows, about the
    mixture's mean (for accuracy)."""
    center = params.weights @ params.loc  # (D,)
    shifted = replace(params, loc=params.loc - center)
    chol, weighted = precision_cholesky(shifted)
    parts = [
        component_terms(rows - center, shifted, chol, weighted)[0] for rows in data.split(chunk_rows(params))
    ]
    return params.weights.log() + torch.cat(parts)


def log_likelihood(data: Tensor, params: MFAParams) -> Tensor:
    """(N,) exact log p(x_n) = logsumexp_k [log w_k + log N(x_n; loc_k, C_k)]."""
    return joint_log_prob(data, params).logsumexp(-1)


def posterior(data: Tensor, params: MFAParams) -> tuple[Tensor, Tensor, Tensor]:
    """The exact posterior per datum: log p(c_n = k | x_n) (N, K), the means of
    p(z_n | x_n, c_n = k) (N, K, p) and their scale_tril, the Cholesky factor of M_k^{-1} (K, p, p)."""
    joint = joint_log_prob(data, params)
    chol, weighted = precision_cholesky(params)
    proj = torch.einsum("kpd,nkd->nkp", weighted, data[:, None, :] - params.loc)  # (N, K, p)
    loc = torch.cholesky_solve(proj.transpose(0, 1).transpose(1, 2), chol).transpose(1, 2).transpose(0, 1)
    scale_tril = torch.linalg.cholesky_ex(torch.cholesky_inverse(chol)).L
    return joint - joint.logsumexp(-1, keepdim=True), loc, scale_tril
