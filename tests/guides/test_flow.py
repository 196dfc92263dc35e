"""The amortised flow guide: its log q against a brute-force change of variables, its naming,
dtype and minibatch conventions, and on PPCA, where the exact posterior is Gaussian, that it
reaches it."""

from __future__ import annotations

import dataclasses

import pyro
import pytest
import torch
from pyro import poutine
from torch.autograd.functional import jacobian

from gallery.models import linear_gaussian, ppca
from guides import AmortisedFlow, input_scaling
from guides.registry import check_guide, make_guide
from inference.gaps import LOCAL_NAME, best_local_guide
from inference.importance import importance_estimate
from inference.svi import fit_svi
from tests.conftest import known_linear_gaussian, sample_linear_gaussian


def scrambled_flow(obs_dim: int, latent_dim: int, **options) -> AmortisedFlow:
    """A float64 flow guide with every weight moved off its start (which is the identity map)."""
    guide = AmortisedFlow(obs_dim, latent_dim, hidden=(6,), **options).double()
    with torch.no_grad():
        for parameter in guide.parameters():
            parameter.add_(0.7 * torch.randn_like(parameter))
    return guide


def test_log_q_is_the_change_of_variables_of_the_base_gaussian():
    """log q(z) = log N(u; loc, scale) - log |det dz/du| with the Jacobian from autograd, row by
    row, for z = T(u) scored afresh (Pyro inverts the layers one coordinate at a time) and for
    the guide's own sample (the cached inverse). 1e-10: both sides are float64 sums of terms of
    a few nats; the inverse's fixed-point passes are exact for affine autoregressive layers."""
    guide = scrambled_flow(3, 2, flow_layers=3)
    x = torch.randn(4, 3, dtype=torch.float64)
    loc, scale, context = guide.encode_parts(x)
    u = loc + scale * torch.randn_like(loc)  # (4, 2)

    def transform(row: int):
        def push(point):
            for layer in guide.flows:
                point = layer.condition(context[row])(point)
            return point

        return push

    z = torch.stack([transform(n)(u[n]) for n in range(4)])
    log_det = torch.stack([torch.linalg.slogdet(jacobian(transform(n), u[n]))[1] for n in range(4)])
    expected = torch.distributions.Normal(loc, scale).log_prob(u).sum(-1) - log_det
    assert float(log_det.abs().max()) > 1  # the layers are far from volume-preserving
    q = guide.encode(x)
    assert torch.allclose(q.log_prob(z.detach().clone()), expected, rtol=0, atol=1e-10)
    trace = poutine.trace(guide).get_trace(x)
    site = trace.nodes["z"]
    own = site["fn"].log_prob(site["value"])  # the sample's cached inverse
    assert torch.allclose(own, site["fn"].log_prob(site["value"].detach().clone()), rtol=0, atol=1e-10)


def test_flow_starts_as_the_diagonal_gaussian_and_orders_are_fixed():
    """Each layer starts as the identity, so q is the density network's diagonal Gaussian; the
    layers' orders and masks are the same whatever the random state (a checkpoint's guide is
    rebuilt in another process)."""
    x = torch.randn(5, 4)
    pyro.set_rng_seed(1)
    first = AmortisedFlow(4, 3, flow_layers=2)
    pyro.set_rng_seed(2)
    second = AmortisedFlow(4, 3, flow_layers=2)
    buffers = dict(second.named_buffers())
    for key, value in first.named_buffers():
        assert torch.equal(value, buffers[key]), key
    loc, scale, _ = first.encode_parts(x)
    z = loc + scale * torch.randn_like(loc)
    diagonal = torch.distributions.Normal(loc, scale).log_prob(z).sum(-1)
    assert torch.allclose(first.encode(x).log_prob(z), diagonal, atol=1e-6)  # float32


def test_follows_float64_data_scopes_its_names_and_refuses_gmm():
    data = torch.randn(30, 4, dtype=torch.float64)
    built = AmortisedFlow(4, 2, name="mine")  # float32, as torch builds it
    built(data)  # no .double(): it follows the data on its first call
    assert all(p.dtype == torch.float64 for p in built.parameters())
    pyro.clear_param_store()
    guide = make_guide("ppca", "amortised-flow", data=data, init=None, size=2, model_kwargs={})
    guide(data)
    keys = list(pyro.get_param_store().keys())
    assert keys and all(key.startswith("ppca.guide$$$") for key in keys)
    assert any("$$$flows.1." in key for key in keys)
    with pytest.raises(ValueError, match="float64 weights"):
        guide(data.float())
    with pytest.raises(ValueError, match="is for continuous z"):
        check_guide("gmm", "amortised-flow")
    with pytest.raises(ValueError, match="mfa takes the guides"):
        check_guide("mfa", "amortised-flow")
    with pytest.raises(ValueError, match="flow_layers=-1"):
        AmortisedFlow(4, 2, flow_layers=-1)


