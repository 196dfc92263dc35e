"""Network building blocks shared by the VAE's decoder and the amortised guides: the MLP, the
activations by name, and the rule that a network follows its data's dtype and device.

Every network constructor takes ``obs_dim`` first, then the latent size, ``hidden=`` sizes and
``activation=`` by name (a key of :data:`ACTIVATIONS`)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from gallery.models.common import check_tensor, same_device

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "softplus": nn.Softplus, "elu": nn.ELU}


def check_activation(activation: str) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation={activation!r} is not one of {', '.join(ACTIVATIONS)}")


def mlp(in_dim: int, out_dim: int, hidden: Sequence[int] = (), activation: str = "tanh") -> nn.Sequential:
    """in_dim -> hidden[0] -> ... -> out_dim, with ``activation`` (a key of :data:`ACTIVATIONS`)
    between layers; ``hidden=()`` is a single affine map."""
    check_activation(activation)
    sizes = [in_dim, *hidden, out_dim]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


def follow_data(network: nn.Module, data: Tensor) -> None:
    """Move ``network`` to the dtype and device of ``data`` on its first call (torch builds float32
    weights on the CPU; the gallery's data are often float64), and refuse a later mismatch: its
    weights have been trained (and an optimiser holds them) by then."""
    check_tensor(data)
    weight = next(network.parameters())
    if weight.dtype == data.dtype and same_device(weight.device, data.device):
        network._follows_data = True  # from now on, its weights stay where they are
        return
    if not getattr(network, "_follows_data", False):
        network.to(device=data.device, dtype=data.dtype)
        network._follows_data = True
        return
    raise ValueError(
        f"{type(network).__name__} has {weight.dtype} weights on {weight.device} but the data is "
        f"{data.dtype} on {data.device}; pass data of one dtype and device to every call"
    )
