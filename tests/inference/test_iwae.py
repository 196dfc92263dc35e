"""The importance-weighted bound as an objective (inference/iwae.py): against Pyro's
``RenyiELBO(alpha=0)``, the ELBO at K = 1, monotone in K, exact with the exact posterior, and
the DReG gradient against the plain one. Float64 throughout, small networks, full batch."""

from __future__ import annotations

import functools

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import RenyiELBO

import guides
from gallery import load
from gallery.models import linear_gaussian, vae
from gallery.models.common import data_plate
from guides.amortised import full_covariance_normal
from inference.estimators import DeviceTrace_ELBO
from inference.iwae import IWAE, make_objective, stop_gradient
from inference.svi import fit_svi
from tests.inference.test_svi import _small_vae, _steps_with_host_reads_forbidden, _steps_without_sync

pytestmark = pytest.mark.usefixtures("one_thread")


def _vae(covariance: str = "diag", hidden=(4,), seed: int = 0, obs_dim: int = 5):
    torch.manual_seed(seed)
    data = torch.rand(6, obs_dim, dtype=torch.float64)
    decoder = vae.Decoder(obs_dim, 2, hidden=hidden).double()
    encoder = guides.AmortisedNormal(obs_dim, 2, hidden=(3,), covariance=covariance, name="enc").double()
    return data, decoder, encoder


def _loss_and_grads(loss_fn, modules, seed: int):
    params = [p for m in modules for p in m.parameters()]
    for p in params:
        p.grad = None
    pyro.set_rng_seed(seed)
    loss = loss_fn()
    return float(loss), [p.grad.clone() for p in params]


@pytest.mark.parametrize("covariance", ["diag", "full"])
def test_value_and_gradient_equal_pyros_renyi_elbo_at_alpha_zero(covariance):
    """Same seed, same draws (both vectorise K over a plate left of the data plate): value and
    every gradient equal to float64 rounding (1e-10 on terms of tens of nats; seen 4e-15)."""
    data, decoder, encoder = _vae(covariance)
    ours = lambda: _backward(IWAE(7).differentiable_loss(vae.model, encoder, data, decoder=decoder))  # noqa: E731
    renyi = RenyiELBO(alpha=0, num_particles=7, vectorize_particles=True, max_plate_nesting=1)
    theirs = lambda: renyi.loss_and_grads(vae.model, encoder, data, decoder=decoder)  # noqa: E731
    value, grads = _loss_and_grads(ours, (decoder, encoder), seed=1)
    their_value, their_grads = _loss_and_grads(theirs, (decoder, encoder), seed=1)
    assert value == pytest.approx(their_value, abs=1e-10)  # both losses: -L_K
    for a, b in zip(grads, their_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_with_one_particle_it_is_the_elbo_of_the_same_draws():
    """K = 1: log (1/1) sum of one weight is that log weight, the ELBO estimate; exact."""
    data, decoder, encoder = _vae()
    pyro.set_rng_seed(3)
    bound = IWAE(1).loss(vae.model, encoder, data, decoder=decoder)
    pyro.set_rng_seed(3)
    elbo = DeviceTrace_ELBO().differentiable_loss(vae.model, encoder, data, decoder=decoder)
    assert bound == float(elbo.detach())


def _ppca_vae(seed: int = 0):
    """A linear Gaussian decoder (PPCA, d = 5, p = 2) with data drawn from it, in float64."""
    params = linear_gaussian.LinearGaussianParams(
        torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0], dtype=torch.float64),
        torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.0, 1.5], [-1.0, 0.5], [0.5, -0.5]], dtype=torch.float64),
        torch.tensor(0.3, dtype=torch.float64),
    )
    decoder = vae.Decoder(5, 2, hidden=(), noise_variance=0.3).double()
    with torch.no_grad():
        decoder.net[0].weight.copy_(params.loading)
        decoder.net[0].bias.copy_(params.loc)
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(8, 2, generator=gen, dtype=torch.float64)
    data = (
        params.loc + z @ params.loading.T + 0.3**0.5 * torch.randn(8, 5, generator=gen, dtype=torch.float64)
    )
    return params, decoder, data


def test_with_the_exact_posterior_as_proposal_it_is_log_p_x_for_any_k():
    """Every weight is p(x_n) exactly, so L_K = sum_n log p(x_n) for every K; 1e-10 per datum
    (float64 rounding of sums of a few log-densities of ~10 nats; seen ~1e-14)."""
    params, decoder, data = _ppca_vae()
    exact = linear_gaussian.log_likelihood(data, params).sum()

    def posterior(data, *, decoder, subsample=None):
        with data_plate(data.shape[0], subsample, None, data.device) as ind:
            loc, scale_tril = linear_gaussian.posterior(data[ind], params)
            pyro.sample("z", full_covariance_normal(loc, scale_tril.expand(len(loc), 2, 2)))

    for num_particles in (1, 2, 10, 100):
        bound = -IWAE(num_particles).loss(vae.model, posterior, data, decoder=decoder)
        assert abs(bound - float(exact)) / len(data) < 1e-10, num_particles


