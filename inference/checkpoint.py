"""Checkpoints of an SVI run that resume it exactly, stored as plain tensors and Python numbers.

A checkpoint holds the step, every parameter's unconstrained tensor by its param-store name, the
state dicts of the networks and of the optimiser and learning-rate schedule, the loss history,
and the random-number generators' states. It is written to a temporary file and renamed, and
read with ``torch.load(weights_only=True)``, which refuses any pickle that would build objects
other than tensors and plain containers (so a crafted file runs no code). Pyro's own
param-store state pickles constraint objects and would not load that way: the constraints are
rebuilt in code, by the model and guide's own first call, and only the values are copied in.
"""

from __future__ import annotations

import io
import pickle
import random
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from gallery.data.files import write_atomic
from inference.checkpoint_checks import check_archive, check_parts, check_state

FORMAT = "pyro-model-gallery/svi-checkpoint"
VERSION = 1


@dataclass(frozen=True)
class Checkpointing:
    """Save the SVI run's state to ``path`` every ``every`` steps and at the end; with ``resume``
    start from the state saved there. ``meta`` holds the settings a resumed run must match."""

    path: Path
    every: int | None = None
    resume: bool = False
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.every is not None and self.every < 1:
            raise ValueError(f"checkpoint every={self.every} must be at least 1 step")

    def due(self, steps_done: int, num_steps: int) -> bool:
        return self.every is not None and (steps_done % self.every == 0 or steps_done == num_steps)

    def load(self) -> dict:
        return load_checkpoint(self.path, meta=self.meta)

    def save(self, **state) -> None:
        save_checkpoint(self.path, meta=self.meta, **state)


def rng_state(device: torch.device) -> dict:
    """The states of torch's CPU (and ``device``'s CUDA) generator, Python's and NumPy's, as
    tensors and numbers."""
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def save_checkpoint(
    path: Path,
    *,
    step: int,
    meta: dict,
    params: dict[str, Tensor],
    modules: dict[str, nn.Module],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    losses: Tensor,
    device: torch.device,
    rank_rng: list[dict] | None = None,
) -> None:
    """Write the state after ``step`` completed steps to ``path``, atomically.

    :param meta: plain values that a resumed run must match (model, guide, sizes, settings).
    :param params: unconstrained parameter tensors by param-store name.
    :param losses: (step,) the loss history so far.
    :param rank_rng: for a data-parallel run, every rank's :func:`rng_state`, by rank.
    """
    state = {
        "format": FORMAT,
        "version": VERSION,
        "step": step,
        "meta": meta,
        "params": {name: tensor.detach().cpu().clone() for name, tensor in params.items()},
        "modules": {name: {k: v.cpu() for k, v in m.state_dict().items()} for name, m in modules.items()},
        "optimizer": _to_cpu(optimizer.state_dict()),
        "scheduler": scheduler.state_dict(),
        "losses": losses.detach().cpu().clone(),
        "rng": rng_state(device),
    }
    if rank_rng is not None:
        state["rank_rng"] = rank_rng
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_atomic(Path(path), buffer.getvalue())


def load_checkpoint(path: Path, *, meta: dict) -> dict:
    """Read and check a checkpoint; raises ``ValueError`` saying what is wrong with it.

    :param meta: this run's settings; each must equal the checkpoint's."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no checkpoint at {str(path)!r}; start the run without --resume")
    check_archive(path)  # every member's CRC, before any byte is unpickled
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if refused:
            raise ValueError(
                f"refusing to load {str(path)!r}: it holds objects other than tensors and plain values "
                f"(it would call {refused.group(1)}); only load checkpoints this gallery wrote"
            ) from None
        raise ValueError(
            f"{str(path)!r} is not a readable checkpoint (corrupt or truncated: not a weights-only pickle); "
            "delete it and restart the run, or resume from an intact copy"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError) as err:
        raise ValueError(
            f"{str(path)!r} is not a readable checkpoint (corrupt or truncated: {type(err).__name__}); "
            "delete it and restart the run, or resume from an intact copy"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not a checkpoint written by this gallery's SVI loop")
    if state.get("version") != VERSION:
        raise ValueError(
            f"{str(path)!r} is checkpoint format version {state.get('version')}; this gallery reads "
            f"version {VERSION}"
        )
    check_parts(state)
    saved = state["meta"]
    for key in sorted(set(saved) | set(meta)):
        if key == "data_fingerprint" and saved.get(key) != meta.get(key):
            raise ValueError(
                f"{str(path)!r} was written for other data ({_described(saved.get(key))}; this run's: "
                f"{_described(meta.get(key))}); resume on the same data or start a new --out"
            )
        if saved.get(key) != meta.get(key):
            raise ValueError(
                f"{str(path)!r} was written with {key}={saved.get(key)!r}, this run has "
                f"{key}={meta.get(key)!r}; resume with the same settings or start a new --out"
            )
    return state


def restore(
    state: dict,
    *,
    params: dict[str, Tensor],
    modules: dict[str, nn.Module],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
    num_steps: int | None = None,
    loss_dtype: torch.dtype | None = None,
) -> None:
    """Copy a loaded checkpoint into the live parameters (created by a first call of model and
    guide, with their constraints), networks, optimiser, schedule and generators, once every
    part has been checked against them (:func:`~inference.checkpoint_checks.check_state`)."""
    live = dict(params=params, modules=modules, optimizer=optimizer, scheduler=scheduler, device=device)
    check_state(state, **live, num_steps=num_steps, loss_dtype=loss_dtype)
    saved = state["params"]
    with torch.no_grad():
        for name, module in modules.items():
            module.load_state_dict(state["modules"][name])
        for name, tensor in params.items():
            tensor.copy_(saved[name])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"], device)


def _described(fingerprint: object) -> str:
    if not isinstance(fingerprint, dict):
        return "none recorded"
    digest = str(fingerprint.get("sha256", ""))[:12]
    return f"shape {tuple(fingerprint.get('shape', ()))} {fingerprint.get('dtype')}, sha256 {digest}..."


def _to_cpu(value):
    if isinstance(value, Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to_cpu(v) for v in value)
    return value


__all__ = [
    "Checkpointing",
    "FORMAT",
    "VERSION",
    "load_checkpoint",
    "restore",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]
