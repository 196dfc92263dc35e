"""The guides: what each represents, how it indexes minibatches, and how it refuses misuse."""

from __future__ import annotations

import functools
import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO

import guides
from gallery import load
from gallery.models import factor_analysis, gmm, mfa, ppca, vae
from gallery.models.linear_gaussian import posterior
from guides.mixture import AmortisedMixture
from inference.evaluate import decompose
from inference.svi import fit_svi
from tests.conftest import known_gmm, known_linear_gaussian, sample_gmm, sample_linear_gaussian


def _fixed(module, params):
    """The model with its parameters held at ``params`` (hidden from the optimiser)."""
    return poutine.block(functools.partial(module.model, init=params), hide_types=["param"])


def test_amortised_full_covariance_learns_the_exact_posterior():
    """An affine encoder with a full Cholesky factor can represent p(z|x) of factor analysis
    exactly; trained with the model fixed its mean KL(q || p(z|x)) falls below 1e-3 nats per
    datum (the fit is stochastic: 8 particles, 3,000 steps; measured ~1e-4)."""
    truth = known_linear_gaussian(False)
    data = sample_linear_gaussian(truth, 500)
    guide = guides.AmortisedNormal(5, 2, covariance="full").double()
    fit_svi(
        _fixed(factor_analysis, truth),
        guide,
        data,
        num_steps=3000,
        lr=0.02,
        final_lr_ratio=0.01,
        num_particles=8,
        progress=False,
        latent_dim=2,
    )
    terms = decompose(guide, data, truth, latent_dim=2)
    assert terms.kl.mean() < 1e-3


def test_amortised_diagonal_cannot_and_keeps_a_gap():
    """The same with a diagonal covariance: the posterior is correlated, so a gap remains, at
    least the KL of the best factorised Gaussian, q_i = N(mu_i, 1 / Lambda_ii):
    KL = 1/2 (log det Sigma + sum_i log Lambda_ii), Lambda = Sigma^{-1}."""
    truth = known_linear_gaussian(False)
    data = sample_linear_gaussian(truth, 500)
    guide = guides.AmortisedNormal(5, 2, covariance="diag").double()
    fit_svi(_fixed(factor_analysis, truth), guide, data, num_steps=500, lr=0.02, progress=False, latent_dim=2)
    _, scale_tril = posterior(data, truth)
    precision = torch.cholesky_inverse(scale_tril.T.contiguous(), upper=True)
    best = 0.5 * (2 * scale_tril.diagonal().log().sum() + precision.diagonal().log().sum())
    assert best > 1e-4
    assert decompose(guide, data, truth, latent_dim=2).kl.min() >= best - 1e-10


def test_amortised_categorical_learns_responsibilities():
    """q(c|x) by a small network on well-separated clusters: mean KL to the exact
    responsibilities below 0.05 nats after 500 steps (the responsibilities are near 0/1)."""
    truth = known_gmm()
    data = sample_gmm(truth, 600)
    guide = guides.AmortisedCategorical(2, 3, hidden=(16,)).double()
    fit_svi(_fixed(gmm, truth), guide, data, num_steps=500, lr=0.05, progress=False, num_components=3)
    assert decompose(guide, data, truth, num_components=3).kl.mean() < 0.05


def test_mean_field_rows_outside_the_batch_are_untouched():
    """One minibatch step changes exactly the rows of the batch."""
    data = load("iris").data
    guide = guides.MeanFieldNormal(150, 2)
    model = functools.partial(ppca.model, latent_dim=2)
    elbo = Trace_ELBO()
    batch = torch.tensor([0, 5, 9])
    elbo.differentiable_loss(model, guide, data, subsample=batch)  # create the parameters
    before = pyro.param(f"{guide.name}_loc").detach().clone()
    loss = elbo.differentiable_loss(model, guide, data, subsample=batch)
    loss.backward()
    grad = pyro.get_param_store()._params[f"{guide.name}_loc"].grad
    changed = grad.abs().sum(-1) > 0
    assert changed.nonzero().flatten().tolist() == batch.tolist()
    assert torch.equal(pyro.param(f"{guide.name}_loc").detach(), before)