def test_the_bound_rises_with_k_in_expectation_and_stays_below_log_p_x():
    """PPCA with a poor diagonal q (the prior, N(0, I)): 400 independent estimates of L_K for
    K = 1, 2, 5, 20, 100. Each step up in K does not lower the mean (by 5 standard errors of
    the difference), every mean stays below the exact log p(x) (5 s.e.), and K = 100 is well
    above K = 1 (more than 5 s.e.: seen -378.8 to -63.7 nats on 8 points, exact -60.1)."""
    params, decoder, data = _ppca_vae()
    exact = float(linear_gaussian.log_likelihood(data, params).sum())

    def prior_q(data, *, decoder, subsample=None):
        with data_plate(data.shape[0], subsample, None, data.device):
            zeros = data.new_zeros(data.shape[0] if subsample is None else len(subsample), 2)
            pyro.sample("z", dist.Normal(zeros, 1.0).to_event(1))

    pyro.set_rng_seed(0)
    means, errors = [], []
    for num_particles in (1, 2, 5, 20, 100):
        draws = IWAE(num_particles * 400).log_weights(vae.model, prior_q, (data,), {"decoder": decoder})[0]
        per_rep = draws.view(400, num_particles, -1)  # 400 independent sets of K draws
        estimates = (per_rep.logsumexp(1) - torch.log(torch.tensor(float(num_particles)))).sum(-1)  # (400,)
        means.append(float(estimates.mean().detach()))
        errors.append(float(estimates.std().detach() / 400**0.5))
        assert means[-1] < exact + 5 * errors[-1]
    for k in range(1, len(means)):
        assert means[k] > means[k - 1] - 5 * (errors[k] ** 2 + errors[k - 1] ** 2) ** 0.5
    assert means[-1] - means[0] > 5 * (errors[-1] ** 2 + errors[0] ** 2) ** 0.5


