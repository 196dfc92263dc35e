"""What passes between the stages of the ``run`` pipeline (:mod:`gallery.app.pipeline`):
prepared inputs, what SVI trains, what a job evaluated, and the result."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import Tensor

from gallery.app.config import RunConfig
from gallery.app.metrics import Baseline, Evaluation
from gallery.data.mapped import MappedRows, Moments
from inference.svi import SVIResult


@dataclass(frozen=True)
class Prepared:
    """A run's checked inputs."""

    config: RunConfig
    data: Tensor | MappedRows  # (N, D) training rows on the device in the dtype, or on disk (--stream)
    labels: Tensor | None  # (N,)
    preprocessing: str = "none"  # what was done to the data, recorded in metrics.json
    model_kwargs: dict = field(default_factory=dict)  # the model's sizes: num_components, latent_dim
    moments: Moments | None = None  # EM models: of the data as the models see it, float64, CPU
    heldout: Tensor | None = None  # the VAE: (M, D) held-out rows, None with --heldout-fraction 0
    heldout_labels: Tensor | None = None
    image_shape: tuple[int, int] | None = None


@dataclass(frozen=True)
class Setup:
    """What SVI trains: ``model`` and ``guide`` with ``model_kwargs`` (sizes and ``init``, or the
    ``decoder``), on minibatches of ``batch_size`` rows per process."""

    model: Callable
    guide: Callable
    model_kwargs: dict
    batch_size: int | None
    latent: str  # "c" or "z", the local latent drawn for --arviz
    init: object = None  # EM models: the starting parameters that SVI and EM share
    initial: object = None  # the VAE: the importance estimate at the start (rank 0)
    restarts: object = None  # EM models with --restarts > 1: em_job.Restarts, EM from every start
    eval_seconds: float = 0.0  # the VAE: of the importance estimate at the start
    watch: object = None  # the VAE: vae_watch.DivergenceWatch, its divergence_hint for fit_svi


@dataclass(frozen=True)
class Evaluated:
    """The metrics' pieces a job computes after SVI, and what it fitted besides (EM's)."""

    sizes: dict  # num_data, (num_heldout,) obs_dim, then the model's settings
    evaluation: Evaluation
    baseline: Baseline
    em_seconds: float | None
    extras: dict
    fitted: object = None  # EM models: EMFit (the SVI and EM parameters, EM's history)
    trailing: dict = field(default_factory=dict)  # keys after "seconds": the VAE's evaluation share


@dataclass(frozen=True)
class RunResult:
    metrics: dict
    svi: SVIResult
    prepared: Prepared
    setup: Setup
    fitted: object = None

    @property
    def guide(self) -> Callable:
        return self.setup.guide


def elbo_trace(result: RunResult) -> Tensor:
    """(num_steps,) SVI's ELBO estimate per datum at every step, float64, CPU."""
    return -result.svi.losses.double() / result.metrics["num_data"]


__all__ = ["Evaluated", "Prepared", "RunResult", "Setup", "elbo_trace"]
