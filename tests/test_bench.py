"""The benchmark scripts run as real processes with tiny arguments and print what they promise.
Timings are only checked to be positive and finite: speed is the benchmark's report, not a test."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--steps", "3", "--repeats", "1", "--warmup", "1", "--batch-size", "8"]
TINY += [
    "--obs-dim",
    "16",
    "--hidden",
    "8",
    "--latent-dim",
    "2",
    "--threads",
    "1",
    "--no-compiled",
]  # the compiled rows: test_bench_gmm.py


def run_vae_step(*extra: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "bench/vae_step.py", *TINY, *extra],
        capture_output=True, text=True, cwd=ROOT, timeout=120, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_vae_step_prints_timings_and_the_estimators_agree(likelihood):
    result = run_vae_step("--likelihood", likelihood)
    for key in ("ours_s", "baseline_s", "ratio", "pyro_svi_s", "pyro_svi_ratio"):
        assert math.isfinite(result[key]) and result[key] > 0, key
    jit = result["pyro_jit_svi_s"]  # a time, or the error JitTrace_ELBO raised
    assert isinstance(jit, str) or (math.isfinite(jit) and jit > 0)
    assert result["ratio"] == result["ours_s"] / result["baseline_s"]
    # same weights, same eps: only float32 rounding separates the two (the script refuses > 1e-4)
    assert 0 <= result["loss_match"] < 1e-4 and 0 <= result["grad_match"] < 1e-2
    settings = result["settings"]
    assert settings["device"] == "cpu" and settings["dtype"] == "float32"
    assert [settings[key] for key in ("batch_size", "steps", "repeats", "threads")] == [8, 3, 1, 1]
    assert settings["architecture"].startswith("16-8-z2") and settings["likelihood"] == likelihood
    assert {"torch", "pyro"} <= settings.keys()
    assert all(len(times) == 1 for times in result["repeats_s"].values())
