"""Pyro's ELBO estimators, with a ``differentiable_loss`` that never reads a value to the host.

Pyro 1.9's ``Trace_ELBO.differentiable_loss`` converts every site's log-density to a Python
float (``torch_item``), returns ``loss + (surrogate - surrogate.item())`` and checks the loss for
NaN with a Python ``if``; ``TraceEnum_ELBO`` does the last, and with sites enumerated in the
guide its ``Dice.compute_expectation`` asks ``(prob > 0).all()`` in Python. On a GPU each of
those waits for the device. Here the same estimators keep everything on the device: the value
is the ELBO estimate, the gradient that of Pyro's surrogate (reparameterised, score-function and
entropy terms alike), and the finiteness check is left to the training loop, which makes it
every few steps. The two functions marked "as Pyro's" are Pyro 1.9.2's (Apache 2.0) with only
the host reads replaced; ``tests/inference/test_svi.py`` checks value and gradient against Pyro.
"""

from __future__ import annotations

import math

import torch
from opt_einsum import shared_intermediates
from pyro.infer import Trace_ELBO, TraceEnum_ELBO
from pyro.infer.trace_elbo import _compute_log_r
from pyro.infer.traceenum_elbo import _compute_model_factors
from pyro.infer.util import Dice, _fulldot, is_identically_zero
from pyro.ops import packed
from pyro.ops.contract import contract_tensor_tree
from pyro.ops.einsum.adjoint import require_backward
from pyro.ops.rings import MarginalRing, SampleRing
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


def _compute_dice_elbo(model_trace, guide_trace) -> Tensor:
    """As Pyro's ``traceenum_elbo._compute_dice_elbo``, with :class:`_DeviceDice`."""
    marginal_costs, log_factors, ordering, sum_dims, scale = _compute_model_factors(model_trace, guide_trace)
    if log_factors:
        dim_to_size = {}
        for terms in log_factors.values():
            for term in terms:
                dim_to_size.update(zip(term._pyro_dims, term.shape, strict=True))
        with shared_intermediates() as cache:
            ring = SampleRing(cache=cache, dim_to_size=dim_to_size)
            log_factors = contract_tensor_tree(log_factors, sum_dims, ring=ring)
        for t, log_factors_t in log_factors.items():
            marginal_costs_t = marginal_costs.setdefault(t, [])
            for term in log_factors_t:
                marginal_costs_t.append(packed.scale_and_mask(term, scale=scale))
    costs = marginal_costs
    for name, site in guide_trace.nodes.items():
        if site["type"] == "sample":
            costs.setdefault(ordering[name], []).append(packed.neg(site["packed"]["log_prob"]))
    return _DeviceDice(guide_trace, ordering).compute_expectation(costs)


class _DeviceDice(Dice):
    def compute_expectation(self, costs):
        """As Pyro's ``Dice.compute_expectation``, but terms of probability 0 are zeroed with
        ``torch.where`` instead of being dropped after a Python test of ``(prob > 0).all()``."""
        with shared_intermediates() as cache:
            ring = MarginalRing(cache=cache)
            expected_cost = 0.0
            for ordinal, cost_terms in costs.items():
                log_factors = self._get_log_factors(ordinal)
                scale = math.exp(sum(x for x in log_factors if not isinstance(x, torch.Tensor)))
                log_factors = [x for x in log_factors if isinstance(x, torch.Tensor)]
                queries = {frozenset(cost._pyro_dims): None for cost in cost_terms}
                for log_factor in log_factors:
                    key = frozenset(log_factor._pyro_dims)
                    if queries.get(key, False) is None:
                        queries[key] = log_factor
                for cost in cost_terms:
                    key = frozenset(cost._pyro_dims)
                    if queries[key] is None:
                        query = torch.zeros_like(cost)
                        query._pyro_dims = cost._pyro_dims
                        log_factors.append(query)
                        queries[key] = query
                sum_dims = set().union(*(x._pyro_dims for x in log_factors)) - ordinal
                for query in queries.values():
                    require_backward(query)
                root = ring.sumproduct(log_factors, sum_dims)
                root._pyro_backward()
                probs = {key: query._pyro_backward_result.exp() for key, query in queries.items()}
                for cost in cost_terms:
                    key = frozenset(cost._pyro_dims)
                    prob = probs[key]
                    prob._pyro_dims = queries[key]._pyro_dims
                    cost, prob = packed.broadcast_all(cost, prob)
                    cost = torch.where(prob > 0, cost, torch.zeros_like(cost))  # 0 * -inf := 0
                    expected_cost = expected_cost + scale * _fulldot(prob, cost)
        return expected_cost
