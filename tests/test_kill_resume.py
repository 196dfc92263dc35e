"""Runs killed with SIGKILL at several points (in a step, in the middle of writing a
checkpoint, just after one, during evaluation, while writing the results) always leave the
previous checkpoint intact, and resume to exactly the parameters and metrics of an
uninterrupted run with the same seed (CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
VAE = ["run", "vae", "--num-steps", "40", "--checkpoint-every", "10", "--hidden", "8", "--batch-size", "32",
       "--eval-particles", "5", "--gap-rows", "10", "--gap-steps", "5", "--no-progress"]  # fmt: skip
PPCA = ["run", "ppca", "--num-steps", "40", "--checkpoint-every", "10", "--em-iters", "5", "--no-progress"]

# Run in the child: install one fault, then the command line. Each fault ends the process with
# SIGKILL, which no handler can catch, at a chosen point.
DRIVER = r"""
import os, signal, sys, tempfile
mode, count, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
calls = {"n": 0}

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def counted(real, on_call):
    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == count:
            return on_call(real, *args, **kwargs)
        return real(*args, **kwargs)
    return wrapper

import gallery.report.atomic, gallery.app.vae_job, inference.checkpoint, inference.svi
if mode == "step":
    inference.svi.svi_step = counted(inference.svi.svi_step, lambda real, *a, **k: die())
elif mode == "checkpoint-write":  # half the bytes in the temporary file, then killed
    def half_write(real, path, payload):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.write(fd, payload[: len(payload) // 2])
        os.fsync(fd)
        die()
    inference.checkpoint.write_atomic = counted(inference.checkpoint.write_atomic, half_write)
elif mode == "after-checkpoint":
    inference.checkpoint.write_atomic = counted(
        inference.checkpoint.write_atomic, lambda real, *a, **k: (real(*a, **k), die())
    )
elif mode == "evaluation":  # the second importance estimate: after training
    gallery.app.vae_job.importance_estimate = counted(
        gallery.app.vae_job.importance_estimate, lambda real, *a, **k: die()
    )
elif mode == "outputs":  # the first result file staged, then killed before any rename
    real_write_all = gallery.report.atomic.write_all_atomic
    def staged_then_die(folder, payloads):
        if "metrics.json" not in payloads:  # a checkpoint: written as usual
            return real_write_all(folder, payloads)
        name, payload = next(iter(payloads.items()))
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
        os.write(fd, payload)
        die()
    gallery.report.atomic.write_all_atomic = staged_then_die
from gallery.app.cli import main
sys.exit(main(argv))
"""


def run(argv: list[str], out: Path, mode: str = "none", count: int = 0) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    command = [sys.executable, "-c", DRIVER, mode, str(count), *argv, "--out", str(out)]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def results(out: Path) -> tuple[dict, dict]:
    metrics = json.loads((out / "metrics.json").read_text())
    for timing in ("seconds", "svi_seconds", "em_seconds", "eval_seconds", "eval_seconds_fraction"):
        metrics.pop(timing, None)
    return metrics, torch.load(out / "params.pt", weights_only=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """Uninterrupted runs with the same seed and settings."""
    found = {}
    for name, argv in (("vae", VAE), ("ppca", PPCA)):
        out = tmp_path_factory.mktemp(f"whole-{name}")
        done = run(argv, out)
        assert done.returncode == 0, done.stderr
        found[name] = results(out)
    return found


@pytest.mark.parametrize(
    "name, mode, count, checkpoint_step",
    [
        ("vae", "step", 25, 20),  # in the 25th step; checkpoints at 10 and 20 are on disk
        ("vae", "checkpoint-write", 4, 20),  # half-way through writing the step-30 checkpoint
        ("vae", "after-checkpoint", 3, 20),  # just after the step-20 checkpoint (after 0, 10) was renamed in
        ("vae", "evaluation", 2, 40),  # training done, final checkpoint on disk
        ("vae", "outputs", 1, 40),  # result files staged, none renamed yet
        ("ppca", "step", 33, 30),
    ],
)
def test_killed_run_resumes_to_the_uninterrupted_result(
    tmp_path, reference, name, mode, count, checkpoint_step
):
    argv = VAE if name == "vae" else PPCA
    killed = run(argv, tmp_path, mode, count)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (tmp_path / "metrics.json").exists()  # no half results
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)  # the last checkpoint is intact
    assert state["step"] == checkpoint_step
    assert all(bool(torch.isfinite(t).all()) for t in state["params"].values())
    resumed = run([*argv, "--resume"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    metrics, params = results(tmp_path)
    expected_metrics, expected_params = reference[name]
    assert metrics == expected_metrics
    assert params.keys() == expected_params.keys()
    assert all(torch.equal(params[k], expected_params[k]) for k in params)
    assert not list(tmp_path.glob(".*.tmp"))  # what the killed run left half-written is gone
