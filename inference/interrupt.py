"""Stopping a run cleanly on SIGINT (Ctrl-C) or SIGTERM (a scheduler's pre-emption).

:func:`stop_on_signals` installs the handlers (from the main thread; the command line's ``run``
does it). Inside :func:`at_step_boundaries` (the SVI fit) a signal only sets a flag, a plain
Python value that the training loop reads once per step, so the check never waits for the
device; the loop then saves a checkpoint (when the run has one), and raises :class:`Interrupted`
with the number of steps done. Anywhere else the handler raises :class:`Interrupted` at once.
A second signal ends the process immediately, with the same exit status (128 + the signal).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import wraps
from pathlib import Path

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):  # noqa: N818 -- like KeyboardInterrupt: no ``except Exception`` swallows it
    """A signal stopped the run after ``step`` steps (``None``: outside the SVI steps); the
    state at that step was saved to ``checkpoint`` (``None``: no checkpoint)."""

    def __init__(self, signum: int, step: int | None = None, checkpoint: Path | None = None):
        super().__init__(signum, step, checkpoint)
        self.signum, self.step, self.checkpoint = signum, step, checkpoint

    @property
    def exit_status(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


@dataclass
class StopRequest:
    signum: int | None = None  # set by the first signal inside at_step_boundaries
    count: int = 0  # signals received
    deferred: bool = False  # inside at_step_boundaries: a loop polls ``signum``


REQUEST = StopRequest()


def _handle(signum: int, frame) -> None:
    REQUEST.count += 1
    if REQUEST.count > 1:
        os.write(2, b"python -m gallery run: interrupted again; exiting at once\n")
        os._exit(128 + signum)
    if not REQUEST.deferred:
        raise Interrupted(signum)
    REQUEST.signum = signum


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Interrupted` (at the next step inside
    :func:`at_step_boundaries`) for the ``with`` block; a no-op off the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in SIGNALS}
    REQUEST.signum, REQUEST.count, REQUEST.deferred = None, 0, False
    for signum in SIGNALS:
        signal.signal(signum, _handle)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        REQUEST.signum, REQUEST.count, REQUEST.deferred = None, 0, False


@contextmanager
def at_step_boundaries() -> Iterator[None]:
    """Within the block a signal waits for the training loop's next check (:func:`requested`)."""
    before = REQUEST.deferred
    REQUEST.deferred = True
    try:
        yield
    finally:
        REQUEST.deferred = before


def between_steps(function: Callable) -> Callable:
    """``function`` run inside :func:`at_step_boundaries`."""

    @wraps(function)
    def deferring(*args, **kwargs):
        with at_step_boundaries():
            return function(*args, **kwargs)

    return deferring


def requested() -> int | None:
    """The signal that asked the run to stop, or ``None``: a Python value, no device sync."""
    return REQUEST.signum


__all__ = ["Interrupted", "REQUEST", "at_step_boundaries", "between_steps", "requested", "stop_on_signals"]
