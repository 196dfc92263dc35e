"""Sizes that cannot fit, refused before any computation with the estimate and the flag to change.

The estimate is a rough upper bound, in bytes, of what one run holds at once: the loss history
(``--num-steps``, and its copies for checkpoints and results), one step's samples and their
gradients (``--num-particles`` x the batch x the latent and observed dimensions, and the
networks' activations), the networks' weights with their gradients and Adam's two moments
(``--hidden``), and the data itself (``--data``; nothing for ``--stream``). It is compared with
the memory available: the device's free memory on CUDA, ``MemAvailable`` of ``/proc/meminfo``
on Linux, ``sysconf`` elsewhere; when none can be read the check is skipped. The flag named is
the one whose value, put back to its default, shrinks the estimate most. The evaluation is
drawn in bounded chunks, so ``--eval-particles`` costs time, not memory: its number of
(particle, row, dimension) terms is capped at ``MAX_EVAL_TERMS``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from gallery.app.config import RunConfig, TrainConfig, by_model

STEP_COPIES = 3  # the loss history on the device, on the host, and in a checkpoint
PER_SAMPLE = 8  # tensors autograd keeps per sampled value (samples, log-densities, residuals, grads)
PER_WEIGHT = 5  # a weight, its gradient, Adam's two moments, a checkpoint's copy
MAX_EVAL_TERMS = 10**13  # (particle, row, dimension) terms of the final evaluation: hours of arithmetic


def available_memory(device: torch.device, meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """Bytes free for this run on ``device``, or ``None`` if it cannot be read."""
    if device.type == "cuda":
        try:
            return torch.cuda.mem_get_info(device)[0]
        except (RuntimeError, AssertionError):
            return None
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def estimate(settings: dict, num_data: int, obs_dim: int, itemsize: int, in_memory: bool) -> dict[str, int]:
    """Bytes by part, from the flat settings ``num_steps``, ``num_particles``, ``batch_size``,
    ``hidden``, ``latent_dim``, ``components`` and ``model``."""
    rows = settings["batch_size"] or num_data
    latent, hidden = settings["latent_dim"], tuple(settings["hidden"])
    width = obs_dim + latent
    if settings["model"] == "gmm":
        width = settings["components"] * (obs_dim + 1)  # every component's residuals, per row
    encoder = (obs_dim, *hidden, 2 * latent)
    layers = [*zip(encoder, encoder[1:], strict=False)]
    if settings["model"] == "vae":
        decoder = (latent, *hidden, obs_dim)
        layers += zip(decoder, decoder[1:], strict=False)
    weights = sum(a * b + b for a, b in layers) if hidden or settings["model"] == "vae" else 0
    samples = settings["num_particles"] * rows
    return {
        "loss history": settings["num_steps"] * itemsize * STEP_COPIES,
        "samples": samples * (width + 2 * sum(hidden)) * itemsize * PER_SAMPLE,
        "weights": weights * itemsize * PER_WEIGHT,
        "data": num_data * obs_dim * itemsize * 2 if in_memory else 0,  # as read, and converted
    }


def check_resources(
    config: RunConfig,
    num_data: int,
    obs_dim: int,
    *,
    batch_size: int | None,
    device: torch.device,
    available: int | None = None,
) -> None:
    """Refuse a run whose :func:`estimate` exceeds the memory available, or whose evaluation
    would take more than ``MAX_EVAL_TERMS`` terms; the message names the flag to change."""
    particles = config.train.eval_particles or 0  # None: the vae's, settled within --eval-budget
    eval_terms = particles * num_data * (obs_dim + config.latent_dim)
    if eval_terms > MAX_EVAL_TERMS:
        raise ValueError(
            f"--eval-particles {config.train.eval_particles} asks for {eval_terms:.2g} (particle, row, "
            f"dimension) terms in the final evaluation, more than {MAX_EVAL_TERMS:.0e} "
            "(hours of arithmetic); lower --eval-particles"
        )
    available = available_memory(device) if available is None else available
    if available is None:
        return
    itemsize = config.torch_dtype.itemsize
    settings = {
        "model": config.model,
        "num_steps": config.train.num_steps,
        "num_particles": config.train.num_particles,
        "batch_size": batch_size,
        "hidden": config.hidden,
        "latent_dim": config.latent_dim,
        "components": config.components,
    }
    in_memory = not config.data.stream
    needed = sum(estimate(settings, num_data, obs_dim, itemsize, in_memory).values())
    if needed <= available:
        return
    defaults = {
        "num_steps": TrainConfig.num_steps,
        "num_particles": 1,
        "hidden": by_model(config.model, config.guide, config.vae.decoder)["hidden"],
        "batch_size": min(num_data, 128) if batch_size is not None else None,
    }
    shrunk = {
        flag: sum(estimate(settings | {flag: value}, num_data, obs_dim, itemsize, in_memory).values())
        for flag, value in defaults.items()
    }
    flag = min(shrunk, key=shrunk.get)
    if shrunk[flag] >= needed:  # none of the flags: the data alone is too large
        raise ValueError(
            f"the data ({num_data} x {obs_dim}) needs about {_size(needed)} of memory for this run, more "
            f"than the {_size(available)} available; pass --stream (a .npy read a minibatch at a time)"
        )
    value = ",".join(map(str, settings[flag])) if flag == "hidden" else settings[flag]
    raise ValueError(
        f"--{flag.replace('_', '-')} {value} needs about {_size(needed)} of memory, more than the "
        f"{_size(available)} available on {device}; lower --{flag.replace('_', '-')}"
    )


def _size(num_bytes: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if num_bytes < 1000:
            return f"{num_bytes:.3g} {unit}"
        num_bytes /= 1000
    return f"{num_bytes:.3g} EB"


__all__ = ["MAX_EVAL_TERMS", "available_memory", "check_resources", "estimate"]
