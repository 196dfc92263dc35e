"""Mixtures of factor analysers and of PPCA against exact answers: the special cases K = 1
(factor analysis, PPCA) and p = 0 (diagonal and spherical Gaussian mixtures), a brute-force
D x D density, EM's monotonicity, the exact guide's ELBO, and SVI against EM."""

from __future__ import annotations

import warnings

import pyro
import pytest
import torch
from pyro.infer import TraceEnum_ELBO

from gallery.data import datasets
from gallery.models import factor_analysis, gmm, mfa, mppca
from gallery.models.mfa.model import MFAParams
from gallery.models.ppca import ppca_max_log_likelihood
from inference.em import fit_em, run_em
from inference.evaluate import decompose
from inference.svi import fit_svi

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:EM did not converge:UserWarning"),
]


def iris() -> torch.Tensor:
    return datasets.load("iris").data.double()  # (150, 4)


def em(module, data, init, iters, **options):
    """``iters`` EM iterations, no early stop (tol=0), the non-convergence warning silenced."""
    steps = module.em_steps(data, init, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run_em(steps.data, init, steps.e_step, steps.m_step, max_iters=iters, tol=0.0)


def test_mppca_with_one_component_reaches_ppcas_closed_form():
    # EM for PPCA converges linearly at the rate of the eigenvalue gap (iris p = 1: 0.24 / 4.2),
    # so 300 iterations from a random start are far past 1e-7 nats per datum; reg_covar=0
    # because the closed form has no floor.
    x = iris()
    init = mppca.init_params(x, 1, 1, generator=torch.Generator().manual_seed(0))
    result = em(mppca, x, init, 300, reg_covar=0.0)
    closed = float(ppca_max_log_likelihood(x, 1))
    assert abs(float(result.log_likelihoods[-1]) - closed) < 1e-7
    assert abs(float(mppca.log_likelihood(x, result.params).mean()) - closed) < 1e-7


def test_mfa_with_one_component_is_factor_analysis_em():
    # The same start and iterations: the same arithmetic up to the order of float64 sums
    # (data vs moments, Cholesky vs LU solve), ~1e-13; 1e-10 leaves room for 40 iterations.
    x = iris()
    start = factor_analysis.init_params(x, 2, generator=torch.Generator().manual_seed(1))
    fa = em(factor_analysis, x, start, 40)
    init = MFAParams(x.new_ones(1), start.loc[None], start.loading[None], start.noise_variance[None])
    mixture = em(mfa, x, init, 40, reg_covar=0.0)
    torch.testing.assert_close(mixture.log_likelihoods, fa.log_likelihoods, rtol=0, atol=1e-10)
    torch.testing.assert_close(mixture.params.loading[0], fa.params.loading, rtol=0, atol=1e-10)
    torch.testing.assert_close(mixture.params.noise_variance[0], fa.params.noise_variance, rtol=0, atol=1e-10)


def test_mfa_with_no_latent_dimension_is_the_diagonal_mixture():
    # p = 0: loading (K, D, 0); the M-step's moment is n_k + 10 eps, the mixture's guard, and
    # reg_covar is the mixture's, so the iterates agree to rounding (1e-10 after 30 iterations).
    x = iris()
    start = gmm.init_params(x, 3, "diag", generator=torch.Generator().manual_seed(0))
    mixture = em(gmm, x, start, 30)
    init = MFAParams(start.weights, start.loc, x.new_zeros(3, 4, 0), start.scale.square())
    ours = em(mfa, x, init, 30)
    torch.testing.assert_close(ours.log_likelihoods, mixture.log_likelihoods, rtol=0, atol=1e-10)
    torch.testing.assert_close(ours.params.noise_variance, mixture.params.scale.square(), rtol=0, atol=1e-10)
    torch.testing.assert_close(ours.params.loc, mixture.params.loc, rtol=0, atol=1e-10)


def test_mppca_with_no_latent_dimension_is_the_spherical_mixture():
    # A spherical mixture's EM written out here (sigma_k^2 = sum_n r_nk |x_n - mu_k|^2 / (D n_k)
    # + reg_covar); 1e-10 as above.
    x = iris()
    init = mppca.init_params(x, 3, 0, generator=torch.Generator().manual_seed(0))
    ours = em(mppca, x, init, 20)
    weights, loc, var = init.weights, init.loc, init.noise_variance
    history = []
    for _ in range(21):
        dist2 = torch.cdist(x, loc).square()  # (N, K)
        joint = weights.log() - 0.5 * (4 * (2 * torch.pi * var).log() + dist2 / var)
        history.append(joint.logsumexp(-1).mean())
        resp = (joint - joint.logsumexp(-1, keepdim=True)).exp()
        nk = resp.sum(0) + 10 * torch.finfo(x.dtype).eps
        weights, loc = nk / len(x), resp.T @ x / nk[:, None]
        var = (resp * torch.cdist(x, loc).square()).sum(0) / (4 * nk) + 1e-6
    torch.testing.assert_close(ours.log_likelihoods, torch.stack(history), rtol=0, atol=1e-10)


@pytest.mark.parametrize("module", [mfa, mppca])
def test_em_never_lowers_the_log_likelihood(module):
    # EM's guarantee (Dempster et al. 1977) for the exact M-step; -1e-12 allows float64 rounding
    # of a mean of ~150 terms of a few nats. reg_covar=0 keeps the M-step the exact maximiser
    # (iris has no constant columns, and 60 iterations do not collapse a component).
    x = iris()
    init = module.init_params(x, 3, 2, generator=torch.Generator().manual_seed(0))
    history = em(module, x, init, 60, reg_covar=0.0).log_likelihoods
    assert float((history[1:] - history[:-1]).min()) >= -1e-12
    assert float(history[-1]) > float(history[0]) + 0.5


@pytest.mark.parametrize("module", [mfa, mppca])
def test_densities_and_responsibilities_match_a_brute_force_covariance(module):
    # torch's MultivariateNormal on W W^T + Psi (D x D) against Woodbury per component: both
    # float64 on a 4-D, 150-row problem, ~1e-14 apart; 1e-10 is the bound.
    x = iris()
    params = module.init_params(x, 3, 2, generator=torch.Generator().manual_seed(3))
    params = em(module, x, params, 5).params  # away from the start's small loadings
    cov = params.covariance()
    brute = (
        torch.stack(
            [torch.distributions.MultivariateNormal(params.loc[k], cov[k]).log_prob(x) for k in range(3)], -1
        )
        + params.weights.log()
    )
    log_resp, _, _ = module.posterior(x, params)
    torch.testing.assert_close(module.log_likelihood(x, params), brute.logsumexp(-1), rtol=0, atol=1e-10)
    torch.testing.assert_close(log_resp.exp().sum(-1), x.new_ones(150), rtol=0, atol=1e-12)
    torch.testing.assert_close(log_resp, brute - brute.logsumexp(-1, keepdim=True), rtol=0, atol=1e-10)


@pytest.mark.parametrize("module", [mfa, mppca])
def test_the_exact_guides_elbo_is_the_log_likelihood(module):
    # With q = p(c, z | x), log p(x, c, z) - log q(c, z) = log p(x) for every draw of z and c
    # summed exactly: the one-sample TraceEnum_ELBO is log p(x) up to float64 rounding (1e-8).
    x = iris()
    params = module.init_params(x, 3, 2, generator=torch.Generator().manual_seed(0))
    kwargs = dict(num_components=3, latent_dim=2, init=params)
    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(module.model, module.posterior_guide, x, **kwargs)
    log_lik = float(module.log_likelihood(x, params).sum())
    assert abs(-loss - log_lik) < 1e-8 * abs(log_lik)
    terms = decompose(module.posterior_guide, x, params, **kwargs)
    assert float(terms.kl.abs().max()) < 1e-8
    assert float((terms.elbo - terms.log_likelihood).abs().max()) < 1e-8


def test_a_mean_field_q_has_a_closed_form_elbo_below_log_likelihood():
    # The best factorised q(c) q(z | c) loses exactly its KL; the closed form agrees with a
    # 2,000-particle TraceEnum_ELBO estimate within its Monte Carlo error (about 0.01 nats per datum).
    from guides.registry import make_guide

    x = iris()
    params = mfa.init_params(x, 3, 2, generator=torch.Generator().manual_seed(0))
    params = em(mfa, x, params, 20).params  # loadings grown: the posterior of z is correlated
    kwargs = dict(num_components=3, latent_dim=2, init=params)
    guide = make_guide("mfa", "mean-field", data=x, init=params, size=3, model_kwargs=kwargs)
    terms = decompose(guide, x, params, **kwargs)
    assert float(terms.kl.min()) > -1e-10 and float(terms.kl.mean()) > 1e-4
    elbo = TraceEnum_ELBO(max_plate_nesting=1, num_particles=2000, vectorize_particles=True)
    estimate = -elbo.loss(mfa.model, guide, x, **kwargs) / 150
    assert abs(estimate - float(terms.elbo.mean())) < 0.03


def test_svi_with_the_exact_guide_reaches_em():
    # Two well-separated 3-D clusters with a 1-D latent each, N = 120. From one start SVI's
    # exact-guide ELBO is log p(x) (its gradient is log p(x)'s, plus zero-mean noise from z), so
    # 600 Adam steps (lr 0.05, decaying to 0.005) get within 1e-3 relative of EM's optimum.
    generator = torch.Generator().manual_seed(0)
    true = MFAParams(
        torch.tensor([0.5, 0.5], dtype=torch.float64),
        torch.tensor([[0.0, 0.0, 0.0], [6.0, 6.0, 6.0]], dtype=torch.float64),
        torch.tensor([[[2.0], [1.0], [0.0]], [[0.0], [1.0], [-2.0]]], dtype=torch.float64),
        torch.full((2, 3), 0.1, dtype=torch.float64),
    )
    c = torch.multinomial(true.weights, 120, replacement=True, generator=generator)
    z = torch.randn(120, 1, generator=generator, dtype=torch.float64)
    noise = torch.randn(120, 3, generator=generator, dtype=torch.float64) * true.psi[c].sqrt()
    x = true.loc[c] + (true.loading[c] @ z[:, :, None]).squeeze(-1) + noise
    init = mfa.init_params(x, 2, 1, generator=generator)
    best = float(fit_em(x, init, max_iters=3000, tol=1e-10).log_likelihoods[-1])
    pyro.clear_param_store()
    kwargs = dict(num_components=2, latent_dim=1, init=init)
    fit_svi(mfa.model, mfa.posterior_guide, x, num_steps=600, lr=0.05, progress=False, **kwargs)
    reached = float(mfa.log_likelihood(x, mfa.current_params()).mean())
    assert abs(reached - best) < 1e-3 * abs(best)


def test_the_model_samples_and_its_sites_are_scoped():
    params = mppca.init_params(iris(), 2, 1, generator=torch.Generator().manual_seed(0))
    trace = pyro.poutine.trace(mppca.model).get_trace(
        None, num_data=7, obs_dim=4, num_components=2, latent_dim=1, init=params
    )
    assert trace.nodes["x"]["value"].shape == (7, 4) and trace.nodes["z"]["value"].shape == (7, 1)
    assert sorted(pyro.get_param_store().keys()) == [
        "mppca.loading", "mppca.loc", "mppca.noise_variance", "mppca.weights"
    ]  # fmt: skip
