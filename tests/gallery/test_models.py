"""The models: shapes and devices, sampling from the generative process, and exact densities
against naive references (torch's MultivariateNormal, one component at a time)."""

from __future__ import annotations

import functools
import math

import pyro
import pytest
import torch
import torch.distributions as td
from pyro import poutine
from pyro.infer import TraceEnum_ELBO

import guides
from gallery import load
from gallery.models import factor_analysis, gmm, ppca
from gallery.models.common import same_device
from gallery.models.gmm import GMMParams
from gallery.models.linear_gaussian import LinearGaussianParams, posterior
from inference.svi import fit_svi
from tests.conftest import known_gmm, known_linear_gaussian, sample_gmm, sample_linear_gaussian


@pytest.mark.parametrize(
    "module, kwargs",
    [
        (gmm, {"num_components": 3}),
        (gmm, {"num_components": 3, "covariance_type": "diag"}),
        (factor_analysis, {"latent_dim": 2}),
        (ppca, {"latent_dim": 2}),
    ],
)
def test_sampling_with_data_none_stays_on_device(module, kwargs, device):
    x = module.model(num_data=7, obs_dim=4, device=device, **kwargs)
    assert x.shape == (7, 4) and x.device.type == device.type
    for name in pyro.get_param_store().keys():
        assert pyro.param(name).device.type == device.type
    trace = poutine.trace(module.model).get_trace(
        num_data=7, obs_dim=4, subsample_size=3, device=device, **kwargs
    )
    assert trace.nodes["x"]["value"].shape == (3, 4)
    assert trace.nodes["data"]["value"].device.type == device.type


def test_gmm_samples_follow_the_generative_process():
    """200,000 draws from the model at known parameters: the component frequencies and the
    first component's mean match to ~5 standard errors (1/sqrt(N) scale: 0.005 and 0.02)."""
    truth = known_gmm()
    x = gmm.model(num_data=200_000, obs_dim=2, num_components=3, init=truth)
    trace = poutine.trace(gmm.model).get_trace(num_data=200_000, obs_dim=2, num_components=3, init=truth)
    c = trace.nodes["c"]["value"]
    freq = torch.bincount(c, minlength=3).double() / len(c)
    torch.testing.assert_close(freq, truth.weights, atol=5e-3, rtol=0)
    xs = trace.nodes["x"]["value"]
    torch.testing.assert_close(xs[c == 1].mean(0), truth.loc[1], atol=2e-2, rtol=0)
    assert x.shape == (200_000, 2)


def test_linear_gaussian_samples_have_the_model_covariance():
    """Sample covariance of 200,000 draws vs W W^T + diag(psi): 3% relative."""
    truth = known_linear_gaussian(False)
    x = factor_analysis.model(num_data=200_000, obs_dim=5, latent_dim=2, init=truth)
    torch.testing.assert_close(x.T.cov(correction=0), truth.covariance(), rtol=0.03, atol=0.03)
    torch.testing.assert_close(x.mean(0), truth.loc, atol=0.02, rtol=0)


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_gmm_log_likelihood_matches_component_loop(covariance_type):
    data = load("iris").data
    params = gmm.init_params(data, 3, covariance_type, generator=torch.Generator().manual_seed(0))
    per_component = torch.stack(
        [td.MultivariateNormal(params.loc[k], params.covariance()[k]).log_prob(data) for k in range(3)], -1
    )
    reference = (params.weights.log() + per_component).logsumexp(-1)
    torch.testing.assert_close(gmm.log_likelihood(data, params), reference, rtol=0, atol=1e-10)
    resp = gmm.log_responsibilities(data, params).exp()
    torch.testing.assert_close(resp.sum(-1), torch.ones(150, dtype=torch.float64))


@pytest.mark.parametrize("isotropic", [False, True])
def test_linear_gaussian_log_likelihood_and_posterior_match_dense_formulas(isotropic):
    """Woodbury log-likelihood vs a dense MultivariateNormal; posterior vs the Gaussian
    conditioning formula Cov(z|x) = I - W^T C^{-1} W, E[z|x] = W^T C^{-1} (x - loc)."""
    truth = known_linear_gaussian(isotropic)
    data = sample_linear_gaussian(truth, 50)
    cov = truth.covariance()
    reference = td.MultivariateNormal(truth.loc, cov).log_prob(data)
    torch.testing.assert_close(factor_analysis.log_likelihood(data, truth), reference, rtol=0, atol=1e-10)
    loc, scale_tril = posterior(data, truth)
    gain = torch.linalg.solve(cov, truth.loading).T  # (p, d) = W^T C^{-1}
    torch.testing.assert_close(loc, (data - truth.loc) @ gain.T, rtol=0, atol=1e-10)
    eye = torch.eye(2, dtype=torch.float64)
    torch.testing.assert_close(scale_tril @ scale_tril.T, eye - gain @ truth.loading, rtol=0, atol=1e-10)


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_enumerated_mixture_is_the_exact_marginal(covariance_type):
    """With no guide for c, TraceEnum_ELBO sums c out in the model: -loss = sum_n log p(x_n)."""
    data = sample_gmm(known_gmm(), 400)
    kwargs = {"num_components": 3, "covariance_type": covariance_type}
    model = functools.partial(gmm.model, **kwargs)
    empty = guides.auto_normal(poutine.block(model, hide=["c"]))
    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(model, empty, data)
    exact = gmm.log_likelihood(data, gmm.current_params()).sum()
    assert abs(-loss - float(exact)) < 1e-8


