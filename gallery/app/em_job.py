"""The ``run`` job of the mixture, factor analysis and PPCA: SVI beside exact EM from the same
start, evaluated by exact log p(x) (and PPCA's closed-form maximum, Tipping and Bishop 1999).

With ``--stream`` the data stay in their ``.npy`` file, memory-mapped (:mod:`gallery.data.mapped`):
SVI reads each minibatch from the map, and the checks, EM and the evaluation walk the file a
block at a time, so memory does not grow with N.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import pyro
import torch
from torch import Tensor

from gallery.app.checks import check_processes, check_settings, check_stream
from gallery.app.config import RunConfig
from gallery.app.metrics import Baseline, Evaluation
from gallery.app.resources import check_resources
from gallery.app.stages import Evaluated, Prepared, RunResult, Setup, elbo_trace
from gallery.data import datasets, mapped
from gallery.models import MODELS
from guides.registry import check_guide, make_guide
from inference.em import EMResult, fit_em, ppca_max_log_likelihood
from inference.evaluate import elbo as estimate_elbo
from inference.evaluate import mean_log_likelihood
from inference.per_datum import keeps_q_per_datum
from inference.svi import SVIResult


@dataclass(frozen=True)
class EMFit:
    svi_params: object  # the model's parameters at the SVI fit
    em: EMResult  # EM from the same start
    init: object  # that start


def prepare(config: RunConfig, dataset: datasets.Dataset | None = None) -> Prepared:
    """Load (or take ``dataset``), check, and transform the data as asked; raises ``ValueError``
    with what to change."""
    check_guide(config.model, config.guide)
    train = config.train
    counts = {"eval_particles": train.eval_particles, "components": config.components}
    device = check_settings(config, counts | {"latent_dim": config.latent_dim})
    if config.em.max_iters < 0:
        raise ValueError(f"--em-iters must be at least 0, got {config.em.max_iters}")
    if not (math.isfinite(config.em.tol) and config.em.tol >= 0):
        raise ValueError(f"--em-tol must be a number >= 0, got {config.em.tol}")
    if config.em.restarts < 1:
        raise ValueError(f"--restarts must be at least 1, got {config.em.restarts}")
    data, labels, stats, steps = _load(config, device, dataset)
    num_data, obs_dim = data.shape
    if train.batch_size is not None and not 1 <= train.batch_size <= num_data:
        raise ValueError(f"--batch-size {train.batch_size} must be between 1 and the {num_data} rows")
    check_resources(config, num_data, obs_dim, batch_size=train.batch_size, device=device)
    per_datum = keeps_q_per_datum(config.guide, latent=MODELS[config.model].LATENT)
    if config.data.stream:
        check_stream(config, per_datum)
    check_processes(config, num_data, per_datum, train.batch_size)
    model_kwargs = _model_kwargs(config, num_data, obs_dim)
    if config.model == "ppca":
        ppca_max_log_likelihood(stats, config.latent_dim)  # refuses data with no maximum
    if not config.data.stream:  # a mapped file is read in the dtype, onto the device
        data = data.to(device=device, dtype=config.torch_dtype)
    return Prepared(config, data, labels, "+".join(steps) or "none", model_kwargs, moments=stats)


def _load(config: RunConfig, device: torch.device, dataset: datasets.Dataset | None = None):
    """The data (N, D), in memory or mapped, its labels, its moments and the steps taken."""
    source = config.data
    if dataset is not None:
        data, labels, name = dataset.data, dataset.labels, "data"
    elif source.stream:
        data, labels = mapped.open_npy(source.name, device, config.torch_dtype), None
        name = f"data in {source.name!r}"
    else:
        dataset = datasets.load(source.name)
        data, labels, name = dataset.data, dataset.labels, "data"
    stats, steps = mapped.moments(data, name=name), []  # reads every row once and checks it
    constant = stats.constant  # (D,)
    if source.drop_constant_columns and bool(constant.any()):
        data, stats = _select_columns(data, ~constant), stats.select(~constant)
        steps.append(f"drop-constant-columns({int(constant.sum())})")
    elif config.model in ("gmm", "factor-analysis") and bool(constant.any()):
        columns = ", ".join(str(int(i)) for i in constant.nonzero().flatten()[:8])
        raise ValueError(
            f"column(s) {columns} of the data are constant: a {config.model} variance would shrink to 0 "
            "there and the likelihood has no maximum; pass --drop-constant-columns"
        )
    if source.standardize:
        mean = stats.mean
        stats, std = stats.standardized()
        data = _standardize(data, mean, std)
        steps.append("standardize")
    return data, labels, stats, steps


MIXTURES = ("gmm", "mfa", "mppca")  # the models with --components (and k-means starts)


def _model_kwargs(config: RunConfig, num_data: int, obs_dim: int) -> dict:
    kwargs = {}
    if config.model in MIXTURES:
        if config.components > num_data:
            raise ValueError(
                f"--components {config.components} is more than the {num_data} rows of data; "
                "use fewer components"
            )
        kwargs["num_components"] = config.components
    if config.model == "gmm":
        return kwargs | {"covariance_type": config.covariance_type}
    if config.latent_dim >= obs_dim:
        raise ValueError(
            f"--latent-dim {config.latent_dim} must be smaller than the data dimension {obs_dim}"
        )
    return kwargs | {"latent_dim": config.latent_dim}


def _init_args(config: RunConfig) -> tuple[tuple[int, ...], dict]:
    """The sizes ``init_params`` takes after the data, and its options."""
    if config.model == "gmm":
        return (config.components,), {"covariance_type": config.covariance_type}
    if config.model in MIXTURES:
        return (config.components, config.latent_dim), {}
    return (config.latent_dim,), {}


@dataclass(frozen=True)
class Restarts:
    """EM from every start of ``--restarts``; the best by final log p(x) is SVI's start."""

    log_likelihoods: list[float]  # (R,) final mean log p(x) of EM from each start
    best: int  # the start kept (the first of equals)
    em: EMResult  # EM from it


