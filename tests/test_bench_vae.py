"""The VAE benchmarks of issue 17 run as real processes with tiny arguments and print or write
what they promise (no speed assertions)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _run(*argv: str) -> str:
    done = subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, cwd=ROOT, timeout=300, env=ENV
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_vae_defaults_compares_the_run_with_the_plain_loop():
    argv = ["bench/vae_defaults.py", "--num-steps", "3", "--eval-particles", "2", "--gap-rows", "0"]
    result = json.loads(_run(*argv, "--eval-rows", "10", "--threads", "1", "--rescore-particles", "3"))
    ours, plain = result["ours"], result["plain_loop"]
    assert ours["eval_rows"] == 10 and 0 < ours["eval_seconds_fraction"] < 1
    for side in (ours, plain):
        assert math.isfinite(side["heldout_log_likelihood_per_datum"]) and side["svi_seconds"] > 0
    gap = plain["heldout_log_likelihood_per_datum"] - ours["heldout_log_likelihood_per_datum"]
    assert result["gap_heldout_log_likelihood"] == gap
    assert all(math.isfinite(side["rescored_heldout_log_likelihood_per_datum"]) for side in (ours, plain))


def test_importance_chunks_reports_kernel_time_by_chunk_size():
    result = json.loads(_run("bench/importance_chunks.py", "--rows", "16", "--samples", "4"))
    assert set(result["by_chunk_bytes"]) == {str(1 << 30), str(8 << 20)}
    assert all(r["user_s"] >= 0 and r["sys_s"] >= 0 for r in result["by_chunk_bytes"].values())


def test_importance_rows_times_both_batchings_of_the_same_draws():
    result = json.loads(_run("bench/importance_rows.py", "--rows", "20", "--samples", "3", "--repeats", "1"))
    row = result["by_samples"]["3"]
    assert row["ratio_default_over_512"] == row["default_s"] / row["rows_512_s"]
    assert row["default_gflops"] > 0 and row["rows_512_gflops"] > 0


def test_vae_gap_table_writes_the_table_and_the_figure(tmp_path):
    argv = ["bench/vae_gap_table.py", "--num-steps", "5", "--eval-particles", "3", "--particles", "2"]
    argv += ["--gap-steps", "5"]
    printed = _run(*argv, "--guides", "amortised", "--out", str(tmp_path))
    assert "| amortised | iwae | 2 |" in printed and "| amortised | elbo | 1 |" in printed
    assert (tmp_path / "vae_gaps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "vae_gaps.csv").read_text().count("\n") == 3  # header and two rows
