"""The Gaussian mixture: its parameters, densities, starting point, Pyro model and exact
posterior guide (the EM and variational-EM steps are in :mod:`gallery.models.gmm.em`).

Generative process, for each data point n = 1..N (Bishop 2006, eq. 9.7-9.12):

    c_n ~ Categorical(weights)                      weights: (K,)
    x_n | c_n = k ~ N(loc[k], Sigma_k)              loc: (K, D)

with ``Sigma_k = scale_tril[k] @ scale_tril[k].T`` (``covariance_type="full"``, scale_tril:
(K, D, D)) or ``Sigma_k = diag(scale[k] ** 2)`` (``covariance_type="diag"``, scale: (K, D)).
The weights, locs and scales are ``pyro.param`` point estimates; ``c`` is marked for parallel
enumeration, so ``TraceEnum_ELBO`` sums it out exactly.

A component that collapses onto one point would make the likelihood unbounded. EM guards
against it with scikit-learn's ``reg_covar`` = 1e-6 added to every covariance; the model does
the same for SVI: the ``pyro.param`` factor L gives Sigma_k = L L^T + REG_COVAR I (full) or
scale^2 + REG_COVAR (diag), so det Sigma_k >= REG_COVAR^D and every density is bounded.
:func:`global_params` and :func:`current_params` return these effective covariances.
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

COVARIANCE_TYPES = ("full", "diag")
PREFIX = "gmm"  # the default name= of the sites: gmm.weights, gmm.loc, ...
REG_COVAR = 1e-6  # the covariance floor, as EM's (and scikit-learn's) reg_covar


@dataclass(frozen=True)
class GMMParams(TensorFields):
    """Mixture parameters; exactly one of ``scale_tril`` (full) or ``scale`` (diag) is set."""

    weights: Tensor  # (K,)
    loc: Tensor  # (K, D)
    scale_tril: Tensor | None = None  # (K, D, D) lower Cholesky factor of each covariance
    scale: Tensor | None = None  # (K, D) standard deviations

    def __post_init__(self) -> None:
        if (self.scale_tril is None) == (self.scale is None):
            raise ValueError("GMMParams needs exactly one of scale_tril (full) or scale (diag)")

    @property
    def covariance_type(self) -> str:
        return "full" if self.scale_tril is not None else "diag"

    @property
    def num_components(self) -> int:
        return self.weights.shape[-1]

    def covariance(self) -> Tensor:
        """(K, D, D) covariance matrices."""
        if self.scale_tril is not None:
            return self.scale_tril @ self.scale_tril.transpose(-1, -2)
        return torch.diag_embed(self.scale**2)


def init_params(
    data: Tensor,
    num_components: int,
    covariance_type: str = "full",
    *,
    generator: torch.Generator | None = None,
    kmeans_iters: int = 10,
    start: str = "kmeans",
) -> GMMParams:
    """Starting parameters from k-means (k-means++ seeding, then ``kmeans_iters`` Lloyd steps),
    as scikit-learn's ``init_params="kmeans"``: locs at the cluster centres, weights the cluster
    fractions, covariances those of the clusters plus 1e-6 I (the diagonal of them for
    ``"diag"``). ``start="random"``: the centres are K distinct random rows instead (no Lloyd
    steps), scikit-learn's ``"random_from_data"``. Same dtype and device as ``data`` (N, D);
    random draws use ``generator``."""
    _check_covariance_type(covariance_type)
    num_data, obs_dim = check_data(data).shape
    if not 1 <= num_components <= num_data:
        raise ValueError(
            f"num_components={num_components} needs 1 <= num_components <= num_data={num_data}; "
            "use fewer components or more data"
        )
    if start == "kmeans":
        loc = _kmeans(data, num_components, kmeans_iters, generator)
    elif start == "random":
        loc = data[torch.randperm(num_data, generator=generator)[:num_components].to(data.device)]
    else:
        raise ValueError(f"start={start!r} is not one of kmeans, random")
    labels = torch.cdist(data, loc).argmin(1)
    resp = torch.nn.functional.one_hot(labels, num_components).to(data.dtype)  # (N, K)
    count = resp.sum(0).clamp_min(1)  # (K,)
    centred = data[:, None, :] - loc  # (N, K, D)
    cov = torch.einsum("nk,nkd,nke->kde", resp, centred, centred) / count[:, None, None]
    cov = cov + 1e-6 * torch.eye(obs_dim, dtype=data.dtype, device=data.device)
    weights = count / count.sum()
    if covariance_type == "diag":
        return GMMParams(weights, loc, scale=cov.diagonal(dim1=-2, dim2=-1).sqrt())
    scale_tril, info = torch.linalg.cholesky_ex(cov)
    if bool(info.any()):
        raise ValueError(
            "a starting cluster's covariance is not positive definite (too few distinct points in it, "
            "or data so large that the 1e-6 floor is lost in rounding); use fewer components, or "
            "standardise the data (--standardize)"
        )
    return GMMParams(weights, loc, scale_tril=scale_tril)


def _kmeans(data: Tensor, num_clusters: int, num_iters: int, generator: torch.Generator | None) -> Tensor:
    """(K, D) cluster centres: k-means++ seeding (Arthur and Vassilvitskii 2007), Lloyd steps."""
    draw = lambda weights: int(torch.multinomial(weights.cpu(), 1, generator=generator))  # noqa: E731
    centres = [data[draw(torch.ones(data.shape[0], dtype=data.dtype))]]
    for _ in range(1, num_clusters):
        dist2 = torch.cdist(data, torch.stack(centres)).min(1).values.pow(2)
        weights = dist2 if bool(dist2.sum() > 0) else torch.ones_like(dist2)
        centres.append(data[draw(weights)])
    loc = torch.stack(centres)
    for _ in range(num_iters):
        labels = torch.cdist(data, loc).argmin(1)
        resp = torch.nn.functional.one_hot(labels, num_clusters).to(data.dtype)
        count = resp.sum(0)
        loc = torch.where(count[:, None] > 0, resp.T @ data / count.clamp_min(1)[:, None], loc)
    return loc


def prior_params(
    num_components: int, obs_dim: int, covariance_type: str, device: torch.device, dtype: torch.dtype
) -> GMMParams:
    """Parameters to sample from when there is neither data nor ``init``: uniform weights,
    locs drawn from N(0, 9 I), unit covariances."""
    _check_covariance_type(covariance_type)
    weights = torch.full((num_components,), 1.0 / num_components, device=device, dtype=dtype)
    loc = 3.0 * torch.randn(num_components, obs_dim, device=device, dtype=dtype)
    scale = torch.ones(num_components, obs_dim, device=device, dtype=dtype)
    if covariance_type == "diag":
        return GMMParams(weights, loc, scale=scale)
    return GMMParams(weights, loc, scale_tril=torch.diag_embed(scale))


def global_params(
    data: Tensor | None,
    *,
    num_components: int,
    obs_dim: int,
    covariance_type: str,
    init: GMMParams | None,
    device: torch.device,
    name: str = PREFIX,
) -> GMMParams:
    """The ``pyro.param`` sites ``{name}.weights``, ``{name}.loc`` and ``{name}.scale_tril`` (or
    ``{name}.scale``), created from ``init`` on first use; an ``init`` other than the one they
    were created from replaces them (:func:`gallery.models.common.claim`).

    Shared by the model and the exact guide so that both read the same sites."""
    _check_covariance_type(covariance_type)
    if init is not None:
        check_init(init.loc, data)
        claim(name, init)

    @functools.cache
    def start() -> GMMParams:
        if init is not None:
            return init
        release(name)  # created from the data: a later init= replaces them
        if data is not None:
            return init_params(data, num_components, covariance_type)
        return prior_params(num_components, obs_dim, covariance_type, device, torch.get_default_dtype())

    weights = pyro.param(f"{name}.weights", lambda: fresh(start().weights), constraint=constraints.simplex)
    loc = pyro.param(f"{name}.loc", lambda: fresh(start().loc))
    if covariance_type == "full":
        scale_tril = pyro.param(
            f"{name}.scale_tril", lambda: fresh(start().scale_tril), constraint=constraints.lower_cholesky
        )
        return floored(GMMParams(weights, loc, scale_tril=scale_tril))
    scale = pyro.param(f"{name}.scale", lambda: fresh(start().scale), constraint=constraints.positive)
    return floored(GMMParams(weights, loc, scale=scale))


def floored(params: GMMParams) -> GMMParams:
    """The parameters with each covariance raised by REG_COVAR I (a Cholesky factorisation of
    L L^T + REG_COVAR I, which is positive definite whatever L is; ``cholesky_ex`` because it
    cannot fail and so needs no check that would wait for the device)."""
    if params.scale_tril is not None:
        eye = torch.eye(params.loc.shape[-1], dtype=params.loc.dtype, device=params.loc.device)
        covariance = params.scale_tril @ params.scale_tril.transpose(-1, -2) + REG_COVAR * eye
        return replace(params, scale_tril=torch.linalg.cholesky_ex(covariance).L)
    return replace(params, scale=(params.scale.pow(2) + REG_COVAR).sqrt())


def component_dist(params: GMMParams, c: Tensor) -> dist.Distribution:
    """The distribution of x given assignments ``c`` (any batch shape), event shape (D,)."""
    if params.scale_tril is not None:
        return dist.MultivariateNormal(params.loc[c], scale_tril=params.scale_tril[c])
    return dist.Normal(params.loc[c], params.scale[c]).to_event(1)


def model(
    data: Tensor | None = None,
    *,
    num_components: int,
    num_data: int | None = None,
    obs_dim: int | None = None,
    covariance_type: str = "full",
    init: GMMParams | None = None,
    name: str = PREFIX,
    subsample: Tensor | None = None,
    subsample_size: int | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Gaussian mixture: ``c_n ~ Categorical(weights)``, ``x_n ~ N(loc[c_n], Sigma[c_n])``.

    :param data: (N, D) observations, or None to sample ``num_data`` points of ``obs_dim``.
    :param init: starting parameters; default :func:`init_params` on the data. An ``init``
        other than the one the sites were created from replaces them.
    :param name: the prefix of the ``pyro.param`` sites (``{name}.loc``, ...).
    :param subsample: (B,) indices of the minibatch; or ``subsample_size`` to draw them.
    :returns: (B, D) the observed or sampled x of the subsample.
    """
    num_data, obs_dim = resolve_sizes(data, num_data, obs_dim)
    device = resolve_device(data, device)
    params = global_params(
        data,
        num_components=num_components,
        obs_dim=obs_dim,
        covariance_type=covariance_type,
        init=init,
        device=device,
        name=name,
    )
    with data_plate(num_data, subsample, subsample_size, device) as ind:
        c = pyro.sample(
            "c", dist.Categorical(params.weights), infer={"enumerate": "parallel"}
        )  # (B,), or (K, 1, ...) when enumerated
        obs = None if data is None else data[ind]
        return pyro.sample("x", component_dist(params, c), obs=obs)


