"""Atomic file writes: a temporary file in the target folder, flushed to disk, then renamed over
the target, so a crash leaves either the old file or the new one, never half of one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def stage(folder: Path, name: str, payload: bytes) -> Path:
    """Write ``payload`` to a new temporary file ``.NAME.*.tmp`` in ``folder``, flushed to disk;
    return its path (the caller renames it into place, or deletes it)."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
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
    temporary files of ``path`` that a killed writer left behind are removed after it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = stage(path.parent, path.name, payload)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
