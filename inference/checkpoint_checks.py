"""Checks of a loaded checkpoint against the live run, before anything is restored.

A checkpoint that loads is not yet one that fits: a crafted or damaged file can hold an
optimiser state smaller than its parameter (torch's fused Adam then reads past the end and
the process dies), a parameter of another dtype, a step outside the run, or generator states
that are not states. :func:`check_archive` verifies every stored member's CRC before
``torch.load`` (a flipped byte in a tensor would otherwise load as other numbers), and
:func:`check_state` compares every part of the state with what the live run built; each raises
``ValueError`` in one line naming the part.
"""

from __future__ import annotations

import random
import zipfile
from pathlib import Path

import torch
from torch import Tensor, nn

PARTS = {  # key -> the type its value must have
    "step": int,
    "meta": dict,
    "params": dict,
    "modules": dict,
    "optimizer": dict,
    "scheduler": dict,
    "losses": Tensor,
    "rng": dict,
}
MT_WORDS = 624  # the Mersenne Twister's state: 624 32-bit words and a position


def check_archive(path: Path) -> None:
    """Refuse a file whose zip archive is damaged: a member whose bytes fail their CRC-32."""
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        raise ValueError(
            f"{str(path)!r} is not a readable checkpoint (corrupt or truncated: {type(err).__name__}); "
            "delete it and restart the run, or resume from an intact copy"
        ) from None
    if damaged is not None:
        raise ValueError(
            f"{str(path)!r} is corrupt: the stored bytes of {damaged!r} fail their checksum; delete it "
            "and restart the run, or resume from an intact copy"
        )