def posterior_guide(
    data: Tensor | None = None,
    *,
    num_components: int,
    num_data: int | None = None,
    obs_dim: int | None = None,
    covariance_type: str = "full",
    init: GMMParams | None = None,
    name: str = PREFIX,
    subsample: Tensor | None = None,
    subsample_size: int | None = None,
    device: torch.device | str | None = None,
) -> None:
    """The exact posterior as a guide: q(c_n) = p(c_n | x_n) under the model's current
    parameters (the same sites), enumerated; the signature of :func:`model`."""
    if data is None:
        raise ValueError("an exact-posterior guide conditions on the data; pass data=")
    num_data, obs_dim = resolve_sizes(data, num_data, obs_dim)
    params = global_params(
        data,
        num_components=num_components,
        obs_dim=obs_dim,
        covariance_type=covariance_type,
        init=init,
        device=data.device,
        name=name,
    )
    with data_plate(num_data, subsample, subsample_size, data.device) as ind:
        logits = log_responsibilities(data[ind], params)  # (B, K)
        pyro.sample("c", dist.Categorical(logits=logits), infer={"enumerate": "parallel"})


def current_params(name: str = PREFIX) -> GMMParams:
    """The fitted parameters, detached, read from Pyro's param store under ``name``, with the
    covariance floor applied as the model applies it."""
    store = pyro.get_param_store()
    if f"{name}.loc" not in store:
        raise ValueError(f"no mixture parameters {name}.* in Pyro's param store; fit the model first")
    read = lambda site: store[f"{name}.{site}"].detach().clone() if f"{name}.{site}" in store else None  # noqa: E731
    raw = GMMParams(read("weights"), read("loc"), scale_tril=read("scale_tril"), scale=read("scale"))
    return floored(raw)