def test_model_and_guide_see_the_same_minibatch():
    params = known_linear_gaussian(isotropic=True)
    data = sample_linear_gaussian(params, 40)
    guide = AmortisedFlow(5, 2, **input_scaling(data))
    guide_trace = poutine.trace(guide).get_trace(data, subsample_size=7)
    model = poutine.replay(ppca.model, trace=guide_trace)
    model_trace = poutine.trace(model).get_trace(data, latent_dim=2, init=params, subsample_size=7)
    rows = guide_trace.nodes["data"]["value"]
    assert len(rows) == 7 and torch.equal(model_trace.nodes["data"]["value"], rows)
    assert torch.equal(model_trace.nodes["z"]["value"], guide_trace.nodes["z"]["value"])
    assert torch.equal(model_trace.nodes["x"]["value"], data[rows])


def test_local_flow_starts_at_the_encoders_q():
    """The per-datapoint family of the gap decomposition contains the amortised q: at its start
    it gives every row the encoder's log q (1e-12, float64 rounding of the same operations)."""
    guide = scrambled_flow(3, 2)
    x = torch.randn(6, 3, dtype=torch.float64)
    local = best_local_guide(guide, x, 2)
    trace = poutine.trace(local).get_trace(x)
    z = trace.nodes["z"]["value"].detach().clone()
    assert torch.allclose(trace.nodes["z"]["fn"].log_prob(z), guide.encode(x).log_prob(z), atol=1e-12)
    assert {key.split("_")[-1] for key in pyro.get_param_store().keys()} == {"loc", "scale", "context"}
    assert all(key.startswith(LOCAL_NAME) for key in pyro.get_param_store().keys())
    assert not any(p.requires_grad for p in local.layers.parameters())  # the family's layers stay fixed


def ppca_gap(guide_name: str, params, data) -> tuple[float, float]:
    """Fit ``guide_name`` to PPCA with the model held at ``params``; the gap log p(x) - ELBO per
    datum (exact log p(x), the ELBO from K = 1,000 samples per row) and its standard error."""
    fixed = poutine.block(ppca.model, hide_types=["param"])
    guide = make_guide("ppca", guide_name, data=data, init=params, size=2, model_kwargs={"latent_dim": 2})
    kwargs = dict(latent_dim=2, init=params)
    fit_svi(
        fixed,
        guide,
        data,
        num_steps=2000,
        lr=0.02,
        final_lr_ratio=0.01,
        num_particles=8,
        progress=False,
        **kwargs,
    )
    estimate = importance_estimate(fixed, guide, data, num_samples=1000, **kwargs)
    gap = linear_gaussian.log_likelihood(data, params) - estimate.elbo  # (N,)
    return float(gap.mean()), float(gap.std() / len(gap) ** 0.5)


def test_flow_reaches_the_exact_ppca_posterior(one_thread):
    """PPCA with correlated loadings, so that the posterior is far from diagonal (the best
    diagonal q's KL is 0.103 nats, tests/inference/test_gaps.py); the model is held at the
    true parameters and only the guide trains, from the diagonal Gaussian of its start.

    Gap below 1e-3 nats per datum: the issue's bound. Measured on CPU with this test's seed:
    6.6e-4 (standard error 7.1e-5) for the flow, 8.3e-4 (6.8e-5) for amortised-full, after the
    same 2,000 steps. What is left is SVI's residual (Adam on noisy gradients), not the family:
    both contain the exact posterior. Which of the two is closer at equal steps depends on the
    networks' start and the schedule (with 500 or 2,000 rows, over five other starts
    amortised-full was closer in all five, 2e-5 to 3e-4 against 4e-4 to 1.1e-3; with 200 rows
    and a faster decay the flow was closer in three of three), so "not worse" is asserted to
    this test's tolerance: the flow within 1e-3 of the full-covariance guide. Both must be above
    zero by no more than Monte Carlo error (the gap is a KL).
    """
    base = known_linear_gaussian(isotropic=True)
    tilt = torch.tensor([1.5, 0.5, 1.0, 0.0, 0.0], dtype=torch.float64)
    params = dataclasses.replace(
        base, loading=base.loading + tilt[:, None] * torch.tensor([0.0, 1.0]).double()
    )
    data = sample_linear_gaussian(params, 500)  # more rows: less noise in the shared weights' gradients
    flow, flow_se = ppca_gap("amortised-flow", params, data)
    pyro.clear_param_store()
    full, full_se = ppca_gap("amortised-full", params, data)
    assert -5 * flow_se < flow < 1e-3
    assert -5 * full_se < full < 1e-3
    assert flow - full < 1e-3


@pytest.mark.parametrize("architecture", ["mlp", "conv"])
def test_flow_trains_where_the_data_are(device, architecture):
    """Built on the CPU in float32, guide and decoder follow the digits to ``device`` and train
    there: the same code on CPU and CUDA (the CUDA case is skipped without a GPU)."""
    from gallery.data import datasets
    from gallery.models import vae

    data = (datasets.load("digits").data[:64] / 16.0).to(device)
    decoder = vae.Decoder(64, 2, hidden=(16,), architecture=architecture)
    guide = AmortisedFlow(64, 2, hidden=(16,), architecture=architecture, name="flow.guide")
    result = fit_svi(vae.model, guide, data, num_steps=5, batch_size=16, progress=False, decoder=decoder)
    assert bool(torch.isfinite(result.losses).all())
    assert all(p.device.type == torch.device(device).type for p in guide.parameters())
