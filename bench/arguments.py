"""The argument check every benchmark script shares (imported by path, as the scripts import each
other: ``python bench/NAME.py`` puts ``bench/`` first on ``sys.path``)."""

from __future__ import annotations

import argparse


def require_at_least_one(parser: argparse.ArgumentParser, args: argparse.Namespace, *names: str) -> None:
    """Stop with a usage error unless each option in ``names`` is at least 1 where it is given
    (an option left at ``None`` takes the script's default)."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
