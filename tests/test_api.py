"""``gallery.fit``: the numbers of ``python -m gallery run``, in memory, in the user's session."""

from __future__ import annotations

import json

import numpy as np
import pyro
import pytest
import torch

import gallery
from gallery.app import cli
from gallery.app.vae_job import VAE_GUIDES
from guides.registry import GUIDES, MIXTURE_GUIDES

COMBOS = [
    (model, guide)
    for model in ("gmm", "factor-analysis", "ppca")
    for guide in GUIDES
    if not (model == "gmm" and guide in ("amortised-full", "amortised-flow"))  # continuous z only
]
COMBOS += [(model, guide) for model in ("mfa", "mppca") for guide in MIXTURE_GUIDES]
COMBOS += [("vae", guide) for guide in VAE_GUIDES]  # on iris too: the comparison, not the fit, is the point
pytestmark = pytest.mark.filterwarnings("ignore:EM did not converge")  # 50 iterations: equality, not accuracy
SETTINGS = {"num_steps": 50, "em_iters": 50, "eval_particles": 10}  # tiny: equality, not accuracy
FLAGS = ["--num-steps", "50", "--em-iters", "50", "--eval-particles", "10", "--no-progress"]


@pytest.mark.parametrize(("model", "guide"), COMBOS)
def test_fit_gives_the_numbers_of_run(model, guide, tmp_path, capsys):
    """Every value of ``metrics.json`` but the timings, to 1e-12 (the same code path: float
    rounding could differ only if it were not; json keeps a float's every digit)."""
    extra = ["--gap-steps", "20"] if model == "vae" else []  # the best local q: equality, not accuracy
    args = ["run", model, "--guide", guide, "--data", "iris", "--out", str(tmp_path), *FLAGS, *extra]
    assert cli.main(args) == 0
    written = json.loads((tmp_path / "metrics.json").read_text())
    settings = SETTINGS | ({"gap_steps": 20} if model == "vae" else {})
    fitted = gallery.fit(model, "iris", guide=guide, progress=False, **settings)
    kept = {
        key: value for key, value in json.loads(json.dumps(fitted.metrics)).items() if "seconds" not in key
    }
    assert list(kept) == [key for key in written if "seconds" not in key]
    for key, value in kept.items():
        if isinstance(value, float):
            assert value == pytest.approx(written[key], abs=1e-12, rel=0), key
        else:
            assert value == written[key], key
    if model != "vae":  # the VAE's log p(x) is importance-weighted: its own test below
        exact = float(fitted.log_prob(gallery.load("iris").data).mean())
        assert exact == pytest.approx(written["log_likelihood_per_datum"], abs=1e-12, rel=0)


def test_fit_keeps_the_users_param_store_and_takes_arrays():
    mine = pyro.param("my.weights", torch.arange(3.0))
    rows = gallery.load("iris").data.numpy()
    from_array = gallery.fit("ppca", rows, guide="mean-field", progress=False, **SETTINGS)
    by_name = gallery.fit("ppca", "iris", guide="mean-field", progress=False, **SETTINGS)
    assert torch.equal(pyro.param("my.weights"), mine)
    assert from_array.metrics["data"] == "array"
    assert from_array.metrics["elbo_per_datum"] == by_name.metrics["elbo_per_datum"]
    assert from_array.elbo_trace.shape == (50,)


@pytest.mark.parametrize(
    ("model", "guide"),
    [("gmm", "mean-field"), ("factor-analysis", "amortised"), ("ppca", "exact"), ("mfa", "mean-field")],
)
def test_save_load_round_trip(model, guide, tmp_path):
    fitted = gallery.fit(model, "iris", guide=guide, progress=False, **SETTINGS)
    fitted.save(tmp_path / "fit.pt")
    loaded = gallery.Fitted.load(tmp_path / "fit.pt")
    x = gallery.load("iris").data
    assert torch.equal(loaded.log_prob(x), fitted.log_prob(x))
    assert torch.equal(loaded.em.log_likelihoods, fitted.em.log_likelihoods)
    assert torch.equal(loaded.sample(5, seed=1), fitted.sample(5, seed=1))
    assert loaded.metrics == fitted.metrics
    posterior = fitted.posterior(x)
    if model == "gmm":
        assert torch.allclose(posterior.probs.sum(-1), torch.ones(150, dtype=torch.float64))
    elif model == "mfa":  # p(z | x) = sum_k p(c = k | x) p(z | x, c = k)
        assert torch.allclose(
            posterior.mixture_distribution.probs.sum(-1), torch.ones(150, dtype=torch.float64)
        )
        assert posterior.mean.shape == (150, 2)
    else:
        assert posterior.loc.shape == (150, 2)


def test_to_arviz_holds_the_draws_and_the_elbo_trace():
    fitted = gallery.fit("ppca", "iris", guide="mean-field", progress=False, **SETTINGS)
    posterior = fitted.to_arviz(num_draws=7)
    assert posterior.posterior["z"].shape == (1, 7, 150, 2)
    trace = torch.as_tensor(posterior.constant_data["elbo_per_datum"].values)
    assert torch.equal(trace, fitted.elbo_trace.cpu())


def test_sample_draws_from_the_fitted_process():
    fitted = gallery.fit("gmm", "iris", progress=False, **SETTINGS)
    draws = fitted.sample(20000, seed=0)  # (20000, 4)
    mixture_mean = fitted.params.weights @ fitted.params.loc
    assert torch.allclose(draws.mean(0), mixture_mean, atol=0.05)  # ~5 standard errors


def test_vae_fit_save_load(tmp_path):
    settings = dict(num_steps=20, eval_particles=5, gap_rows=5, gap_steps=5, hidden=(8,), progress=False)
    fitted = gallery.fit("vae", "digits", **settings)
    x = gallery.load("digits").data[:7] / 16
    log_prob = fitted.log_prob(x)
    assert log_prob.shape == (7,) and torch.equal(log_prob, fitted.log_prob(x))
    assert fitted.sample(3).shape == (3, 64)
    assert fitted.posterior(x).mean.shape == (7, 2)
    fitted.save(tmp_path / "vae.pt")
    assert torch.equal(gallery.Fitted.load(tmp_path / "vae.pt").log_prob(x), log_prob)


def test_refusals_are_one_line():
    with pytest.raises(ValueError, match="guide 'amortised-full' is for continuous z"):
        gallery.fit("gmm", "iris", guide="amortised-full")
    with pytest.raises(ValueError, match="2-D"):
        gallery.fit("gmm", np.zeros(5))
