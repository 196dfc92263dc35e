"""The argument parser of every command (``run``, ``compare``, ``figures``)."""

from __future__ import annotations

import argparse

from inference.compiled import COMPILE_MODES

COMPILE_HELP = (
    "SVI's step: off (eager Pyro), graph (loss and gradients traced once into one graph of "
    "tensor operations; on CPU bit for bit the eager run) or inductor (that graph compiled by "
    "torch.compile; CUDA graphs on cuda). A step that cannot be traced runs eagerly, with a "
    "warning."
)


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line (exit 2) instead of usage + error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def add_compile_argument(parser: argparse.ArgumentParser) -> None:
    """``--compile {off,graph,inductor}``, passed to :func:`inference.svi.fit_svi`."""
    parser.add_argument("--compile", default="off", choices=list(COMPILE_MODES), help=COMPILE_HELP)


__all__ = ["COMPILE_HELP", "OneLineParser", "add_compile_argument"]
