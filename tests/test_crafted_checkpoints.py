"""Crafted and damaged checkpoints, each resumed through the command line: every one is refused
with exit status 2 and one line on stderr before anything is restored, and ``--out`` keeps every
file's bytes. Among them the two that used to get through: an optimiser state smaller than its
parameter (torch's fused Adam read past its end: exit 139) and a flipped byte inside a stored
tensor (the run resumed with other numbers)."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from gallery import load
from tests.conftest import exit_status
from tests.test_cli import snapshot

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:EM did not converge:UserWarning"),
]

ROOT = Path(__file__).resolve().parents[1]
RUN = ["run", "ppca", "--guide", "amortised", "--hidden", "4", "--num-steps", "20", "--checkpoint-every",
       "10", "--em-iters", "3", "--eval-particles", "2", "--no-progress"]  # fmt: skip


def main(argv: list[str]) -> int:
    from gallery.app.cli import main as cli_main

    return exit_status(cli_main, argv)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path]:
    """A finished run's --out (checkpoint at step 20, with Adam's state) and its data file."""
    folder = tmp_path_factory.mktemp("crafted")
    data = folder / "iris.npy"
    np.save(data, load("iris").data.numpy())
    out = folder / "out"
    assert main([*RUN, "--data", str(data), "--out", str(out)]) == 0
    return out, data


def edit(change):
    """A crafting that loads the checkpoint, changes it in place, and saves it again."""

    def craft(path: Path) -> None:
        state = torch.load(path, weights_only=True)
        change(state)
        torch.save(state, path)

    return craft


def first_adam(state: dict) -> dict:
    return state["optimizer"]["state"][0]


def flip_bytes(path: Path) -> None:
    """Overwrite 8 bytes in the middle of the largest stored tensor (its CRC now fails)."""
    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    payload = bytearray(path.read_bytes())
    name_length, extra_length = struct.unpack(
        "<HH", payload[info.header_offset + 26 : info.header_offset + 30]
    )
    start = info.header_offset + 30 + name_length + extra_length + info.file_size // 2
    payload[start : start + 8] = bytes(b ^ 0xFF for b in payload[start : start + 8])
    path.write_bytes(bytes(payload))


def param(state: dict) -> str:
    return next(iter(state["params"]))


def guide_weight(state: dict) -> str:
    return next(iter(state["modules"]["guide"]))


CRAFTED = {
    "missing key": (edit(lambda s: s.pop("optimizer")), "has no 'optimizer'"),
    "wrong type": (edit(lambda s: s.update(losses=s["losses"].tolist())), "'losses' is a list"),
    "negative step": (edit(lambda s: s.update(step=-5)), "step -5"),
    "step past num_steps": (edit(lambda s: s.update(step=1000)), "past --num-steps 20"),
    "loss history length": (
        edit(lambda s: s.update(losses=s["losses"][:-3])),
        "loss history has shape (17,)",
    ),
    "undersized optimiser state": (
        edit(lambda s: first_adam(s).update(exp_avg=first_adam(s)["exp_avg"].flatten()[:1])),
        "exp_avg of parameter 0 has shape (1,)",
    ),
    "oversized optimiser state": (
        edit(lambda s: first_adam(s).update(exp_avg_sq=torch.zeros(64, 64, dtype=torch.float64))),
        "exp_avg_sq of parameter 0 has shape (64, 64)",
    ),
    "wrong-dtype param": (
        edit(lambda s: s["params"].update({param(s): s["params"][param(s)].float()})),
        "torch.float32 in the checkpoint but torch.float64",
    ),
    "wrong-shape network weight": (
        edit(lambda s: s["modules"]["guide"].update({guide_weight(s): torch.zeros(3)})),
        "guide weight",
    ),
    "garbage torch generator": (
        edit(lambda s: s["rng"].update(torch=torch.zeros(10, dtype=torch.uint8))),
        "torch generator state",
    ),
    "garbage python generator": (
        edit(lambda s: s["rng"].update(python=(3, (1, 2, 3), None))),
        "Python generator state",
    ),
    "garbage numpy generator": (
        edit(lambda s: s["rng"].update(numpy=("MT19937", torch.zeros(5, dtype=torch.int64), 0, 0, 0.0))),
        "NumPy generator state",
    ),
    "flipped bytes": (flip_bytes, "fail their checksum"),
    "changed data": (None, "written for other data"),
}


@pytest.mark.parametrize("kind", list(CRAFTED))
def test_a_crafted_checkpoint_is_refused_in_one_line_and_out_is_unchanged(kind, finished, tmp_path, capsys):
    source, data = finished
    out = tmp_path / "out"
    shutil.copytree(source, out)
    craft, phrase = CRAFTED[kind]
    original = data.read_bytes()
    if craft is None:  # the same file name, shape and dtype; one value changed
        changed = np.load(data)
        changed[7, 2] += 1e-9
        np.save(data, changed)
    else:
        craft(out / "checkpoint.pt")
    before = snapshot(out)
    capsys.readouterr()
    try:
        assert main([*RUN, "--data", str(data), "--out", str(out), "--resume"]) == 2
    finally:
        data.write_bytes(original)
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert phrase in err, err
    assert snapshot(out) == before


def test_an_undersized_optimiser_state_is_refused_in_a_fresh_process(finished, tmp_path):
    """The case that crashed the interpreter (SIGSEGV in fused Adam), run in its own process."""
    source, data = finished
    out = tmp_path / "out"
    shutil.copytree(source, out)
    CRAFTED["undersized optimiser state"][0](out / "checkpoint.pt")
    before = snapshot(out)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "gallery", *RUN, "--data", str(data), "--out", str(out), "--resume"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert snapshot(out) == before


def test_a_resume_on_a_changed_streamed_file_is_refused(tmp_path, capsys):
    """--stream hashes a fixed sample of rows, read as the run reads them (every row of iris)."""
    data, out = tmp_path / "iris.npy", tmp_path / "out"
    np.save(data, load("iris").data.numpy())
    stream = [*RUN, "--stream", "--batch-size", "50", "--data", str(data), "--out", str(out)]
    assert main(stream) == 0
    changed = np.load(data)
    changed[100, 0] += 0.5
    np.save(data, changed)
    before = snapshot(out)
    capsys.readouterr()
    assert main([*stream, "--resume"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "written for other data" in err, err
    assert snapshot(out) == before
