"""The compiled SVI step: ``compile="graph"`` is the eager step bit for bit on CPU for every model
and guide the gallery ships, minibatched and full-batch, with several particles and across a
checkpoint and resume; its random draws are calls in the graph, fresh each step; ``inductor``
agrees to float rounding and reaches EM's optimum; a step that cannot be traced falls back to
the eager answer with one warning.

Bit for bit holds because the graph replays the very aten operations the eager step runs, in
the same order, on the same tensors: the parameters enter as the tensors the optimiser updates
in place, the minibatch indices as an input, and every random draw is an op on torch's default
generator. Nothing here is compared within a tolerance except inductor, which fuses and
reorders arithmetic.
"""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import inference.compiled as compiled_module
from gallery import load
from gallery.app.config import make_config
from gallery.app.pipeline import job, prepare
from gallery.data.mapped import open_npy
from gallery.models import factor_analysis, ppca
from guides.exact import ppca_posterior
from guides.registry import make_guide
from inference.compiled import AUTO_MIN_STEPS, CompiledStep, choose_compile
from inference.em import em_linear_gaussian
from inference.svi import collect_params, fit_svi, make_elbo
from tests.inference.test_checkpoint import Interrupt, train

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    # torch 2.13's inductor calls its own deprecated torch.jit.script_method: not ours to fix
    pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"),
]

NUM_STEPS = 50
# (model, guide, batch_size, num_particles): every guide each model ships; per-datum tables and
# networks minibatched (their rows are indexed by the subsample), exact guides full-batch, and
# each model with 2 particles once. Batches of 32 of iris' 150 rows cross an epoch in 50 steps.
CASES = [
    ("gmm", "exact", None, 1),
    ("gmm", "exact", 32, 2),
    ("gmm", "mean-field", 32, 1),
    ("gmm", "amortised", 32, 2),
    ("gmm", "auto-normal", None, 1),
    ("factor-analysis", "exact", 32, 1),
    ("factor-analysis", "mean-field", 32, 2),
    ("factor-analysis", "amortised", None, 1),
    ("factor-analysis", "amortised-full", 32, 1),
    ("factor-analysis", "auto-normal", 32, 1),
    ("ppca", "exact", None, 2),
    ("ppca", "mean-field", None, 1),
    ("ppca", "amortised", 32, 1),
    ("ppca", "amortised-full", None, 2),
    ("ppca", "auto-normal", None, 1),
    ("mfa", "exact", 32, 1),
    ("mfa", "mean-field", 32, 2),
    ("mfa", "amortised", None, 1),
    ("mppca", "exact", None, 1),
    ("mppca", "mean-field", None, 1),
    ("mppca", "amortised", 32, 2),
    ("vae", "amortised", 128, 1),
    ("vae", "amortised-full", None, 2),
    ("vae", "mean-field", 128, 1),
    ("factor-analysis", "amortised-flow", 32, 1),
    ("ppca", "amortised-flow", None, 2),
    ("vae", "amortised-flow", 128, 1),
    ("vae-conv", "amortised", 128, 1),  # --architecture conv: convolutional decoder and encoder
]


def fit(
    model: str, guide: str, batch_size: int | None, num_particles: int, compile: str, device: str = "cpu"
):
    """``run``'s model and guide for ``model``, ``guide`` (iris; the VAE on digits, with one
    hidden layer of 16), built afresh from seed 0, fitted by ``NUM_STEPS`` SVI steps; the result
    and every parameter."""
    pyro.clear_param_store()
    small = {"hidden": (16,), "eval_particles": 2} if model.startswith("vae") else {}  # a fast setup
    if model == "vae-conv":
        model, small = "vae", {"architecture": "conv", "eval_particles": 2}
    config = make_config(model, guide=guide, num_steps=NUM_STEPS, progress=False, device=device, **small)
    prepared = prepare(config)
    setup = job(config).setup(prepared, None)
    result = fit_svi(
        setup.model,
        setup.guide,
        prepared.data,
        num_steps=NUM_STEPS,
        batch_size=batch_size,
        lr=config.train.lr,
        num_particles=num_particles,
        progress=False,
        compile=compile,
        **setup.model_kwargs,
    )
    store = pyro.get_param_store()
    return result, {name: store[name].detach().clone() for name in store.keys()}


