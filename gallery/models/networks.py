"""Network building blocks shared by the VAE's decoder and the amortised guides."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def mlp(
    in_dim: int, out_dim: int, hidden: Sequence[int] = (), activation: type[nn.Module] = nn.Tanh
) -> nn.Sequential:
    """in_dim -> hidden[0] -> ... -> out_dim, with ``activation`` between layers; ``hidden=()``
    is a single affine map."""
    sizes = [in_dim, *hidden, out_dim]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)
