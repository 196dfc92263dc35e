"""``python -m gallery models --quick``: every model gets a row, the files are written, and the
parameter counts are the textbook ones."""

from __future__ import annotations

import csv
import math

import pytest

from gallery.app.cli import main
from gallery.app.models_table import num_params
from tests.conftest import exit_status

pytestmark = pytest.mark.usefixtures("one_thread")


def test_quick_table_on_the_digits(tmp_path):
    out = tmp_path / "models"
    assert exit_status(main, ["models", "--quick", "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "models.csv").open()))
    assert [r["model"] for r in rows] == [
        "gmm-diag", "gmm-diag", "gmm-full", "gmm-full", "factor-analysis", "ppca", "mfa", "mppca", "vae"
    ]  # fmt: skip
    for r in rows:
        assert math.isfinite(float(r["heldout_log_likelihood_per_datum"])), r
        assert int(r["params"]) > 0
    text = (out / "models.md").read_text()
    assert "dropping 3 constant columns" in text and "D = 61" in text
    assert (out / "models.png").read_bytes()[:4] == b"\x89PNG"


def test_parameter_counts():
    # D = 4: a diagonal GMM with K = 3 has 2 weights + 12 means + 12 variances; factor analysis
    # with p = 2 has 4 + 8 - 1 (rotation) + 4; an MPPCA with K = 2, p = 1 has 1 + 2 (4 + 4 + 1).
    assert num_params("gmm-diag", 4, 3) == 26
    assert num_params("gmm-full", 4, 1) == 14
    assert num_params("factor-analysis", 4, 1, 2) == 15
    assert num_params("mppca", 4, 2, 1) == 19


def test_bad_fraction_is_refused(tmp_path, capsys):
    assert (
        exit_status(main, ["models", "--quick", "--heldout-fraction", "1.5", "--out", str(tmp_path / "o")])
        == 2
    )
    assert "heldout-fraction" in capsys.readouterr().err
