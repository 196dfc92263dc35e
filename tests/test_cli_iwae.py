"""``run vae --objective iwae|iwae-dreg --train-particles K``: the estimator is recorded, and an
objective that cannot weight the model's latents is refused in one line."""

from __future__ import annotations

import json

import pytest

from tests.test_cli import run_main

TINY = ["--num-steps", "30", "--eval-particles", "5", "--gap-rows", "5", "--gap-steps", "5", "--no-progress"]


@pytest.mark.parametrize("objective, estimator", [("iwae", "IWAE"), ("iwae-dreg", "IWAE-DReG")])
def test_run_vae_trains_on_the_importance_weighted_bound(tmp_path, objective, estimator):
    out = tmp_path / objective
    argv = ["run", "vae", "--objective", objective, "--train-particles", "5", *TINY, "--hidden", "8"]
    assert run_main([*argv, "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["elbo"] == estimator and m["num_particles"] == 5
    assert m["heldout_log_likelihood_per_datum"] >= m["heldout_elbo_per_datum"]


def test_an_enumerated_mixture_is_refused(tmp_path, capsys):
    argv = ["run", "gmm", "--objective", "iwae", "--num-steps", "5", "--no-progress", "--out", str(tmp_path)]
    assert run_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "enumerated" in err and len(err.splitlines()) == 1