def test_mean_field_categorical_fits_responsibilities():
    """Per-datum q(c_n) with the model fixed converges to p(c_n | x_n). The enumerated objective
    is deterministic; what remains (measured 6e-4) is the slow march of the logits towards the
    near-certain assignments of separated clusters, hence KL < 1e-3 per datum."""
    truth = known_gmm()
    data = sample_gmm(truth, 300)
    guide = guides.MeanFieldCategorical(300, 3)
    fit_svi(_fixed(gmm, truth), guide, data, num_steps=600, lr=0.5, progress=False, num_components=3)
    assert decompose(guide, data, truth, num_components=3).kl.mean() < 1e-3


@pytest.mark.parametrize(
    "make",
    [
        lambda: guides.MeanFieldNormal(150, 2),
        lambda: guides.AmortisedNormal(4, 2).double(),
        lambda: guides.AmortisedNormal(4, 2, covariance="full").double(),
        lambda: guides.ppca_posterior,
        lambda: guides.auto_normal(functools.partial(ppca.model, latent_dim=2)),
    ],
)
def test_z_guides_work_with_vectorised_particles_and_minibatches(make, device):
    data = load("iris").data.to(device)
    guide = make()
    if isinstance(guide, torch.nn.Module):
        guide = guide.to(device)
    result = fit_svi(
        ppca.model, guide, data, num_steps=3, batch_size=16, num_particles=4, progress=False, latent_dim=2
    )
    assert result.losses.isfinite().all()


@pytest.mark.parametrize(
    "make",
    [
        lambda: guides.MeanFieldCategorical(150, 3),
        lambda: guides.AmortisedCategorical(4, 3).double(),
        lambda: guides.gmm_posterior,
    ],
)
def test_c_guides_work_with_vectorised_particles_and_minibatches(make, device):
    data = load("iris").data.to(device)
    guide = make()
    if isinstance(guide, torch.nn.Module):
        guide = guide.to(device)
    result = fit_svi(
        gmm.model, guide, data, num_steps=3, batch_size=16, num_particles=4, progress=False, num_components=3
    )
    assert result.losses.isfinite().all() and result.elbo == "TraceEnum_ELBO"


def test_guide_misuse_is_a_clear_error():
    data = load("iris").data
    encoder = guides.AmortisedNormal(4, 2)
    encoder(data)  # float32 weights follow the float64 data on the first call
    with pytest.raises(ValueError, match="one dtype and device"):
        encoder(data.float())  # but not later: they have been trained
    with pytest.raises(ValueError, match="needs the data"):
        guides.AmortisedCategorical(4, 3)()
    with pytest.raises(ValueError, match="num_data=150"):
        guides.MeanFieldNormal(150, 2)(data[:10])
    with pytest.raises(ValueError, match="pass data="):
        guides.ppca_posterior(latent_dim=2)
    with pytest.raises(ValueError, match="covariance"):
        guides.AmortisedNormal(4, 2, covariance="banded")


