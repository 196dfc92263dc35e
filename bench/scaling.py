"""Benchmark: the cost of minibatched SVI as the data grow, in time per epoch and in memory.

Minibatched SVI touches B rows per step, so a step should cost the same at any N, an epoch (N / B
steps) time linear in N, and the working memory should not grow with N. This script measures
that for the Gaussian mixture with the exact guide (``guides.gmm_posterior``, c enumerated) at
N = 10^4, 10^5, 10^6 (``--quick``: 10^4, 10^5) held in memory on ``--device``, and, with
``--memmap PATH`` (written by ``bench/make_memmap.py``), at the N of a memory-mapped ``.npy``
file, e.g. 10^7 rows, read a minibatch at a time by :func:`read_rows` and moved to the device.

In memory the loop is :func:`inference.svi.fit_svi`'s (the data on the device, the minibatch's
indices passed as ``subsample=`` to model and guide, the plate scaling by N / B). From the file,
model and guide see only the B rows read, under ``poutine.scale(scale=N / B)``: the same
estimator, which the script checks at the first step on both paths against the exact
``-(N / B) sum_batch log p(x_n)`` (the exact guide makes the ELBO the log-likelihood). At least
``--min-steps`` steps are timed, in whole epochs (each epoch's permutation included) unless that
passes ``--max-steps``. Reported per size: seconds per step and per epoch, and memory; and as
``ratio`` the largest N's epoch time over the smallest N's scaled by N (1 = linear).

Memory: each size runs in a fresh process, so that its peak (``ru_maxrss``; on a GPU also
``torch.cuda.max_memory_allocated``) is its own; less the data held in memory it should not grow
with N, apart from the epoch's permutation (8 bytes a row). For the file, ``ru_maxrss`` also
counts the file's page-cache pages that the reads have mapped (the kernel maps whole folios
around each row touched: ~220 MB of a 320 MB file after one batch of 1,000 random rows on our
machine), which are shared and reclaimable; releasing them after each batch (``MADV_DONTNEED``)
made a read 25x slower (1.95 ms against 0.08) and the next read maps them again. The process's
own memory is the anonymous part, sampled every ``ANON_EVERY`` steps
(``anon_rss_max_sampled_bytes``, Linux). Prints one JSON object.

References:
    1. M. D. Hoffman, D. M. Blei, C. Wang and J. Paisley, "Stochastic Variational Inference",
       JMLR 14, 2013.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time

import numpy as np
import pyro
import torch
from arguments import require_at_least_one
from gmm_em import DTYPES, INIT_ROWS, initial_params, make_mixture, resolve_device, settings, sync
from make_memmap import fill_sample
from pyro import poutine

import guides
from gallery.models import gmm
from inference.svi import collect_params, make_elbo, make_optimizer, minibatches, svi_step, uses_enumeration

SIZES = {"quick": [10_000, 100_000], "full": [10_000, 100_000, 1_000_000]}
ANON_EVERY = 100  # steps between samples of the anonymous resident memory


def read_rows(
    array: np.ndarray, index: torch.Tensor, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """(B, D) the rows ``index`` (B,) of a memory-mapped (N, D) array, on ``device``: the indices
    sorted (the order within a minibatch does not change the ELBO, and sorted reads walk the file
    forwards), the rows copied out of the mapping in one gather, then moved."""
    rows = torch.from_numpy(array[np.sort(index.numpy())])  # fancy indexing copies
    return rows.to(device=device, dtype=dtype)


def anon_rss_bytes() -> int | None:
    """The process's resident anonymous memory now (Linux ``RssAnon``: not file pages), else None."""
    try:
        with open("/proc/self/status") as status:
            line = next(line for line in status if line.startswith("RssAnon:"))
    except (OSError, StopIteration):
        return None
    return int(line.split()[1]) * 1024


