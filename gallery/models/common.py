"""Pieces shared by every model and guide: sizes, devices, the data plate."""

from __future__ import annotations

import pyro
import torch
from torch import Tensor


def resolve_sizes(
    data: Tensor | None,
    num_data: int | None,
    obs_dim: int | None,
) -> tuple[int, int]:
    """Sizes come from the data when there is data, else from the arguments.

    Returns ``(num_data, obs_dim)``. Raises ``ValueError`` when they disagree or are missing.
    """
    if data is None:
        if num_data is None or obs_dim is None:
            raise ValueError("with data=None pass num_data= and obs_dim= so the model knows what to sample")
        return int(num_data), int(obs_dim)
    if data.dim() != 2:
        raise ValueError(
            f"data must be 2-D (num_data, obs_dim); got shape {tuple(data.shape)}: "
            "reshape it so that each row is one observation"
        )
    if num_data is not None and num_data != data.shape[0]:
        raise ValueError(f"num_data={num_data} but data has {data.shape[0]} rows; drop num_data")
    if obs_dim is not None and obs_dim != data.shape[1]:
        raise ValueError(f"obs_dim={obs_dim} but data has {data.shape[1]} columns; drop obs_dim")
    return data.shape[0], data.shape[1]


def resolve_device(data: Tensor | None, device: torch.device | str | None) -> torch.device:
    """The device of the data wins; ``device=`` is for sampling with ``data=None``."""
    if data is not None:
        return data.device
    return torch.device(device) if device is not None else torch.device("cpu")


def data_plate(
    num_data: int,
    subsample: Tensor | None,
    subsample_size: int | None,
    device: torch.device,
) -> pyro.plate:
    """The one plate over data points, named ``"data"`` in every model and guide.

    Model and guide must index their per-datum tensors with the indices this plate returns:
    inside ``Trace_ELBO`` the model's plate replays the guide's indices, so both see the same
    subsample whether it is passed in (``subsample=``) or drawn here (``subsample_size=``).
    """
    return pyro.plate("data", num_data, subsample_size=subsample_size, subsample=subsample, device=device)


def same_device(first: torch.device | str, second: torch.device | str) -> bool:
    """Whether two device names are one device: ``cuda`` means the current GPU, so it is
    ``cuda:0`` when GPU 0 is current (``torch.device`` compares them unequal)."""
    first, second = torch.device(first), torch.device(second)
    if first.type != second.type:
        return False
    if first.type != "cuda":
        return True
    index = lambda device: torch.cuda.current_device() if device.index is None else device.index  # noqa: E731
    return index(first) == index(second)


def fresh(tensor: Tensor) -> Tensor:
    """A detached copy for Pyro's param store, which would otherwise adopt the caller's ``init``
    tensor itself as the parameter and train it in place."""
    return tensor.detach().clone()
