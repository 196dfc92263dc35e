"""Write N draws from a known Gaussian mixture to a ``.npy`` file, for ``bench/scaling.py --memmap``.

The file is written chunk by chunk through ``numpy.lib.format.open_memmap``, so writing 10^7 rows
needs no more memory than one chunk; ``numpy.load(path, mmap_mode="r")`` maps it back. The
mixture is ``bench/gmm_em.py``'s ``make_mixture`` (K = ``--components``, seeded). Such files are
large and are not committed. Prints one JSON object.

    python bench/make_memmap.py /tmp/gmm-1e7.npy --num-data 10000000 --dim 4
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from arguments import require_at_least_one
from gmm_em import make_mixture

from gallery.models.gmm import GMMParams

CHUNK_ROWS = 1 << 17  # rows drawn at a time: (chunk, D, D) Cholesky factors stay ~10 MB for D = 4


def fill_sample(out: np.ndarray, truth: GMMParams, seed: int, chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
    """Fill ``out`` (N, D), in memory or memory-mapped, with float64 draws from ``truth``, one
    chunk of rows at a time from one seeded generator; returns ``out``."""
    gen = torch.Generator().manual_seed(seed)
    obs_dim = truth.loc.shape[1]
    for start in range(0, out.shape[0], chunk_rows):
        rows = min(chunk_rows, out.shape[0] - start)
        c = torch.multinomial(truth.weights, rows, replacement=True, generator=gen)  # (B,)
        eps = torch.randn(rows, obs_dim, 1, generator=gen, dtype=torch.float64)
        out[start : start + rows] = (truth.loc[c] + (truth.scale_tril[c] @ eps).squeeze(-1)).numpy()
    return out


def main(args) -> dict:
    start = time.perf_counter()
    truth = make_mixture(args.components, args.dim, args.seed)
    path = Path(args.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float64, shape=(args.num_data, args.dim))
    fill_sample(out, truth, args.seed + 1)
    out.flush()
    del out
    return {
        "path": str(path),
        "num_data": args.num_data,
        "dim": args.dim,
        "components": args.components,
        "seed": args.seed,
        "bytes": path.stat().st_size,
        "seconds": time.perf_counter() - start,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", help="the .npy file to write")
    parser.add_argument("--num-data", type=int, required=True)
    parser.add_argument("--dim", type=int, default=4)
    parser.add_argument("--components", type=int, default=5, help="of the mixture drawn from")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    require_at_least_one(parser, args, "num_data", "dim", "components")
    if not args.path.endswith(".npy"):
        parser.error("PATH must end in .npy")
    return args


if __name__ == "__main__":
    print(json.dumps(main(parse_args()), indent=2))