def peak_rss_bytes() -> int:
    """The process's peak resident memory (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def measure(args, num_data: int | None, memmap_path: str | None) -> dict:
    """One size, in this process: build the loop, time it, read the peak memory."""
    device, dtype = resolve_device(args.device), DTYPES[args.dtype]
    rss_at_start = peak_rss_bytes()
    if memmap_path is not None:
        array = np.load(memmap_path, mmap_mode="r")  # (N, D) float64, nothing read yet
        num_data, obs_dim = array.shape
        head = torch.from_numpy(np.array(array[:INIT_ROWS]))
        data, data_bytes = None, 0
    else:
        obs_dim = args.obs_dim
        host = fill_sample(
            np.empty((num_data, obs_dim)), make_mixture(args.components, obs_dim, args.seed), args.seed + 1
        )
        head = torch.from_numpy(host[:INIT_ROWS].copy())
        data = torch.from_numpy(host).to(device=device, dtype=dtype)  # (N, D), on the device
        converted = data.device.type == "cpu" and data.data_ptr() != host.ctypes.data  # e.g. float32
        data_bytes = host.nbytes + (data.numel() * data.element_size() if converted else 0)  # in host memory
    init = initial_params(head, args.components, args.seed).to(device=device, dtype=dtype)
    batch_size = min(args.batch_size, num_data)
    kwargs = {"num_components": args.components, "init": init}
    model, guide = gmm.model, guides.gmm_posterior
    index_device = device if data is not None else torch.device("cpu")

    if data is not None:  # fit_svi's loop: the minibatch is its indices

        def batch_of(index: torch.Tensor) -> torch.Tensor:
            return index

        def loss_fn(index: torch.Tensor) -> torch.Tensor:
            return elbo.differentiable_loss(model, guide, data, subsample=index, **kwargs)

        def rows_of(index: torch.Tensor) -> torch.Tensor:
            return data[index]
    else:  # from the file: the minibatch is its rows, scaled up to the N data points
        scale = num_data / batch_size

        def batch_of(index: torch.Tensor) -> torch.Tensor:
            return read_rows(array, index, device, dtype)

        def loss_fn(rows: torch.Tensor) -> torch.Tensor:
            return elbo.differentiable_loss(
                poutine.scale(model, scale=scale), poutine.scale(guide, scale=scale), rows, **kwargs
            )

        def rows_of(rows: torch.Tensor) -> torch.Tensor:
            return rows

    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    warmup = minibatches(num_data, batch_size, index_device, args.seed + 1)
    first = batch_of(next(warmup))
    if data is not None:
        elbo = make_elbo(uses_enumeration(model, guide, data, subsample=first, **kwargs))
    else:
        elbo = make_elbo(uses_enumeration(model, guide, first, **kwargs))
    loss, named_params = collect_params(loss_fn, first)
    with torch.no_grad():
        exact = -(num_data / batch_size) * gmm.log_likelihood(rows_of(first), gmm.current_params()).sum()
    loss_check = float((loss.detach() - exact).abs() / exact.abs())
    params = list(named_params.values())
    steps_per_epoch = num_data // batch_size
    epochs = max(1, math.ceil(args.min_steps / steps_per_epoch))
    steps = min(epochs * steps_per_epoch, args.max_steps)
    optimizer, schedule = make_optimizer(params, lr=args.lr, num_steps=args.warmup + steps)

    with pyro.validation_enabled(False):
        for _ in range(args.warmup):
            svi_step(loss_fn, params, optimizer, batch_of(next(warmup)))
            schedule.step()
        warmup.close()  # frees its epoch's permutation
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        batches = minibatches(num_data, batch_size, index_device, args.seed)  # from an epoch's start
        losses = torch.empty(steps, dtype=dtype, device=device)
        anon = [anon_rss_bytes()]
        sync(device)
        start = time.perf_counter()
        for step in range(steps):
            losses[step] = svi_step(loss_fn, params, optimizer, batch_of(next(batches)))
            schedule.step()
            if step % ANON_EVERY == 0:
                anon.append(anon_rss_bytes())
        sync(device)
        seconds = time.perf_counter() - start
    if not bool(torch.isfinite(losses).all()):
        raise RuntimeError("SVI diverged: a non-finite loss; lower --lr")
    step_s = seconds / steps
    result = {
        "num_data": num_data,
        "source": "memmap" if data is None else "memory",
        "batch_size": batch_size,
        "steps_timed": steps,
        "full_epochs": steps == epochs * steps_per_epoch,
        "step_s": step_s,
        "epoch_s": step_s * steps_per_epoch,
        "epoch_s_per_million_rows": step_s * steps_per_epoch * 1e6 / num_data,
        "loss_check_rel_diff": loss_check,
        "data_bytes": data_bytes,
        "rss_at_start_bytes": rss_at_start,
        "peak_rss_bytes": peak_rss_bytes(),
        "peak_rss_minus_data_bytes": peak_rss_bytes() - data_bytes,
        "anon_rss_max_sampled_bytes": None if None in anon else max(anon),
        "anon_rss_minus_data_bytes": None if None in anon else max(anon) - data_bytes,
    }
    if memmap_path is not None:
        result["file_bytes"] = int(array.nbytes)
    if device.type == "cuda":
        on_device = 0 if data is None else data.numel() * data.element_size()
        result["cuda_peak_bytes"] = torch.cuda.max_memory_allocated(device)
        result["cuda_peak_minus_data_bytes"] = result["cuda_peak_bytes"] - on_device
    return result


def child_argv(args) -> list[str]:
    """The flags that one size's process needs, as given to this one."""
    argv = ["--device", args.device, "--dtype", args.dtype, "--batch-size", str(args.batch_size)]
    argv += ["--obs-dim", str(args.obs_dim), "--components", str(args.components), "--lr", str(args.lr)]
    argv += ["--min-steps", str(args.min_steps), "--max-steps", str(args.max_steps)]
    argv += ["--warmup", str(args.warmup), "--seed", str(args.seed)]
    return argv + (["--threads", str(args.threads)] if args.threads is not None else [])


