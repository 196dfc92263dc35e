"""The VAE's evaluation, bounded by default: K, the importance samples per row, and the number of
held-out rows for the inference gaps, settled from what SVI costs.

Costs are counted in floating-point operations of the networks (matrix products and
convolutions, by torch's ``FlopCounterMode``, for one row), a backward pass as two forward ones,
and :data:`STEP_FLOPS` more for each optimiser step (Pyro's fixed cost of a step):

- SVI: ``--num-steps`` steps of ``--batch-size`` rows x ``--train-particles`` samples, each an
  encoder and a decoder pass with their backward (per process: the processes run side by side);
- an importance-weighted row: one encoder pass and K decoder passes (and K of the flow's layers);
  the rows are twice the ``--eval-rows`` sample (at the start and after SVI) and every held-out
  row;
- a gap row: the best local q's ``--gap-steps`` SVI steps of :data:`inference.gaps.GAP_PARTICLES`
  decoder passes with their backward, and two more K-sample estimates.

A mean-field guide has no gaps, and fits that local q on every held-out row for its held-out
figures: that fit is outside the budget (``--gap-steps`` sets it).

The evaluation may cost ``--eval-budget`` (default 0.15) times SVI; its arithmetic runs slower
than SVI's (smaller products, a Pyro trace per chunk), so that is about a sixth of the run. K is
the most that budget allows, between :data:`MIN_PARTICLES` and :data:`MAX_PARTICLES`; the gap
rows are what is left after it, at most :data:`MAX_GAP_ROWS`. A value given is kept as given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from gallery.app.config import RunConfig
from inference.gaps import GAP_PARTICLES

# A step's fixed cost, as operations. Like the budget, a calibration: with these two values the
# digits' default run (64-128-2 networks, whose steps are mostly Pyro's fixed cost) and Pyro's
# example architecture on digits28 (whose steps are arithmetic) each spent 15 to 18% of the run
# evaluating on one core of the 2-core CPU machine (README, "The evaluation budget").
STEP_FLOPS = 1e7
MIN_PARTICLES = 10
MAX_PARTICLES = 1000
MAX_GAP_ROWS = 200


@dataclass(frozen=True)
class NetworkCost:
    """Floating-point operations of one forward pass: ``row`` the encoder's, once per row (0
    without an encoder), ``sample`` the decoder's and the guide's per sample of z."""

    row: float
    sample: float


def count_flops(fn) -> float:
    """The matrix and convolution operations ``fn()`` runs, by ``FlopCounterMode``."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def network_cost(decoder, encoder, obs_dim: int) -> NetworkCost:
    """The :class:`NetworkCost` of ``decoder`` and ``encoder`` (``None``: per-datapoint tables)
    for one row of ``obs_dim`` values, made in the decoder's dtype and on its device."""
    weight = next(decoder.parameters())
    z = weight.new_zeros(1, decoder.latent_dim)
    sample = count_flops(lambda: decoder(z))
    if encoder is None:
        return NetworkCost(0.0, sample)
    x = weight.new_full((1, obs_dim), 0.5)
    q = encoder.encode(x)
    row = count_flops(lambda: encoder.encode(x))
    sample += count_flops(lambda: q.log_prob(q.rsample()))  # a flow's layers; 0 for a Gaussian
    return NetworkCost(row, sample)


def svi_flops(config: RunConfig, cost: NetworkCost, batch_size: int) -> float:
    """SVI's operations: every step's encoder and decoder passes, forward and backward."""
    train = config.train
    per_step = 3 * batch_size * (cost.row + train.num_particles * cost.sample) + STEP_FLOPS
    return train.num_steps * per_step


def fit_row_flops(config: RunConfig, cost: NetworkCost) -> float:
    """One row's share of the best local q's ``--gap-steps`` SVI steps (the model fixed)."""
    return 3 * config.vae.gap_steps * GAP_PARTICLES * cost.sample


def local_fit_flops(config: RunConfig, cost: NetworkCost, rows: int) -> float:
    """The best local q's fit on ``rows`` rows, with its steps' fixed cost."""
    return 0.0 if rows == 0 else rows * fit_row_flops(config, cost) + config.vae.gap_steps * STEP_FLOPS


def iw_flops(cost: NetworkCost, rows: int, particles: int) -> float:
    """The K-sample importance-weighted estimate on ``rows`` rows."""
    return rows * (cost.row + particles * cost.sample)


def eval_row_count(config: RunConfig, num_train: int) -> int:
    """How many training rows the importance-weighted estimates take: ``--eval-rows`` (0: all)."""
    rows = config.vae.eval_rows
    return num_train if rows == 0 else min(rows, num_train)


@dataclass(frozen=True)
class EvalPlan:
    """K and the gap rows, settled; the budget and what the evaluation is planned to cost."""

    particles: int
    gap_rows: int
    budget_flops: float
    planned_flops: float


def plan_evaluation(
    config: RunConfig, cost: NetworkCost, *, num_train: int, num_heldout: int, batch_size: int
) -> EvalPlan:
    """Settle ``--eval-particles`` and ``--gap-rows`` (``None``: from the budget) for a run on
    ``num_train`` training and ``num_heldout`` held-out rows with ``batch_size`` rows per step."""
    budget = config.vae.eval_budget * svi_flops(config, cost, batch_size)
    # the training sample at the start and after SVI, and every held-out row
    rows = 2 * eval_row_count(config, num_train) + num_heldout
    particles = config.train.eval_particles
    if particles is None:
        room = (budget - iw_flops(cost, rows, 0)) / (rows * cost.sample)
        particles = int(min(MAX_PARTICLES, max(MIN_PARTICLES, math.floor(room))))
    spent = iw_flops(cost, rows, particles)
    gap_rows = config.vae.gap_rows
    if gap_rows is None and config.guide == "mean-field":
        gap_rows = 0  # no encoder, no gaps
    if gap_rows is None:  # a gap row: its share of the local fit, the amortised and best local estimates
        per_row = fit_row_flops(config, cost) + 2 * iw_flops(cost, 1, particles)
        left = budget - spent - config.vae.gap_steps * STEP_FLOPS
        gap_rows = min(MAX_GAP_ROWS, num_heldout, max(0, math.floor(left / per_row)))
    used = 0 if config.guide == "mean-field" else min(gap_rows, num_heldout)
    spent += local_fit_flops(config, cost, used) + 2 * iw_flops(cost, used, particles)
    return EvalPlan(particles, gap_rows, budget, spent)


__all__ = [
    "EvalPlan",
    "MAX_GAP_ROWS",
    "MAX_PARTICLES",
    "MIN_PARTICLES",
    "NetworkCost",
    "STEP_FLOPS",
    "eval_row_count",
    "network_cost",
    "plan_evaluation",
    "svi_flops",
]
