"""Writing a run's result set atomically as a set: afterwards the folder holds either the
complete old set or the complete new one, never a mix.

:func:`write_all_atomic` writes every file into a staging folder ``DIR/.staging-pidPID-XXXX``
(flushed to disk, then marked complete), moves the old versions into ``DIR/.backup-pidPID-XXXX``,
moves the new ones in, and deletes both folders. A failure in the middle moves the backups
back. A process killed in the middle leaves its two folders; the next write into ``DIR``
finishes the switch it began (its staged set was complete) or drops it (it was not). Only
folders of dead processes are touched.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from gallery.data.files import owner_alive, remove_stale_temporaries

_COMPLETE = ".complete"  # in a staging folder: every file of the set is written and flushed


def write_all_atomic(folder: Path, payloads: dict[str, bytes]) -> None:
    """Write every file of ``payloads`` ({name: bytes}) into ``folder`` as one set.

    Raises ``ValueError`` in one line saying what failed and which set the folder holds."""
    folder = Path(folder)
    odd = [name for name in payloads if Path(name).name != name or name in ("..", _COMPLETE)]
    if odd or any(name.startswith((".staging-", ".backup-")) for name in payloads):
        raise ValueError(f"result file names must be plain file names, got {odd or list(payloads)}")
    folder.mkdir(parents=True, exist_ok=True)
    try:
        recover_stale(folder)
    except OSError as err:
        raise ValueError(
            f"could not finish what a killed run left in {str(folder)!r} ({_one_line(err)}); move its "
            ".staging-pid* folder's files in, or delete it, by hand"
        ) from err
    for name in payloads:
        remove_stale_temporaries(folder, name)
    staging = None
    try:
        staging = Path(tempfile.mkdtemp(dir=folder, prefix=f".staging-pid{os.getpid()}-"))
        for name, payload in payloads.items():
            _write_flushed(staging / name, payload)
        _sync(staging)
        _write_flushed(staging / _COMPLETE, b"")
    except BaseException as err:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if isinstance(err, OSError):
            raise ValueError(
                f"could not write the results into {str(folder)!r} ({_one_line(err)}); nothing was "
                "changed, the folder holds the previous results; free space or choose another --out"
            ) from err
        raise
    _switch(folder, staging, list(payloads))


def _switch(folder: Path, staging: Path, names: list[str]) -> None:
    backup = folder / staging.name.replace(".staging-", ".backup-", 1)
    moved_out: list[str] = []
    moved_in: list[str] = []
    try:
        backup.mkdir()
        for name in names:
            if os.path.lexists(folder / name):
                os.replace(folder / name, backup / name)
                moved_out.append(name)
        for name in names:
            os.replace(staging / name, folder / name)
            moved_in.append(name)
    except BaseException as err:
        _roll_back(folder, staging, backup, moved_out, moved_in, err)
        raise
    _sync(folder)
    shutil.rmtree(backup, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)


def _roll_back(folder, staging, backup, moved_out, moved_in, err: BaseException) -> None:
    """Undo a switch that failed part-way; raises ``ValueError`` when ``err`` is an OSError."""
    try:
        for name in moved_in:
            os.replace(folder / name, staging / name)
        for name in moved_out:
            os.replace(backup / name, folder / name)
    except OSError as undo:
        raise ValueError(
            f"moving the new results into {str(folder)!r} failed ({_one_line(err)}) and so did putting "
            f"the old ones back ({_one_line(undo)}): old files are in {str(backup)!r}, new ones in "
            f"{str(staging)!r}; move one set back by hand"
        ) from err
    shutil.rmtree(backup, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)
    if isinstance(err, OSError):
        raise ValueError(
            f"moving the new results into {str(folder)!r} failed ({_one_line(err)}); the previous "
            "results were put back unchanged; fix the cause and run again"
        ) from err


def recover_stale(folder: Path) -> None:
    """Finish or drop what dead writers left in ``folder``: a complete staged set is moved in
    (it was being switched in), an incomplete one is deleted (no switch had begun); a backup with no
    staging folder (the switch had finished) is deleted."""
    for staging in sorted(Path(folder).glob(".staging-*")):
        if owner_alive(staging.name) or not staging.is_dir():
            continue
        backup = folder / staging.name.replace(".staging-", ".backup-", 1)
        if (staging / _COMPLETE).is_file():
            for staged in staging.iterdir():
                if staged.name != _COMPLETE:
                    os.replace(staged, folder / staged.name)
            _sync(folder)
        shutil.rmtree(backup, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)
    for backup in Path(folder).glob(".backup-*"):
        if not owner_alive(backup.name) and backup.is_dir():
            shutil.rmtree(backup, ignore_errors=True)


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


def _write_flushed(path: Path, payload: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())


def _sync(folder: Path) -> None:
    """Flush ``folder``'s entries (the renames) to disk, where the file system allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # some file systems cannot fsync a folder; the renames stand all the same
        pass


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())
