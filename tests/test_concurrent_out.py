"""Two ``run`` commands on one ``--out``: the second is refused at once, in one line naming the
first, and the first's results are untouched."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from gallery.app.cli import main
from tests.conftest import exit_status

ROOT = Path(__file__).resolve().parents[1]
HOLD = "import sys; from gallery.report.lock import output_lock\nwith output_lock(sys.argv[1]):\n" \
       "    print('locked', flush=True); sys.stdin.read()"  # fmt: skip


def test_a_second_run_on_a_busy_out_is_refused_in_one_line(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text("earlier results")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert holder.stdout.readline() == "locked\n"
        status = exit_status(main, ["run", "ppca", "--num-steps", "5", "--no-progress", "--out", str(out)])
        err = capsys.readouterr().err
    finally:
        holder.communicate("")
    assert status == 2
    assert err.count("\n") == 1 and f"in use by process {holder.pid}" in err, err
    assert (out / "metrics.json").read_text() == "earlier results"
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json"]
    assert exit_status(main, ["run", "ppca", "--num-steps", "5", "--no-progress", "--out", str(out)]) == 0
