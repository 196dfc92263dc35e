"""The timing pieces the step benchmarks share (imported by path, as ``arguments``): seconds per
step with the device drained, and the name of the machine the figures come from."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable

import torch


def seconds_per_step(
    step: Callable, batches: list[torch.Tensor], device: torch.device, losses: list | None = None
) -> float:
    """Wall-clock seconds per step over ``batches``, the device drained before and after; each
    step's return value is appended to ``losses`` when one is given."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for subsample in batches:
        loss = step(subsample)
        if losses is not None:
            losses.append(loss)
    sync()
    return (time.perf_counter() - start) / len(batches)


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo where there is one, else the architecture."""
    try:
        with open("/proc/cpuinfo") as lines:
            return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def device_name(device: torch.device) -> str:
    """The GPU's name on CUDA, else the CPU model."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
