"""The ``run`` job, one pipeline for every model: prepare -> fit -> evaluate -> render.

The model-specific part is a *job* (a module with five functions, :data:`JOBS`):

- ``prepare(config) -> Prepared``: load and check everything, before any computation;
- ``setup(prepared, parallel) -> Setup``: model, guide, their keyword arguments, built the same
  way on every process from the seed;
- ``evaluate(prepared, setup, svi) -> Evaluated``: after SVI, on rank 0: the metrics' pieces;
- ``files(result) -> dict``: the job's own files (parameters, training curve, figures);
- ``summary(metrics) -> str``: the table printed at the end.

:mod:`gallery.app.em_job` is the mixture's, factor analysis' and PPCA's (an exact EM baseline
from the same start, exact log p(x), PPCA's closed form); :mod:`gallery.app.vae_job` the
VAE's (a held-out split, the importance-weighted log p(x), the inference gaps).

With ``parallel`` (``--num-processes W`` or ``torchrun``) every process prepares the same
data and builds the same guide, trains by SVI on its shard of the rows
(:mod:`inference.distributed`), and only rank 0 evaluates; the others return ``None``.
"""

from __future__ import annotations

import time
from pathlib import Path

from gallery.app import em_job, vae_job
from gallery.app.config import RunConfig, flat
from gallery.app.metrics import Header, Training, metrics_dict
from gallery.app.stages import Evaluated, Prepared, RunResult, Setup, elbo_trace
from gallery.app.threads import using_threads
from gallery.data import Dataset
from gallery.data.fingerprint import fingerprint
from inference.checkpoint import Checkpointing
from inference.distributed import DataParallel
from inference.interrupt import between_steps
from inference.svi import fit_svi

JOBS = {"em": em_job, "vae": vae_job}  # the model-specific part of a run, by kind


def job(config: RunConfig):
    """The job of ``config.model``: the VAE's, or the EM models'."""
    return JOBS["vae" if config.is_vae else "em"]


def prepare(config: RunConfig, dataset: Dataset | None = None) -> Prepared:
    """Load and check everything; raises ``ValueError`` with what to change. ``dataset``: rows
    already in memory (:func:`gallery.fit` on a tensor or array), used in place of loading
    ``config.data.name``."""
    return job(config).prepare(config, dataset)


def fit(
    prepared: Prepared, out: Path | None = None, parallel: DataParallel | None = None
) -> RunResult | None:
    """Fit by SVI (checkpointing to ``out`` when asked), then evaluate on rank 0; the other
    ranks of ``parallel`` return ``None``. All of it with ``--threads`` CPU threads."""
    with using_threads(prepared.config.train.threads) as threads:
        return _fit(prepared, out, parallel, threads)


def _fit(
    prepared: Prepared, out: Path | None, parallel: DataParallel | None, threads: int
) -> RunResult | None:
    config, the_job = prepared.config, job(prepared.config)
    start = time.perf_counter()
    checkpoint = checkpointing(config, out, prepared.data)
    setup = the_job.setup(prepared, parallel)
    data = prepared.data
    train = config.train
    svi = between_steps(fit_svi)(  # a signal stops SVI between two steps
        setup.model,
        setup.guide,
        data if parallel is None else data[slice(*parallel.shard(len(data)))],
        num_steps=train.num_steps,
        batch_size=setup.batch_size,
        lr=train.lr,
        num_particles=train.num_particles,
        objective=train.objective,
        seed=train.seed,
        progress=train.progress,
        checkpoint=checkpoint,
        parallel=parallel,
        compile=train.compile,
        divergence_hint=None if setup.watch is None else setup.watch.hint,
        **setup.model_kwargs,
    )
    if setup.watch is not None:
        setup.watch.remove()
    if parallel is not None and not parallel.is_root:
        return None
    done = the_job.evaluate(prepared, setup, svi)
    header = Header(
        config.model, config.guide, config.data.name, prepared.preprocessing, str(data.device), train.dtype
    )
    training = Training(
        train.num_steps, setup.batch_size, train.lr, train.num_particles, train.seed, svi.elbo
    )
    metrics = metrics_dict(
        header,
        done.sizes,
        training,
        done.evaluation,
        done.baseline,
        svi_seconds=svi.seconds,
        em_seconds=done.em_seconds,
        world_size=1 if parallel is None else parallel.world_size,
        extras=done.extras,
        seconds=time.perf_counter() - start,
        threads=threads,
        compiled={"compile": train.compile, "compiled": svi.compiled, "compile_seconds": svi.compile_seconds},
    )
    metrics |= done.trailing
    if "eval_seconds" in done.trailing:
        metrics["eval_seconds_fraction"] = done.trailing["eval_seconds"] / metrics["seconds"]
    return RunResult(metrics, svi, prepared, setup, done.fitted)


CHECKPOINT_FREE = {  # settings a resumed run may change
    "progress",
    "resume",
    "checkpoint_every",
    "eval_particles",
    "gap_rows",
    "gap_steps",
    "eval_rows",
    "eval_budget",
    "arviz",
    "arviz_draws",
    "num_processes",
    "threads",
    "compile",
}


def checkpointing(config: RunConfig, out: Path | None, data=None) -> Checkpointing | None:
    """``out/checkpoint.pt`` every ``--checkpoint-every`` steps, or resumed with ``--resume``; the
    checkpoint records every setting a resumed run must share, and a fingerprint of ``data``
    (all of it, before it is split over processes; :func:`gallery.data.fingerprint.fingerprint`)."""
    train = config.train
    if train.checkpoint_every is None and not train.resume:
        return None
    if out is None:
        raise ValueError("--checkpoint-every and --resume need an output folder")
    meta = {
        key: list(value) if isinstance(value, tuple) else value
        for key, value in flat(config).items()
        if key not in CHECKPOINT_FREE
    }
    if data is not None:
        meta["data_fingerprint"] = fingerprint(data)
    if train.num_processes > 1:  # shards and minibatches depend on it (absent: 1 process)
        meta["world_size"] = train.num_processes
    return Checkpointing(Path(out) / "checkpoint.pt", train.checkpoint_every, train.resume, meta)


def render(result: RunResult) -> dict[str, bytes]:
    """Every output file as bytes, made before anything is written: ``metrics.json``, the job's
    files, and with ``--arviz`` ``posterior.nc`` and ``posterior_summary.csv``."""
    from gallery.report.outputs import metrics_bytes

    payloads = {"metrics.json": metrics_bytes(result.metrics), **job(result.prepared.config).files(result)}
    if result.prepared.config.train.arviz:
        payloads |= arviz_payloads(result)
    return payloads


def summary(result: RunResult) -> str:
    return job(result.prepared.config).summary(result.metrics)


def arviz_payloads(result: RunResult) -> dict[str, bytes]:
    """``posterior.nc`` and ``posterior_summary.csv`` (see :mod:`gallery.report.arviz_export`)."""
    from gallery.report import arviz_export

    setup = result.setup
    dataset = arviz_export.export(
        setup.model,
        setup.guide,
        result.prepared.data,
        latent=setup.latent,
        elbo_per_datum=elbo_trace(result),
        num_draws=result.prepared.config.train.arviz_draws,
        **setup.model_kwargs,
    )
    return {
        "posterior.nc": arviz_export.netcdf_bytes(dataset),
        "posterior_summary.csv": arviz_export.summary_csv(dataset),
    }


__all__ = [
    "JOBS",
    "Evaluated",
    "Prepared",
    "RunResult",
    "Setup",
    "checkpointing",
    "elbo_trace",
    "fit",
    "prepare",
    "render",
    "summary",
]