def run_child(args, *which: str) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, *which, *child_argv(args)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(which)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def main(args) -> dict:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.one_size is not None or args.one_memmap is not None:
        return measure(args, args.one_size, args.one_memmap)
    device = resolve_device(args.device)
    sizes = args.sizes or SIZES["quick" if args.quick else "full"]
    rows = [run_child(args, "--one-size", str(n)) for n in sizes]
    if args.memmap is not None:
        rows.append(run_child(args, "--one-memmap", args.memmap))
    smallest, largest = min(rows, key=lambda r: r["num_data"]), max(rows, key=lambda r: r["num_data"])
    linear = smallest["epoch_s"] * largest["num_data"] / smallest["num_data"]
    working = [r["peak_rss_minus_data_bytes"] for r in rows]
    anon = [r["anon_rss_minus_data_bytes"] for r in rows]
    result = {
        "ours_s": largest["epoch_s"],
        "baseline_s": linear,
        "ratio": largest["epoch_s"] / linear,
        "step_s_max_over_min": max(r["step_s"] for r in rows) / min(r["step_s"] for r in rows),
        "peak_rss_minus_data_spread_bytes": max(working) - min(working),
        "anon_rss_minus_data_spread_bytes": None if None in anon else max(anon) - min(anon),
        "sizes": rows,
        "settings": settings(args, device)
        | {
            "model": f"gmm, full covariance, K = {args.components}",
            "guide": "gmm_posterior (exact), c enumerated",
            "obs_dim": args.obs_dim,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "min_steps": args.min_steps,
            "max_steps": args.max_steps,
            "warmup": args.warmup,
            "memmap": args.memmap,
            "note": "ratio = epoch time at the largest N / (smallest N's epoch time x N ratio); 1 = linear",
        },
    }
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float64", choices=list(DTYPES))
    parser.add_argument("--quick", action="store_true", help="N = 10^4, 10^5 (default 10^4, 10^5, 10^6)")
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=None, help="in-memory N, in place of the defaults"
    )
    parser.add_argument(
        "--memmap", default=None, help="also a .npy file from bench/make_memmap.py, read by rows"
    )
    parser.add_argument("--obs-dim", type=int, default=4, help="of the in-memory data (the file has its own)")
    parser.add_argument("--components", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--min-steps", type=int, default=200, help="whole epochs of at least this many steps")
    parser.add_argument("--max-steps", type=int, default=20_000, help="cap on timed steps (a partial epoch)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--one-size", type=int, default=None, help=argparse.SUPPRESS)  # one size's process
    parser.add_argument("--one-memmap", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    require_at_least_one(
        parser, args, "obs_dim", "components", "batch_size", "min_steps", "max_steps", "threads"
    )
    if args.warmup < 0 or not args.lr > 0:
        parser.error("--warmup must be at least 0 and --lr positive")
    if any(n < args.components for n in args.sizes or []):
        parser.error("every --sizes N must be at least --components")
    return args


if __name__ == "__main__":
    print(json.dumps(main(parse_args()), indent=2))