def owns(params: object) -> bool:
    """Whether ``params`` are this model's (:func:`gallery.models.owner`)."""
    return isinstance(params, GMMParams)


def whitening(params: GMMParams) -> tuple[Tensor, Tensor]:
    """Full covariance: ``(weight, offset)``, (D, K*D) and (K*D,), such that ``x @ weight - offset``
    holds the K whitened residuals ``L_k^{-1} (x - loc_k)`` side by side, (N, K*D), so that all
    components cost one matrix product. Each Cholesky factor is inverted once, by a triangular
    solve."""
    num_components, obs_dim = params.loc.shape
    eye = torch.eye(obs_dim, dtype=params.loc.dtype, device=params.loc.device)
    prec_tril = torch.linalg.solve_triangular(params.scale_tril, eye, upper=False)  # (K, D, D) L_k^{-1}
    weight = prec_tril.transpose(-1, -2)  # (K, D, D): x @ weight[k] = L_k^{-1} x
    offset = (params.loc[:, None, :] @ weight).squeeze(-2)  # (K, D)
    return weight.transpose(0, 1).reshape(obs_dim, num_components * obs_dim), offset.reshape(-1)


def log_normalizer(params: GMMParams) -> Tensor:
    """(K,) -1/2 (D log 2 pi + log det Sigma_k), from the Cholesky or scale diagonal."""
    obs_dim = params.loc.shape[-1]
    if params.scale is not None:
        half_log_det = params.scale.log().sum(-1)
    else:
        half_log_det = params.scale_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return -0.5 * obs_dim * math.log(2 * math.pi) - half_log_det


