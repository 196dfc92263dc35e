"""The VAE's check against the exact answer (Lucas et al. 2019): with an affine decoder, a
Gaussian likelihood with learned sigma^2 and an affine amortised encoder, the VAE is PPCA, and
SVI reaches the Tipping-Bishop maximum log-likelihood on the bundled digits."""

from __future__ import annotations

import pyro
import pytest
import torch

import guides
from gallery import load
from gallery.models import linear_gaussian, vae
from inference.em import ppca_max_log_likelihood
from inference.importance import importance_estimate
from inference.svi import fit_svi

LATENT_DIM = 2


@pytest.fixture(scope="module")
def linear_vae():
    """Digits in [0, 1] (1,797 x 64), float64, full batch, 2,000 steps of Adam from lr 0.02."""
    data = load("digits").data / 16
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    decoder = vae.Decoder(
        64, LATENT_DIM, hidden=(), init_noise_variance=float(data.var(0, correction=0).mean())
    ).double()
    with torch.no_grad():
        decoder.net[0].bias.copy_(data.mean(0))
    encoder = guides.AmortisedNormal(64, LATENT_DIM, **guides.input_scaling(data)).double()
    fit_svi(vae.model, encoder, data, num_steps=2000, lr=0.02, progress=False, decoder=decoder)
    return data, decoder, encoder


def test_linear_vae_reaches_the_ppca_maximum_likelihood(linear_vae):
    """Within 0.01 nats per datum, as the issue asks (measured: about 1e-3)."""
    data, decoder, _ = linear_vae
    fitted = linear_gaussian.log_likelihood(data, vae.as_ppca(decoder)).mean()
    best = ppca_max_log_likelihood(data, LATENT_DIM)
    assert float(fitted) <= float(best) + 1e-9  # nothing beats the maximum
    assert float(best - fitted) < 0.01


def test_importance_estimate_approaches_the_exact_ppca_likelihood(linear_vae):
    """Under the fitted parameters, the estimate with K = 5,000 is within 1e-3 nats per datum of
    the exact log p(x) (300 rows) and closer to it than K = 1."""
    data, decoder, encoder = linear_vae
    rows = data[:300]
    exact = float(linear_gaussian.log_likelihood(rows, vae.as_ppca(decoder)).mean())
    errors = {
        k: abs(
            float(
                importance_estimate(
                    vae.model, encoder, rows, num_samples=k, decoder=decoder
                ).log_likelihood.mean()
            )
            - exact
        )
        for k in (1, 5000)
    }
    assert errors[5000] < 1e-3
    assert errors[5000] < errors[1]
