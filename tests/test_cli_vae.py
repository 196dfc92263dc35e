"""``python -m gallery run vae``: outputs, held-out metrics, checkpoints and resume, bad input."""

from __future__ import annotations

import json

import pytest
import torch

import inference.svi
from tests.test_cli import run_main

TINY = ["--num-steps", "30", "--eval-particles", "5", "--gap-rows", "10", "--gap-steps", "5", "--no-progress"]
SMALL_NET = ["--hidden", "8", "--batch-size", "32"]
FOUNDATION_KEYS = {
    "model", "guide", "data", "preprocessing", "device", "dtype", "num_data", "obs_dim", "num_steps",
    "batch_size", "lr", "num_particles", "seed", "elbo", "elbo_per_datum", "eval_particles",
    "log_likelihood_per_datum", "initial_log_likelihood_per_datum", "em_log_likelihood_per_datum",
    "em_num_iters", "em_converged", "svi_seconds", "em_seconds", "seconds",
}  # fmt: skip
VAE_KEYS = {
    "heldout_elbo_per_datum", "heldout_log_likelihood_per_datum", "heldout_eval_particles",
    "approximation_gap_per_datum", "amortisation_gap_per_datum", "gap_rows", "latent_dim", "likelihood",
    "decoder", "hidden", "noise_variance", "num_heldout",
}  # fmt: skip
FIGURES = ("training_curve.png", "samples.png", "reconstructions.png", "latent.png")


def metrics(out) -> dict:
    return json.loads((out / "metrics.json").read_text())


def test_run_vae_writes_metrics_params_and_figures(tmp_path, capsys):
    out = tmp_path / "vae"
    assert run_main(["run", "vae", *TINY, *SMALL_NET, "--out", str(out)]) == 0
    m = metrics(out)
    assert FOUNDATION_KEYS | VAE_KEYS <= m.keys()
    assert m["data"] == "digits" and m["preprocessing"] == "scale-to-unit(/16)" and m["dtype"] == "float32"
    assert m["num_data"] + m["num_heldout"] == 1797 and m["num_heldout"] == 180
    assert m["heldout_log_likelihood_per_datum"] >= m["heldout_elbo_per_datum"]  # same samples: Jensen
    assert m["log_likelihood_per_datum"] >= m["elbo_per_datum"]
    gaps = m["approximation_gap_per_datum"] + m["amortisation_gap_per_datum"]
    assert m["gap_rows"] == 10 and abs(gaps) < 1e3
    for name in FIGURES:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    params = torch.load(out / "params.pt", weights_only=True)
    assert "vae.decoder$$$log_noise_variance" in params and "decoder.net.0.weight" in params
    assert "held out" in capsys.readouterr().out


def test_linear_decoder_reports_the_exact_ppca_answers(tmp_path):
    out = tmp_path / "linear"
    argv = ["run", "vae", "--decoder", "linear", "--heldout-fraction", "0", *TINY, "--out", str(out)]
    assert run_main(argv) == 0
    m = metrics(out)
    assert m["num_heldout"] == 0 and m["heldout_elbo_per_datum"] is None and m["gap_rows"] is None
    assert (
        m["hidden"] == [] and m["exact_log_likelihood_per_datum"] <= m["closed_form_log_likelihood_per_datum"]
    )


@pytest.mark.parametrize("guide", ["amortised-full", "mean-field"])
def test_other_guides_and_bernoulli(tmp_path, guide):
    out = tmp_path / guide
    argv = ["run", "vae", "--guide", guide, "--likelihood", "bernoulli", "--binarize", *TINY, *SMALL_NET]
    assert run_main([*argv, "--out", str(out)]) == 0
    m = metrics(out)
    assert m["preprocessing"] == "scale-to-unit(/16)+binarize(>0.5)" and m["noise_variance"] is None
    assert m["heldout_log_likelihood_per_datum"] is not None
    assert (m["approximation_gap_per_datum"] is None) == (guide == "mean-field")


class Killed(BaseException):
    """Stands in for the process dying: nothing catches it."""


@pytest.mark.parametrize("guide", ["amortised", "amortised-flow"])
def test_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch, guide):
    argv = ["run", "vae", "--guide", guide, *TINY, *SMALL_NET, "--checkpoint-every", "10"]
    assert run_main([*argv, "--out", str(tmp_path / "whole")]) == 0
    real_step, calls = inference.svi.svi_step, {"n": 0}

    def dying_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 25:
            raise Killed
        return real_step(*args, **kwargs)

    monkeypatch.setattr(inference.svi, "svi_step", dying_step)
    with pytest.raises(Killed):
        run_main([*argv, "--out", str(tmp_path / "split")])
    assert sorted(p.name for p in (tmp_path / "split").iterdir()) == ["checkpoint.pt"]
    monkeypatch.setattr(inference.svi, "svi_step", real_step)
    assert run_main([*argv, "--resume", "--out", str(tmp_path / "split")]) == 0
    whole = torch.load(tmp_path / "whole" / "params.pt", weights_only=True)
    split = torch.load(tmp_path / "split" / "params.pt", weights_only=True)
    assert whole.keys() == split.keys() and all(torch.equal(whole[k], split[k]) for k in whole)
    timing = {"seconds", "svi_seconds", "eval_seconds", "eval_seconds_fraction"}
    a, b = metrics(tmp_path / "whole"), metrics(tmp_path / "split")
    assert {k: v for k, v in a.items() if k not in timing} == {k: v for k, v in b.items() if k not in timing}


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--likelihood", "bernoulli"], "pass --binarize"),
        (["--data", "mnist"], "needs --data-dir"),
        (["--data", "mnist", "--data-dir", "{tmp}"], "no MNIST files"),
        (["--guide", "exact"], "does not fit the vae"),
        (["--heldout-fraction", "1"], "heldout-fraction"),
        (["--resume"], "no checkpoint at"),
        (["--likelihood", "bernoulli", "--binarize", "--noise-variance", "0.1"], "Gaussian likelihood"),
        (["--checkpoint-every", "0"], "at least 1"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    argv = ["run", "vae", *TINY, *[e.replace("{tmp}", str(tmp_path)) for e in extra], "--out", str(out)]
    assert run_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()  # refused before anything was computed or written


def test_a_corrupt_checkpoint_is_refused_and_left_alone(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"\x00" * 100)
    assert run_main(["run", "vae", *TINY, "--resume", "--out", str(out)]) == 2
    assert "not a readable checkpoint" in capsys.readouterr().err
    assert (out / "checkpoint.pt").read_bytes() == b"\x00" * 100