def _gradients(objective: str, data, decoder, encoder, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(decoder gradient, encoder gradient), each flattened, of one K = 50 estimate."""
    loss = make_objective(objective, 50).differentiable_loss
    _, grads = _loss_and_grads(
        lambda: _backward(loss(vae.model, encoder, data, decoder=decoder)), (decoder, encoder), seed
    )
    num_decoder = len(list(decoder.parameters()))
    flat = lambda gs: torch.cat([g.flatten() for g in gs])  # noqa: E731
    return flat(grads[:num_decoder]), flat(grads[num_decoder:])


def _backward(loss):
    loss.backward()
    return loss.detach()


def _near_posterior_encoder(params) -> guides.AmortisedNormal:
    """An affine diagonal encoder at PPCA's exact posterior mean and marginal standard deviations
    (the posterior's correlation is -0.05, so q is close to exact), every weight then moved by
    0.02 N(0, 1): a trained encoder's neighbourhood."""
    encoder = guides.AmortisedNormal(5, 2, hidden=(), name="near").double()
    covariance = torch.cholesky_inverse(torch.linalg.cholesky(linear_gaussian.posterior_precision(params)))
    gain = covariance @ params.loading.T / params.psi  # (p, d): E[z | x] = gain (x - loc)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        weight, bias = encoder.net[0].weight, encoder.net[0].bias
        weight.zero_()
        weight[:2], bias[:2] = gain, -gain @ params.loc
        bias[2:] = torch.expm1(covariance.diagonal().sqrt()).log()  # softplus^-1 of the scales
        for tensor in (weight, bias):
            tensor.add_(0.02 * torch.randn(tensor.shape, generator=gen, dtype=tensor.dtype))
    return encoder


def _compare_dreg(data, decoder, encoder, replicates: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Both estimators from the same draws, ``replicates`` times: the decoder's gradients are
    the same (1e-10: the same weights times the same terms), the encoder's agree in mean on
    every coordinate (5 standard errors of the paired difference). Returns the encoder
    gradients (R, P) of the plain and the DReG estimator."""
    plain, dreg = [], []
    for rep in range(replicates):
        decoder_plain, encoder_plain = _gradients("iwae", data, decoder, encoder, seed=rep)
        decoder_dreg, encoder_dreg = _gradients("iwae-dreg", data, decoder, encoder, seed=rep)
        torch.testing.assert_close(decoder_plain, decoder_dreg, rtol=0, atol=1e-10)
        plain.append(encoder_plain)
        dreg.append(encoder_dreg)
    plain, dreg = torch.stack(plain), torch.stack(dreg)
    difference = plain - dreg
    z_scores = difference.mean(0) / (difference.std(0) / replicates**0.5)
    assert float(z_scores.abs().max()) < 5
    return plain, dreg


def test_dreg_agrees_with_the_plain_gradient_in_expectation():
    """K = 50, a small random VAE (MLP decoder and encoder, q far from the posterior), 200
    replicates. Here DReG's encoder variance is higher (seen 99.9 against 6.5): with one weight
    near 1 it adds the noisy d log q / d z term that the plain estimator has in closed form."""
    data, decoder, encoder = _vae(hidden=(8,))
    _compare_dreg(data, decoder, encoder, replicates=200)


def test_dreg_has_lower_encoder_variance_near_the_posterior():
    """K = 50, PPCA with an encoder near its posterior (:func:`_near_posterior_encoder`), 200
    replicates: the means agree, and DReG's total variance over the encoder's coordinates is
    below a tenth of the plain one (seen 4.1 against 629), the regime where Rainforth et al.
    (2018) show the plain estimator's encoder signal-to-noise falling with K."""
    params, decoder, data = _ppca_vae()
    plain, dreg = _compare_dreg(data, decoder, _near_posterior_encoder(params), replicates=200)
    assert float(dreg.var(0).sum()) < 0.1 * float(plain.var(0).sum())


def test_fit_svi_trains_with_either_gradient():
    """Through fit_svi's objective: the estimator is recorded, and 200 steps raise the bound
    (the last 20 losses average below the first 20)."""
    data = torch.rand(40, 5, dtype=torch.float64)
    for objective, name in (("iwae", "IWAE"), ("iwae-dreg", "IWAE-DReG")):
        pyro.clear_param_store()
        decoder = vae.Decoder(5, 2, hidden=(8,)).double()
        encoder = guides.AmortisedNormal(5, 2, hidden=(8,), name=f"enc.{objective}").double()
        result = fit_svi(
            vae.model, encoder, data, num_steps=200, batch_size=10, lr=0.01, num_particles=5,
            objective=objective, progress=False, decoder=decoder,
        )  # fmt: skip
        assert result.elbo == name
        assert float(result.losses[-20:].mean()) < float(result.losses[:20].mean())


def test_refusals():
    data, decoder, encoder = _vae()
    with pytest.raises(ValueError, match="one of elbo, iwae, iwae-dreg"):
        make_objective("renyi", 5)
    with pytest.raises(ValueError, match="at least 1"):
        IWAE(0)
    mean_field_cat = guides.AmortisedCategorical(5, 3)
    with pytest.raises(ValueError, match="enumerated"):
        IWAE(2).loss(vae.model, mean_field_cat, data, decoder=decoder)


@pytest.mark.parametrize("objective", ["iwae", "iwae-dreg"])
@pytest.mark.parametrize("guide_kind", ["amortised", "amortised-full", "mean-field"])
def test_iwae_steps_read_nothing_back_to_the_host(objective, guide_kind, monkeypatch):
    """As the ELBO's steps (tests/inference/test_svi.py): after the first call, minibatch steps
    of either gradient run with every tensor-to-Python conversion made to raise."""
    data, decoder, guide = _small_vae(guide_kind)
    loss = make_objective(objective, 5).differentiable_loss
    loss_fn = functools.partial(loss, vae.model, guide, data, decoder=decoder)
    losses = _steps_with_host_reads_forbidden(loss_fn, 150, monkeypatch)
    assert all(torch.isfinite(loss) for loss in losses)


@pytest.mark.parametrize("objective", ["iwae", "iwae-dreg"])
def test_iwae_on_device_without_host_sync(device, objective):
    """fit_svi with the IWAE objective on each device; on a GPU three steps under CUDA's sync
    debugging set to "error"."""
    data = (load("digits").data[:256] / 16).to(device=device, dtype=torch.float32)
    decoder = vae.Decoder(64, 2, hidden=(16,)).to(device)
    guide = guides.AmortisedNormal(64, 2, hidden=(16,), **guides.input_scaling(data)).to(device)
    result = fit_svi(
        vae.model, guide, data, num_steps=5, batch_size=32, num_particles=4, objective=objective,
        progress=False, decoder=decoder,
    )  # fmt: skip
    assert result.losses.isfinite().all()
    if device.type == "cuda":
        loss = make_objective(objective, 4).differentiable_loss
        _steps_without_sync(functools.partial(loss, vae.model, guide, data, decoder=decoder), data)


def test_stop_gradient_keeps_the_density_and_drops_the_parameters():
    """For every Gaussian family of the guides: the same log-density (1e-12), differentiable in
    the value, with no gradient reaching the parameters; anything else is refused."""
    loc = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    tril = (
        torch.tensor([[1.0, 0.0], [0.3, 0.5]], dtype=torch.float64).expand(3, 2, 2).clone().requires_grad_()
    )
    families = [
        dist.Normal(loc, tril.diagonal(dim1=-2, dim2=-1)).to_event(1),
        dist.MultivariateNormal(loc, scale_tril=tril),
        full_covariance_normal(loc, tril),
        dist.Normal(loc, 1.0).to_event(1).expand((4, 3)),
    ]
    value = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)
    for fn in families:
        stopped = stop_gradient(fn).log_prob(value)
        torch.testing.assert_close(stopped, fn.log_prob(value), rtol=0, atol=1e-12)
        (grad_value,) = torch.autograd.grad(stopped.sum(), value, retain_graph=True)
        assert grad_value.abs().sum() > 0
        assert torch.autograd.grad(stopped.sum(), [loc, tril], allow_unused=True) == (None, None)
    with pytest.raises(ValueError, match="DReG needs a guide whose q"):
        stop_gradient(dist.Gamma(torch.ones(2), torch.ones(2)))
