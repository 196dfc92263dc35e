"""The importance-weighted bound (Burda et al. 2016) as a training objective, with the plain and
the doubly reparameterised gradient (Tucker et al. 2019), sync-free like
:mod:`inference.estimators`.

For each data point n, K samples z_nk ~ q(z | x_n), vectorised over a particle plate left of
the data plate, and log w_nk = log p(x_n, z_nk) - log q(z_nk | x_n) (shape (K, B)):

    L_K = sum_n log (1/K) sum_k w_nk        (Burda et al. 2016, eq. 8; scaled by N / B)

L_1 is the ELBO, E[L_K] <= E[L_{K+1}] <= log p(x) (their Theorem 1), and with the exact posterior
as q every w_nk = p(x_n), so L_K = log p(x) for every K. Its gradient is
sum_k wt_nk grad log w_nk with the normalised weights wt_nk = w_nk / sum_j w_nj: for the
decoder's parameters theta and, through z = z(eps; phi) and q's own parameters, the encoder's phi.
The encoder's part has a signal-to-noise ratio that falls like K^(-1/2) (Rainforth et al. 2018);
DReG (Tucker et al. 2019, eq. 5) replaces it by

    sum_k wt_nk^2 d log w_nk / d z_nk * d z_nk / d phi,     log q's phi held fixed in log w,

the same in expectation, with a ratio that grows with K. The decoder's gradient is unchanged.
Here it is one forward pass: log q is evaluated at z with q's parameters detached, and a hook on
z multiplies the gradient that reaches it by wt (computed by then), so that the surrogate
sum_k wt_nk log w_nk gives theta weight wt and the path to phi weight wt^2.

Pyro's ``RenyiELBO(alpha=0)`` is the same bound and plain gradient for unsubsampled data (it
scales each site before the log-sum-exp, so a subsampled plate's N / B is applied inside);
``tests/inference/test_iwae.py`` checks value and gradient against it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer.util import site_is_subsample
from torch import Tensor

from guides.amortised import CholeskyAffine

OBJECTIVES = ("elbo", "iwae", "iwae-dreg")  # the command line's --objective


class IWAE:
    """The K-sample importance-weighted bound as a loss, for ``fit_svi(elbo=...)``.

    :param num_particles: K, the samples per data point, vectorised.
    :param dreg: the doubly reparameterised gradient for the guide's parameters (needs a guide
        whose q(z | x) is Gaussian: diagonal ``Normal`` or :class:`CholeskyAffine` of one).
    :param max_plate_nesting: the model's plates (the gallery's: 1, ``"data"``); the particle
        plate sits left of them.
    """

    def __init__(self, num_particles: int = 1, *, dreg: bool = False, max_plate_nesting: int = 1):
        if num_particles < 1:
            raise ValueError(f"num_particles={num_particles} must be at least 1")
        self.num_particles, self.dreg, self.max_plate_nesting = num_particles, dreg, max_plate_nesting

    @property
    def estimator(self) -> str:
        return "IWAE-DReG" if self.dreg else "IWAE"

    def differentiable_loss(self, model: Callable, guide: Callable, *args, **kwargs) -> Tensor:
        """-L_K, whose gradient is the plain or DReG estimate; no host sync."""
        weights: list[Tensor] = []  # filled with wt (K, B) after the forward pass, for the hook
        log_w, scale = self.log_weights(model, guide, args, kwargs, weights if self.dreg else None)
        bound = scale * (log_w.logsumexp(0) - math.log(self.num_particles)).sum()
        if not self.dreg:
            return -bound
        normalised = (log_w - log_w.logsumexp(0, keepdim=True)).exp().detach()  # (K, B)
        weights.append(normalised)
        surrogate = scale * (normalised * log_w).sum()
        return -(bound.detach() + surrogate - surrogate.detach())

    @torch.no_grad()
    def loss(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        return float(self.differentiable_loss(model, guide, *args, **kwargs))

    def log_weights(
        self, model: Callable, guide: Callable, args: tuple, kwargs: dict, dreg_weights: list | None = None
    ) -> tuple[Tensor, float]:
        """(K, B) log w_nk, unscaled, and the data plate's scale N / B (one for every site).
        With ``dreg_weights`` (a list that will hold wt), log q has its parameters detached and
        the gradient reaching each z is multiplied by wt."""
        with pyro.plate("iwae_particles", self.num_particles, dim=-1 - self.max_plate_nesting):
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
            if dreg_weights is not None:
                _hook_latents(guide_trace, dreg_weights)
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
        total, scale, shape = 0.0, None, None
        for trace, sign in ((guide_trace, -1.0), (model_trace, 1.0)):
            for site in trace.nodes.values():
                if site["type"] != "sample" or site_is_subsample(site) or (sign < 0 and site["is_observed"]):
                    continue
                _check_site(site, sign < 0)
                if sign > 0 and not site["is_observed"] and site["name"] not in guide_trace.nodes:
                    raise ValueError(f"the model's latent {site['name']!r} is not sampled by the guide")
                fn = site["fn"] if dreg_weights is None or sign > 0 else stop_gradient(site["fn"])
                log_prob = fn.log_prob(site["value"])
                shape = shape or log_prob.shape
                if log_prob.shape != shape or len(shape) != 2 or shape[0] != self.num_particles:
                    raise ValueError(
                        f"site {site['name']!r} has log-density shape {tuple(log_prob.shape)}: the IWAE "
                        "bound weights each data point, so every latent must be local, in the data plate "
                        f"(shape ({self.num_particles}, B))"
                    )
                if scale is None:
                    scale = site["scale"]
                elif site["scale"] != scale:
                    raise ValueError(
                        "the IWAE bound needs one scale (N / B) for every site of the data plate"
                    )
                total = total + sign * log_prob
        return total, scale


def _check_site(site: dict, in_guide: bool) -> None:
    if site["infer"].get("enumerate"):
        raise ValueError(f"site {site['name']!r} is enumerated; the IWAE bound needs sampled latents")
    if isinstance(site["scale"], Tensor) or site["mask"] is not None:
        raise ValueError(
            f"site {site['name']!r} is masked or has a tensor scale; the IWAE bound needs neither"
        )
    if in_guide and not site["fn"].has_rsample:
        raise ValueError(
            f"site {site['name']!r} of the guide is not reparameterisable; the IWAE objective here needs "
            "reparameterised samples (use --objective elbo)"
        )


def _hook_latents(guide_trace, weights: list) -> None:
    """Replace each latent z by an identity copy whose incoming gradient is multiplied by the
    normalised weights ``weights[0]`` (K, B), broadcast over z's event dimensions."""
    for site in guide_trace.nodes.values():
        if site["type"] != "sample" or site_is_subsample(site) or site["is_observed"]:
            continue
        value = site["value"].clone()  # the model and log q read this copy
        if value.requires_grad:
            event_dims = len(site["fn"].event_shape)
            value.register_hook(
                lambda grad, e=event_dims: grad * weights[0].reshape(weights[0].shape + (1,) * e)
            )
        site["value"] = value