def test_full_covariance_normal_is_the_multivariate_normal():
    """Same density as MultivariateNormal (1e-10) on its own samples and on other points; on
    an ill-conditioned factor the density of its own sample stays exact, where a triangular
    solve loses precision."""
    gen = torch.Generator().manual_seed(0)
    loc = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    tril = torch.randn(6, 3, 3, generator=gen, dtype=torch.float64).tril()
    tril.diagonal(dim1=-2, dim2=-1).copy_(torch.rand(6, 3, generator=gen, dtype=torch.float64) + 0.1)
    q = guides.amortised.full_covariance_normal(loc, tril)
    reference = torch.distributions.MultivariateNormal(loc, scale_tril=tril)
    z = q.rsample((4,))
    torch.testing.assert_close(q.log_prob(z), reference.log_prob(z), rtol=0, atol=1e-10)
    other = torch.randn(4, 6, 3, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(q.log_prob(other), reference.log_prob(other), rtol=0, atol=1e-10)
    bad = torch.tensor([[1e-9, 0.0], [1e9, 1e-9]], dtype=torch.float64)
    q = guides.amortised.full_covariance_normal(torch.zeros(2, dtype=torch.float64), bad)
    z = q.rsample()
    eps = q.transforms[0].inv(z)
    exact = torch.distributions.Normal(0.0, 1.0).log_prob(eps).sum() - bad.diagonal().log().sum()
    torch.testing.assert_close(q.log_prob(z), exact)


@pytest.mark.parametrize(
    "build",
    [
        lambda data: (
            ppca.model,
            guides.AmortisedNormal(4, 2, hidden=(8,), activation="relu"),
            {"latent_dim": 2},
        ),
        lambda data: (gmm.model, guides.AmortisedCategorical(4, 3, hidden=(8,)), {"num_components": 3}),
        lambda data: (
            vae.model,
            guides.AmortisedNormal(4, 2, hidden=(8,)),
            {"decoder": vae.Decoder(4, 2, hidden=(8,))},
        ),
        lambda data: (
            mfa.model,
            AmortisedMixture(4, 3, 2, hidden=(8,)),
            {"num_components": 3, "latent_dim": 2},
        ),
        lambda data: (ppca.model, guides.AmortisedFlow(4, 2, hidden=(8,)), {"latent_dim": 2}),
    ],
    ids=[
        "amortised-normal",
        "amortised-categorical",
        "vae-decoder-and-encoder",
        "amortised-mixture",
        "amortised-flow",
    ],
)
def test_networks_follow_float64_data_under_stock_svi(build):
    """Built as torch builds them (float32), trained by Pyro's own SVI on float64 data: no .double()."""
    data = load("iris").data  # float64
    model, guide, kwargs = build(data)
    enumerated = "num_components" in kwargs
    elbo = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1) if enumerated else pyro.infer.Trace_ELBO()
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), elbo)
    losses = [svi.step(data, **kwargs) for _ in range(5)]
    assert all(math.isfinite(loss) for loss in losses)
    assert next(guide.parameters()).dtype == torch.float64


def test_mean_field_guides_start_at_the_e_step():
    """at_e_step starts q at the model's best factorised q for the initial parameters."""
    data = load("iris").data
    init = gmm.init_params(data, 3, generator=torch.Generator().manual_seed(0))
    guide = guides.MeanFieldCategorical.at_e_step(data, init)
    assert torch.equal(guide.init_logits, gmm.mean_field_posterior(data, init))
    start = ppca.init_params(data, 2, generator=torch.Generator().manual_seed(0))
    normal = guides.MeanFieldNormal.at_e_step(data, start, model=ppca)
    loc, scale = ppca.mean_field_posterior(data, start)
    assert torch.equal(normal.init_loc, loc) and torch.equal(normal.init_scale, scale.expand_as(loc))
    with pytest.raises(ValueError, match="continuous z"):
        guides.MeanFieldNormal.at_e_step(data, init)


@pytest.mark.parametrize(
    "make",
    [
        lambda d: gmm.init_params(d, 3),
        lambda d: factor_analysis.init_params(d, 2),
        lambda d: mfa.init_params(d, 3, 2, generator=torch.Generator().manual_seed(0)),
    ],
    ids=["gmm", "linear-gaussian", "mixture-of-linear-gaussians"],
)
def test_params_round_trip_through_dicts(make):
    params = make(load("iris").data)
    again = type(params).from_dict(params.as_dict())
    pairs = zip(params.as_dict().values(), again.as_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    assert params.float().loc.dtype == torch.float32 and params.float().double().loc.dtype == torch.float64
