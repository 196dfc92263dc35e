"""Evaluation against closed forms: the Gaussian KL, and log p(x) = ELBO + KL(q || p(z|x)) for
every guide. Float64; identities that hold exactly are checked to 1e-8 per datum (rounding in
sums of ~150 terms of size ~10), Monte Carlo estimates to 5 standard errors."""

from __future__ import annotations

import functools

import pyro
import pytest
import torch
import torch.distributions as td
from pyro import poutine

import guides
from gallery import load
from gallery.models import factor_analysis, gmm, ppca
from inference.evaluate import decompose, elbo, gaussian_kl, guide_distribution, log_likelihood
from inference.svi import fit_svi
from tests.conftest import known_linear_gaussian, sample_linear_gaussian


def _random_gaussians(batch, k, seed):
    gen = torch.Generator().manual_seed(seed)
    loc = torch.randn(batch, k, generator=gen, dtype=torch.float64)
    a = torch.randn(batch, k, k, generator=gen, dtype=torch.float64)
    cov = a @ a.mT + 0.5 * torch.eye(k, dtype=torch.float64)
    return loc, torch.linalg.cholesky(cov)


def test_gaussian_kl_matches_torch():
    loc_q, tril_q = _random_gaussians(20, 4, 0)
    loc_p, tril_p = _random_gaussians(20, 4, 1)
    ours = gaussian_kl(loc_q, tril_q, loc_p, tril_p)
    reference = td.kl_divergence(
        td.MultivariateNormal(loc_q, scale_tril=tril_q), td.MultivariateNormal(loc_p, scale_tril=tril_p)
    )
    torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-10)


def test_gaussian_kl_matches_monte_carlo():
    """200,000 samples; the estimate must be within 5 of its own standard errors."""
    loc_q, tril_q = _random_gaussians(1, 3, 2)
    loc_p, tril_p = _random_gaussians(1, 3, 3)
    q = td.MultivariateNormal(loc_q[0], scale_tril=tril_q[0])
    p = td.MultivariateNormal(loc_p[0], scale_tril=tril_p[0])
    z = q.sample((200_000,))
    terms = q.log_prob(z) - p.log_prob(z)
    standard_error = terms.std() / len(terms) ** 0.5
    assert abs(terms.mean() - gaussian_kl(loc_q, tril_q, loc_p, tril_p)[0]) < 5 * standard_error


def test_gaussian_kl_lecture_example():
    """KL(N(0, 1) || N(mu, 1)) = mu^2 / 2; zero only at mu = 0; broadcasts over mu."""
    mu = torch.linspace(-3, 3, 13, dtype=torch.float64)[:, None]
    one = torch.ones(1, 1, 1, dtype=torch.float64)
    kl = gaussian_kl(torch.zeros(1, dtype=torch.float64), one[0], mu, one)
    torch.testing.assert_close(kl, mu[:, 0] ** 2 / 2)


def _guides_for(name: str, num_data: int, obs_dim: int, kwargs: dict) -> dict:
    model = functools.partial(MODELS[name][0].model, **kwargs)
    if name == "gmm":
        return {
            "exact": guides.gmm_posterior,
            "mean-field": guides.MeanFieldCategorical(num_data, 3),
            "amortised": guides.AmortisedCategorical(obs_dim, 3).double(),
            "auto-normal": guides.auto_normal(poutine.block(model, hide=["c"])),
        }
    exact = guides.factor_analysis_posterior if name == "factor-analysis" else guides.ppca_posterior
    return {
        "exact": exact,
        "mean-field": guides.MeanFieldNormal(num_data, 2),
        "amortised": guides.AmortisedNormal(obs_dim, 2).double(),
        "amortised-full": guides.AmortisedNormal(obs_dim, 2, covariance="full", hidden=(8,)).double(),
        "auto-normal": guides.auto_normal(model),
    }


MODELS = {
    "gmm": (gmm, {"num_components": 3}),
    "factor-analysis": (factor_analysis, {"latent_dim": 2}),
    "ppca": (ppca, {"latent_dim": 2}),
}
GUIDE_CASES = [(m, g) for m in MODELS for g in ("exact", "mean-field", "amortised", "auto-normal")] + [
    ("factor-analysis", "amortised-full"),
    ("ppca", "amortised-full"),
]