def _restarts(config: RunConfig, module, data, sample: Tensor, first) -> tuple[object, Restarts]:
    """``--restarts R`` starts: ``first`` (the seed's, as with R = 1), then for r = 1..R-1 from a
    generator seeded by (seed, r): mixtures alternate random rows (odd r) and k-means++ (even
    r); factor analysis and PPCA draw other random loadings. EM runs from each."""
    sizes, options = _init_args(config)
    starts = [first]
    for r in range(1, config.em.restarts):
        generator = torch.Generator().manual_seed(config.train.seed * 100_003 + r)
        extra = {"start": "random" if r % 2 else "kmeans"} if config.model in MIXTURES else {}
        starts.append(module.init_params(sample, *sizes, generator=generator, **options, **extra))
    fits = [
        fit_em(data, start, max_iters=config.em.max_iters, tol=config.em.tol, dtype=torch.float64)
        for start in starts
    ]
    finals = [float(fit.log_likelihoods[-1]) for fit in fits]
    best = max(range(len(finals)), key=lambda r: (finals[r], -r))
    return starts[best], Restarts(finals, best, fits[best])


def _select_columns(data: Tensor | mapped.MappedRows, keep: Tensor) -> Tensor | mapped.MappedRows:
    if isinstance(data, Tensor):
        return data[:, keep]
    return replace(data, columns=tuple(int(i) for i in keep.nonzero().flatten()))


def _standardize(data: Tensor | mapped.MappedRows, mean: Tensor, std: Tensor) -> Tensor | mapped.MappedRows:
    """``(x - mean) / std`` of every row, now in memory or when read from disk."""
    if isinstance(data, Tensor):
        return (data - mean) / std
    move = lambda t: t.to(device=data.device, dtype=data.dtype)  # noqa: E731
    return replace(data, shift=move(mean), divisor=move(std))


def setup(prepared: Prepared, parallel=None) -> Setup:
    """The starting parameters (from a seeded sample of at most ``INIT_ROWS`` rows) and the guide."""
    config, data = prepared.config, prepared.data
    module, seed = MODELS[config.model], config.train.seed
    pyro.set_rng_seed(seed)  # networks are initialised from the global generator
    generator = torch.Generator().manual_seed(seed)
    sample = mapped.init_sample(data, generator)  # (<= INIT_ROWS, D): all rows of a small data set
    sizes, options = _init_args(config)
    init = module.init_params(sample, *sizes, generator=generator, **options)
    restarts = None
    if config.em.restarts > 1:
        init, restarts = _restarts(config, module, data, sample, init)
    size = sizes[0]  # K of a mixture, p of factor analysis and PPCA
    streamed = config.data.stream
    guide = make_guide(
        config.model,
        config.guide,
        data=sample if streamed else data,
        init=init,
        size=size,
        hidden=config.hidden,
        model_kwargs=prepared.model_kwargs,
        scaling=prepared.moments.input_scaling(data.device, data.dtype) if streamed else None,
        flow_layers=config.flow_layers,
    )
    model_kwargs = {"init": init, **prepared.model_kwargs}
    return Setup(
        module.model,
        guide,
        model_kwargs,
        config.train.batch_size,
        module.LATENT,
        init=init,
        restarts=restarts,
    )


