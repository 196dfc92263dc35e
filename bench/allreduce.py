"""Benchmark: what one gradient all-reduce costs, against the SVI step it is added to.

Data-parallel SVI (`inference/distributed.py`) adds one all-reduce of the flattened gradients to
every step. Whether W processes shorten an epoch depends on that call's latency next to the
step's own time. This script measures both in the same run: the mean time of
``dist.all_reduce`` on a float64 buffer of ``--numel`` elements (default 105: the gradients of
the Gaussian mixture with K = 5, D = 4, whose weights, locs and Cholesky factors have
5 + 20 + 80 entries) between ``--world-size`` gloo processes on this machine, and, as the
baseline, the mean time of one single-process SVI step of that mixture with the exact guide on
a minibatch of ``--batch-size`` rows (`inference.svi.svi_step`). ``ratio`` = all-reduce / step.
Means, because a loop that waits for every call pays the slow ones too; the all-reduce's median
and 90th percentile are reported beside. Prints one JSON object.

    OMP_NUM_THREADS=1 python bench/allreduce.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import pyro
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import guides
from gallery.models import gmm
from inference.svi import collect_params, make_elbo, make_optimizer, minibatches, svi_step


def step_seconds(batch_size: int, repeats: int) -> float:
    """Mean seconds of one SVI step: the mixture (K = 5, D = 4), exact guide, B rows."""
    generator = torch.Generator().manual_seed(0)
    data = torch.randn(20 * batch_size, 4, generator=generator, dtype=torch.float64)
    init = gmm.init_params(data[:2000], 5, generator=generator)
    kwargs = dict(num_components=5, init=init)
    elbo = make_elbo(True)

    def loss_fn(subsample):
        return elbo.differentiable_loss(gmm.model, guides.gmm_posterior, data, subsample=subsample, **kwargs)

    pyro.clear_param_store()
    batches = minibatches(len(data), batch_size, data.device)
    _, params = collect_params(loss_fn, next(batches))
    optimizer, _ = make_optimizer(list(params.values()), lr=0.01, num_steps=repeats)
    times = []
    with pyro.validation_enabled(False):
        for _ in range(repeats):
            subsample = next(batches)
            start = time.perf_counter()
            svi_step(loss_fn, list(params.values()), optimizer, subsample)
            times.append(time.perf_counter() - start)
    return statistics.fmean(times[repeats // 10 :])


def _worker(rank: int, world_size: int, store: str, numel: int, repeats: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    buffer = torch.zeros(numel, dtype=torch.float64)
    for _ in range(repeats // 10):  # warm-up
        dist.all_reduce(buffer)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        dist.all_reduce(buffer)
        times.append(time.perf_counter() - start)
    if rank == 0:
        deciles = statistics.quantiles(times, n=10)
        with open(out, "w") as handle:
            json.dump({"mean": statistics.fmean(times), "median": deciles[4], "p90": deciles[8]}, handle)
    dist.destroy_process_group()


def main(args) -> dict:
    torch.set_num_threads(1)
    step = step_seconds(args.batch_size, args.repeats)
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "allreduce.json")
        spawn_args = (args.world_size, os.path.join(folder, "store"), args.numel, args.repeats, out)
        mp.spawn(_worker, args=spawn_args, nprocs=args.world_size)
        with open(out) as handle:
            allreduce = json.load(handle)
    return {
        "benchmark": "allreduce",
        "ours_s": allreduce["mean"],
        "baseline_s": step,
        "ratio": allreduce["mean"] / step,
        "median_s": allreduce["median"],
        "p90_s": allreduce["p90"],
        "baseline": f"one single-process SVI step: mixture K = 5, D = 4, exact guide, B = {args.batch_size}",
        "settings": {
            "backend": "gloo",
            "world_size": args.world_size,
            "numel": args.numel,
            "dtype": "float64",
            "repeats": args.repeats,
            "threads": 1,
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "pyro": pyro.__version__,
        },
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--numel", type=int, default=105, help="float64 elements all-reduced")
    parser.add_argument("--world-size", type=int, default=2, help="gloo processes")
    parser.add_argument("--batch-size", type=int, default=1000, help="rows of the baseline's step")
    parser.add_argument("--repeats", type=int, default=1000, help="timed calls (and steps)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    print(json.dumps(main(parse_args()), indent=2))