def test_joint_density_of_a_trace():
    """log p(x, z) of a model trace = log N(z; 0, I) + log N(x; W z + loc, diag(psi))."""
    truth = known_linear_gaussian(False)
    data = sample_linear_gaussian(truth, 10)
    trace = poutine.trace(factor_analysis.model).get_trace(data, latent_dim=2, init=truth)
    z = trace.nodes["z"]["value"]
    expected = (
        td.Normal(0.0, 1.0).log_prob(z).sum()
        + td.Normal(truth.loc + z @ truth.loading.T, truth.psi.sqrt()).log_prob(data).sum()
    )
    torch.testing.assert_close(trace.log_prob_sum(), expected)


def test_subsample_selects_rows():
    data = load("iris").data
    idx = torch.tensor([3, 140, 7])
    x = ppca.model(data, latent_dim=2, subsample=idx)
    torch.testing.assert_close(x, data[idx])
    trace = poutine.trace(ppca.model).get_trace(data, latent_dim=2, subsample=idx)
    assert trace.nodes["x"]["fn"].batch_shape == (3,)
    assert trace.nodes["x"]["scale"] == pytest.approx(150 / 3)


def test_model_input_errors():
    data = load("iris").data
    with pytest.raises(ValueError, match="2-D"):
        gmm.model(data[:, 0], num_components=2)
    with pytest.raises(ValueError, match="num_data"):
        gmm.model(data, num_components=2, num_data=10)
    with pytest.raises(ValueError, match="obs_dim"):
        ppca.model(latent_dim=2)
    with pytest.raises(ValueError, match="latent_dim"):
        factor_analysis.model(data, latent_dim=4)
    with pytest.raises(ValueError, match="num_components"):
        gmm.init_params(data[:2], 3)
    with pytest.raises(ValueError, match="covariance_type"):
        gmm.model(data, num_components=2, covariance_type="spherical")


def test_params_move_between_devices_and_dtypes():
    params = known_linear_gaussian(True).to(torch.float32)
    assert isinstance(params, LinearGaussianParams) and params.loading.dtype == torch.float32
    assert params.isotropic and params.psi.shape == (5,)
    mixture = known_gmm().to(dtype=torch.float32)
    assert mixture.covariance_type == "full" and mixture.covariance().dtype == torch.float32


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_gmm_covariance_floor_bounds_the_likelihood(covariance_type):
    """Five copies of one point and a component started on them with a tiny covariance: SVI
    shrinks that covariance as far as it can, but the model's floor (Sigma = L L^T + 1e-6 I)
    keeps every eigenvalue >= 1e-6, the loss finite, and each log p(x_n) below the bound
    -D/2 log(2 pi 1e-6) that a density with det Sigma >= 1e-6^D cannot exceed."""
    rng = torch.Generator().manual_seed(0)
    data = torch.cat([torch.ones(5, 2), torch.randn(15, 2, generator=rng, dtype=torch.float32) * 2]).double()
    small = 1e-3 * torch.eye(2, dtype=torch.float64)
    start = torch.stack([small, torch.eye(2, dtype=torch.float64)])
    init = GMMParams(
        torch.tensor([0.3, 0.7]).double(),
        torch.tensor([[1.0, 1.0], [0.0, 0.0]]).double(),
        scale_tril=start if covariance_type == "full" else None,
        scale=start.diagonal(dim1=-2, dim2=-1) if covariance_type == "diag" else None,
    )
    kwargs = dict(num_components=2, covariance_type=covariance_type, init=init)
    result = fit_svi(gmm.model, guides.gmm_posterior, data, num_steps=400, lr=0.1, progress=False, **kwargs)
    assert bool(torch.isfinite(result.losses).all())
    fitted = gmm.current_params()
    eigenvalues = torch.linalg.eigvalsh(fitted.covariance())
    assert float(eigenvalues.min()) >= 1e-6 * (1 - 1e-6)
    bound = -math.log(2 * math.pi * 1e-6)  # D = 2
    assert float(gmm.log_likelihood(data, fitted).max()) <= bound
    assert float(eigenvalues.min()) < 1e-4  # the component did collapse as far as the floor allows


def test_degenerate_starts_and_rank_deficient_ppca_are_refused_with_the_fix():
    """A starting cluster whose covariance is singular to rounding (collinear points at 1e150),
    and PPCA on data of rank p, where the likelihood has no maximum: one-line ValueErrors that
    say what to change."""
    collinear = torch.tensor([[1.0, 2.0], [2.0, 4.0], [3.0, 6.0]], dtype=torch.float64) * 1e150
    with pytest.raises(ValueError, match="not positive definite.*fewer components"):
        gmm.init_params(collinear, 1)
    x = torch.randn(30, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    rank_one = torch.cat([x, 2 * x, -x], 1)
    from inference.em import ppca_max_log_likelihood

    with pytest.raises(ValueError, match="1-dimensional subspace.*--latent-dim below the data's rank"):
        ppca_max_log_likelihood(rank_one, 1)


def test_same_device_reads_cuda_as_the_current_gpu():
    assert same_device("cpu", torch.device("cpu"))
    assert not same_device("cpu", "cuda:0")
    if torch.cuda.is_available():
        assert same_device("cuda", f"cuda:{torch.cuda.current_device()}")