@pytest.mark.parametrize("model, guide, batch_size, num_particles", CASES)
def test_graph_is_the_eager_step_bit_for_bit(model, guide, batch_size, num_particles):
    eager, expected = fit(model, guide, batch_size, num_particles, "off")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback to eager would warn
        graph, params = fit(model, guide, batch_size, num_particles, "graph")
    assert (eager.compiled, graph.compiled) == ("off", "graph")
    assert torch.equal(graph.losses, eager.losses)
    assert params.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(params[name], value), name


def test_graph_draws_fresh_noise_each_step_as_eager_does():
    """The draws of a stochastic guide are ops of the graph, not constants baked in by the trace:
    three consecutive steps draw three different samples, each the one eager draws from the
    same generator state."""
    data = load("iris").data
    config = make_config("ppca", guide="mean-field")
    setup = job(config).setup(prepare(config), None)
    elbo = make_elbo(False)

    def loss_fn(subsample):
        return elbo.differentiable_loss(
            setup.model, setup.guide, data, subsample=subsample, **setup.model_kwargs
        )

    subsample = torch.arange(32)
    _, named = collect_params(loss_fn, subsample)
    params = list(named.values())
    start = torch.get_rng_state()
    expected = []
    with pyro.validation_enabled(False):  # as fit_svi steps: Pyro's checks read values to the host
        for _ in range(3):
            loss = loss_fn(subsample)
            expected.append((loss.detach(), torch.autograd.grad(loss, params)))
        torch.set_rng_state(start)
        step = CompiledStep(loss_fn, params, "graph")
        for eager_loss, eager_grads in expected:
            loss, grads = step(subsample)
            assert step.fallback is None
            assert torch.equal(loss, eager_loss)
            assert all(torch.equal(g, e) for g, e in zip(grads, eager_grads, strict=True))
    assert len({float(loss) for loss, _ in expected}) == 3  # the noise differs from step to step
    seeded = torch.Tag.nondeterministic_seeded
    random_ops = [node for node in step.traced.graph.nodes if seeded in getattr(node.target, "tags", ())]
    assert random_ops  # the guide's normal draw, called anew at each replay


def test_graph_checkpoint_and_resume_end_bit_for_bit_where_eager_ends(tmp_path):
    """A graph run interrupted at step 25 and resumed from its step-20 checkpoint (the trace is
    made again after the resume) ends where the uninterrupted eager run ends, bit for bit."""
    expected_result, expected = train(tmp_path / "a.pt")
    with pytest.raises(Interrupt):
        train(tmp_path / "b.pt", stop_at=25, compile="graph")
    result, resumed = train(tmp_path / "b.pt", resume=True, compile="graph")
    assert result.compiled == "graph"
    assert resumed.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(resumed[name], tensor), name
    assert torch.equal(result.losses, expected_result.losses)


