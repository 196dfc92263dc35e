"""The continuous Bernoulli likelihood (Loaiza-Ganem and Cunningham 2019): a density on [0, 1]
for every pixel, the same as torch's and as its closed form, and the VAE trains with it on the
grey digits."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from gallery.models import vae
from tests.test_cli import run_main


def _decoder(obs_dim: int = 6, latent_dim: int = 2) -> vae.Decoder:
    torch.manual_seed(0)
    decoder = vae.Decoder(obs_dim, latent_dim, hidden=(8,), likelihood="continuous-bernoulli").double()
    decoder.requires_grad_(False)
    with torch.no_grad():  # logits from about -12 to 12: lam from 6e-6 to 1 - 6e-6, and near 1/2
        decoder.net[-1].bias.copy_(torch.linspace(-10, 10, obs_dim, dtype=torch.float64))
    return decoder


def test_the_density_integrates_to_one_over_the_unit_interval_per_pixel():
    """Gauss-Legendre on [0, 1] with 200 nodes: the density is exp(a x) times a constant, entire,
    so the rule is exact to rounding for logits |a| <= 10.4 as here (its error bound decays like
    (a / 4n)^(2n)); 1e-6 is the issue's tolerance, the error seen is 3e-13."""
    decoder = _decoder()
    z = torch.randn(5, 2, dtype=torch.float64)
    nodes, weights = np.polynomial.legendre.leggauss(200)
    x = torch.from_numpy((nodes + 1) / 2)[:, None, None].expand(200, 5, 6)  # (G, B, d) on [0, 1]
    pixel = decoder.likelihood_dist(z).base_dist  # batch shape (B, d): one density per pixel
    density = pixel.log_prob(x).exp()  # (G, B, d)
    integral = (torch.from_numpy(weights / 2)[:, None, None] * density).sum(0)  # (B, d)
    assert float((integral - 1).abs().max()) < 1e-6


def test_the_log_density_matches_torch_and_the_closed_form():
    """The model's site log-density against torch's ContinuousBernoulli and against
    log C(lam) + x log lam + (1 - x) log(1 - lam), C = 2 atanh(1 - 2 lam) / (1 - 2 lam), summed
    over the d pixels (float64; 1e-9 on terms of tens of nats; away from lam = 1/2, where torch
    uses a Taylor expansion of C)."""
    decoder = _decoder()
    z = torch.randn(7, 2, dtype=torch.float64)
    x = torch.rand(7, 6, dtype=torch.float64)
    ours = decoder.likelihood_dist(z).log_prob(x)  # (B,)
    logits = decoder(z)
    theirs = torch.distributions.ContinuousBernoulli(logits=logits).log_prob(x).sum(-1)
    lam = logits.sigmoid()
    log_c = torch.log(2 * torch.atanh(1 - 2 * lam) / (1 - 2 * lam))
    closed = (log_c + x * lam.log() + (1 - x) * (1 - lam).log()).sum(-1)
    assert (lam - 0.5).abs().min() > 0.01
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-9)
    torch.testing.assert_close(ours, closed, rtol=0, atol=1e-9)
    mean = decoder.mean(z)  # E[x | z] by quadrature of x p(x): the figures draw this image
    nodes, weights = np.polynomial.legendre.leggauss(200)
    grid = torch.from_numpy((nodes + 1) / 2)[:, None, None]
    pixel = decoder.likelihood_dist(z).base_dist
    by_quadrature = (torch.from_numpy(weights / 2)[:, None, None] * grid * pixel.log_prob(grid).exp()).sum(0)
    torch.testing.assert_close(mean, by_quadrature, rtol=0, atol=1e-8)
    assert math.isfinite(float(ours.sum()))


def test_the_vae_trains_with_it_on_the_grey_digits(tmp_path):
    """``run vae --likelihood continuous-bernoulli`` on the digits scaled to [0, 1], no
    thresholding: 300 steps raise the ELBO from its start (by far more than the Monte Carlo
    noise of K = 20 on 1,617 rows: the rise seen is 35 nats per datum, from 41 to 75)."""
    out = tmp_path / "cb"
    argv = ["run", "vae", "--likelihood", "continuous-bernoulli", "--num-steps", "300"]
    argv += ["--eval-particles", "20", "--gap-rows", "0", "--hidden", "32", "--no-progress"]
    argv += ["--out", str(out)]
    assert run_main(argv) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["likelihood"] == "continuous-bernoulli" and m["preprocessing"] == "scale-to-unit(/16)"
    assert m["noise_variance"] is None
    assert m["log_likelihood_per_datum"] > m["initial_log_likelihood_per_datum"] + 20
    assert m["heldout_log_likelihood_per_datum"] >= m["heldout_elbo_per_datum"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--likelihood", "bernoulli"], "use --likelihood continuous-bernoulli"),
        (["--likelihood", "continuous-bernoulli", "--data", "iris"], "needs values in [0, 1]"),
        (["--likelihood", "continuous-bernoulli", "--noise-variance", "0.1"], "Gaussian likelihood"),
    ],
)
def test_refusals_name_the_fix(tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    assert run_main(["run", "vae", "--num-steps", "2", *extra, "--no-progress", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()
