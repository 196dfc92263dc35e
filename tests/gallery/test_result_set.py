"""The result set is written as a set: a failure at any step of the switch leaves the complete
old set, byte for byte, and nothing staged; a writer killed mid-switch is finished by the next
write; what a live process has staged is never touched."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gallery.report import atomic
from gallery.report.atomic import recover_stale, write_all_atomic

ROOT = Path(__file__).resolve().parents[2]
OLD = {"metrics.json": b'{"old": 1}\n', "params.pt": b"old params", "curve.png": b"old png"}
NEW = {"metrics.json": b'{"new": 2}\n', "params.pt": b"new params", "curve.png": b"new png", "extra.md": b"#"}
SWITCH_STEPS = len(OLD) + len(NEW)  # each old file moved out, then each new one moved in


def contents(folder: Path) -> dict[str, bytes]:
    """Every entry of ``folder``, hidden ones included (a folder would fail read_bytes)."""
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def old_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    for name, payload in {**OLD, "keep.txt": b"not ours"}.items():
        (folder / name).write_bytes(payload)
    return folder


FULL = OSError(28, "No space left on device")


def fail_at(monkeypatch, step: int, error: BaseException = FULL) -> None:
    """Make the ``step``-th call of os.replace (1-based) raise ``error``."""
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append(src)
        if len(calls) == step:
            raise error
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)


def test_success_leaves_exactly_the_new_set(tmp_path):
    folder = old_folder(tmp_path)
    write_all_atomic(folder, NEW)
    assert contents(folder) == {**NEW, "keep.txt": b"not ours"}


def test_into_a_new_folder(tmp_path):
    write_all_atomic(tmp_path / "a" / "b", NEW)
    assert contents(tmp_path / "a" / "b") == NEW


@pytest.mark.parametrize("step", range(1, SWITCH_STEPS + 1))
def test_failed_switch_step_leaves_the_complete_old_set(step, tmp_path, monkeypatch):
    """Steps 1-3 move old files out, 4-7 move new ones in; each failure puts the old set back."""
    folder = old_folder(tmp_path)
    before = contents(folder)
    fail_at(monkeypatch, step)
    with pytest.raises(ValueError, match=r"No space left.*the previous results were put back") as caught:
        write_all_atomic(folder, NEW)
    assert "\n" not in str(caught.value)
    assert contents(folder) == before  # bytes identical, and no staging or backup folder


def test_failed_staging_changes_nothing(tmp_path, monkeypatch):
    """A full disk while the new files are written: the folder is as it was."""
    folder = old_folder(tmp_path)
    before = contents(folder)
    real, calls = atomic._write_flushed, []

    def write(path, payload):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real(path, payload)

    monkeypatch.setattr(atomic, "_write_flushed", write)
    with pytest.raises(ValueError, match=r"nothing was changed, the folder holds the previous results"):
        write_all_atomic(folder, NEW)
    assert contents(folder) == before


def test_interrupt_mid_switch_is_rolled_back_and_re_raised(tmp_path, monkeypatch):
    """Not an OSError (Ctrl-C): rolled back all the same, and the interrupt goes on."""
    folder = old_folder(tmp_path)
    before = contents(folder)
    fail_at(monkeypatch, 5, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        write_all_atomic(folder, NEW)
    assert contents(folder) == before


def test_failed_roll_back_says_where_the_files_are(tmp_path, monkeypatch):
    """Two faults (the switch, then the undo): the message names both folders."""
    folder = old_folder(tmp_path)
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append(src)
        if len(calls) in (5, 6):  # the second new file, then the first undo
            raise OSError(5, "Input/output error")
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(
        ValueError, match=r"so did putting the old ones back.*\.backup-.*\.staging-"
    ) as caught:
        write_all_atomic(folder, NEW)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("name", ["../x", "sub/x", "..", ".complete", ".staging-pid1-x"])
def test_odd_names_are_refused(name, tmp_path):
    with pytest.raises(ValueError, match="must be plain file names"):
        write_all_atomic(tmp_path, {name: b""})


KILLED = r"""
import os, signal, sys
from pathlib import Path
from gallery.report import atomic
step, calls, real = int(sys.argv[2]), [], os.replace
def replace(src, dst):
    calls.append(src)
    if len(calls) == step:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst)
atomic.os.replace = replace
atomic.write_all_atomic(Path(sys.argv[1]), {"metrics.json": b"new", "params.pt": b"new", "extra.md": b"new"})
"""


@pytest.mark.parametrize("step", range(1, 6))
def test_writer_killed_mid_switch_is_finished_by_the_next(step, tmp_path):
    """SIGKILL at each switch step leaves a mix; the next write (here: its recovery step)
    completes the dead writer's set, and then writes its own."""
    folder = old_folder(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", KILLED, str(folder), str(step)], env=env, timeout=60)
    assert done.returncode == -signal.SIGKILL
    recover_stale(folder)
    new = {"metrics.json": b"new", "params.pt": b"new", "extra.md": b"new"}
    assert contents(folder) == {"curve.png": b"old png", "keep.txt": b"not ours", **new}
    write_all_atomic(folder, NEW)
    assert contents(folder) == {**NEW, "keep.txt": b"not ours"}


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_only_dead_writers_leftovers_are_removed(tmp_path):
    """Staging folders and temporary files of a dead pid (or, from older versions, of no pid)
    are cleaned up; those of a live process are left alone."""
    folder = tmp_path / "out"
    folder.mkdir()
    dead, live = _dead_pid(), os.getppid()
    half_staged = folder / f".staging-pid{dead}-abc"  # died while writing: no .complete marker
    half_staged.mkdir()
    (half_staged / "metrics.json").write_bytes(b"half")
    theirs = folder / f".staging-pid{live}-def"
    theirs.mkdir()
    (theirs / "metrics.json").write_bytes(b"in progress")
    stale = [folder / ".metrics.json.k3j_x9ab.tmp", folder / f".metrics.json.pid{dead}.abc.tmp"]
    kept = folder / f".metrics.json.pid{live}.def.tmp"
    for path in [*stale, kept]:
        path.write_bytes(b"")
    write_all_atomic(folder, NEW)
    assert sorted(p.name for p in folder.iterdir()) == sorted([*NEW, theirs.name, kept.name])
    assert (theirs / "metrics.json").read_bytes() == b"in progress"
