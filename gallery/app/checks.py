"""The checks on a run's settings that every model shares; each raises ``ValueError`` saying
what to change, before any computation."""

from __future__ import annotations

import math

import torch

from gallery.app.config import DTYPES, RunConfig
from gallery.app.threads import check_threads


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


def check_settings(config: RunConfig, counts: dict[str, int]) -> torch.device:
    """The dtype, the device, the step, particle and draw counts and the model's own ``counts``
    (by flag name with _, each at least 1), ``--checkpoint-every``, ``--lr`` and ``--threads``.
    Returns the device."""
    train = config.train
    if train.dtype not in DTYPES:
        raise ValueError(f"unknown dtype {train.dtype!r}; choose one of {', '.join(DTYPES)}")
    device = check_device(train.device)
    shared = {
        "num_steps": train.num_steps,
        "num_particles": train.num_particles,
        "arviz_draws": train.arviz_draws,
    }
    for name, value in {**shared, **counts}.items():
        if value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if config.flow_layers < 0:
        raise ValueError(f"--flow-layers must be at least 0, got {config.flow_layers}")
    if train.checkpoint_every is not None and train.checkpoint_every < 1:
        raise ValueError(f"--checkpoint-every must be at least 1, got {train.checkpoint_every}")
    if not (math.isfinite(train.lr) and train.lr > 0):
        raise ValueError(f"--lr must be a positive number, got {train.lr}")
    check_threads(train.threads)
    return device


def check_processes(
    config: RunConfig, num_data: int, keeps_q_per_datum: bool, batch_size: int | None
) -> None:
    """Refuse a ``--num-processes`` that cannot work, before any process starts: a guide with a q
    per data point, fewer rows than processes, or a per-process ``batch_size`` larger than the
    smallest shard."""
    num, device_name = config.train.num_processes, config.train.device
    if num < 1:
        raise ValueError(f"--num-processes must be at least 1, got {num}")
    if num == 1:
        return
    if keeps_q_per_datum:
        raise ValueError(
            f"--guide {config.guide} keeps a q for every data point, which cannot be split over {num} "
            "processes; use --guide amortised (one encoder for all rows) with --num-processes"
        )
    if num_data < num:
        raise ValueError(f"--num-processes {num} is more than the {num_data} rows of data")
    device = torch.device(device_name)
    if device.type == "cuda" and device.index is not None:
        raise ValueError(
            f"--device {device_name} with --num-processes: use --device cuda (process r takes GPU r)"
        )
    if device.type == "cuda" and num > torch.cuda.device_count():
        raise ValueError(
            f"--num-processes {num} with --device cuda needs a GPU per process; this machine has "
            f"{torch.cuda.device_count()}"
        )
    if batch_size is not None and batch_size > num_data // num:
        raise ValueError(
            f"--batch-size {batch_size} is per process and must be at most {num_data // num}, "
            f"the rows of the smallest of the {num} shards"
        )


def check_stream(config: RunConfig, keeps_q_per_datum: bool) -> None:
    """Refuse what ``--stream`` cannot do: every step reads a minibatch from the file, so it needs
    ``--batch-size`` and a guide with no q per data point; ``--arviz`` would draw every row's
    latent."""
    if config.train.batch_size is None:
        raise ValueError("--stream reads a minibatch at a time from the file: pass --batch-size")
    if keeps_q_per_datum:
        raise ValueError(
            f"--guide {config.guide} keeps a q for every one of the rows, which --stream cannot read a "
            "minibatch at a time; use --guide amortised (one encoder for all rows) or exact"
        )
    if config.train.arviz:
        raise ValueError("--arviz draws every row's latent, which --stream does not hold in memory; drop one")


__all__ = ["check_device", "check_processes", "check_settings", "check_stream"]
