"""The README's Python example runs as written and says what it claims."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def blocks() -> list[str]:
    found = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(found) == 2
    return found


def test_readme_python_example_runs():
    scope: dict = {}
    exec(compile(blocks()[0], "README.md", "exec"), scope)  # noqa: S102
    terms, em = scope["terms"], scope["em"]
    assert terms.kl.abs().max() < 1e-6  # the exact guide: no gap
    assert abs(float(terms.log_likelihood.mean()) - float(em.log_likelihoods[-1])) < 1e-3


def test_readme_vae_example_runs(capsys):
    scope: dict = {}
    exec(compile(blocks()[1], "README.md", "exec"), scope)  # noqa: S102
    estimate = scope["estimate"]
    assert estimate.log_likelihood.shape == (1797,)
    assert float(estimate.log_likelihood.mean()) >= float(estimate.elbo.mean())  # as printed
