"""Sizes that cannot fit are refused before any computation, in one line that gives the estimate
and names the flag; so are a seed outside NumPy's range and a noise variance the dtype cannot
hold."""

from __future__ import annotations

import pytest
import torch

from gallery.app.config import make_config
from gallery.app.resources import available_memory, check_resources
from tests.test_cli import run_main

TINY = ["--num-steps", "5", "--em-iters", "3", "--eval-particles", "2", "--no-progress"]
VAE_TINY = [
    "--num-steps",
    "5",
    "--hidden",
    "8",
    "--gap-rows",
    "3",
    "--gap-steps",
    "2",
    "--eval-particles",
    "2",
]


@pytest.fixture
def no_compute(monkeypatch):
    """A refusal must come before any fitting: fitting fails the test."""

    def fit(*args, **kwargs):
        raise AssertionError("a run that should have been refused started to fit")

    monkeypatch.setattr("gallery.app.cli.fit", fit)


@pytest.mark.parametrize(
    "argv, phrase",
    [
        (["ppca", "--num-steps", str(10**12)], "--num-steps 1000000000000 needs about"),
        (["ppca", "--num-particles", str(10**9)], "--num-particles 1000000000 needs about"),
        (["ppca", "--guide", "amortised", "--hidden", "100000000000"], "--hidden 100000000000 needs about"),
        (["vae", *VAE_TINY, "--hidden", "100000000000"], "--hidden 100000000000 needs about"),
        (["gmm", "--eval-particles", str(10**12)], "lower --eval-particles"),
        (["vae", *VAE_TINY, "--noise-variance", "1e-320"], "--noise-variance 1e-320 is outside what float32"),
        (["ppca", "--seed", "-1"], "--seed must be between 0 and 2**32 - 1"),
        (["ppca", "--seed", str(2**70)], "--seed must be between 0 and 2**32 - 1"),
    ],
)
def test_sizes_that_cannot_fit_are_refused_in_one_line(argv, phrase, tmp_path, capsys, no_compute):
    out = tmp_path / "out"
    assert run_main(["run", *argv[:1], *TINY, *argv[1:], "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert phrase in err, err
    assert not out.exists()


def test_the_flag_named_is_the_one_that_shrinks_the_estimate_most():
    config = make_config("vae", num_particles=1000, batch_size=128)
    with pytest.raises(ValueError, match=r"--num-particles 1000 needs about .* more than the 1 MB available"):
        check_resources(config, 1000, 64, batch_size=128, device=torch.device("cpu"), available=10**6)
    with pytest.raises(ValueError, match="pass --stream"):
        check_resources(
            make_config("ppca"), 10**6, 100, batch_size=None, device=torch.device("cpu"), available=10**6
        )
    check_resources(config, 1000, 64, batch_size=128, device=torch.device("cpu"), available=None)


def test_available_memory_reads_meminfo_and_falls_back(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000000 kB\nMemAvailable:    8000000 kB\n")
    assert available_memory(torch.device("cpu"), meminfo) == 8_000_000 * 1024
    fallback = available_memory(torch.device("cpu"), tmp_path / "absent")
    assert fallback is None or fallback > 0