def check_parts(state: dict) -> None:
    """Every part of a checkpoint is present, with its type."""
    for key, kind in PARTS.items():
        if key not in state:
            raise ValueError(f"the checkpoint has no {key!r}; it is damaged or not from this gallery")
        value = state[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ValueError(
                f"the checkpoint's {key!r} is a {type(value).__name__}, not a {kind.__name__}; it is damaged"
            )


def check_state(
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
    """Refuse a checkpoint that does not fit the live run, before anything is restored."""
    check_parts(state)
    step = state["step"]
    if step < 0:
        raise ValueError(f"the checkpoint is at step {step}, which no run reaches; it is damaged")
    if num_steps is not None and step > num_steps:
        raise ValueError(
            f"the checkpoint is at step {step}, past --num-steps {num_steps}; resume with --num-steps {step} "
            "or more"
        )
    losses = state["losses"]
    if losses.dim() != 1 or len(losses) != step:
        raise ValueError(
            f"the checkpoint's loss history has shape {tuple(losses.shape)}, not ({step},) for step {step}"
        )
    if loss_dtype is not None and losses.dtype != loss_dtype:
        raise ValueError(f"the checkpoint's loss history is {losses.dtype}, this run's {loss_dtype}")
    _check_params(state["params"], params)
    _check_modules(state["modules"], modules)
    _check_optimizer(state["optimizer"], optimizer)
    _check_scheduler(state["scheduler"], scheduler, step)
    check_rng(state["rng"], device)
    for rank, rng in enumerate(state.get("rank_rng") or []):
        check_rng(rng, device, f" of rank {rank}")


def _same_tensor(what: str, saved: object, live: Tensor) -> None:
    if not isinstance(saved, Tensor):
        raise ValueError(f"{what} is a {type(saved).__name__} in the checkpoint, not a tensor")
    if saved.layout != torch.strided or saved.is_meta:
        raise ValueError(f"{what} is a {saved.layout} tensor in the checkpoint; it is damaged")
    if saved.shape != live.shape:
        raise ValueError(
            f"{what} has shape {tuple(saved.shape)} in the checkpoint but {tuple(live.shape)} here; it is "
            "from a different model size"
        )
    if saved.dtype != live.dtype:
        raise ValueError(
            f"{what} is {saved.dtype} in the checkpoint but {live.dtype} here; resume with --dtype as saved"
        )


def _check_params(saved: dict, params: dict[str, Tensor]) -> None:
    if set(saved) != set(params):
        missing, extra = sorted(set(params) - set(saved)), sorted(set(saved) - set(params))
        raise ValueError(
            f"the checkpoint's parameters differ from this model and guide's (missing: {missing[:3]}, "
            f"unexpected: {extra[:3]}); it is from a different model or guide"
        )
    for name, tensor in params.items():
        _same_tensor(f"parameter {name!r}", saved[name], tensor)


def _check_modules(saved: dict, modules: dict[str, nn.Module]) -> None:
    for role, module in modules.items():
        entries = saved.get(role)
        live = module.state_dict()
        if not isinstance(entries, dict) or set(entries) != set(live):
            raise ValueError(
                f"the checkpoint's {role} network has other weights than this run's; it is damaged"
            )
        for key, tensor in live.items():
            _same_tensor(f"{role} weight {key!r}", entries[key], tensor)


def _check_optimizer(saved: dict, optimizer: torch.optim.Optimizer) -> None:
    live = optimizer.state_dict()
    groups, states = saved.get("param_groups"), saved.get("state")
    if (
        not isinstance(groups, list)
        or not isinstance(states, dict)
        or len(groups) != len(live["param_groups"])
    ):
        raise ValueError(
            "the checkpoint's optimiser state is not Adam's over these parameters; it is damaged"
        )
    tensors = [p for group in optimizer.param_groups for p in group["params"]]
    for group, live_group in zip(groups, live["param_groups"], strict=True):
        if (
            not isinstance(group, dict)
            or set(group) != set(live_group)
            or group["params"] != live_group["params"]
        ):
            raise ValueError("the checkpoint's optimiser groups differ from this run's; it is damaged")
        for key, value in live_group.items():
            if key != "params" and type(group[key]) is not type(value):
                raise ValueError(
                    f"the checkpoint's optimiser setting {key!r} is a {type(group[key]).__name__}"
                )
    for index, entry in states.items():
        if not isinstance(index, int) or not 0 <= index < len(tensors) or not isinstance(entry, dict):
            raise ValueError(
                f"the checkpoint's optimiser holds a state for parameter {index!r}, which this run lacks"
            )
        if set(entry) != {"step", "exp_avg", "exp_avg_sq"}:
            raise ValueError(f"the checkpoint's optimiser state {index} has {sorted(entry)}, not Adam's")
        step = entry["step"]
        if not isinstance(step, Tensor) or step.shape != () or not step.is_floating_point():
            raise ValueError(f"the checkpoint's optimiser step of parameter {index} is not a scalar")
        for key in ("exp_avg", "exp_avg_sq"):
            _same_tensor(f"the optimiser's {key} of parameter {index}", entry[key], tensors[index].detach())


def _check_scheduler(saved: dict, scheduler: torch.optim.lr_scheduler.LRScheduler, step: int) -> None:
    live = scheduler.state_dict()
    if set(saved) != set(live):
        raise ValueError("the checkpoint's learning-rate schedule is not this run's; it is damaged")
    if saved["last_epoch"] != step or not isinstance(saved["last_epoch"], int):
        raise ValueError(
            f"the checkpoint's learning-rate schedule is at step {saved['last_epoch']!r}, its run at {step}"
        )
    for key in ("base_lrs", "_last_lr"):
        value = saved[key]
        if not isinstance(value, list) or len(value) != len(live[key]):
            raise ValueError(f"the checkpoint's learning rates {key!r} do not fit this run's optimiser")
        if not all(isinstance(v, float) and v > 0 for v in value):
            raise ValueError(f"the checkpoint's learning rates {key!r} are not positive numbers")


def check_rng(state: object, device: torch.device, whose: str = "") -> None:
    """Refuse generator states that torch, NumPy or Python would reject or misread."""
    if not isinstance(state, dict) or not {"torch", "python", "numpy"} <= set(state):
        raise ValueError(f"the checkpoint's generator states{whose} are missing; it is damaged")
    live = torch.get_rng_state()
    torch_state = state["torch"]
    if not _tensor_like(torch_state, live):
        raise ValueError(f"the checkpoint's torch generator state{whose} is not one; it is damaged")
    if device.type == "cuda" and "cuda" in state:
        if not _tensor_like(state["cuda"], torch.cuda.get_rng_state(device)):
            raise ValueError(f"the checkpoint's CUDA generator state{whose} is not one; it is damaged")
    if not _python_state(state["python"]):
        raise ValueError(f"the checkpoint's Python generator state{whose} is not one; it is damaged")
    if not _numpy_state(state["numpy"]):
        raise ValueError(f"the checkpoint's NumPy generator state{whose} is not one; it is damaged")


def _tensor_like(saved: object, live: Tensor) -> bool:
    return isinstance(saved, Tensor) and saved.dtype == live.dtype and saved.shape == live.shape


def _words(values: object, count: int) -> bool:
    return (
        isinstance(values, list | tuple)
        and len(values) == count
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**32 for v in values)
    )


def _python_state(saved: object) -> bool:
    if not (isinstance(saved, list | tuple) and len(saved) == 3):
        return False
    version, internal, gauss = saved
    live_version = random.getstate()[0]
    return (
        version == live_version
        and _words(internal, MT_WORDS + 1)
        and internal[-1] <= MT_WORDS
        and (gauss is None or isinstance(gauss, float))
    )


def _numpy_state(saved: object) -> bool:
    if not (isinstance(saved, list | tuple) and len(saved) == 5):
        return False
    name, keys, pos, has_gauss, cached = saved
    return (
        name == "MT19937"
        and isinstance(keys, Tensor)
        and keys.dtype == torch.int64
        and keys.shape == (MT_WORDS,)
        and bool(((keys >= 0) & (keys < 2**32)).all())
        and isinstance(pos, int)
        and 0 <= pos <= MT_WORDS
        and has_gauss in (0, 1)
        and isinstance(cached, float)
    )


__all__ = ["check_archive", "check_parts", "check_rng", "check_state"]
