"""The README's Python example runs as written and says what it claims."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def block(marker: str) -> str:
    """The README's one Python block that contains ``marker``."""
    found = [b for b in re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S) if marker in b]
    assert len(found) == 1, marker
    return found[0]


def test_readme_python_example_runs():
    scope: dict = {}
    exec(compile(block("decompose("), "README.md", "exec"), scope)  # noqa: S102
    terms, em = scope["terms"], scope["em"]
    assert terms.kl.abs().max() < 1e-6  # the exact guide: no gap
    assert abs(float(terms.log_likelihood.mean()) - float(em.log_likelihoods[-1])) < 1e-3


def test_readme_vae_example_runs(capsys):
    scope: dict = {}
    exec(compile(block("importance_estimate("), "README.md", "exec"), scope)  # noqa: S102
    estimate = scope["estimate"]
    assert estimate.log_likelihood.shape == (1797,)
    assert float(estimate.log_likelihood.mean()) >= float(estimate.elbo.mean())  # as printed


def test_readme_two_models_in_one_session_example_runs():
    """Factor analysis then PPCA without clearing the param store: each keeps its own noise."""
    scope: dict = {}
    exec(compile(block("for module in (factor_analysis, ppca)"), "README.md", "exec"), scope)  # noqa: S102
    assert scope["fa"].noise_variance.shape == (4,)
    assert scope["pp"].noise_variance.shape == ()


def test_readme_fit_example_runs(tmp_path, monkeypatch):
    """The notebook example: gallery.fit, its answers, and the save/load round trip (asserted)."""
    monkeypatch.chdir(tmp_path)  # it saves gmm-fit.pt in the working folder
    scope: dict = {}
    exec(compile(block("gallery.fit("), "README.md", "exec"), scope)  # noqa: S102
    fitted = scope["fitted"]
    assert scope["resp"].shape == (150, 3) and scope["new_x"].shape == (5, 4)
    assert fitted.metrics["elbo_per_datum"] <= float(scope["log_p"].mean()) + 1e-9  # a lower bound


def test_readme_stock_pyro_example_runs(capsys):
    """The same fit with Pyro's SVI: from EM's first E-step the mixture reaches EM's neighbourhood
    (gallery.fit with these settings: about -1.21 nats per datum)."""
    scope: dict = {}
    exec(compile(block("SVI(gmm.model"), "README.md", "exec"), scope)  # noqa: S102
    assert float(scope["log_p"].mean()) > -1.3
