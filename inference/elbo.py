"""Pyro's ELBO estimators, with a ``differentiable_loss`` that never reads a value to the host.

Pyro 1.9's ``Trace_ELBO.differentiable_loss`` converts every site's log-density to a Python
float (``torch_item``), returns ``loss + (surrogate - surrogate.item())`` and checks the loss for
NaN with a Python ``if``; ``TraceEnum_ELBO`` does the last. On a GPU each of those waits for the
device. Here the same estimators keep everything on the device: the value is the ELBO estimate,
the gradient that of Pyro's surrogate (reparameterised, score-function and entropy terms alike),
and the finiteness check is left to the training loop, which makes it every few steps.
"""

from __future__ import annotations

from pyro.infer import Trace_ELBO, TraceEnum_ELBO
from pyro.infer.trace_elbo import _compute_log_r
from pyro.infer.traceenum_elbo import _compute_dice_elbo
from pyro.infer.util import is_identically_zero
from torch import Tensor


class DeviceTrace_ELBO(Trace_ELBO):
    """``Trace_ELBO`` whose ``differentiable_loss`` makes no host sync."""

    estimator = "Trace_ELBO"

    def differentiable_loss(self, model, guide, *args, **kwargs) -> Tensor:
        loss, surrogate = 0.0, 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            particle_loss, particle_surrogate = _particle_loss(model_trace, guide_trace)
            loss = loss + particle_loss / self.num_particles
            surrogate = surrogate + particle_surrogate / self.num_particles
        return loss + (surrogate - surrogate.detach())


def _particle_loss(model_trace, guide_trace) -> tuple[Tensor, Tensor]:
    """Pyro's ``Trace_ELBO._differentiable_loss_particle`` with ``.detach()`` in place of
    ``torch_item``: (-ELBO estimate, -surrogate ELBO) of one particle."""
    elbo, surrogate, log_r = 0.0, 0.0, None
    for site in model_trace.nodes.values():
        if site["type"] == "sample":
            elbo = elbo + site["log_prob_sum"].detach()
            surrogate = surrogate + site["log_prob_sum"]
    for site in guide_trace.nodes.values():
        if site["type"] == "sample":
            _, score_function_term, entropy_term = site["score_parts"]
            elbo = elbo - site["log_prob_sum"].detach()
            if not is_identically_zero(entropy_term):
                surrogate = surrogate - entropy_term.sum()
            if not is_identically_zero(score_function_term):
                if log_r is None:
                    log_r = _compute_log_r(model_trace, guide_trace)
                weight = log_r.sum_to(site["cond_indep_stack"])
                surrogate = surrogate + (weight * score_function_term).sum()
    return -elbo, -surrogate


class DeviceTraceEnum_ELBO(TraceEnum_ELBO):
    """``TraceEnum_ELBO`` whose ``differentiable_loss`` makes no host sync."""

    estimator = "TraceEnum_ELBO"

    def differentiable_loss(self, model, guide, *args, **kwargs) -> Tensor:
        elbo = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            particle = _compute_dice_elbo(model_trace, guide_trace)
            if not is_identically_zero(particle):
                elbo = elbo + particle
        if not isinstance(elbo, Tensor) or not elbo.requires_grad:
            raise ValueError(f"the ELBO has nothing to differentiate: {elbo}")
        return -elbo / self.num_particles
