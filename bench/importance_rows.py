"""Benchmark: the importance-weighted estimate's rows per batch, 512 against the default.

``inference.importance.importance_estimate`` on 2,000 binary 784-pixel rows through Pyro's VAE
example networks (784-400-z50, Bernoulli), K from the command line. The baseline is 512 rows
per batch (the default before): a chunk's (samples, rows, d) tensor under ``CHUNK_BYTES`` (8 MiB)
then has room for 5 samples, and the encoder runs once per chunk. The default cuts the rows so
that a chunk has room for ``SAMPLES_PER_CHUNK`` (32) samples or all K. Prints, for each K, the
seconds of each (the best of ``--repeats``), their ratio, and the networks' GFLOP/s (matrix
products, ``gallery.app.eval_plan.network_cost``); both draw the same number of samples.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from importance_chunks import pyro_example

from gallery.app.eval_plan import network_cost
from gallery.models import vae
from inference.importance import importance_estimate


def seconds(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main(args) -> dict:
    data, decoder, encoder = pyro_example(args.rows, args.threads)
    cost = network_cost(decoder, encoder, 784)
    results = {}
    for k in args.samples:
        flops = args.rows * (cost.row + k * cost.sample)
        timing = {
            name: seconds(
                lambda b=batch, k=k: importance_estimate(
                    vae.model, encoder, data, num_samples=k, batch_size=b, decoder=decoder
                ),
                args.repeats,
            )
            for name, batch in (("rows_512", 512), ("default", None))
        }
        results[str(k)] = {
            **{f"{name}_s": s for name, s in timing.items()},
            "ratio_default_over_512": timing["default"] / timing["rows_512"],
            **{f"{name}_gflops": flops / s / 1e9 for name, s in timing.items()},
        }
    return {"settings": {**vars(args), "torch": torch.__version__}, "by_samples": results}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, nargs="+", default=[36, 200])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    print(json.dumps(main(parser.parse_args()), indent=1))
