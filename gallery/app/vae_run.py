"""The ``run vae`` job: split the data, fit the VAE by SVI (with checkpoints), and evaluate the
ELBO, the importance-weighted log p(x) and the inference gaps on held-out data.

Checks on the input happen in :func:`prepare_vae`, before any computation. With
``--num-processes W`` (or under ``torchrun``) every process splits the data and builds the
networks the same way from the seed and trains on its shard of the training rows
(:mod:`inference.distributed`); rank 0 alone evaluates, on all of them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pyro
import torch
from pyro import poutine
from torch import Tensor

import guides
from gallery.app.runner import (
    DTYPES,
    RunConfig,
    check_processes,
    check_settings,
    checkpointing,
    learning_rate,
)
from gallery.data import datasets
from gallery.models import linear_gaussian, vae
from inference.distributed import DataParallel
from inference.em import ppca_max_log_likelihood
from inference.gaps import best_local_estimate, inference_gaps
from inference.importance import importance_estimate
from inference.svi import SVIResult, fit_svi

VAE_GUIDES = ("amortised", "amortised-full", "mean-field")
DEFAULT_HIDDEN = (128,)
DEFAULT_BATCH_SIZE = 128


@dataclass(frozen=True)
class PreparedVAE:
    config: RunConfig
    train: Tensor  # (N, d) on the device
    heldout: Tensor | None  # (M, d), or None with --heldout-fraction 0
    train_labels: Tensor | None
    heldout_labels: Tensor | None
    image_shape: tuple[int, int] | None
    preprocessing: str


def prepare_vae(config: RunConfig) -> PreparedVAE:
    """Load, scale, check and split the data; raises ``ValueError`` with what to change."""
    if config.stream:
        raise ValueError(
            "--stream is for gmm, factor-analysis and ppca; the vae reads its data into memory "
            "(drop --stream)"
        )
    if config.guide not in VAE_GUIDES:
        raise ValueError(
            f"guide {config.guide!r} does not fit the vae; choose one of {', '.join(VAE_GUIDES)}"
        )
    dtype_name = "float32" if config.dtype is None else config.dtype
    device = check_settings(replace(config, dtype=dtype_name), ("latent_dim", "gap_steps"))
    dtype = DTYPES[dtype_name]
    if config.eval_particles is not None and config.eval_particles < 1:
        raise ValueError(f"--eval-particles must be at least 1, got {config.eval_particles}")
    if config.gap_rows < 0:
        raise ValueError(f"--gap-rows must be at least 0, got {config.gap_rows}")
    if not 0 <= config.heldout_fraction < 1:
        raise ValueError(f"--heldout-fraction must be in [0, 1), got {config.heldout_fraction}")
    if config.noise_variance is not None and not (
        math.isfinite(config.noise_variance) and config.noise_variance > 0
    ):
        raise ValueError(f"--noise-variance must be a positive number, got {config.noise_variance}")
    if config.likelihood not in vae.LIKELIHOODS:
        raise ValueError(
            f"unknown likelihood {config.likelihood!r}; choose one of {', '.join(vae.LIKELIHOODS)}"
        )
    if config.decoder not in ("mlp", "linear"):
        raise ValueError(f"unknown decoder {config.decoder!r}; choose mlp or linear")
    if config.activation not in vae.ACTIVATIONS:
        raise ValueError(
            f"unknown activation {config.activation!r}; choose one of {', '.join(vae.ACTIVATIONS)}"
        )
    if config.likelihood == "bernoulli" and config.noise_variance is not None:
        raise ValueError(
            "--noise-variance is for the Gaussian likelihood; drop it with --likelihood bernoulli"
        )
    if config.data == "mnist":
        if config.data_dir is None:
            raise ValueError("--data mnist needs --data-dir DIR, a folder with MNIST in torchvision's layout")
        dataset = datasets.load_mnist(config.data_dir)
    else:
        dataset = datasets.load(config.data)
    data, steps = dataset.data, []
    if config.data in ("digits", "mnist"):
        top = 16.0 if config.data == "digits" else 255.0
        data = data / top
        steps.append(f"scale-to-unit(/{top:g})")
    if config.binarize:
        data = (data > 0.5).to(data.dtype)
        steps.append("binarize(>0.5)")
    if config.likelihood == "bernoulli" and not bool(((data == 0) | (data == 1)).all()):
        raise ValueError(
            "--likelihood bernoulli needs binary data (0 or 1); pass --binarize to threshold values at 0.5, "
            "or use --likelihood gaussian"
        )
    num_data, obs_dim = data.shape
    if config.latent_dim >= obs_dim and config.decoder == "linear":
        raise ValueError(
            f"--latent-dim {config.latent_dim} must be smaller than the data dimension {obs_dim}"
        )
    perm = torch.randperm(num_data, generator=torch.Generator().manual_seed(config.seed))
    num_heldout = round(config.heldout_fraction * num_data)
    if config.heldout_fraction > 0 and num_heldout == 0:
        raise ValueError(f"--heldout-fraction {config.heldout_fraction} of {num_data} rows holds out no row")
    if num_data - num_heldout < 2:
        raise ValueError(f"only {num_data - num_heldout} training rows; lower --heldout-fraction or add data")
    train_rows, heldout_rows = perm[num_heldout:], perm[:num_heldout]
    batch_size = config.batch_size if config.batch_size is not None else DEFAULT_BATCH_SIZE
    if not 1 <= batch_size:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    check_processes(replace(config, batch_size=None), num_data - num_heldout, config.guide == "mean-field")
    labels = dataset.labels
    to = dict(device=device, dtype=dtype)
    return PreparedVAE(
        config,
        data[train_rows].to(**to),
        data[heldout_rows].to(**to) if num_heldout else None,
        None if labels is None else labels[train_rows],
        None if labels is None or not num_heldout else labels[heldout_rows],
        dataset.image_shape,
        "+".join(steps) or "none",
    )


def build_decoder(config: RunConfig, train: Tensor) -> vae.Decoder:
    """The decoder, its output bias at the data mean (Gaussian) or its logit (Bernoulli)."""
    hidden = () if config.decoder == "linear" else (config.hidden or DEFAULT_HIDDEN)
    decoder = vae.Decoder(
        config.latent_dim,
        train.shape[1],
        hidden=hidden,
        activation=config.activation,
        likelihood=config.likelihood,
        noise_variance=config.noise_variance,
        init_noise_variance=float(train.var(0, correction=0).mean().clamp_min(1e-6)),
    ).to(device=train.device, dtype=train.dtype)
    mean = train.mean(0)
    with torch.no_grad():
        bias = mean if config.likelihood == "gaussian" else torch.logit(mean.clamp(1e-3, 1 - 1e-3))
        decoder.net[-1].bias.copy_(bias)
    return decoder


def build_guide(config: RunConfig, train: Tensor):
    """The amortised encoder (affine with ``--decoder linear``), or per-datapoint tables."""
    if config.guide == "mean-field":
        return guides.MeanFieldNormal(train.shape[0], config.latent_dim)
    hidden = () if config.decoder == "linear" else (config.hidden or DEFAULT_HIDDEN)
    covariance = "full" if config.guide == "amortised-full" else "diag"
    encoder = guides.AmortisedNormal(
        train.shape[1],
        config.latent_dim,
        hidden=hidden,
        covariance=covariance,
        activation=vae.ACTIVATIONS[config.activation],
        **guides.input_scaling(train),
    )
    return encoder.to(device=train.device, dtype=train.dtype)


@dataclass(frozen=True)
class VAERunResult:
    metrics: dict
    svi: SVIResult
    decoder: vae.Decoder
    guide: object
    prepared: PreparedVAE


def fit_vae(prepared: PreparedVAE, out: Path, parallel: DataParallel | None = None) -> VAERunResult | None:
    """Fit by SVI (checkpointing to ``out/checkpoint.pt`` when asked), then evaluate. With
    ``parallel`` SVI trains on this rank's shard of the training rows (``--batch-size`` rows per
    process); rank 0 evaluates the initial networks while the others wait in the first
    broadcast, and the trained ones after SVI; the other ranks return ``None``."""
    config, train, heldout = prepared.config, prepared.train, prepared.heldout
    is_root = parallel is None or parallel.is_root
    shard = train if parallel is None else train[slice(*parallel.shard(train.shape[0]))]
    start = time.perf_counter()
    pyro.clear_param_store()
    pyro.set_rng_seed(config.seed)  # the networks are initialised from the global generator
    decoder = build_decoder(config, train)
    guide = build_guide(config, train)
    lr = learning_rate(config)
    num_particles_eval = 1000 if config.eval_particles is None else config.eval_particles
    batch_size = min(config.batch_size or DEFAULT_BATCH_SIZE, shard.shape[0])
    checkpoint = checkpointing(config, out)
    if is_root:
        initial = importance_estimate(
            vae.model, guide, train, num_samples=num_particles_eval, decoder=decoder
        )
    svi = fit_svi(
        vae.model,
        guide,
        shard,
        num_steps=config.num_steps,
        batch_size=batch_size,
        lr=lr,
        num_particles=config.num_particles,
        seed=config.seed,
        progress=config.progress,
        checkpoint=checkpoint,
        parallel=parallel,
        decoder=decoder,
    )
    if not is_root:
        return None
    trained = importance_estimate(vae.model, guide, train, num_samples=num_particles_eval, decoder=decoder)
    metrics = {
        "model": "vae",
        "guide": config.guide,
        "data": config.data,
        "preprocessing": prepared.preprocessing,
        "device": str(train.device),
        "dtype": str(train.dtype).removeprefix("torch."),
        "num_data": train.shape[0],
        "num_heldout": 0 if heldout is None else heldout.shape[0],
        "obs_dim": train.shape[1],
        "latent_dim": config.latent_dim,
        "decoder": config.decoder,
        "hidden": list(decoder_hidden(decoder)),
        "activation": config.activation,
        "likelihood": config.likelihood,
        "noise_variance": float(decoder.noise_variance().detach())
        if config.likelihood == "gaussian"
        else None,
        "noise_variance_learned": config.likelihood == "gaussian" and config.noise_variance is None,
        "num_steps": config.num_steps,
        "batch_size": batch_size,
        "lr": lr,
        "num_particles": config.num_particles,
        "seed": config.seed,
        "elbo": svi.elbo,
        "elbo_per_datum": float(trained.elbo.mean()),
        "eval_particles": num_particles_eval,
        "log_likelihood_per_datum": float(trained.log_likelihood.mean()),
        "initial_log_likelihood_per_datum": float(initial.log_likelihood.mean()),
        "em_log_likelihood_per_datum": None,
        "em_num_iters": None,
        "em_converged": None,
        "svi_seconds": svi.seconds,
        "em_seconds": None,
        "world_size": 1 if parallel is None else parallel.world_size,
    }
    if decoder.linear and config.likelihood == "gaussian":  # PPCA: exact answers exist
        ppca_params = vae.as_ppca(decoder).to(dtype=torch.float64)
        metrics["exact_log_likelihood_per_datum"] = float(
            linear_gaussian.log_likelihood(train.double(), ppca_params).mean()
        )
        metrics["closed_form_log_likelihood_per_datum"] = float(
            ppca_max_log_likelihood(train.double(), config.latent_dim)
        )
    metrics.update(heldout_metrics(config, guide, decoder, heldout, num_particles_eval))
    metrics["seconds"] = time.perf_counter() - start
    return VAERunResult(metrics, svi, decoder, guide, prepared)


def decoder_hidden(decoder: vae.Decoder) -> tuple[int, ...]:
    return tuple(layer.out_features for layer in decoder.net[:-1] if isinstance(layer, torch.nn.Linear))


def heldout_metrics(config, guide, decoder, heldout: Tensor | None, num_samples: int) -> dict:
    """The held-out ELBO and importance-weighted log p(x), and the inference gaps on the first
    ``--gap-rows`` held-out rows, with the decoder fixed. ``None`` without held-out data."""
    keys = (
        "heldout_elbo_per_datum",
        "heldout_log_likelihood_per_datum",
        "gap_rows",
        "approximation_gap_per_datum",
        "amortisation_gap_per_datum",
    )
    result = dict.fromkeys(keys)
    result["heldout_eval_particles"] = num_samples if heldout is not None else None
    if heldout is None:
        return result
    if isinstance(guide, guides.MeanFieldNormal):  # no encoder: fit q per held-out row
        estimate = best_local_estimate(
            vae.model,
            heldout,
            latent_dim=config.latent_dim,
            num_steps=config.gap_steps,
            num_samples=num_samples,
            seed=config.seed,
            progress=config.progress,
            decoder=decoder,
        )
    else:
        fixed_model = poutine.block(vae.model, hide_types=["param"])
        estimate = importance_estimate(fixed_model, guide, heldout, num_samples=num_samples, decoder=decoder)
    result["heldout_elbo_per_datum"] = float(estimate.elbo.mean())
    result["heldout_log_likelihood_per_datum"] = float(estimate.log_likelihood.mean())
    if isinstance(guide, guides.AmortisedNormal) and config.gap_rows > 0:
        rows = heldout[: config.gap_rows]
        gaps = inference_gaps(
            vae.model,
            guide,
            rows,
            num_steps=config.gap_steps,
            num_samples=num_samples,
            seed=config.seed,
            progress=config.progress,
            decoder=decoder,
        )
        result["gap_rows"] = gaps.num_data
        result["approximation_gap_per_datum"] = gaps.approximation
        result["amortisation_gap_per_datum"] = gaps.amortisation
    return result


__all__ = ["PreparedVAE", "VAERunResult", "VAE_GUIDES", "fit_vae", "prepare_vae"]
