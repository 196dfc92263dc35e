"""``python -m gallery compare``: one quick run, read back from compare.csv, and bad input.

The closed-form rows (mixture, factor analysis, PPCA) compute log p(x), the ELBO and the KL each
on its own in float64, so identities hold to rounding: ELBO <= log p(x) + 1e-9 (the bound
compare itself enforces), gap = KL and the exact guides' gap = 0 to 1e-6 per datum (measured
~1e-14). The VAE's log p(x) and ELBO are estimates from the same samples, where Jensen's
inequality, log mean exp w >= mean w, holds for every datum, so there the bound is checked with
no tolerance."""

from __future__ import annotations

import contextlib
import csv
import io

import pytest
import torch

import gallery.app.compare
from gallery.app.compare import main
from inference.evaluate import BoundDecomposition, decompose
from tests.conftest import CUDA

EXPECTED = {
    ("gmm", g) for g in ("exact", "mean-field", "amortised", "auto-normal")
} | {
    (m, g) for m in ("factor-analysis", "ppca")
    for g in ("exact", "mean-field", "amortised", "amortised-full", "auto-normal")
} | {("vae", g) for g in ("amortised", "amortised-full", "mean-field")}  # fmt: skip
EXACT_GUIDES = {("gmm", "exact"), ("gmm", "auto-normal"), ("factor-analysis", "exact"), ("ppca", "exact")}
OUTPUTS = ("compare.csv", "compare.md", "bound_decomposition.png")

pytestmark = pytest.mark.usefixtures("one_thread")


def call(argv: list[str]) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of ``main(argv)``."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    return status, out.getvalue(), err.getvalue()


def read_rows(folder) -> list[dict]:
    with open(folder / "compare.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        for key in ("elbo_per_datum", "log_likelihood_per_datum", "gap_per_datum", "kl_per_datum"):
            row[key] = float(row[key]) if row[key] else None
    return rows


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One ``--quick`` run (about 10 s on one thread) shared by the tests of its output."""
    out = tmp_path_factory.mktemp("compare") / "out"
    status, stdout, stderr = call(["--quick", "--out", str(out), "--no-progress"])
    assert status == 0, stderr
    return out, read_rows(out), stdout, stderr


def test_rows_cover_every_model_and_guide_once(quick):
    _, rows, stdout, stderr = quick
    pairs = [(row["model"], row["guide"]) for row in rows]
    assert sorted(pairs) == sorted(EXPECTED)
    assert stderr == ""  # --no-progress: no bar; warnings are reported as notes on stdout
    for model, guide in EXPECTED:
        assert any(line.split()[:2] == [model, guide] for line in stdout.splitlines())


def test_elbo_never_exceeds_log_likelihood(quick):
    for row in quick[1]:
        elbo, log_likelihood = row["elbo_per_datum"], row["log_likelihood_per_datum"]
        if row["log_likelihood_kind"] == "exact":
            assert elbo <= log_likelihood + 1e-9, row
        else:
            assert row["model"] == "vae" and row["log_likelihood_kind"].startswith("importance-weighted K=")
            assert elbo <= log_likelihood, row


def test_gap_is_the_closed_form_kl_and_zero_for_exact_guides(quick):
    for row in quick[1]:
        gap = row["gap_per_datum"]
        assert gap == pytest.approx(row["log_likelihood_per_datum"] - row["elbo_per_datum"], abs=1e-12)
        if row["model"] == "vae":
            assert row["kl_per_datum"] is None and row["em_log_likelihood_per_datum"] == ""
            continue
        assert abs(row["kl_per_datum"] - gap) <= 1e-6, row
        assert float(row["em_log_likelihood_per_datum"]) < 0  # present: iris in cm has log p(x) < 0
        if (row["model"], row["guide"]) in EXACT_GUIDES:
            assert abs(gap) <= 1e-6, row
        else:
            assert gap > 1e-6, row  # a restricted q after 200 steps is visibly off the posterior


def test_markdown_and_figure_are_written(quick):
    out, rows, _, _ = quick
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)  # no temporary files left
    markdown = (out / "compare.md").read_text()
    assert f"`python -m gallery compare --quick --device cpu --seed 0 --out {out}`" in markdown
    assert sum(line.startswith(("| gmm ", "| factor-analysis ", "| ppca ", "| vae ")) for line in
               markdown.splitlines()) == len(rows)  # fmt: skip
    assert (out / "bound_decomposition.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "bound_decomposition.png").stat().st_size > 10_000


def snapshot(folder) -> dict:
    return {str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes() for p in folder.rglob("*")}


BAD = [
    (["--num-steps", "0"], "--num-steps must be at least 1"),
    (["--num-steps", "many"], "invalid int value"),
    (["--device", "tpu"], "device"),
    (["--quik"], "unrecognized arguments"),
]
if not torch.cuda.is_available():
    BAD.append((["--device", "cuda"], "no CUDA GPU"))


@pytest.mark.parametrize("argv, message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(argv, message, tmp_path):
    fresh, earlier = tmp_path / "fresh", tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "compare.csv").write_text("earlier results\n")
    for out in (fresh, earlier):
        before = snapshot(tmp_path)
        status, stdout, stderr = call(["--quick", "--no-progress", "--out", str(out), *argv])
        assert status == 2
        assert stdout == "" and len(stderr.splitlines()) == 1, stderr
        assert stderr.startswith("python -m gallery compare: error: ") and message in stderr
        assert snapshot(tmp_path) == before


def test_out_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "taken").write_text("a file")
    status, _, stderr = call(["--quick", "--no-progress", "--out", str(tmp_path / "taken" / "out")])
    assert status == 2 and "is a file, not a folder" in stderr and len(stderr.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_a_bound_violation_stops_the_run_before_anything_is_written(tmp_path, monkeypatch):
    """compare checks ELBO <= log p(x) + 1e-9 itself: a decomposition breaking it (here a fake
    one, 1e-6 above) is a bug, reported in one line with exit 1, and no file is written."""

    def broken(*args, **kwargs):
        terms = decompose(*args, **kwargs)
        return BoundDecomposition(terms.log_likelihood, terms.log_likelihood + 1e-6, terms.kl)

    monkeypatch.setattr(gallery.app.compare, "decompose", broken)
    status, stdout, stderr = call(["--quick", "--no-progress", "--out", str(tmp_path / "out")])
    assert status == 1 and stdout == "" and len(stderr.splitlines()) == 1
    assert "gmm / exact: ELBO exceeds log p(x) by 1e-06" in stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.cuda
@CUDA
def test_quick_compare_on_cuda(tmp_path):
    """The same code on the GPU: the closed-form identities hold there too."""
    status, _, stderr = call(["--quick", "--device", "cuda", "--out", str(tmp_path), "--no-progress"])
    assert status == 0, stderr
    rows = read_rows(tmp_path)
    assert {(row["model"], row["guide"]) for row in rows} == EXPECTED
    for row in rows:
        assert row["elbo_per_datum"] <= row["log_likelihood_per_datum"] + 1e-9
        if row["kl_per_datum"] is not None:
            assert abs(row["kl_per_datum"] - row["gap_per_datum"]) <= 1e-6
