"""Progress bars only on a terminal: under pytest (or a pipe) a run with progress on prints none."""

from __future__ import annotations

from gallery import load
from gallery.models import gmm
from guides import gmm_posterior
from inference.svi import fit_svi


def test_no_bar_off_a_terminal(capfd):
    fit_svi(gmm.model, gmm_posterior, load("iris").data, num_steps=3, progress=True, num_components=2)
    captured = capfd.readouterr()
    assert "SVI" not in captured.err and "SVI" not in captured.out