def component_log_prob(data: Tensor, params: GMMParams) -> Tensor:
    """(N, K) log N(x_n; loc_k, Sigma_k), as matrix products (no loop over components)."""
    if params.scale is not None:
        precision = params.scale.pow(-2)  # (K, D)
        maha = (
            data.pow(2) @ precision.T
            - 2 * data @ (params.loc * precision).T
            + (params.loc.pow(2) * precision).sum(-1)
        )  # (N, K)
    else:
        weight, offset = whitening(params)  # (D, K*D), (K*D,)
        num_components, obs_dim = params.loc.shape
        maha = (data @ weight - offset).unflatten(-1, (num_components, obs_dim)).pow(2).sum(-1)  # (N, K)
    return log_normalizer(params) - 0.5 * maha


def joint_log_prob(data: Tensor, params: GMMParams) -> Tensor:
    """(N, K) log p(x_n, c_n = k)."""
    return params.weights.log() + component_log_prob(data, params)


def log_likelihood(data: Tensor, params: GMMParams) -> Tensor:
    """(N,) exact log p(x_n) = logsumexp_k log p(x_n, c_n = k)."""
    check_data(data, width=params.loc.shape[-1])
    return joint_log_prob(data, params).logsumexp(-1)


def log_responsibilities(data: Tensor, params: GMMParams) -> Tensor:
    """(N, K) log p(c_n = k | x_n), the exact posterior over assignments: the E-step in log
    space (the exact guide's logits, the mean-field start, variational EM's q)."""
    joint = joint_log_prob(data, params)
    return joint - joint.logsumexp(-1, keepdim=True)


posterior = mean_field_posterior = log_responsibilities  # the posterior factorises over n already


def responsibilities(data: Tensor, params: GMMParams) -> tuple[Tensor, Tensor]:
    """(N, K) responsibilities r_nk = p(c_n = k | x_n) and the mean log-likelihood: the E-step
    unfused (:func:`gallery.models.gmm.em.e_step` fuses it with the M-step's sums)."""
    joint = joint_log_prob(data, params)  # (N, K)
    log_norm = joint.logsumexp(-1, keepdim=True)
    return (joint - log_norm).exp(), log_norm.mean()


def bound_terms(data: Tensor, params: GMMParams, log_q: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """(log p(x_n), ELBO_n, KL(q(c_n) || p(c_n | x_n))), each (N,), for a guide's normalised
    ``log_q`` (N, K): ELBO_n = sum_k q_nk [log w_k + log N(x_n; mu_k, Sigma_k) - log q_nk].
    ``None``: the guide leaves c to the model's enumeration, which is exact (q is the posterior)."""
    joint = joint_log_prob(data, params)  # (N, K)
    log_post = joint - joint.logsumexp(-1, keepdim=True)
    if log_q is None:
        log_q = log_post
    elbo_n = (log_q.exp() * (joint - log_q)).sum(-1)
    kl = (log_q.exp() * (log_q - log_post)).sum(-1)
    return joint.logsumexp(-1), elbo_n, kl


def _check_covariance_type(covariance_type: str) -> None:
    if covariance_type not in COVARIANCE_TYPES:
        raise ValueError(f"covariance_type={covariance_type!r} is not one of {', '.join(COVARIANCE_TYPES)}")