@pytest.mark.parametrize("guide", ["exact", "amortised"])
def test_graph_on_rows_read_from_a_file_is_the_eager_step_bit_for_bit(tmp_path, guide):
    """``--stream``: the B rows a step reads from the memory-mapped file are the graph's input
    (read outside it, each step), so the traced run is the eager streamed run bit for bit."""
    data = load("iris").data
    np.save(tmp_path / "iris.npy", data.numpy())
    rows = open_npy(tmp_path / "iris.npy", torch.device("cpu"), torch.float64)
    runs = {}
    for mode in ("off", "graph"):
        pyro.clear_param_store()
        init = factor_analysis.init_params(data, 2, generator=torch.Generator().manual_seed(0))
        pyro.set_rng_seed(0)
        model_kwargs = {"latent_dim": 2, "init": init}
        built = make_guide(
            "factor-analysis",
            guide,
            data=data,
            init=init,
            size=2,
            model_kwargs=model_kwargs,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            result = fit_svi(
                factor_analysis.model,
                built,
                rows,
                num_steps=NUM_STEPS,
                batch_size=32,
                lr=0.01,
                progress=False,
                compile=mode,
                **model_kwargs,
            )
        store = pyro.get_param_store()
        runs[mode] = result, {name: store[name].detach().clone() for name in store.keys()}
    (eager, expected), (graph, params) = runs["off"], runs["graph"]
    assert graph.compiled == "graph"
    assert torch.equal(graph.losses, eager.losses)
    assert params.keys() == expected.keys()
    assert all(torch.equal(params[name], value) for name, value in expected.items())


def host_read_model(data, subsample=None):
    """x_n ~ N(loc + sum(loc), I): the sum read to the host as a Python float, which a graph
    would hold as a constant, so the step must not be traced."""
    loc = pyro.param("host_read.loc", torch.zeros(data.shape[1], dtype=data.dtype))
    shift = float(loc.detach().sum())
    with pyro.plate("data", len(data), subsample=subsample):
        rows = data if subsample is None else data[subsample]
        pyro.sample("x", dist.Normal(loc + shift, 1.0).to_event(1), obs=rows)


def host_read_guide(data, subsample=None):
    pass


def test_a_step_that_cannot_be_traced_falls_back_to_the_eager_answer_with_one_warning():
    data = load("iris").data
    runs = {}
    for mode in ("off", "graph"):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = fit_svi(
                host_read_model,
                host_read_guide,
                data,
                num_steps=20,
                batch_size=32,
                progress=False,
                compile=mode,
            )
        runs[mode] = result, pyro.param("host_read.loc").detach().clone(), [str(w.message) for w in caught]
    (eager, eager_loc, _), (graph, graph_loc, messages) = runs["off"], runs["graph"]
    assert graph.compiled == "off"
    assert torch.equal(graph.losses, eager.losses) and torch.equal(graph_loc, eager_loc)
    fallbacks = [m for m in messages if "fell back to eager" in m]
    assert len(fallbacks) == 1 and "\n" not in fallbacks[0] and "_local_scalar_dense" in fallbacks[0]


@pytest.mark.skipif(
    not any(shutil.which(cc) for cc in ("g++", "c++", "clang++")),
    reason="inductor on CPU needs a C++ compiler",
)
def test_inductor_agrees_to_rounding_and_reaches_em(monkeypatch):
    """PPCA's exact guide on iris in ``test_svi_reaches_em``'s settings (1,500 steps, lr 0.05),
    compiled by inductor with eager's random numbers, against the eager run: the only inductor
    test, as one compile takes 10-60 s on a 2-core CPU.

    - The first step: inductor fuses and reorders the float64 arithmetic of the ~300-op graph,
      so loss and gradients differ from eager's in the last bits: measured 5e-14 on gradients
      of size 40. Allowed: 1e-12 of the largest gradient, and 1e-12 relative on the loss.
    - The run: the losses differ by up to 3.4e-5 relative (measured, at step 271), not by
      rounding alone: ``loc`` starts at the data mean, where its gradient is rounding noise
      (1e-14), and Adam's first steps are ``lr * g / |g|``, moving ``loc`` by +-lr in directions
      that the last bits choose. Allowed: 1e-3 relative; a stale constant or a wrong draw moves
      the loss by over 1e-2 relative in the first steps.
    - The end: both runs reach the optimum, where log p(x) is flat: measured 5e-16 relative
      apart. Allowed: 1e-12; and at least EM's minus 1e-3 relative, as ``test_svi_reaches_em``.
    """
    inductor_config = pytest.importorskip("torch._inductor.config")
    monkeypatch.setattr(inductor_config, "fallback_random", True)
    data = load("iris").data
    init = ppca.init_params(data, 2, generator=torch.Generator().manual_seed(0))
    runs = {}
    for mode in ("off", "inductor"):
        first = []

        def keep_first_gradients(params, first=first):
            if not first:
                first.extend(p.grad.clone() for p in params)

        pyro.clear_param_store()
        result = fit_svi(
            ppca.model,
            ppca_posterior,
            data,
            num_steps=1500,
            lr=0.05,
            progress=False,
            compile=mode,
            grad_hook=keep_first_gradients,
            init=init,
            latent_dim=2,
        )
        runs[mode] = result, first, float(ppca.log_likelihood(data, ppca.current_params()).mean())
    (eager, eager_grads, eager_ll), (compiled, compiled_grads, svi_ll) = runs["off"], runs["inductor"]
    assert compiled.compiled == "inductor"
    assert torch.allclose(compiled.losses[0], eager.losses[0], rtol=1e-12, atol=0)
    largest = max(float(g.abs().max()) for g in eager_grads)
    for got, expected in zip(compiled_grads, eager_grads, strict=True):
        assert torch.allclose(got, expected, rtol=0, atol=1e-12 * largest)
    assert torch.allclose(compiled.losses, eager.losses, rtol=1e-3, atol=0)
    assert abs(svi_ll - eager_ll) <= 1e-12 * abs(eager_ll)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        em = em_linear_gaussian(data, init, max_iters=3000, tol=1e-10)
    em_ll = float(em.log_likelihoods[-1])
    assert svi_ll >= em_ll - 1e-3 * abs(em_ll)


def test_auto_traces_long_cpu_runs_in_memory_only():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert choose_compile("auto", AUTO_MIN_STEPS, cpu, False, False) == "graph"
    assert choose_compile("auto", AUTO_MIN_STEPS - 1, cpu, False, False) == "off"
    for device, distributed, on_disk in [(cuda, False, False), (cpu, True, False), (cpu, False, True)]:
        assert choose_compile("auto", 10**6, device, distributed, on_disk) == "off"
    assert choose_compile("inductor", 1, cuda, True, False) == "inductor"  # asked for: as asked
    with pytest.raises(ValueError, match="choose one of off, graph, inductor, auto"):
        choose_compile("jit", 10, cpu, False, False)


def test_an_inductor_compile_that_fails_runs_the_traced_graph_with_one_warning(monkeypatch):
    """Inductor compiles at its first call; a failure there (here: made to raise) costs nothing
    but the warning: the steps run on the traced graph, the eager answer bit for bit."""

    def broken(graph, device):
        def compiled(*inputs):
            raise RuntimeError("no C++ compiler. Install one")

        return compiled

    monkeypatch.setattr(compiled_module, "_inductor", broken)
    eager, expected = fit("gmm", "exact", 32, 1, "off")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result, params = fit("gmm", "exact", 32, 1, "inductor")
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert messages == ["compile='inductor' failed (RuntimeError: no C++ compiler); running the traced graph"]
    assert result.compiled == "graph"
    assert torch.equal(result.losses, eager.losses)
    assert all(torch.equal(params[name], value) for name, value in expected.items())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("model, guide, batch_size", [("gmm", "exact", 32), ("vae", "amortised", 128)])
@pytest.mark.parametrize("mode", ["graph", "inductor"])
def test_compiled_steps_on_cuda_match_eager(model, guide, batch_size, mode, monkeypatch):
    """On CUDA (not yet run: no GPU was lent when it was written): the graph replays eager's
    kernels, inductor (CUDA graphs, eager's random numbers) fuses its own. Tolerances from the
    same 50 steps measured with inductor on CPU: float64 GMM 9e-16 relative, allowed 1e-9;
    float32 VAE 2.6e-7 on the losses and 2.2e-7 of the largest parameter, allowed 1e-4 (CUDA
    reductions may also change order from run to run)."""
    inductor_config = pytest.importorskip("torch._inductor.config")
    monkeypatch.setattr(inductor_config, "fallback_random", True)
    eager, expected = fit(model, guide, batch_size, 1, "off", device="cuda")
    compiled, params = fit(model, guide, batch_size, 1, mode, device="cuda")
    assert compiled.compiled == mode
    rtol = 1e-9 if model == "gmm" else 1e-4
    assert torch.allclose(compiled.losses, eager.losses, rtol=rtol, atol=0)
    for name, value in expected.items():
        assert torch.allclose(params[name], value, rtol=0, atol=rtol * float(value.abs().max())), name
