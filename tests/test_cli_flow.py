"""``--guide amortised-flow`` on the command line: the VAE (with its gaps, float64 data; a killed
run resumed bit for bit is in tests/test_cli_vae.py), PPCA and factor analysis, and its refusals."""

from __future__ import annotations

import pytest
import torch

import gallery
from tests.test_cli import run_main
from tests.test_cli_vae import SMALL_NET, TINY, metrics

FLOW = ["--guide", "amortised-flow", "--flow-layers", "2"]


def test_vae_flow_reports_its_gaps_in_float64(tmp_path):
    out = tmp_path / "flow"
    assert run_main(["run", "vae", *FLOW, *TINY, *SMALL_NET, "--dtype", "float64", "--out", str(out)]) == 0
    m = metrics(out)
    assert m["guide"] == "amortised-flow" and m["flow_layers"] == 2 and m["dtype"] == "float64"
    assert m["heldout_log_likelihood_per_datum"] >= m["heldout_elbo_per_datum"]  # same samples: Jensen
    assert m["gap_rows"] == 10 and m["approximation_gap_per_datum"] is not None
    params = torch.load(out / "params.pt", weights_only=True)
    assert any(key.startswith("guide.flows.1.") for key in params)


@pytest.mark.parametrize("model", ["ppca", "factor-analysis"])
def test_linear_gaussian_models_take_the_flow(tmp_path, model):
    out = tmp_path / model
    argv = ["run", model, *FLOW, "--num-steps", "50", "--eval-particles", "20", "--no-progress"]
    extra = ["--standardize"] if model == "factor-analysis" else []
    assert run_main([*argv, *extra, "--out", str(out)]) == 0
    m = metrics(out)
    assert m["elbo_per_datum"] <= m["log_likelihood_per_datum"]  # a bound, whatever the fit


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "gmm", "--guide", "amortised-flow"], "is for continuous z; for gmm use 'amortised'"),
        (
            ["run", "ppca", "--guide", "amortised-flow", "--flow-layers", "-1"],
            "--flow-layers must be at least 0",
        ),
    ],
)
def test_refusals_are_one_line(capsys, argv, message):
    assert run_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_api_saves_and_loads_a_flow_fit_with_conv_networks(tmp_path):
    settings = dict(num_steps=20, eval_particles=5, gap_rows=5, gap_steps=5, hidden=(8,), progress=False)
    fitted = gallery.fit("vae", "digits", guide="amortised-flow", architecture="conv", **settings)
    x = gallery.load("digits").data[:7] / 16
    log_prob = fitted.log_prob(x)
    assert fitted.posterior(x).sample().shape == (7, 2)
    fitted.save(tmp_path / "vae.pt")
    assert torch.equal(gallery.Fitted.load(tmp_path / "vae.pt").log_prob(x), log_prob)
