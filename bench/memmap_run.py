"""Benchmark: ``python -m gallery run --stream`` on a memory-mapped file, in time per epoch and memory.

The issue's measurement: the whole ``run`` command (checks, SVI, EM, evaluation, outputs) on a
``.npy`` of N rows written by ``bench/make_memmap.py``, with the data left in the file
(``--stream``) for 1 and for 2 data-parallel processes (``--num-processes 2``, gloo on the CPU;
each process reads its own half of the rows), against the named baseline in the same run: the
same command with the data read into memory (no ``--stream``), 1 process. ``--small-rows`` adds
a streamed run on the file's first rows (a second file), to show that memory does not grow
with N.

Each run is one epoch of SVI: ``N / (W B)`` steps of B rows per process, the mixture with the
exact guide (c summed out), two EM iterations and a one-particle ELBO over all rows. Time per
epoch is ``svi_seconds`` from its ``metrics.json``. Memory is sampled every 50 ms from
``/proc`` for every process of the run (the launcher, torchrun, its workers) and reported per
process as the peak of

- ``anon``: resident anonymous memory (``RssAnon``): the process's own arrays, what grows if a
  copy of the data is made;
- ``rss``: all resident memory (``VmHWM``, the kernel's high-water mark), which also counts the
  pages of the mapped file that reads have touched: shared page cache that the kernel can
  reclaim, which grows towards the file's size as an epoch reads every row.

``anon_total`` sums the processes' peaks (an upper bound on their joint peak). Linux only.
Prints one JSON object; ratios are against the in-memory baseline.

    python bench/make_memmap.py /tmp/gmm-1e7.npy --num-data 10000000 --dim 4
    python bench/memmap_run.py /tmp/gmm-1e7.npy --small-rows 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_SECONDS = 0.05


def _status(pid: int) -> dict[str, int]:
    """``RssAnon`` and ``VmHWM`` of one process in bytes (empty if it has gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            fields = dict(line.split(":", 1) for line in status if ":" in line)
    except OSError:
        return {}
    return {key: int(fields[key].split()[0]) * 1024 for key in ("RssAnon", "VmHWM") if key in fields}


def _descendants(root: int) -> list[int]:
    """``root`` and every process below it, from the parent ids in ``/proc/*/stat``."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry))
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def measure(command: list[str], env: dict) -> tuple[int, float, dict[int, dict[str, int]]]:
    """Run ``command``; return its exit status, wall seconds and each process's peak memory."""
    peaks: dict[int, dict[str, int]] = {}
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for pid in _descendants(process.pid):
                now = _status(pid)
                peak = peaks.setdefault(pid, {"anon": 0, "rss": 0})
                peak["anon"] = max(peak["anon"], now.get("RssAnon", 0))
                peak["rss"] = max(peak["rss"], now.get("VmHWM", 0))
            time.sleep(SAMPLE_SECONDS)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = process.communicate()[0].decode(errors="replace")
    done.set()
    sampler.join()
    if process.returncode != 0:
        print(output, file=sys.stderr)
    return process.returncode, time.perf_counter() - start, peaks


def run_case(path: Path, *, stream: bool, num_processes: int, args, out: Path) -> dict:
    num_data = int(np.load(path, mmap_mode="r").shape[0])
    steps = num_data // (num_processes * args.batch_size)  # one epoch of every process's shard
    command = [sys.executable, "-m", "gallery", "run", "gmm", "--data", str(path)]
    command += ["--components", str(args.components), "--batch-size", str(args.batch_size)]
    command += ["--num-steps", str(steps), "--em-iters", "2", "--eval-particles", "1"]
    command += ["--device", args.device, "--no-progress", "--out", str(out), "--seed", "0"]
    command += ["--num-processes", str(num_processes)] + (["--stream"] if stream else [])
    path_list = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": os.pathsep.join(path_list)}
    status, wall, peaks = measure(command, env)
    if status != 0:
        raise SystemExit(f"{' '.join(command)} failed with status {status}")
    metrics = json.loads((out / "metrics.json").read_text())
    workers = sorted(peaks.values(), key=lambda p: -p["anon"])
    return {
        "num_data": num_data,
        "stream": stream,
        "num_processes": num_processes,
        "steps_per_process": steps,
        "epoch_seconds": metrics["svi_seconds"],
        "ms_per_step": 1000 * metrics["svi_seconds"] / steps,
        "em_seconds": metrics["em_seconds"],
        "wall_seconds": wall,
        "log_likelihood_per_datum": metrics["log_likelihood_per_datum"],
        "anon_max_bytes": workers[0]["anon"],
        "anon_total_bytes": sum(p["anon"] for p in workers),
        "rss_max_bytes": max(p["rss"] for p in workers),
        "processes": len(workers),
        "cuda_max_memory_allocated_bytes": metrics.get("cuda_max_memory_allocated_bytes"),
    }


def main(args) -> dict:
    path = Path(args.path)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        cases = [dict(stream=False, num_processes=1), dict(stream=True, num_processes=1)]
        if args.device == "cpu":
            cases.append(dict(stream=True, num_processes=2))
        results = [run_case(path, **case, args=args, out=scratch / f"run{i}") for i, case in enumerate(cases)]
        if args.small_rows:
            small = scratch / "small.npy"
            np.save(small, np.load(path, mmap_mode="r")[: args.small_rows])
            results.append(run_case(small, stream=True, num_processes=1, args=args, out=scratch / "small"))
    baseline = results[0]
    for row in results:
        row["epoch_ratio"] = row["epoch_seconds"] / baseline["epoch_seconds"]
        row["anon_ratio"] = row["anon_max_bytes"] / baseline["anon_max_bytes"]
    return {
        "benchmark": "memmap_run",
        "baseline": "the same run command with the data read into memory, 1 process",
        "file": str(path),
        "file_bytes": path.stat().st_size,
        "device": args.device,
        "batch_size_per_process": args.batch_size,
        "threads_per_process": args.threads,
        "cpu_count": os.cpu_count(),
        "results": results,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", help="a .npy file written by bench/make_memmap.py")
    parser.add_argument("--batch-size", type=int, default=1000, help="rows per step per process")
    parser.add_argument("--components", type=int, default=5, help="K of the fitted mixture")
    parser.add_argument("--device", default="cpu", help="cpu (1 and 2 processes) or cuda (1 process)")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each process")
    parser.add_argument("--small-rows", type=int, default=0, help="also stream the first rows only")
    return parser.parse_args(argv)


if __name__ == "__main__":
    print(json.dumps(main(parse_args()), indent=2))