def evaluate(prepared: Prepared, setup: Setup, svi: SVIResult) -> Evaluated:
    """EM from SVI's start, then the ELBO (``--eval-particles``) and exact log p(x) at the SVI fit."""
    config, data, kwargs = prepared.config, prepared.data, prepared.model_kwargs
    module = MODELS[config.model]
    svi_params = module.current_params()
    if setup.restarts is not None:  # EM from the best start ran already
        em = setup.restarts.em
    else:
        em = fit_em(
            data, setup.init, max_iters=config.em.max_iters, tol=config.em.tol, dtype=torch.float64,
            progress=config.train.progress,
        )  # fmt: skip
    num_data, obs_dim = data.shape
    particles = config.train.eval_particles
    elbo = estimate_elbo(module.model, setup.guide, data, num_particles=particles, **setup.model_kwargs)
    evaluation = Evaluation(
        elbo / num_data,
        particles,
        float(mean_log_likelihood(data.double(), svi_params.to(torch.float64))),
        float(em.log_likelihoods[0]),
    )
    baseline = Baseline(float(em.log_likelihoods[-1]), em.num_iters, em.converged)
    extras = {"stream": config.data.stream}
    if config.guide == "amortised-flow":
        extras["flow_layers"] = config.flow_layers
    if setup.restarts is not None:  # absent with --restarts 1, so its metrics stay as they were
        extras["restarts"] = config.em.restarts
        extras["restart_best"] = setup.restarts.best
        extras["restart_log_likelihoods_per_datum"] = setup.restarts.log_likelihoods
    if config.model == "ppca":
        closed_form = ppca_max_log_likelihood(prepared.moments, config.latent_dim)
        extras["closed_form_log_likelihood_per_datum"] = float(closed_form)
    if data.is_cuda:  # the GPU memory high-water mark of this process (rank 0's)
        extras["cuda_max_memory_allocated_bytes"] = torch.cuda.max_memory_allocated(data.device)
    sizes = {"num_data": num_data, "obs_dim": obs_dim, **kwargs}
    return Evaluated(sizes, evaluation, baseline, em.seconds, extras, EMFit(svi_params, em, setup.init))


def files(result: RunResult) -> dict[str, bytes]:
    """``params.pt`` (SVI's, EM's and the starting parameters) and ``training_curve.png``."""
    from gallery.report.outputs import curve_png, flat_params, params_bytes

    fitted, metrics = result.fitted, result.metrics
    return {
        "params.pt": params_bytes(flat_params(svi=fitted.svi_params, em=fitted.em.params, init=fitted.init)),
        "training_curve.png": curve_png(
            elbo_trace(result),
            f"{metrics['model']} on {metrics['data']}, guide {metrics['guide']}",
            em_log_likelihoods=fitted.em.log_likelihoods,
        ),
    }


def summary(metrics: dict) -> str:
    """The start, EM, SVI's log p(x) and ELBO (and PPCA's closed form), nats per datum."""
    rows = [
        ("initial parameters", "log p(x)", metrics["initial_log_likelihood_per_datum"], "", ""),
        (
            f"EM ({metrics['em_num_iters']} iterations)",
            "log p(x)",
            metrics["em_log_likelihood_per_datum"],
            "",
            f"{metrics['em_seconds']:.2f}",
        ),
        (
            f"SVI, guide {metrics['guide']}",
            "log p(x)",
            metrics["log_likelihood_per_datum"],
            metrics["num_steps"],
            f"{metrics['svi_seconds']:.2f}",
        ),
        (f"SVI, guide {metrics['guide']}", "ELBO", metrics["elbo_per_datum"], "", ""),
    ]
    if "closed_form_log_likelihood_per_datum" in metrics:
        closed_form = metrics["closed_form_log_likelihood_per_datum"]
        rows.append(("closed form (Tipping-Bishop)", "log p(x)", closed_form, "", ""))
    lines = [
        f"{metrics['model']} on {metrics['data']} (N={metrics['num_data']}, D={metrics['obs_dim']}), "
        f"{metrics['device']}, nats per datum",
        f"{'fit':32s} {'quantity':9s} {'per datum':>12s} {'steps':>6s} {'seconds':>8s}",
    ]
    lines += [f"{a:32s} {b:9s} {c:12.6f} {d!s:>6s} {e:>8s}" for a, b, c, d, e in rows]
    return "\n".join(lines)


__all__ = ["EMFit", "evaluate", "files", "prepare", "setup", "summary"]
