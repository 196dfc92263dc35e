"""The inference-gap decomposition of Cremer et al. (2018), with the model held fixed:

    log p(x) - ELBO(amortised q) = [log p(x) - ELBO(q*)] + [ELBO(q*) - ELBO(amortised q)]
                                 =  approximation gap    +  amortisation gap

where q* is the best per-datapoint q in the encoder's family (diagonal or full covariance; for a
flow guide, a base Gaussian and a context per datum through its flow layers, held fixed), found
by SVI over a table of local parameters started at the encoder's own q, so that it can only
climb from the amortised ELBO. log p(x) is the importance-weighted estimate with q* as the
proposal, and every ELBO is estimated from K samples per datum.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from pyro import poutine
from torch import Tensor

from gallery.data.checks import check_data
from gallery.models.common import drop
from guides.amortised import AmortisedNormal
from guides.flow import AmortisedFlow, LocalFlow
from guides.mean_field import MeanFieldNormal
from inference.importance import ImportanceEstimate, importance_estimate
from inference.svi import fit_svi

GAP_PARTICLES = 8  # ELBO samples per step of the best local q's SVI
LOCAL_NAME = "best_local_q"  # param-store prefix of q* (claimed by each new q*), dropped afterwards


@dataclass(frozen=True)
class InferenceGaps:
    """Per-datum averages (nats) over the rows the gaps were computed on."""

    log_likelihood: float  # importance-weighted, proposal q*
    elbo_best_local: float  # ELBO(q*)
    elbo_amortised: float  # ELBO(amortised q)
    num_data: int
    num_samples: int

    @property
    def approximation(self) -> float:
        return self.log_likelihood - self.elbo_best_local

    @property
    def amortisation(self) -> float:
        return self.elbo_best_local - self.elbo_amortised


def best_local_guide(
    encoder: AmortisedNormal | AmortisedFlow | None, data: Tensor, latent_dim: int
) -> MeanFieldNormal | LocalFlow:
    """A per-datapoint guide for the rows of ``data`` (N, d) in the encoder's family, started at
    the encoder's q(z | x_n) (:meth:`guides.AmortisedFlow.local_guide` for a flow); without an
    encoder, diagonal and started at the prior N(0, I)."""
    if encoder is None:
        return MeanFieldNormal(data.shape[0], latent_dim, name=LOCAL_NAME)
    if isinstance(encoder, AmortisedFlow):
        return encoder.local_guide(data, name=LOCAL_NAME)
    with torch.no_grad():
        q = encoder.encode(data)
    if encoder.covariance == "full":
        affine = q.transforms[0]
        init_loc, init_scale = affine.loc, affine.scale_tril
    else:
        init_loc, init_scale = q.base_dist.loc, q.base_dist.scale
    return MeanFieldNormal(
        data.shape[0],
        latent_dim,
        init_loc=init_loc,
        init_scale=init_scale,
        covariance=encoder.covariance,
        name=LOCAL_NAME,
    )


def best_local_estimate(
    model: Callable,
    data: Tensor,
    *,
    latent_dim: int,
    encoder: AmortisedNormal | AmortisedFlow | None = None,
    num_steps: int = 1000,
    lr: float = 0.05,
    num_particles: int = GAP_PARTICLES,
    num_samples: int = 1000,
    seed: int = 0,
    progress: bool = True,
    **model_kwargs,
) -> ImportanceEstimate:
    """Fit the best per-datapoint q* (:func:`best_local_guide`) to ``data`` with the model's
    parameters fixed, and return the importance-weighted log p(x_n) and ELBO_n under q*. q*'s
    tables, ``best_local_q.*``, start from its own values (a new q* claims the name) and are
    removed from the param store afterwards."""
    check_data(data)
    fixed_model = poutine.block(model, hide_types=["param"])  # the model's parameters stay as they are
    local = best_local_guide(encoder, data, latent_dim)
    try:
        fit_svi(
            fixed_model,
            local,
            data,
            num_steps=num_steps,
            lr=lr,
            num_particles=num_particles,
            seed=seed,
            progress=progress,
            **model_kwargs,
        )
        return importance_estimate(fixed_model, local, data, num_samples=num_samples, **model_kwargs)
    finally:
        drop(LOCAL_NAME)


def inference_gaps(
    model: Callable,
    encoder: AmortisedNormal | AmortisedFlow,
    data: Tensor,
    *,
    num_steps: int = 1000,
    lr: float = 0.05,
    num_particles: int = GAP_PARTICLES,
    num_samples: int = 1000,
    seed: int = 0,
    progress: bool = True,
    **model_kwargs,
) -> InferenceGaps:
    """The decomposition on ``data`` (N, d) with the model's parameters and the encoder fixed.

    :param num_steps, lr, num_particles: SVI for q* (only q*'s tables are trained).
    :param num_samples: K for every ELBO and the importance-weighted log p(x).
    """
    check_data(data)
    fixed_model = poutine.block(model, hide_types=["param"])
    amortised = importance_estimate(fixed_model, encoder, data, num_samples=num_samples, **model_kwargs)
    best = best_local_estimate(
        model,
        data,
        latent_dim=encoder.latent_dim,
        encoder=encoder,
        num_steps=num_steps,
        lr=lr,
        num_particles=num_particles,
        num_samples=num_samples,
        seed=seed,
        progress=progress,
        **model_kwargs,
    )
    return InferenceGaps(
        log_likelihood=float(best.log_likelihood.mean()),
        elbo_best_local=float(best.elbo.mean()),
        elbo_amortised=float(amortised.elbo.mean()),
        num_data=data.shape[0],
        num_samples=num_samples,
    )


__all__ = ["GAP_PARTICLES", "InferenceGaps", "best_local_estimate", "best_local_guide", "inference_gaps"]
