"""The VAE's evaluation budget (gallery/app/eval_plan.py): the networks' arithmetic is counted
exactly, K is the most the budget allows, the gaps take what is left, and given values stay."""

import json

import pytest

from gallery.app import vae_job
from gallery.app.cli import main
from gallery.app.config import make_config
from gallery.app.eval_plan import (
    MAX_GAP_ROWS,
    MAX_PARTICLES,
    MIN_PARTICLES,
    NetworkCost,
    network_cost,
    plan_evaluation,
    svi_flops,
)

# Pyro's VAE example on 10,000 images, 20% held out (the run)
PYRO = dict(likelihood="bernoulli", hidden=(400,), latent_dim=50, num_steps=1250, batch_size=128)
PYRO_ROWS = dict(num_train=8000, num_heldout=2000, batch_size=128)


def cost_of(config, obs_dim):
    decoder = vae_job.make_decoder(config, obs_dim)
    encoder = None if config.guide == "mean-field" else vae_job.make_encoder(config, obs_dim)
    return network_cost(decoder, encoder, obs_dim)


def test_an_mlp_costs_two_operations_per_weight():
    """Exact: a linear layer of a x b is 2ab operations per row (one multiply and one add)."""
    config = make_config("vae", hidden=(128,), latent_dim=2)
    cost = cost_of(config, 64)
    assert cost.sample == 2 * (2 * 128 + 128 * 64)
    assert cost.row == 2 * (64 * 128 + 128 * (2 + 2))  # loc and scale of each z


def test_a_flow_guide_counts_its_layers_per_sample():
    diag, flow = (
        cost_of(make_config("vae", guide=g, hidden=(16,)), 64) for g in ("amortised", "amortised-flow")
    )
    assert flow.sample > diag.sample == 2 * (2 * 16 + 16 * 64)
    assert cost_of(make_config("vae", guide="mean-field", hidden=(16,)), 64).row == 0


def test_a_conv_network_is_counted_by_its_convolutions():
    config = make_config("vae", architecture="conv", hidden=(32,))
    cost = cost_of(config, 64)
    linear_only = 2 * (2 * 32) + 2 * (64 * 32)  # a lower bound: the dense layers alone
    assert cost.sample > linear_only and cost.row > linear_only


@pytest.mark.parametrize("guide", ["amortised", "amortised-flow"])
def test_k_is_the_most_the_budget_allows(guide):
    """On the issue's run the default K fits in the budget and K + 1 would not."""
    config = make_config("vae", guide=guide, **PYRO)
    cost = cost_of(config, 784)
    plan = plan_evaluation(config, cost, **PYRO_ROWS)
    assert MIN_PARTICLES < plan.particles < MAX_PARTICLES
    assert plan.gap_rows == 0  # nothing is left for the gaps' per-datum fits
    assert plan.planned_flops <= plan.budget_flops == pytest.approx(0.15 * svi_flops(config, cost, 128))
    wider = make_config("vae", guide=guide, eval_particles=plan.particles + 1, gap_rows=0, **PYRO)
    assert plan_evaluation(wider, cost, **PYRO_ROWS).planned_flops > plan.budget_flops


def test_the_gaps_take_what_is_left_and_a_wide_budget_keeps_the_old_defaults():
    config = make_config("vae", eval_budget=2.0)
    cost = cost_of(config, 64)
    plan = plan_evaluation(config, cost, num_train=1617, num_heldout=180, batch_size=128)
    assert 0 < plan.gap_rows < 180 and plan.planned_flops <= plan.budget_flops
    more = make_config("vae", eval_budget=2.0, gap_rows=plan.gap_rows + 1)
    assert plan_evaluation(more, cost, num_train=1617, num_heldout=180, batch_size=128).planned_flops > (
        plan.budget_flops
    )
    wide = plan_evaluation(
        make_config("vae", eval_budget=100.0), cost, num_train=1617, num_heldout=180, batch_size=128
    )
    assert (wide.particles, wide.gap_rows) == (MAX_PARTICLES, 180)
    assert MAX_GAP_ROWS == 200


def test_given_values_are_kept_and_a_tiny_budget_still_draws_the_minimum():
    config = make_config("vae", eval_particles=7, gap_rows=3, **PYRO)
    plan = plan_evaluation(config, NetworkCost(1e6, 1e6), **PYRO_ROWS)
    assert (plan.particles, plan.gap_rows) == (7, 3)
    tiny = plan_evaluation(make_config("vae", eval_budget=1e-9, **PYRO), NetworkCost(1e6, 1e6), **PYRO_ROWS)
    assert (tiny.particles, tiny.gap_rows) == (MIN_PARTICLES, 0)


def test_mean_field_has_no_gaps_and_the_same_k():
    """Its held-out fit is outside the budget: K is the amortised guide's for the same networks."""
    mean_field = make_config("vae", guide="mean-field", eval_budget=100.0)
    plan = plan_evaluation(
        mean_field, cost_of(mean_field, 64), num_train=1617, num_heldout=180, batch_size=128
    )
    assert plan.gap_rows == 0 and plan.particles == MAX_PARTICLES
    decoder_only = NetworkCost(0.0, cost_of(make_config("vae"), 64).sample)
    sizes = dict(num_train=1617, num_heldout=180, batch_size=128)
    small = plan_evaluation(make_config("vae", guide="mean-field"), decoder_only, **sizes)
    assert small.particles == plan_evaluation(make_config("vae"), decoder_only, **sizes).particles


def test_run_records_the_settled_evaluation(tmp_path):
    out = tmp_path / "run"
    flags = ["--num-steps", "30", "--hidden", "8", "--eval-budget", "0.5", "--gap-steps", "20"]
    main(["run", "vae", *flags, "--out", str(out), "--no-progress"])
    m = json.loads((out / "metrics.json").read_text())
    config = make_config("vae", num_steps=30, hidden=(8,), eval_budget=0.5, gap_steps=20)
    plan = plan_evaluation(config, cost_of(config, 64), num_train=1617, num_heldout=180, batch_size=128)
    assert m["eval_budget"] == 0.5 and m["eval_particles"] == m["heldout_eval_particles"] == plan.particles
    assert m["gap_rows"] == (plan.gap_rows or None)
    assert list(m)[-4:] == ["eval_rows", "eval_budget", "eval_seconds", "eval_seconds_fraction"]


@pytest.mark.parametrize("budget", ["0", "-1", "nan", "inf"])
def test_a_budget_that_cannot_work_is_one_line(tmp_path, capsys, budget):
    assert main(["run", "vae", "--eval-budget", budget, "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--eval-budget must be a positive number" in err[0]
    assert not (tmp_path / "r").exists()


def test_a_resumed_run_may_change_the_budget(tmp_path):
    out = tmp_path / "run"
    flags = ["--num-steps", "20", "--hidden", "8", "--gap-steps", "5", "--out", str(out), "--no-progress"]
    assert main(["run", "vae", *flags, "--checkpoint-every", "10"]) == 0
    assert main(["run", "vae", *flags, "--resume", "--eval-budget", "5"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["eval_budget"] == 5.0 and m["num_steps"] == 20
