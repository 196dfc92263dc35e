"""One writer per output folder: ``with output_lock(out):`` around everything a command writes
into ``out`` (checkpoints and results).

The lock is ``fcntl.flock`` on ``out/.lock``, which holds the holder's pid and command line so
that a refused command can name it. The kernel releases a flock when its holder dies, however
it dies (even SIGKILL), so a ``.lock`` file left by a dead process is no obstacle: the next
command simply acquires it. The holder deletes the file when it is done, while still holding it;
a waiter that locked the deleted file notices (another inode at the path) and tries again.
Processes forked by the holder inherit the lock while they live. Needs a local file system
with ``flock`` (Linux, macOS); on one without, the command is refused with the reason.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gallery.data.files import owner_alive

LOCK_NAME = ".lock"


@contextmanager
def output_lock(folder: Path, flag: str = "--out") -> Iterator[None]:
    """Hold the lock on ``folder`` for the ``with`` block; raises ``ValueError`` in one line naming
    the process that holds it. A folder created here is removed again if the block left it empty."""
    folder = Path(folder)
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"{flag} {str(folder)!r}: cannot create the folder ({err.strerror})") from None
    path = folder / LOCK_NAME
    fd = _acquire(path, flag)
    try:
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {_command_line()}\n".encode())
        except OSError:  # a full disk: the lock holds all the same, unnamed
            pass
        yield
    finally:
        Path(path).unlink(missing_ok=True)  # still held: no one else can be using this file
        os.close(fd)
        if created:  # a command that wrote nothing leaves no folder behind
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty


def _acquire(path: Path, flag: str) -> int:
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            where = f"{flag} {str(path.parent)!r}"
            raise ValueError(f"{where}: cannot create {path.name} ({err.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise ValueError(
                f"{flag} {str(path.parent)!r} is in use by {holder}; wait for it or choose another {flag}"
            ) from None
        except OSError as err:
            os.close(fd)
            raise ValueError(
                f"{flag} {str(path.parent)!r}: cannot lock {path.name} ({err.strerror}); use a folder "
                "on a local file system"
            ) from None
        if _same_file(fd, path):
            return fd
        os.close(fd)  # the holder deleted the file as it let go: lock the one at the path now


def _holder(fd: int) -> str:
    """Who holds the lock, as the lock file says (empty while the holder is still writing it)."""
    text = os.pread(fd, 4096, 0).decode(errors="replace").strip()
    pid, _, command = text.partition(" ")
    if not pid.isdigit():
        return "another process"
    command = command if len(command) <= 200 else command[:200] + " ..."
    if not owner_alive(f".pid{pid}."):
        return f"a process started by process {pid} ({command}), which has exited"
    return f"process {pid} ({command})"


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def _command_line() -> str:
    """This process's command line as it was typed, on one line, the interpreter by its name
    and the program of ``python -c`` elided."""
    words = [Path(sys.orig_argv[0]).name, *sys.orig_argv[1:]] if sys.orig_argv else list(sys.argv)
    if len(words) > 2 and words[1] == "-c":
        words[2] = "..."
    return " ".join(" ".join(words).split())
