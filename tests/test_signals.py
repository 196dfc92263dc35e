"""SIGINT and SIGTERM stop ``run`` at the next SVI step: it saves a checkpoint there, prints one
line and exits 130 or 143, and ``--resume`` ends bit for bit where an uninterrupted run ends
(CPU). A second signal ends the process at once."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.test_kill_resume import results

ROOT = Path(__file__).resolve().parents[1]
PPCA = ["run", "ppca", "--num-steps", "600", "--checkpoint-every", "200", "--em-iters", "5", "--no-progress"]
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))


def gallery(argv: list[str], out: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "gallery", *argv, "--out", str(out)]
    return subprocess.Popen(
        command, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(process: subprocess.Popen) -> tuple[int, str]:
    _, err = process.communicate(timeout=300)
    return process.returncode, err


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[dict, dict]:
    out = tmp_path_factory.mktemp("whole")
    status, err = finish(gallery(PPCA, out))
    assert status == 0, err
    return results(out)


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_at_a_step_saves_and_resumes_bit_for_bit(tmp_path, reference, signum, status):
    running = gallery(PPCA, tmp_path)
    deadline = time.monotonic() + 120
    while not (tmp_path / "checkpoint.pt").exists():  # the step-0 checkpoint: training has begun
        assert running.poll() is None and time.monotonic() < deadline, running.stderr.read()
        time.sleep(0.01)
    running.send_signal(signum)
    code, err = finish(running)
    assert code == status, err
    assert len(err.strip().splitlines()) == 1, err
    stopped = re.fullmatch(
        r"python -m gallery run: interrupted at step (\d+); resume with --resume", err.strip()
    )
    assert stopped, err
    assert not (tmp_path / "metrics.json").exists()
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["step"] == int(stopped.group(1))
    code, err = finish(gallery([*PPCA, "--resume"], tmp_path))
    assert code == 0, err
    metrics, params = results(tmp_path)
    expected_metrics, expected_params = reference
    assert metrics == expected_metrics
    assert params.keys() == expected_params.keys()
    assert all(torch.equal(params[k], expected_params[k]) for k in params)


SECOND = r"""
import os, signal, time
from inference.interrupt import at_step_boundaries, stop_on_signals
with stop_on_signals(), at_step_boundaries():
    os.kill(os.getpid(), signal.SIGINT)  # deferred: the loop would stop at its next step
    os.kill(os.getpid(), signal.SIGINT)  # the second: at once
    time.sleep(30)
"""


def test_a_second_signal_exits_at_once():
    done = subprocess.run(
        [sys.executable, "-c", SECOND], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 130, done.stderr
    assert done.stderr.strip() == "python -m gallery run: interrupted again; exiting at once"


def test_resume_if_present_starts_then_resumes_and_resume_alone_needs_a_checkpoint(tmp_path, capsys):
    """A requeued job's command line: the first time it starts, the next time it resumes."""
    from tests.test_cli import run_main

    tiny = ["run", "ppca", "--num-steps", "20", "--em-iters", "3", "--eval-particles", "2", "--no-progress"]
    out = str(tmp_path / "out")
    assert run_main([*tiny, "--out", out, "--resume"]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
    assert run_main([*tiny, "--out", out, "--resume-if-present"]) == 2
    assert capsys.readouterr().err.strip().endswith("--resume-if-present needs --checkpoint-every N")
    requeued = [*tiny, "--out", out, "--checkpoint-every", "10", "--resume-if-present"]
    assert run_main(requeued) == 0  # no checkpoint: starts
    first = (tmp_path / "out" / "metrics.json").read_text()
    state = torch.load(tmp_path / "out" / "checkpoint.pt", weights_only=True)
    assert state["step"] == 20
    saved = (tmp_path / "out" / "checkpoint.pt").stat()
    assert run_main(requeued) == 0  # resumes from step 20: nothing left to train, nothing saved
    now = (tmp_path / "out" / "checkpoint.pt").stat()  # a fresh start would have renamed in new files
    assert (now.st_ino, now.st_mtime_ns) == (saved.st_ino, saved.st_mtime_ns)
    second = (tmp_path / "out" / "metrics.json").read_text()
    drop = lambda text: re.sub(r'"\w*seconds": [0-9.e-]+', "", text)  # noqa: E731
    assert drop(first) == drop(second)
