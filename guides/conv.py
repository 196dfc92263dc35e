"""The amortised guides' encoder network by architecture: an MLP on the row of pixels, or two
convolutions of the square image (:func:`gallery.models.conv.conv_features`) and then an MLP.

    mlp:   x (..., d) -> MLP -> (..., out)
    conv:  x (..., d) -> (..., 1, s, s) -> conv, conv -> (..., c2 s^2 / 16) -> MLP -> (..., out)
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from gallery.models.conv import ARCHITECTURES, conv_feature_dim, conv_features, image_side
from gallery.models.networks import mlp


def encoder_network(
    obs_dim: int,
    out_dim: int,
    hidden: Sequence[int] = (),
    activation: str = "tanh",
    architecture: str = "mlp",
) -> nn.Sequential:
    """obs_dim -> out_dim by ``architecture`` (``"mlp"`` or ``"conv"``, for rows that are square
    images whose side is a multiple of 4); ``hidden`` are the MLP's hidden sizes."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture={architecture!r} is not one of {', '.join(ARCHITECTURES)}")
    if architecture == "mlp":
        return mlp(obs_dim, out_dim, hidden, activation)
    side = image_side(obs_dim)
    head = mlp(conv_feature_dim(side), out_dim, hidden, activation)
    return nn.Sequential(*conv_features(side, activation), *head)


__all__ = ["encoder_network"]
