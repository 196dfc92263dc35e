"""The Cremer et al. (2018) decomposition against closed forms on PPCA, where the best diagonal
q for each datum is known: mean the posterior mean, variances 1 / Lambda_ii (Bishop 2006,
sec. 10.1.2), so the approximation gap is KL = 1/2 (sum_i log Lambda_ii - log det Lambda)."""

from __future__ import annotations

import dataclasses

import pyro
import pytest
import torch

import guides
from gallery.models import linear_gaussian, vae
from inference.gaps import LOCAL_NAME, inference_gaps
from tests.conftest import known_linear_gaussian, sample_linear_gaussian


def ppca_decoder(params: linear_gaussian.LinearGaussianParams) -> vae.Decoder:
    """An affine, Gaussian decoder holding the PPCA parameters ``params``."""
    decoder = vae.Decoder(
        len(params.loc), params.latent_dim, hidden=(), init_noise_variance=float(params.noise_variance)
    )
    decoder = decoder.double()
    with torch.no_grad():
        decoder.net[0].weight.copy_(params.loading)
        decoder.net[0].bias.copy_(params.loc)
    return decoder


def test_approximation_gap_is_the_closed_form_kl_of_the_best_diagonal_q():
    """Loadings with correlated columns, so that the posterior is far from diagonal (KL = 0.103
    nats). Tolerance 0.01 nats: q* is fitted by SVI, which stops 1e-3 to 5e-3 short of the
    optimum from this start (measured), plus the Monte Carlo error of K = 1,000 samples."""
    base = known_linear_gaussian(isotropic=True)
    tilt = torch.tensor([1.5, 0.5, 1.0, 0.0, 0.0], dtype=torch.float64)
    params = dataclasses.replace(
        base, loading=base.loading + tilt[:, None] * torch.tensor([0.0, 1.0]).double()
    )
    data = sample_linear_gaussian(params, 200)
    decoder = ppca_decoder(params)
    encoder = guides.AmortisedNormal(5, 2, **guides.input_scaling(data)).double()  # untrained
    gaps = inference_gaps(
        vae.model, encoder, data, num_steps=1000, lr=0.05, num_samples=1000, progress=False, decoder=decoder
    )
    precision = linear_gaussian.posterior_precision(params)
    kl = float(0.5 * (precision.diagonal().log().sum() - torch.logdet(precision)))
    exact = float(linear_gaussian.log_likelihood(data, params).mean())
    assert kl > 0.1
    assert abs(gaps.approximation - kl) < 0.01
    assert abs(gaps.elbo_best_local - (exact - kl)) < 0.01
    assert abs(gaps.log_likelihood - exact) < 0.01
    assert gaps.amortisation > 1.0  # an untrained encoder is far from the best local q
    total = gaps.log_likelihood - gaps.elbo_amortised
    assert gaps.approximation + gaps.amortisation == pytest.approx(total, abs=1e-12)
    assert not any(name.startswith(LOCAL_NAME) for name in pyro.get_param_store().keys())
    assert torch.equal(decoder.net[0].weight, params.loading)  # the model was held fixed


def test_full_covariance_family_has_no_approximation_gap_on_ppca():
    """With full-covariance q the family holds the exact posterior: the gap is 0 up to the
    same fitting and Monte Carlo error (0.01 nats)."""
    params = known_linear_gaussian(isotropic=True)
    data = sample_linear_gaussian(params, 100)
    encoder = guides.AmortisedNormal(5, 2, covariance="full", **guides.input_scaling(data)).double()
    gaps = inference_gaps(
        vae.model,
        encoder,
        data,
        num_steps=1000,
        lr=0.05,
        num_samples=500,
        progress=False,
        decoder=ppca_decoder(params),
    )
    assert abs(gaps.approximation) < 0.01
