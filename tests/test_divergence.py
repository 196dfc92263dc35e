"""A diverging run (an absurd learning rate) stops with the step, keeps the last finite
parameters on disk, saves nothing non-finite, and leaves earlier results as they were."""

from __future__ import annotations

import pytest
import torch

from tests.test_cli import run_main, snapshot

TINY = ["--num-steps", "50", "--eval-particles", "2", "--em-iters", "3", "--no-progress"]
VAE = ["--hidden", "8", "--gap-rows", "5", "--gap-steps", "2"]


@pytest.mark.parametrize("model", ["gmm", "factor-analysis", "ppca", "vae"])
def test_absurd_learning_rate_stops_with_the_step_and_keeps_finite_parameters(tmp_path, capsys, model):
    out = tmp_path / model
    argv = ["run", model, *TINY, *(VAE if model == "vae" else []), "--out", str(out)]
    if model == "gmm":
        argv += ["--guide", "mean-field"]
    assert run_main(argv) == 0  # an earlier, good run
    before = snapshot(out)
    status = run_main([*argv, "--lr", "1e12", "--checkpoint-every", "1"])
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1
    assert "SVI diverged" in err and "step" in err and "last good checkpoint" in err
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert all(bool(torch.isfinite(t).all()) for t in state["params"].values())
    assert bool(torch.isfinite(state["losses"]).all())
    after = snapshot(out)
    assert {k: v for k, v in after.items() if k != "checkpoint.pt"} == before  # results untouched
