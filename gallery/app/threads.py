"""``--threads N``: how many CPU threads torch uses for a command's computation.

torch starts with one thread per core it sees. On a machine that other jobs share, that
oversubscribes the cores, and small steps slow down many times over (``run ppca --num-steps
300`` beside three other jobs on a 2-core machine: 15.0 s of SVI with torch's two threads, 1.1 s
with one), so every command takes ``--threads``; ``None`` keeps torch's default. The count used
is recorded in ``metrics.json`` as ``threads``.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator

import torch

HELP = f"CPU threads for torch's computation; None: torch's default ({torch.get_num_threads()} here)"


def check_threads(threads: int | None) -> None:
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be at least 1, got {threads}; leave it out for torch's default")


@contextlib.contextmanager
def using_threads(threads: int | None) -> Iterator[int]:
    """Run the block with ``threads`` CPU threads (``None``: as they are), and put the count back
    afterwards, so a call from a user's session leaves its setting alone. Yields the count used."""
    check_threads(threads)
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def add_threads_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument("--threads", type=int, default=None, help=HELP)


__all__ = ["HELP", "add_threads_argument", "check_threads", "using_threads"]
