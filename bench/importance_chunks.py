"""Benchmark: the importance-weighted estimate's CPU time in the kernel, by chunk size.

``inference.importance.importance_estimate`` on 512 binary 784-pixel rows, K = 200, through
Pyro's VAE example networks (784-400-z50, Bernoulli), with ``CHUNK_BYTES`` (the largest
(samples, rows, d) tensor of one chunk) from the command line. Prints wall, user and system
seconds and minor page faults: large blocks that glibc maps and unmaps on every chunk show up
as system time and page faults. Run it with and without ``MALLOC_MMAP_THRESHOLD_`` and
``MALLOC_TRIM_THRESHOLD_`` set to compare with an allocator that keeps its blocks.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch

import guides
import inference.importance as importance
from gallery.models import vae


def pyro_example(rows: int, threads: int):
    """``rows`` binary 784-pixel rows and Pyro's VAE example networks, from seed 0, on
    ``threads`` CPU threads: (data, decoder, encoder)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    data = torch.bernoulli(torch.full((rows, 784), 0.15))
    decoder = vae.Decoder(784, 50, hidden=(400,), likelihood="bernoulli")
    return data, decoder, guides.AmortisedNormal(784, 50, hidden=(400,))


def main(args) -> dict:
    data, decoder, encoder = pyro_example(args.rows, args.threads)
    results = {}
    for chunk_bytes in args.chunk_bytes:
        importance.CHUNK_BYTES = chunk_bytes
        before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        importance.importance_estimate(
            vae.model, encoder, data, num_samples=args.samples, batch_size=args.batch_size, decoder=decoder
        )
        after = resource.getrusage(resource.RUSAGE_SELF)
        results[str(chunk_bytes)] = {
            "wall_s": time.perf_counter() - start,
            "user_s": after.ru_utime - before.ru_utime,
            "sys_s": after.ru_stime - before.ru_stime,
            "minor_faults": after.ru_minflt - before.ru_minflt,
        }
    return {"settings": vars(args), "by_chunk_bytes": results}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunk-bytes", type=int, nargs="+", default=[1 << 30, 8 << 20])
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument(
        "--batch-size", type=int, default=512, help="rows per batch (512: every row, as first measured)"
    )
    parser.add_argument("--threads", type=int, default=1)
    print(json.dumps(main(parser.parse_args()), indent=1))
