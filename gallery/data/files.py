"""Atomic file writes: a temporary file in the target folder, flushed to disk, then renamed over
the target, so a crash leaves either the old file or the new one, never half of one.

Temporary files carry the writer's pid (``.NAME.pid1234.*.tmp``); a later write deletes those
of a dead process, never those of a live one."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

_PID = re.compile(r"[.-]pid(\d+)[.-]")


def stage(folder: Path, name: str, payload: bytes) -> Path:
    """Write ``payload`` to a new temporary file ``.NAME.pidPID.*.tmp`` in ``folder``, flushed to
    disk; return its path (the caller renames it into place, or deletes it)."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.pid{os.getpid()}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def write_atomic(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` by a temporary file in the same folder and a rename; the
    temporary files of ``path`` that a killed writer left behind are removed first (never a
    live process's)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, path.name)
    tmp = stage(path.parent, path.name, payload)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_stale_temporaries(folder: Path, name: str) -> None:
    """Delete ``.NAME.*.tmp`` files in ``folder`` left by a writer that died mid-write: those
    whose pid is dead, and those with no pid (written before temporaries carried one)."""
    for stale in Path(folder).glob(f".{glob_escape(name)}.*.tmp"):
        if not owner_alive(stale.name[len(name) + 1 :]):
            stale.unlink(missing_ok=True)


def owner_alive(tagged: str) -> bool:
    """Whether the process named in ``tagged`` (``.NAME.pid1234.*``, ``.staging-pid1234-*``) is
    alive; False when no pid is named. This process counts as alive."""
    found = _PID.search(tagged)
    if found is None:
        return False
    pid = int(found.group(1))
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # no such process; a pid out of range
        return False
    except PermissionError:  # another user's process
        return True
    return True


def glob_escape(name: str) -> str:
    """``name`` with glob's special characters taken literally."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
