"""Writing a run's result set: every file staged first, then renamed into place, so a failure
while writing leaves every earlier result as it was."""

from __future__ import annotations

import os
from pathlib import Path

from gallery.data.files import stage


def write_all_atomic(folder: Path, payloads: dict[str, bytes]) -> None:
    """Write every file of ``payloads`` ({name: bytes}) into ``folder``: all to temporary files
    first, then each renamed into place, so a failure while writing (a full disk, a kill)
    leaves every earlier result as it was; only a crash between the renames, microseconds
    apart, can leave some files new and some old."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[Path, Path]] = []
    for name in payloads:
        _remove_stale(folder, name)
    try:
        for name, payload in payloads.items():
            staged.append((stage(folder, name, payload), folder / name))
        for tmp, target in staged:
            os.replace(tmp, target)
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise


def check_writable_folder(out: Path, flag: str = "--out") -> None:
    """``out`` must be a folder, or a path whose nearest existing parent is a folder we can
    write into; raises ``ValueError`` saying which it is not."""
    out = Path(out)
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(
            f"{flag} {str(out)!r}: {str(existing)!r} is a file, not a folder; give a folder path"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {str(out)!r}: no permission to write in {str(existing)!r}")


def _remove_stale(folder: Path, name: str) -> None:
    """Delete temporary files of ``name`` left by an earlier run that was killed mid-write."""
    for stale in folder.glob(f".{name}.*.tmp"):
        stale.unlink(missing_ok=True)
