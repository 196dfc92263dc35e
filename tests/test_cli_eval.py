"""``run vae``'s bounded evaluation: a fixed sample of ``--eval-rows`` training rows (every
held-out row), its share of the run appended to metrics.json after the existing keys, and a
divergence message that names what diverged in the VAE and the flag to change."""

from __future__ import annotations

import json

import pytest
import torch

from tests.test_cli import run_main

TINY = ["--num-steps", "20", "--eval-particles", "3", "--gap-rows", "0", "--hidden", "8", "--no-progress"]
# last, after "seconds" and "threads"
TRAILING = ["eval_rows", "eval_budget", "eval_seconds", "eval_seconds_fraction"]


def _metrics(out) -> dict:
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.parametrize("rows, expected", [(None, 1000), ("100", 100), ("all", 1617), ("0", 1617)])
def test_the_training_rows_evaluated_are_bounded_and_widened_by_the_flag(tmp_path, rows, expected):
    out = tmp_path / "run"
    argv = ["run", "vae", *TINY, *([] if rows is None else ["--eval-rows", rows]), "--out", str(out)]
    assert run_main(argv) == 0
    m = _metrics(out)
    assert m["eval_rows"] == expected and m["num_data"] == 1617 and m["num_heldout"] == 180
    assert list(m)[-4:] == TRAILING and list(m).index("seconds") < list(m).index("eval_rows")
    assert 0 < m["eval_seconds"] <= m["seconds"]
    assert m["eval_seconds_fraction"] == m["eval_seconds"] / m["seconds"]


def test_the_sample_is_the_first_shuffled_training_rows(tmp_path):
    """The sample is the first rows of the training rows, which were shuffled from the seed before
    the split: a fixed random sample, the same at every bound."""
    from gallery.app import pipeline, vae_job
    from gallery.app.config import make_config

    config = make_config("vae", num_steps=5, eval_particles=3, gap_rows=0, hidden=(8,), progress=False)
    prepared = pipeline.prepare(config)
    assert torch.equal(vae_job.eval_sample(config, prepared.data), torch.arange(1000))


def test_bad_eval_rows_are_one_line(tmp_path, capsys):
    assert run_main(["run", "vae", *TINY, "--eval-rows", "some", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--eval-rows takes a number of rows or all" in err and len(err.splitlines()) == 1


def test_a_diverging_vae_names_the_encoder_scale_and_the_flag(tmp_path, capsys):
    """An absurd learning rate: the message names what the watch saw collapse (the encoder's
    scale) and --lr, not the mixture's constant columns."""
    argv = ["run", "vae", *TINY, "--lr", "1e12", "--out", str(tmp_path / "o")]
    assert run_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "SVI diverged" in err and "encoder scale" in err and "lower --lr" in err
    assert "constant columns" not in err and len(err.splitlines()) == 1
