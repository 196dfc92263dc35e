"""The importance-weighted log p(x): exact with the exact posterior as proposal (in any chunking),
at least the ELBO on average, and growing with K."""

from __future__ import annotations

import math

import pytest
import torch

import guides
from gallery import load
from gallery.models import ppca, vae
from inference import evaluate
from inference.importance import importance_estimate
from inference.svi import fit_svi
from tests.conftest import known_linear_gaussian, sample_linear_gaussian


def test_with_the_exact_posterior_every_weight_is_p_of_x(device):
    """q = p(z | x) makes log w = log p(x) for every sample: any K gives the exact answer. The
    tolerance, 1e-10 nats, is float64 rounding."""
    params = known_linear_gaussian(isotropic=True, device=device)
    data = sample_linear_gaussian(params, 300)
    exact = ppca.log_likelihood(data, params)
    for num_samples, chunk_size, batch_size in ((1, 1, 300), (7, 3, 64), (250, 100, 50)):
        estimate = importance_estimate(
            ppca.model,
            guides.ppca_posterior,
            data,
            num_samples=num_samples,
            chunk_size=chunk_size,
            batch_size=batch_size,
            latent_dim=2,
            init=params,
        )
        assert estimate.log_likelihood.shape == estimate.elbo.shape == (300,)
        assert torch.allclose(estimate.log_likelihood, exact, atol=1e-10, rtol=0)
        assert torch.allclose(estimate.elbo, exact, atol=1e-10, rtol=0)


def test_the_estimate_is_at_least_the_elbo_and_grows_with_k():
    """A small MLP VAE trained for 1,000 steps on the digits, evaluated with q(z | x_n) = N(0, I), the
    prior, far from the posterior. IW with K = 1 is an unbiased ELBO estimate: it must agree
    with an independent 100-particle ELBO within 5 standard errors (over the 1,797 rows).
    K = 10 and 100 must lie above it and above each other by more than 5 standard errors of
    their difference."""
    data = load("digits").data.float() / 16
    decoder = vae.Decoder(64, 2, hidden=(32,))
    encoder = guides.AmortisedNormal(64, 2, hidden=(32,), **guides.input_scaling(data))
    fit_svi(
        vae.model, encoder, data, num_steps=1000, batch_size=128, lr=0.01, progress=False, decoder=decoder
    )
    prior = guides.MeanFieldNormal(len(data), 2, name="prior")  # q = N(0, I), never trained
    estimates = {
        k: importance_estimate(vae.model, prior, data, num_samples=k, decoder=decoder).log_likelihood.double()
        for k in (1, 10, 100)
    }
    elbo = evaluate.elbo(vae.model, prior, data, num_particles=100, decoder=decoder) / len(data)
    one = estimates[1]
    assert abs(float(one.mean()) - elbo) < 5 * float(one.std()) / math.sqrt(len(data))
    for low, high in ((1, 10), (10, 100)):
        diff = estimates[high] - estimates[low]
        assert float(diff.mean()) > 5 * float(diff.std()) / math.sqrt(len(data)), (low, high)
    assert float(estimates[10].mean()) > elbo and float(estimates[100].mean()) > elbo


def test_enumerated_latents_and_bad_sizes_are_clear_errors():
    from gallery.models import gmm
    from tests.conftest import known_gmm, sample_gmm

    params = known_gmm()
    data = sample_gmm(params, 20)
    with pytest.raises(ValueError, match="enumerated"):
        importance_estimate(
            gmm.model, guides.gmm_posterior, data, num_samples=2, num_components=3, init=params
        )
    for kwargs in (
        {"num_samples": 0},
        {"num_samples": 2, "chunk_size": 0},
        {"num_samples": 2, "batch_size": 0},
    ):
        with pytest.raises(ValueError, match="must be at least 1"):
            importance_estimate(ppca.model, guides.ppca_posterior, data, latent_dim=1, **kwargs)


def test_a_chunk_stays_under_the_byte_bound(monkeypatch):
    """Every chunk's (samples, rows, d) tensor fits in CHUNK_BYTES (the allocator then reuses
    its buffers), and the estimate is the same whatever the bound (same draws, in order)."""
    import pyro

    import inference.importance as importance

    data = torch.rand(300, 50)
    decoder = vae.Decoder(50, 2, hidden=(8,))
    encoder = guides.AmortisedNormal(50, 2, hidden=(8,))
    sizes, real = [], importance.log_weights

    def recording(model, guide, data, rows, size, **kwargs):
        sizes.append(size * len(rows) * data.shape[1] * data.element_size())
        return real(model, guide, data, rows, size, **kwargs)

    monkeypatch.setattr(importance, "log_weights", recording)
    pyro.set_rng_seed(0)
    rows = dict(batch_size=512)  # every row in one batch: the chunks are cut in samples alone
    wide = importance.importance_estimate(vae.model, encoder, data, num_samples=64, decoder=decoder, **rows)
    assert sizes == [64 * 300 * 50 * 4]  # one chunk: 3.8 MB
    monkeypatch.setattr(importance, "CHUNK_BYTES", 300 * 50 * 4 * 16)  # 16 samples of the 300 rows
    sizes.clear()
    pyro.set_rng_seed(0)
    narrow = importance.importance_estimate(vae.model, encoder, data, num_samples=64, decoder=decoder, **rows)
    assert sizes == [importance.CHUNK_BYTES] * 4
    # the same draws, sample-major in both; only the order of the sums differs (float32)
    torch.testing.assert_close(narrow.elbo, wide.elbo, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(narrow.log_likelihood, wide.log_likelihood, rtol=1e-5, atol=1e-4)


def test_by_default_a_chunk_has_room_for_32_samples_of_its_rows(monkeypatch):
    """Wide rows: the rows per batch are cut so that one chunk holds SAMPLES_PER_CHUNK samples
    (or all K, when fewer), within CHUNK_BYTES; narrow rows keep MAX_ROWS rows."""
    import inference.importance as importance

    data = torch.rand(300, 784)
    decoder = vae.Decoder(784, 2, hidden=(8,))
    encoder = guides.AmortisedNormal(784, 2, hidden=(8,))
    calls, real = [], importance.log_weights

    def recording(model, guide, data, rows, size, **kwargs):
        calls.append((len(rows), size))
        return real(model, guide, data, rows, size, **kwargs)

    monkeypatch.setattr(importance, "log_weights", recording)
    row_bytes = 784 * 4
    for num_samples, per_chunk in ((20, 20), (49, 32)):
        calls.clear()
        importance.importance_estimate(vae.model, encoder, data, num_samples=num_samples, decoder=decoder)
        rows = importance.CHUNK_BYTES // (per_chunk * row_bytes)  # 133 and 83
        assert max(n for n, _ in calls) == rows and calls[0] == (rows, per_chunk)
        assert sum(size for n, size in calls if n == rows) == num_samples * (300 // rows)
        assert all(n * size * row_bytes <= importance.CHUNK_BYTES for n, size in calls)
    assert importance.CHUNK_BYTES // (32 * 64 * 4) > importance.MAX_ROWS  # 64 pixels: 512 rows, as before