@pytest.mark.parametrize("name, guide_name", GUIDE_CASES)
def test_every_guide_bounds_log_likelihood_and_gap_is_kl(name, guide_name):
    """After 200 SVI steps (any q will do: the identity holds for every q and lambda):
    ELBO <= log p(x) per datum, the gap equals the closed-form KL(q || p(z|x)), the exact
    guide's gap is zero, and Pyro's Monte Carlo ELBO agrees with the closed-form one."""
    module, kwargs = MODELS[name]
    data = load("iris").data
    guide = _guides_for(name, *data.shape, kwargs)[guide_name]
    init = module.init_params(data, 3 if name == "gmm" else 2, generator=torch.Generator().manual_seed(0))
    fit_svi(module.model, guide, data, num_steps=200, lr=0.02, progress=False, init=init, **kwargs)
    params = module.current_params()
    terms = decompose(guide, data, params, **kwargs)
    assert (terms.kl >= -1e-10).all()
    assert (terms.elbo <= terms.log_likelihood + 1e-10).all()
    torch.testing.assert_close(terms.gap, terms.kl, rtol=0, atol=1e-8)
    torch.testing.assert_close(terms.log_likelihood, log_likelihood(data, params), rtol=0, atol=1e-10)
    chunks = torch.tensor(
        [elbo(module.model, guide, data, num_particles=100, **kwargs) for _ in range(8)], dtype=torch.float64
    )
    standard_error = chunks.std() / 8**0.5
    assert abs(chunks.mean() - terms.elbo.sum()) <= 5 * standard_error + 1e-8
    if guide_name == "exact" or (name == "gmm" and guide_name == "auto-normal"):
        assert terms.kl.max() < 1e-6
        assert abs(float(chunks.mean()) - float(terms.log_likelihood.sum())) / len(data) < 1e-6


def test_exact_guide_single_sample_elbo_is_log_likelihood():
    """With q = p(z|x), log p(x, z) - log q(z) = log p(x) for every z: one particle suffices."""
    data = sample_linear_gaussian(known_linear_gaussian(False), 300)
    pyro.param("loc", data.mean(0))  # any parameters; here the known ones
    init = known_linear_gaussian(False)
    value = elbo(factor_analysis.model, guides.factor_analysis_posterior, data, latent_dim=2, init=init)
    exact = float(factor_analysis.log_likelihood(data, factor_analysis.current_params()).sum())
    assert abs(value - exact) / 300 < 1e-10


def _fixed_model(module, params):
    return poutine.block(functools.partial(module.model, init=params), hide_types=["param"])


def test_auto_delta_finds_the_posterior_mode():
    """AutoDelta with the model's parameters fixed is MAP for z; for a Gaussian posterior the
    mode is the mean. The objective is deterministic, so the tolerance is tight (1e-4)."""
    truth = known_linear_gaussian(True)
    data = sample_linear_gaussian(truth, 100)
    model = _fixed_model(ppca, truth)
    guide = guides.auto_delta(functools.partial(model, latent_dim=2))
    fit_svi(model, guide, data, num_steps=1500, lr=0.05, final_lr_ratio=0.01, progress=False, latent_dim=2)
    exact_loc, _ = ppca.linear_gaussian.posterior(data, truth)
    found = guide_distribution(guide, data, "z", latent_dim=2).v
    torch.testing.assert_close(found, exact_loc, atol=1e-4, rtol=0)


def test_auto_normal_finds_the_mean_field_optimum():
    """AutoNormal with fixed parameters reaches the best factorised Gaussian: means mu and
    variances 1 / Lambda_ii. Stochastic fit with 32 particles: 0.02 absolute on means (a tenth of
    the posterior sd) and 5% on scales."""
    truth = known_linear_gaussian(False)
    data = sample_linear_gaussian(truth, 100)
    model = _fixed_model(factor_analysis, truth)
    guide = guides.auto_normal(functools.partial(model, latent_dim=2))
    fit_svi(
        model,
        guide,
        data,
        num_steps=2000,
        lr=0.05,
        final_lr_ratio=0.01,
        num_particles=32,
        progress=False,
        latent_dim=2,
    )
    exact_loc, scale_tril = factor_analysis.linear_gaussian.posterior(data, truth)
    best_scale = torch.cholesky_inverse(scale_tril.T.contiguous(), upper=True).diagonal().rsqrt()
    q = guide_distribution(guide, data, "z", latent_dim=2).base_dist
    assert (q.loc - exact_loc).abs().mean() < 0.02
    torch.testing.assert_close(q.scale, best_scale.expand_as(q.scale), rtol=0.05, atol=0)


def test_elbo_chunks_particles():
    """250 particles in chunks of 100 is the same estimator as 250 at once (exact guide: equal)."""
    data = load("iris").data
    kwargs = dict(latent_dim=2, init=ppca.init_params(data, 2))
    a = elbo(ppca.model, guides.ppca_posterior, data, num_particles=250, chunk_size=100, **kwargs)
    b = elbo(ppca.model, guides.ppca_posterior, data, num_particles=1, **kwargs)
    assert abs(a - b) < 1e-8


def test_decompose_refuses_non_gaussian_q():
    data = load("iris").data
    model = functools.partial(ppca.model, latent_dim=2)
    guide = guides.auto_delta(model)
    guide(data)
    with pytest.raises(ValueError, match="must be Gaussian"):
        decompose(guide, data, ppca.current_params(), latent_dim=2)
