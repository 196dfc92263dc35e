"""The ``run`` job: fit one model by SVI and by exact EM from the same start, and report both.

Every check on the input happens in :func:`prepare`, before any computation; :func:`fit` does the
work and returns the metrics; the command line writes them.

With ``--num-processes W`` (or under ``torchrun``) every process loads the whole data and
computes the same initial parameters and guide from the seed, then trains by SVI on its shard of
the rows (:mod:`inference.distributed`). EM and the evaluation run after SVI on rank 0 alone, on
the whole data, so no process waits for them; the other ranks return ``None``.

With ``--stream`` the data stay in their ``.npy`` file, memory-mapped (:mod:`gallery.data.mapped`):
SVI reads each minibatch from the map, and the checks, EM and the evaluation walk the file a
block at a time, so memory does not grow with N.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import pyro
import torch
from torch import Tensor

from gallery.data import datasets, mapped
from guides.registry import MODELS, check_guide, make_guide
from inference import evaluate
from inference.checkpoint import Checkpointing
from inference.distributed import DataParallel
from inference.em import EMResult, ppca_max_log_likelihood
from inference.svi import SVIResult, fit_svi

DTYPES = {"float64": torch.float64, "float32": torch.float32}


@dataclass(frozen=True)
class RunConfig:
    model: str
    guide: str = "exact"
    data: str = "iris"
    components: int = 3
    latent_dim: int = 2
    covariance_type: str = "full"
    num_steps: int = 2000
    batch_size: int | None = None
    lr: float | None = None  # default: 0.05 for parameter tables, 0.005 for networks
    num_particles: int = 1
    eval_particles: int | None = None  # default: 100 (ELBO), or 1000 for the VAE's log p(x)
    hidden: tuple[int, ...] = ()  # VAE: () means the default, (128,)
    em_iters: int = 500
    em_tol: float = 1e-8
    standardize: bool = False
    drop_constant_columns: bool = False
    device: str = "cpu"
    dtype: str | None = None  # default: float64, or float32 for the VAE
    seed: int = 0
    progress: bool = True
    # the VAE's settings
    likelihood: str = "gaussian"
    decoder: str = "mlp"
    activation: str = "relu"
    noise_variance: float | None = None  # a fixed sigma^2; None: learned
    binarize: bool = False
    heldout_fraction: float = 0.1
    checkpoint_every: int | None = None
    resume: bool = False
    data_dir: str | None = None
    gap_rows: int = 200
    gap_steps: int = 1000
    # ArviZ output: posterior draws of the local latents and the ELBO trace
    arviz: bool = False
    arviz_draws: int = 100
    num_processes: int = 1  # data-parallel SVI processes; --batch-size is then per process
    stream: bool = False  # leave a .npy in its file and read minibatches from the memory map


@dataclass(frozen=True)
class Prepared:
    config: RunConfig
    data: Tensor | mapped.MappedRows  # (N, D) on the device in the dtype, or left on disk (--stream)
    labels: Tensor | None
    moments: mapped.Moments  # of the data as the models see it, float64 on the CPU
    model_kwargs: dict = field(default_factory=dict)
    preprocessing: str = "none"  # what was done to the data, recorded in metrics.json


def prepare(config: RunConfig) -> Prepared:
    """Load and check everything; raises ``ValueError`` with what to change."""
    check_guide(config.model, config.guide)
    config = replace(
        config,
        dtype="float64" if config.dtype is None else config.dtype,
        eval_particles=100 if config.eval_particles is None else config.eval_particles,
    )
    device = check_settings(config, ("eval_particles", "components", "latent_dim"))
    if config.em_iters < 0:
        raise ValueError(f"--em-iters must be at least 0, got {config.em_iters}")
    if not (math.isfinite(config.em_tol) and config.em_tol >= 0):
        raise ValueError(f"--em-tol must be a number >= 0, got {config.em_tol}")
    if config.stream:
        data, labels = mapped.open_npy(config.data, device, DTYPES[config.dtype]), None
        name = f"data in {config.data!r}"
    else:
        dataset = datasets.load(config.data)
        data, labels, name = dataset.data, dataset.labels, "data"
    stats, steps = mapped.moments(data, name=name), []  # reads every row once and checks it
    constant = stats.constant  # (D,)
    if config.drop_constant_columns and bool(constant.any()):
        data, stats = _select_columns(data, ~constant), stats.select(~constant)
        steps.append(f"drop-constant-columns({int(constant.sum())})")
    elif config.model in ("gmm", "factor-analysis") and bool(constant.any()):
        columns = ", ".join(str(int(i)) for i in constant.nonzero().flatten()[:8])
        raise ValueError(
            f"column(s) {columns} of the data are constant: a {config.model} variance would shrink to 0 "
            "there and the likelihood has no maximum; pass --drop-constant-columns"
        )
    if config.standardize:
        mean = stats.mean
        stats, std = stats.standardized()
        data = _standardize(data, mean, std)
        steps.append("standardize")
    num_data, obs_dim = data.shape
    if config.batch_size is not None and not 1 <= config.batch_size <= num_data:
        raise ValueError(f"--batch-size {config.batch_size} must be between 1 and the {num_data} rows")
    per_datapoint = config.guide == "mean-field" or (
        config.guide == "auto-normal" and MODELS[config.model].latent == "z"
    )
    if config.stream:
        check_stream(config, per_datapoint)
    check_processes(config, num_data, per_datapoint)
    if config.model == "gmm":
        if config.components > num_data:
            raise ValueError(
                f"--components {config.components} is more than the {num_data} rows of data; "
                "use fewer components"
            )
        model_kwargs = {"num_components": config.components, "covariance_type": config.covariance_type}
    else:
        if config.latent_dim >= obs_dim:
            raise ValueError(
                f"--latent-dim {config.latent_dim} must be smaller than the data dimension {obs_dim}"
            )
        model_kwargs = {"latent_dim": config.latent_dim}
    if config.model == "ppca":
        ppca_max_log_likelihood(stats, config.latent_dim)  # refuses data with no maximum
    if isinstance(data, Tensor):
        data = data.to(device=device, dtype=DTYPES[config.dtype])
    return Prepared(config, data, labels, stats, model_kwargs, "+".join(steps) or "none")


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


def check_stream(config: RunConfig, per_datapoint: bool) -> None:
    """Refuse what ``--stream`` cannot do: every step reads a minibatch from the file, so it needs
    ``--batch-size`` and a guide with no q per data point; ``--arviz`` would draw every row's
    latent."""
    if config.batch_size is None:
        raise ValueError("--stream reads a minibatch at a time from the file: pass --batch-size")
    if per_datapoint:
        raise ValueError(
            f"--guide {config.guide} keeps a q for every one of the rows, which --stream cannot read a "
            "minibatch at a time; use --guide amortised (one encoder for all rows) or exact"
        )
    if config.arviz:
        raise ValueError("--arviz draws every row's latent, which --stream does not hold in memory; drop one")


def check_settings(config: RunConfig, counts: tuple[str, ...]) -> torch.device:
    """The checks every model's run shares: the dtype (already resolved), the device, the step,
    particle and draw counts and the model's own ``counts`` (each at least 1),
    ``--checkpoint-every`` and ``--lr``. Returns the device."""
    if config.dtype not in DTYPES:
        raise ValueError(f"unknown dtype {config.dtype!r}; choose one of {', '.join(DTYPES)}")
    device = check_device(config.device)
    for name in ("num_steps", "num_particles", "arviz_draws", *counts):
        if getattr(config, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(config, name)}")
    if config.checkpoint_every is not None and config.checkpoint_every < 1:
        raise ValueError(f"--checkpoint-every must be at least 1, got {config.checkpoint_every}")
    if config.lr is not None and not (math.isfinite(config.lr) and config.lr > 0):
        raise ValueError(f"--lr must be a positive number, got {config.lr}")
    return device


def check_processes(config: RunConfig, num_data: int, per_datapoint: bool) -> None:
    """Refuse a ``--num-processes`` that cannot work, before any process starts: a guide with a q
    per data point (``per_datapoint``), fewer rows than processes, or a per-process
    ``--batch-size`` larger than the smallest shard."""
    num = config.num_processes
    if num < 1:
        raise ValueError(f"--num-processes must be at least 1, got {num}")
    if num == 1:
        return
    if per_datapoint:
        raise ValueError(
            f"--guide {config.guide} keeps a q for every data point, which cannot be split over {num} "
            "processes; use --guide amortised (one encoder for all rows) with --num-processes"
        )
    if num_data < num:
        raise ValueError(f"--num-processes {num} is more than the {num_data} rows of data")
    device = torch.device(config.device)
    if device.type == "cuda" and device.index is not None:
        raise ValueError(
            f"--device {config.device} with --num-processes: use --device cuda (process r takes GPU r)"
        )
    if device.type == "cuda" and num > torch.cuda.device_count():
        raise ValueError(
            f"--num-processes {num} with --device cuda needs a GPU per process; this machine has "
            f"{torch.cuda.device_count()}"
        )
    if config.batch_size is not None and config.batch_size > num_data // num:
        raise ValueError(
            f"--batch-size {config.batch_size} is per process and must be at most {num_data // num}, "
            f"the rows of the smallest of the {num} shards"
        )


def learning_rate(config: RunConfig) -> float:
    """``--lr``, or the default: a network's weights move every q at once and want 10x smaller
    steps than per-datum tables and model parameters."""
    if config.lr is not None:
        return config.lr
    return 0.005 if config.guide.startswith("amortised") else 0.05


def check_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but this machine has no CUDA GPU; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {name!r}; use cpu or cuda")
    return device


@dataclass(frozen=True)
class RunResult:
    metrics: dict
    svi: SVIResult
    em: EMResult
    svi_params: object
    init_params: object
    guide: object = None
    prepared: Prepared | None = None


def checkpointing(config: RunConfig, out: Path | None) -> Checkpointing | None:
    """``out/checkpoint.pt`` every ``--checkpoint-every`` steps, or resumed with ``--resume``; the
    checkpoint records every setting a resumed run must share."""
    if config.checkpoint_every is None and not config.resume:
        return None
    if out is None:
        raise ValueError("--checkpoint-every and --resume need an output folder")
    skip = {
        "progress",
        "resume",
        "checkpoint_every",
        "eval_particles",
        "gap_rows",
        "gap_steps",
        "arviz",
        "arviz_draws",
        "num_processes",
    }
    meta = {
        key: list(value) if isinstance(value, tuple) else value
        for key, value in asdict(config).items()
        if key not in skip
    }
    if config.num_processes > 1:  # shards and minibatches depend on it (absent: 1 process)
        meta["world_size"] = config.num_processes
    return Checkpointing(Path(out) / "checkpoint.pt", config.checkpoint_every, config.resume, meta)


def fit(
    prepared: Prepared, out: Path | None = None, parallel: DataParallel | None = None
) -> RunResult | None:
    """Fit by SVI and by EM from the same initial parameters; return metrics and histories.
    With ``--checkpoint-every`` or ``--resume`` the SVI run checkpoints to ``out``. With
    ``parallel`` SVI trains on this rank's shard; only rank 0 goes on to EM and the evaluation,
    the others return ``None``."""
    config, data, kwargs = prepared.config, prepared.data, prepared.model_kwargs
    spec = MODELS[config.model]
    start = time.perf_counter()
    pyro.set_rng_seed(config.seed)  # networks are initialised from the global generator
    generator = torch.Generator().manual_seed(config.seed)
    sample = mapped.init_sample(data, generator)  # (<= INIT_ROWS, D): all rows of a small data set
    if config.model == "gmm":
        init = spec.module.init_params(sample, config.components, config.covariance_type, generator=generator)
    else:
        init = spec.module.init_params(sample, config.latent_dim, generator=generator)
    pyro.clear_param_store()
    num_data, obs_dim = data.shape
    lr = learning_rate(config)
    streamed = isinstance(data, mapped.MappedRows)
    guide = make_guide(
        config.model,
        config.guide,
        data=sample if streamed else data,
        init=init,
        size=config.components if config.model == "gmm" else config.latent_dim,
        hidden=config.hidden,
        model_kwargs=kwargs,
        scaling=prepared.moments.input_scaling(data.device, data.dtype) if streamed else None,
    )
    svi_result = fit_svi(
        spec.module.model,
        guide,
        data if parallel is None else data[slice(*parallel.shard(num_data))],
        num_steps=config.num_steps,
        batch_size=config.batch_size,
        lr=lr,
        num_particles=config.num_particles,
        seed=config.seed,
        progress=config.progress,
        checkpoint=checkpointing(config, out),
        parallel=parallel,
        init=init,
        **kwargs,
    )
    if parallel is not None and not parallel.is_root:
        return None
    svi_params = spec.module.current_params()
    em_result = spec.fit_em(
        data,
        init,
        max_iters=config.em_iters,
        tol=config.em_tol,
        dtype=torch.float64,
        progress=config.progress,
    )
    data64 = data.double()
    metrics = {
        "model": config.model,
        "guide": config.guide,
        "data": config.data,
        "preprocessing": prepared.preprocessing,
        "device": str(data.device),
        "dtype": config.dtype,
        "num_data": num_data,
        "obs_dim": obs_dim,
        **kwargs,
        "num_steps": config.num_steps,
        "batch_size": config.batch_size,
        "lr": lr,
        "num_particles": config.num_particles,
        "seed": config.seed,
        "elbo": svi_result.elbo,
        "elbo_per_datum": evaluate.elbo(
            spec.module.model, guide, data, num_particles=config.eval_particles, init=init, **kwargs
        )
        / num_data,
        "eval_particles": config.eval_particles,
        "log_likelihood_per_datum": float(evaluate.mean_log_likelihood(data64, svi_params.to(torch.float64))),
        "initial_log_likelihood_per_datum": float(em_result.log_likelihoods[0]),
        "em_log_likelihood_per_datum": float(em_result.log_likelihoods[-1]),
        "em_num_iters": em_result.num_iters,
        "em_converged": em_result.converged,
        "svi_seconds": svi_result.seconds,
        "em_seconds": em_result.seconds,
        "world_size": 1 if parallel is None else parallel.world_size,
        "stream": streamed,
    }
    if config.model == "ppca":
        metrics["closed_form_log_likelihood_per_datum"] = float(
            ppca_max_log_likelihood(prepared.moments, config.latent_dim)
        )
    if data.is_cuda:  # the GPU memory high-water mark of this process (rank 0's)
        metrics["cuda_max_memory_allocated_bytes"] = torch.cuda.max_memory_allocated(data.device)
    metrics["seconds"] = time.perf_counter() - start
    return RunResult(metrics, svi_result, em_result, svi_params, init, guide, prepared)


def arviz_payloads(
    model, guide, data: Tensor, *, latent: str, elbo_per_datum: Tensor, num_draws: int, **kwargs
):
    """``posterior.nc`` and ``posterior_summary.csv`` for ``--arviz`` (see gallery.report.arviz_export)."""
    from gallery.report import arviz_export

    dataset = arviz_export.export(
        model, guide, data, latent=latent, elbo_per_datum=elbo_per_datum, num_draws=num_draws, **kwargs
    )
    return {
        "posterior.nc": arviz_export.netcdf_bytes(dataset),
        "posterior_summary.csv": arviz_export.summary_csv(dataset),
    }


__all__ = ["DTYPES", "Prepared", "RunConfig", "RunResult", "arviz_payloads", "fit", "prepare"]
