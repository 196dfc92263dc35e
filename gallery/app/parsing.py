"""The argument parser of every command (``run``, ``compare``, ``figures``)."""

from __future__ import annotations

import argparse

from inference.compiled import AUTO_MIN_STEPS, COMPILE_MODES

COMPILE_HELP = (
    "SVI's step: off (eager Pyro), graph (loss and gradients traced once into one graph of "
    "tensor operations, 0.2-0.9 s: on CPU bit for bit the eager run, 1.3-1.9x faster for "
    "run's 2000 iris or digits steps), inductor (that graph compiled by torch.compile, 20-60 s "
    "on 2 CPU cores, then 4x faster than eager for a GMM step; CUDA graphs on cuda), or auto: "
    f"graph for runs of at least {AUTO_MIN_STEPS} steps on CPU in one process without --stream, "
    "else off. A step that cannot be traced runs eagerly, with a one-line warning."
)


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line (exit 2) instead of usage + error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def add_compile_argument(parser: argparse.ArgumentParser) -> None:
    """``--compile {off,graph,inductor}``, passed to :func:`inference.svi.fit_svi`."""
    parser.add_argument("--compile", default="auto", choices=list(COMPILE_MODES), help=COMPILE_HELP)


__all__ = ["COMPILE_HELP", "OneLineParser", "add_compile_argument"]
