"""``python -m gallery figures``: every figure made and listed, the decomposition's closed forms,
and bad input refused in one line before any computation, with nothing written."""

from __future__ import annotations

import pyro
import pytest
import torch

import gallery.app.figures
import gallery.models.linear_gaussian
import gallery.report.figures.lecture
from gallery.app.figures import FILES, main
from gallery.models import linear_gaussian
from guides.registry import make_guide
from inference import decompose
from inference.evaluate import decomposition_terms
from tests.conftest import exit_status, known_linear_gaussian, sample_linear_gaussian

TINY = ["--quick", "--num-steps", "30", "--no-progress"]  # quick, and fewer SVI steps still
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.usefixtures("one_thread")


def run_main(argv: list[str]) -> int:
    return exit_status(main, argv)


def test_quick_run_writes_every_figure_and_lists_it(tmp_path):
    out = tmp_path / "figures"
    assert main([*TINY, "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([*FILES, "index.md"])  # no temporary files left
    index = (out / "index.md").read_text()
    for name in FILES:
        payload = (out / name).read_bytes()
        assert payload.startswith(PNG_MAGIC) and len(payload) > 1000, name
        assert f"]({name})" in index and f"- file: `{name}`" in index, name
    assert index.count("- caption: ") == len(FILES)
    assert index.count(f"- command: `python -m gallery figures --quick --num-steps 30 --out {out}`") == len(
        FILES
    )


@pytest.mark.parametrize("isotropic", [True, False], ids=["ppca", "factor-analysis"])
def test_decomposition_terms_sum_to_log_likelihood(isotropic):
    """For every guide, started anywhere: reconstruction - encoding + error = log p(x) per datum
    (1e-8: float64 rounding of terms of a few nats), reconstruction - encoding is the ELBO of
    inference.evaluate.decompose (an independent closed form) and error its KL; the exact guide's
    error is 0."""
    params = known_linear_gaussian(isotropic)
    data = sample_linear_gaussian(params, 40, seed=1)
    model_name = "ppca" if isotropic else "factor-analysis"
    start = linear_gaussian.init_params(
        data, 2, isotropic=isotropic, generator=torch.Generator().manual_seed(0)
    )
    kwargs = {"latent_dim": 2, "init": params}
    for guide_name in ("exact", "mean-field", "amortised", "amortised-full", "auto-normal"):
        pyro.clear_param_store()
        guide = make_guide(
            model_name, guide_name, data=data, init=start, size=2, model_kwargs={"latent_dim": 2}
        )
        guide(data, **kwargs)  # creates the guide's parameters (and the model's, for the exact guide)
        terms = decomposition_terms(guide, data, params, **kwargs)
        reference = decompose(guide, data, params, **kwargs)
        total = terms.reconstruction - terms.encoding + terms.error
        assert torch.allclose(total, linear_gaussian.log_likelihood(data, params), rtol=0, atol=1e-8), (
            guide_name
        )
        assert torch.allclose(terms.reconstruction - terms.encoding, reference.elbo, rtol=0, atol=1e-8)
        assert torch.allclose(terms.error, reference.kl, rtol=0, atol=1e-8)
        assert bool((terms.encoding >= 0).all() and (terms.error >= -1e-10).all()), guide_name
        if guide_name == "exact":
            assert float(terms.error.abs().max()) < 1e-8


def test_decomposition_check_raises_when_the_terms_do_not_add_up(monkeypatch):
    params = known_linear_gaussian(True)
    data = sample_linear_gaussian(params, 10)
    exact = make_guide("ppca", "exact", data=data, init=params, size=2, model_kwargs={"latent_dim": 2})
    kl = gallery.models.linear_gaussian.gaussian_kl
    monkeypatch.setattr(
        gallery.models.linear_gaussian, "gaussian_kl", lambda *args: kl(*args) * (1 + 1e-6)
    )  # KL(q || p(z)) off by 1 ppm
    with pytest.raises(RuntimeError, match="miss log p"):
        decomposition_terms(exact, data, params, latent_dim=2, init=params)


def test_nothing_is_written_when_a_figure_fails(tmp_path, monkeypatch):
    def fail(*args):
        raise RuntimeError("the last figure failed")

    monkeypatch.setattr(gallery.report.figures.lecture, "vem_figure", fail)
    out = tmp_path / "figures"
    with pytest.raises(RuntimeError, match="last figure"):
        main([*TINY, "--num-steps", "2", "--out", str(out)])
    assert not out.exists()


BAD_INPUT = {
    "zero steps": ["--num-steps", "0"],
    "steps not a number": ["--num-steps", "many"],
    "negative seed": ["--seed", "-1"],
    "unknown device": ["--device", "tpu"],
    "unknown flag": ["--colour"],
}
if not torch.cuda.is_available():
    BAD_INPUT["cuda without a GPU"] = ["--device", "cuda"]


@pytest.mark.parametrize("argv", list(BAD_INPUT.values()), ids=list(BAD_INPUT))
def test_bad_input_exits_2_in_one_line_before_any_work(argv, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(
        gallery.app.figures, "make_figures", lambda *a, **k: pytest.fail("computed on bad input")
    )
    out = tmp_path / "figures"
    assert run_main([*argv, "--out", str(out), "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("python -m gallery figures: error: ")
    assert captured.err.count("\n") == 1 and captured.err.endswith("\n")
    assert not out.exists()


def test_out_below_a_file_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(
        gallery.app.figures, "make_figures", lambda *a, **k: pytest.fail("computed on bad input")
    )
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"keep me")
    assert run_main(["--out", str(blocker / "figures"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m gallery figures: error: --out") and err.count("\n") == 1
    assert blocker.read_bytes() == b"keep me" and sorted(tmp_path.iterdir()) == [blocker]
