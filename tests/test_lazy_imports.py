"""``python -m gallery run gmm`` imports no plotting library until it draws."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import sys
import gallery.app.cli as cli
from gallery.app.pipeline import prepare

args = cli.build_parser().parse_args(["run", "gmm", "--no-progress"])
prepare(cli.config_from_args(args, 1))
print(",".join(name for name in ("matplotlib", "arviz") if name in sys.modules))
"""


def test_the_command_line_and_a_prepared_run_load_no_plotting_library():
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"loaded before drawing: {done.stdout.strip()}"
