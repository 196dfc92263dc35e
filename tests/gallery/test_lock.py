"""One writer per output folder: a second process is refused in one line naming the holder;
once the holder exits (or is killed) the lock is acquired."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gallery.report.lock import LOCK_NAME, output_lock

ROOT = Path(__file__).resolve().parents[2]
HOLDER = r"""
import sys, time
from gallery.report.lock import output_lock
with output_lock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.readline()  # hold until the test says so
"""


@pytest.fixture
def holder(tmp_path):
    """A second process holding the lock on ``tmp_path / "out"`` until its stdin closes."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path / "out"), "--marker"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert child.stdout.readline() == "locked\n"
    yield child
    if child.poll() is None:
        child.kill()
    child.wait()


def test_second_writer_is_refused_naming_the_holder(holder, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError) as caught:
        with output_lock(out):
            pass
    message = str(caught.value)
    assert "\n" not in message
    assert f"--out {str(out)!r} is in use by process {holder.pid} (python -c ... " in message
    assert "--marker)" in message and message.endswith("wait for it or choose another --out")


def test_acquired_once_the_holder_exits(holder, tmp_path):
    holder.stdin.close()
    assert holder.wait(timeout=60) == 0
    assert not (tmp_path / "out" / LOCK_NAME).exists()  # the holder removed it as it let go
    with output_lock(tmp_path / "out"):
        assert (tmp_path / "out" / LOCK_NAME).read_text().startswith(f"{os.getpid()} ")


def test_acquired_after_the_holder_is_killed(holder, tmp_path):
    """SIGKILL leaves the lock file behind; the kernel has released the lock all the same."""
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=60)
    assert (tmp_path / "out" / LOCK_NAME).read_text().startswith(f"{holder.pid} ")
    with output_lock(tmp_path / "out"):
        pass
    assert not (tmp_path / "out" / LOCK_NAME).exists()


def test_lock_is_released_on_error_and_a_folder_it_created_is_removed_if_empty(tmp_path):
    out = tmp_path / "new" / "out"
    with pytest.raises(RuntimeError):
        with output_lock(out):
            assert out.is_dir()
            raise RuntimeError("boom")
    assert not out.exists()  # a command that wrote nothing leaves no folder behind
    out.mkdir()
    with output_lock(out):
        pass
    assert out.is_dir() and list(out.iterdir()) == []  # a folder that was there stays
    with output_lock(out):
        (out / "metrics.json").write_text("{}")
    assert [p.name for p in out.iterdir()] == ["metrics.json"]


def test_inside_a_file_is_one_line(tmp_path):
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"cannot create the folder") as caught:
        with output_lock(tmp_path / "file" / "out"):
            pass
    assert "\n" not in str(caught.value)
