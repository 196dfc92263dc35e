"""``run MODEL --data FILE.npy --stream``: the file stays on disk and the run is the in-memory run.

With the exact mixture guide (c summed out, no sampling) and the same seed, a streamed run draws
the same minibatches as the in-memory run and takes the same steps; only the order of sums
differs, so every reported number agrees to 1e-12 relative (rounding, see
tests/gallery/test_mapped.py). Bad input ends with exit status 2 and one line naming the fix.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from gallery import load
from tests.test_cli import TINY, run_main

pytestmark = pytest.mark.usefixtures("one_thread")
COMPARED = (
    "elbo_per_datum",
    "log_likelihood_per_datum",
    "initial_log_likelihood_per_datum",
    "em_log_likelihood_per_datum",
    "num_data",
    "obs_dim",
    "preprocessing",
    "world_size",
)


@pytest.fixture(scope="module")
def iris_file(tmp_path_factory):
    """Iris as a .npy, with a constant fifth column for --drop-constant-columns."""
    data = load("iris").data.numpy()
    path = tmp_path_factory.mktemp("data") / "iris.npy"
    np.save(path, np.concatenate([data, np.full((len(data), 1), 7.0)], 1))
    return path


def _metrics(argv: list[str], out) -> dict:
    assert run_main(["run", *argv, "--out", str(out), "--no-progress"]) == 0
    return json.loads((out / "metrics.json").read_text())


def _assert_same_run(streamed: dict, in_memory: dict) -> None:
    assert streamed["stream"] is True and in_memory["stream"] is False
    for key in COMPARED:
        if isinstance(in_memory[key], float):
            assert streamed[key] == pytest.approx(in_memory[key], rel=1e-12), key
        else:
            assert streamed[key] == in_memory[key], key


@pytest.mark.parametrize("options", [["--em-iters", "5"], ["--standardize", "--em-iters", "5"]])
def test_a_streamed_run_is_the_in_memory_run(tmp_path, iris_file, options):
    argv = ["gmm", "--data", str(iris_file), "--drop-constant-columns", "--batch-size", "30"]
    argv += ["--num-steps", "40", "--eval-particles", "2", *options]
    in_memory = _metrics(argv, tmp_path / "memory")
    streamed = _metrics([*argv, "--stream"], tmp_path / "stream")
    _assert_same_run(streamed, in_memory)
    assert streamed["preprocessing"].startswith("drop-constant-columns(1)")


def test_a_streamed_ppca_reaches_the_closed_form(tmp_path, iris_file):
    """The exact PPCA guide samples z, so the streamed fit is checked against the answer, not
    against the in-memory run: 600 steps of B = 50 reach Tipping and Bishop's maximum within
    1e-3 relative, the bound the distributed PPCA run meets (tests/test_distributed.py)."""
    argv = ["ppca", "--data", str(iris_file), "--drop-constant-columns", "--stream", "--batch-size", "50"]
    metrics = _metrics([*argv, "--num-steps", "600", "--lr", "0.05"], tmp_path)
    closed = metrics["closed_form_log_likelihood_per_datum"]
    assert metrics["log_likelihood_per_datum"] == pytest.approx(closed, rel=1e-3)
    assert closed == pytest.approx(metrics["em_log_likelihood_per_datum"], rel=1e-6)


def test_two_streaming_processes_are_two_in_memory_processes(tmp_path, iris_file):
    argv = ["gmm", "--data", str(iris_file), "--drop-constant-columns", "--batch-size", "25"]
    argv += ["--num-steps", "30", "--em-iters", "5", "--eval-particles", "2", "--num-processes", "2"]
    in_memory = _metrics(argv, tmp_path / "memory")
    streamed = _metrics([*argv, "--stream"], tmp_path / "stream")
    assert streamed["world_size"] == 2
    _assert_same_run(streamed, in_memory)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["ppca"], "--stream reads a minibatch at a time from the file: pass --batch-size"),
        (["ppca", "--batch-size", "10", "--guide", "mean-field"], "use --guide amortised"),
        (["gmm", "--batch-size", "10", "--guide", "mean-field", "--drop-constant-columns"], "amortised"),
        (
            ["factor-analysis", "--batch-size", "10", "--guide", "auto-normal", "--drop-constant-columns"],
            "amortised",
        ),
        (["ppca", "--batch-size", "10", "--arviz"], "--arviz draws every row's latent"),
        (["vae", "--batch-size", "10"], "--stream is for gmm, factor-analysis and ppca"),
        (["gmm", "--batch-size", "10"], r"column\(s\) 4 of the data are constant"),
    ],
)
def test_stream_refuses_what_it_cannot_do(tmp_path, iris_file, capsys, argv, message):
    out = tmp_path / "out"
    argv = ["run", argv[0], "--data", str(iris_file), "--stream", *argv[1:], *TINY, "--out", str(out)]
    assert run_main(argv) == 2
    err = capsys.readouterr().err
    assert message.replace("\\", "") in err, err
    assert not out.exists()


def test_stream_refuses_a_bad_file(tmp_path, capsys):
    data = load("iris").data.numpy().copy()
    data[101, 2] = np.nan
    np.save(tmp_path / "nan.npy", data)
    (tmp_path / "x.csv").write_text("1,2\n3,4\n5,6\n")
    base = ["run", "gmm", "--stream", "--batch-size", "10", *TINY, "--out", str(tmp_path / "out")]
    assert run_main([*base, "--data", str(tmp_path / "nan.npy")]) == 2
    assert "NaN or inf in 1 row(s) (rows 101)" in capsys.readouterr().err
    assert run_main([*base, "--data", str(tmp_path / "x.csv")]) == 2
    assert "--stream reads a .npy file" in capsys.readouterr().err
