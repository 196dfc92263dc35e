"""ArviZ output: draws from the right distributions, a file the installed ArviZ opens with the
named variables and dimensions, and ``--arviz`` on the command line."""

from __future__ import annotations

import pytest
import torch

import guides
from gallery.models import gmm, linear_gaussian
from gallery.report import arviz_export
from tests.conftest import known_gmm, known_linear_gaussian, sample_gmm, sample_linear_gaussian
from tests.test_cli import run_main


def test_cluster_assignments_are_drawn_from_the_responsibilities():
    """``infer_discrete`` on the model: 4,000 draws per point; each frequency within 5 standard
    errors of p(c_n = k | x_n), plus 3 counts for components too rare for the normal
    approximation (p ~ 1e-5: one draw in 4,000 happens 3% of the time); the temperature-0
    draw is the most probable component."""
    params = known_gmm()
    data = sample_gmm(params, 40)
    segment = params.loc[0] + torch.linspace(0, 1, 101).double()[:, None] * (params.loc[1] - params.loc[0])
    balance = gmm.log_responsibilities(segment, params).exp().max(-1).values
    data[0] = segment[(balance - 0.5).abs().argmin()]  # a point the two components share
    draws = arviz_export.assignment_draws(gmm.model, data, 4000, num_components=3, init=params)
    assert draws.shape == (4000, 40)
    freq = torch.stack([(draws == k).double().mean(0) for k in range(3)], -1)  # (N, K)
    resp = gmm.log_responsibilities(data, params).exp()
    stderr = (resp * (1 - resp) / 4000).sqrt()
    assert bool(((freq - resp).abs() <= 5 * stderr + 3 / 4000).all())
    assert 0.05 < float(resp[0].max()) < 0.95  # the test has a genuinely uncertain point
    mode = arviz_export.assignment_draws(gmm.model, data, 1, temperature=0, num_components=3, init=params)[0]
    assert torch.equal(mode, resp.argmax(-1))


def test_latent_draws_follow_the_guide():
    """Draws from the exact PPCA guide: mean and covariance of z_n within Monte Carlo error of
    the posterior (2,000 draws; 5 standard errors)."""
    params = known_linear_gaussian(isotropic=True)
    data = sample_linear_gaussian(params, 3)
    draws = arviz_export.guide_draws(guides.ppca_posterior, data, "z", 2000, latent_dim=2, init=params)
    loc, scale_tril = linear_gaussian.posterior(data, params)
    cov = scale_tril @ scale_tril.T
    assert draws.shape == (2000, 3, 2)
    assert bool(((draws.mean(0) - loc).abs() <= 5 * cov.diagonal().sqrt() / 2000**0.5).all())
    sample_cov = torch.cov(draws[:, 0].T)
    assert torch.allclose(sample_cov, cov, atol=5 * float(cov.diagonal().max()) * (2 / 2000) ** 0.5)


@pytest.mark.parametrize("model, latent", [("gmm", "c"), ("ppca", "z"), ("vae", "z")])
def test_arviz_file_opens_with_named_variables_and_dimensions(tmp_path, model, latent):
    out = tmp_path / model
    argv = ["run", model, "--num-steps", "20", "--eval-particles", "2", "--arviz", "--arviz-draws", "7"]
    if model == "vae":
        argv += ["--hidden", "8", "--gap-rows", "5", "--gap-steps", "2", "--heldout-fraction", "0.5"]
    else:
        argv += ["--em-iters", "3"]
    assert run_main([*argv, "--no-progress", "--out", str(out)]) == 0
    data = arviz_export.load(out / "posterior.nc")
    posterior, constant = data["posterior"], data["constant_data"]
    num_data = 150 if model != "vae" else 899  # iris; the digits' training half
    expected = {"chain": 1, "draw": 7, "data": num_data} | ({"latent": 2} if latent == "z" else {})
    assert dict(posterior[latent].sizes) == expected
    assert dict(constant["elbo_per_datum"].sizes) == {"step": 20}
    if model == "gmm":
        assert dict(constant["c_map"].sizes) == {"data": 150}
    summary = (out / "posterior_summary.csv").read_text().splitlines()
    assert summary[0].startswith(",mean,sd") and len(summary) == 1 + num_data * (2 if latent == "z" else 1)
    assert not any(name.endswith(".tmp") for name in (p.name for p in out.iterdir()))


def test_arviz_draws_must_be_positive(tmp_path, capsys):
    assert run_main(["run", "ppca", "--arviz", "--arviz-draws", "0", "--out", str(tmp_path / "o")]) == 2
    assert "--arviz-draws must be at least 1" in capsys.readouterr().err
