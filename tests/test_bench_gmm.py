"""The mixture benchmarks run as real processes with tiny arguments and print what they promise.
Timings are only checked to be positive and finite: speed is the benchmark's report, not a test.
That the fused, chunked EM path the benchmark times computes what the plain E- and M-steps do is
tested in tests/inference/test_em.py."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"device", "device_name", "dtype", "threads", "torch", "pyro"}


def run_bench(script: str, *args: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, f"bench/{script}", *args],
        capture_output=True, text=True, cwd=ROOT, timeout=120, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def assert_times(result: dict, *keys: str) -> None:
    for key in ("ours_s", "baseline_s", "ratio", *keys):
        assert math.isfinite(result[key]) and result[key] > 0, key
    assert result["ratio"] == result["ours_s"] / result["baseline_s"]
    assert SETTINGS <= result["settings"].keys()
    assert result["settings"]["device"] == "cpu"


def test_gmm_em_matches_sklearn_and_times_both():
    args = ["--num-data", "2000", "--obs-dim", "3", "--components", "3", "--iters", "5"]
    result = run_bench("gmm_em.py", *args, "--repeats", "1", "--threads", "1")
    assert_times(result)
    # the same EM from the same start in float64: the issue asks 1e-6 nats per datum (measured ~1e-15)
    assert result["log_likelihood_diff"] < 1e-6
    assert result["log_likelihood_ours"] > result["log_likelihood_start"]
    assert result["loc_max_abs_diff"] < 1e-6
    assert result["bytes_per_iter"] == 2000 * 3 * 8 and result["roofline_s"] is None  # no GPU here
    settings = result["settings"]
    assert [settings[key] for key in ("num_data", "obs_dim", "components", "iters", "tol")] == [
        2000,
        3,
        3,
        5,
        0,
    ]
    assert settings["dtype"] == "float64" and settings["threads"] == 1
    assert all(len(times) == 1 for times in result["repeats_s"].values())


def test_gmm_svi_vs_em_reports_time_and_steps_to_ems_likelihood():
    args = ["--num-data", "500", "--obs-dim", "2", "--components", "2", "--batch-size", "100"]
    args += ["--max-steps", "300", "--eval-every", "5", "--repeats", "1", "--threads", "1"]
    result = run_bench("gmm_svi_vs_em.py", *args)
    assert_times(result, "minibatch_s", "minibatch_ratio", "em_to_target_s")
    assert result["target_log_likelihood"] < result["em_log_likelihood"]
    for name in ("svi", "minibatch"):
        steps, reached = result[f"{name}_steps"], result[f"{name}_reached"]
        assert 0 < steps <= 300 and steps % 5 == 0  # checked every 5 steps
        assert reached == (result[f"{name}_log_likelihood"] >= result["target_log_likelihood"])
    assert result["em_iters_to_target"] <= result["em_iters"]
    assert result["settings"]["batch_size"] == 100


def test_scaling_in_memory_and_from_a_memmapped_file(tmp_path):
    path = tmp_path / "rows.npy"
    made = run_bench("make_memmap.py", str(path), "--num-data", "3000", "--dim", "2", "--components", "2")
    assert made["bytes"] == path.stat().st_size > 3000 * 2 * 8
    args = ["--sizes", "1000", "2000", "--memmap", str(path), "--obs-dim", "2", "--components", "2"]
    args += [
        "--batch-size",
        "100",
        "--min-steps",
        "10",
        "--max-steps",
        "15",
        "--warmup",
        "1",
        "--threads",
        "1",
    ]
    result = run_bench("scaling.py", *args)
    assert_times(result, "step_s_max_over_min")
    rows = result["sizes"]
    assert [(row["num_data"], row["source"]) for row in rows] == [
        (1000, "memory"),
        (2000, "memory"),
        (3000, "memmap"),
    ]
    for row in rows:
        for key in ("step_s", "epoch_s", "peak_rss_bytes", "anon_rss_max_sampled_bytes"):
            assert math.isfinite(row[key]) and row[key] > 0, key
        # both paths are the exact -(N / B) sum log p(x) of the batch with the exact guide
        assert row["loss_check_rel_diff"] < 1e-10
        assert math.isclose(row["epoch_s"], row["step_s"] * (row["num_data"] // 100))
    assert [row["steps_timed"] for row in rows] == [10, 15, 15]  # one epoch of 10; epochs of 20 and 30 capped
    assert [row["full_epochs"] for row in rows] == [True, False, False]
    assert rows[0]["data_bytes"] == 1000 * 2 * 8 and rows[2]["data_bytes"] == 0
    assert rows[2]["file_bytes"] == 3000 * 2 * 8


def test_memmap_run_times_the_run_command_in_memory_streamed_and_on_two_processes(tmp_path):
    """Four real ``run`` commands on a 4,000-row file: in memory (the baseline), streamed with 1
    and 2 processes, and streamed on its first 1,000 rows; one epoch each. The streamed runs
    take the in-memory run's steps (tests/test_stream.py), so their log p(x) agree."""
    path = tmp_path / "rows.npy"
    run_bench("make_memmap.py", str(path), "--num-data", "4000", "--dim", "2", "--components", "2")
    result = run_bench(
        "memmap_run.py", str(path), "--batch-size", "200", "--components", "2", "--small-rows", "1000"
    )
    rows = result["results"]
    assert [(r["num_data"], r["stream"], r["num_processes"]) for r in rows] == [
        (4000, False, 1),
        (4000, True, 1),
        (4000, True, 2),
        (1000, True, 1),
    ]
    assert [r["steps_per_process"] for r in rows] == [20, 20, 10, 5]
    for row in rows:
        for key in ("epoch_seconds", "ms_per_step", "anon_max_bytes", "rss_max_bytes", "epoch_ratio"):
            assert math.isfinite(row[key]) and row[key] > 0, key
        assert row["anon_total_bytes"] >= row["anon_max_bytes"]
    assert rows[0]["epoch_ratio"] == 1.0 and rows[2]["processes"] >= 3  # launcher, torchrun, 2 workers
    assert math.isclose(
        rows[1]["log_likelihood_per_datum"], rows[0]["log_likelihood_per_datum"], rel_tol=1e-12
    )


def test_allreduce_times_the_call_against_an_svi_step():
    result = run_bench("allreduce.py", "--repeats", "20", "--batch-size", "50")
    for key in ("ours_s", "baseline_s", "ratio"):
        assert math.isfinite(result[key]) and result[key] > 0, key
    assert result["ratio"] == result["ours_s"] / result["baseline_s"]
    assert result["settings"]["world_size"] == 2 and result["settings"]["numel"] == 105


def test_gmm_step_times_eager_and_graph_and_the_graph_is_eager_bit_for_bit():
    """The compiled rows of the step benchmark (``graph``; inductor's compile is too slow for a
    test): same losses bit for bit, as tests/inference/test_compiled.py shows for fit_svi."""
    args = ["--num-data", "400", "--batch-size", "50", "--steps", "3", "--repeats", "1", "--warmup", "1"]
    result = run_bench("gmm_step.py", *args, "--modes", "off,graph", "--threads", "1")
    for key in ("off_s", "graph_s", "graph_ratio"):
        assert math.isfinite(result[key]) and result[key] > 0, key
    assert result["graph_ratio"] == result["graph_s"] / result["off_s"]
    assert result["graph_equals_eager"] is True
    assert set(result["first_step_s"]) == {"off", "graph"}
    assert SETTINGS <= result["settings"].keys() and result["settings"]["batch_size"] == 50
