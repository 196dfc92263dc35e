"""The one schema of ``metrics.json``: every run's metrics built here from typed pieces, in
one order for every model (the VAE adds ``num_heldout`` to the sizes, each job its extras)."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class Header:
    model: str
    guide: str
    data: str
    preprocessing: str  # what was done to the data, e.g. "standardize"
    device: str
    dtype: str


@dataclass(frozen=True)
class Training:
    num_steps: int
    batch_size: int | None
    lr: float
    num_particles: int
    seed: int
    elbo: str  # the estimator: Trace_ELBO or TraceEnum_ELBO


@dataclass(frozen=True)
class Evaluation:
    """Nats per datum at the SVI fit, on the training rows."""

    elbo_per_datum: float
    eval_particles: int
    log_likelihood_per_datum: float  # exact, or importance-weighted (the VAE)
    initial_log_likelihood_per_datum: float  # at the starting parameters


@dataclass(frozen=True)
class Baseline:
    """Exact EM from the same start; ``None`` where there is none (the VAE)."""

    em_log_likelihood_per_datum: float | None = None
    em_num_iters: int | None = None
    em_converged: bool | None = None


def _items(piece) -> dict:
    return {f.name: getattr(piece, f.name) for f in fields(piece)}


def metrics_dict(
    header: Header,
    sizes: dict,
    training: Training,
    evaluation: Evaluation,
    baseline: Baseline,
    *,
    svi_seconds: float,
    em_seconds: float | None,
    world_size: int,
    extras: dict,
    seconds: float,
    threads: int,
) -> dict:
    """``header, sizes (num_data, ..., the model's settings), training, evaluation, baseline,
    svi_seconds, em_seconds, world_size, extras, seconds, threads``: the keys of
    ``metrics.json`` (``threads``: torch's CPU threads during the run, ``--threads``)."""
    return {
        **_items(header),
        **sizes,
        **_items(training),
        **_items(evaluation),
        **_items(baseline),
        "svi_seconds": svi_seconds,
        "em_seconds": em_seconds,
        "world_size": world_size,
        **extras,
        "seconds": seconds,
        "threads": threads,
    }


__all__ = ["Baseline", "Evaluation", "Header", "Training", "metrics_dict"]
