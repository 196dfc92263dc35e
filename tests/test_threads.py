"""``--threads N``: torch's CPU threads during a command, recorded, and put back afterwards."""

from __future__ import annotations

import json

import pytest
import torch

import gallery
from gallery.app import cli

FLAGS = ["--num-steps", "5", "--em-iters", "5", "--no-progress"]


@pytest.fixture
def two_threads():
    """The session at 2 threads, whatever the machine has, so that 1 is a change."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.filterwarnings("ignore:EM did not converge")
def test_run_uses_records_and_restores_threads(two_threads, tmp_path, monkeypatch, capsys):
    seen = []
    import gallery.app.pipeline as pipeline

    real = pipeline._fit

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "_fit", spy)
    assert cli.main(["run", "ppca", "--threads", "1", "--out", str(tmp_path), *FLAGS]) == 0
    assert seen == [1]  # the computation ran with one thread
    assert json.loads((tmp_path / "metrics.json").read_text())["threads"] == 1
    assert torch.get_num_threads() == 2  # and the caller's setting is back


@pytest.mark.filterwarnings("ignore:EM did not converge")
def test_default_is_torchs(two_threads, tmp_path, capsys):
    assert cli.main(["run", "ppca", "--out", str(tmp_path), *FLAGS]) == 0
    assert json.loads((tmp_path / "metrics.json").read_text())["threads"] == 2


@pytest.mark.filterwarnings("ignore:EM did not converge")
def test_fit_leaves_the_sessions_threads(two_threads):
    fitted = gallery.fit("ppca", "iris", threads=1, num_steps=5, em_iters=5, progress=False)
    assert fitted.metrics["threads"] == 1 and torch.get_num_threads() == 2


@pytest.mark.parametrize("command", [["run", "ppca"], ["compare", "--quick"], ["figures", "--quick"]])
def test_threads_below_one_refused_in_one_line(command, tmp_path, capsys):
    assert cli.main([*command, "--threads", "0", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--threads must be at least 1, got 0" in err
    assert not (tmp_path / "out").exists()