def stop_gradient(fn: dist.Distribution) -> dist.Distribution:
    """The distribution ``fn`` with its parameters detached (its log-density still differentiable
    in the value), for the Gaussian families of the gallery's guides: ``Normal``,
    ``MultivariateNormal`` and :class:`CholeskyAffine` of a standard normal, under
    ``Independent`` or ``expand``."""
    if isinstance(fn, dist.Independent):
        return dist.Independent(stop_gradient(fn.base_dist), fn.reinterpreted_batch_ndims)
    if isinstance(fn, dist.ExpandedDistribution):
        return stop_gradient(fn.base_dist).expand(fn.batch_shape)
    if isinstance(fn, dist.Normal):
        return dist.Normal(fn.loc.detach(), fn.scale.detach())
    if isinstance(fn, dist.MultivariateNormal):
        return dist.MultivariateNormal(fn.loc.detach(), scale_tril=fn.scale_tril.detach())
    if isinstance(fn, torch.distributions.TransformedDistribution) and all(
        isinstance(t, CholeskyAffine) for t in fn.transforms
    ):
        transforms = [CholeskyAffine(t.loc.detach(), t.scale_tril.detach()) for t in fn.transforms]
        return dist.TransformedDistribution(stop_gradient(fn.base_dist), transforms)
    raise ValueError(
        "DReG needs a guide whose q(z | x) is Gaussian (Normal, MultivariateNormal or a Cholesky affine "
        f"of one), got {type(fn).__name__}; use --objective iwae"
    )


def make_objective(objective: str, num_particles: int, max_plate_nesting: int = 1) -> IWAE:
    """The IWAE loss for ``--objective iwae`` or ``iwae-dreg`` with K = ``num_particles``."""
    if objective not in OBJECTIVES[1:]:
        raise ValueError(f"objective={objective!r} is not one of {', '.join(OBJECTIVES)}")
    return IWAE(num_particles, dreg=objective == "iwae-dreg", max_plate_nesting=max_plate_nesting)


__all__ = ["IWAE", "OBJECTIVES", "make_objective", "stop_gradient"]
