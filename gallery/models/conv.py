"""Convolutional networks for square images flattened to rows of d = side^2 pixels: the VAE's
decoder here, the encoder's feature stack shared with :mod:`guides.conv`.

    features:  x (..., d) -> (..., 1, s, s) -> conv 4x4 stride 2 -> conv 4x4 stride 2
               -> (..., c2, s/4, s/4) -> (..., c2 s^2 / 16)
    decoder:   z (..., p) -> MLP -> (..., c2, s/4, s/4) -> transposed conv 4x4 stride 2 (x2)
               -> (..., 1, s, s) -> (..., d) -> per-pixel gain and bias

with ``activation`` after every layer but the last. Each 4x4 stride-2 convolution (padding 1)
halves the side, so the side must be a multiple of 4 (8x8 digits: 8 -> 4 -> 2; 28x28 MNIST:
28 -> 14 -> 7). Any number of leading batch dimensions (particles, data) is allowed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from gallery.models.networks import ACTIVATIONS, check_activation, mlp

ARCHITECTURES = ("mlp", "conv")
CHANNELS = (32, 64)  # c1, c2: the channels after the first and the second convolution


def image_side(obs_dim: int, image_shape: tuple[int, int] | None = None) -> int:
    """The side s of the square images in rows of ``obs_dim`` = s^2 pixels; raises a one-line
    ``ValueError`` when the rows are not square images whose side is a multiple of 4."""
    if image_shape is not None and (len(image_shape) != 2 or image_shape[0] != image_shape[1]):
        raise ValueError(
            f"--architecture conv needs square images, got {tuple(image_shape)}; use --architecture mlp"
        )
    side = math.isqrt(obs_dim)
    if side * side != obs_dim or (image_shape is not None and side != image_shape[0]):
        raise ValueError(
            f"--architecture conv needs rows that are square images (8x8 = 64 or 28x28 = 784 pixels); "
            f"the data has {obs_dim} columns: use --architecture mlp"
        )
    if side % 4:
        raise ValueError(
            f"--architecture conv halves the image side twice: {side}x{side} is not a multiple of 4; "
            "use --architecture mlp"
        )
    return side


class Batched(nn.Module):
    """Applies 2-D layers to (..., C, H, W) with any number of leading batch dimensions."""

    def __init__(self, *layers: nn.Module):
        super().__init__()
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        batch = x.shape[:-3]
        out = self.layers(x.reshape(-1, *x.shape[-3:]))
        return out.reshape(*batch, *out.shape[-3:])


class PixelAffine(nn.Module):
    """(..., d) -> weight * x + bias, a gain and a bias per pixel: the decoder's output layer,
    whose bias starts at the data's mean image (or its logit)."""

    def __init__(self, obs_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(obs_dim))
        self.bias = nn.Parameter(torch.zeros(obs_dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.weight * x + self.bias


def conv_features(side: int, activation: str = "relu", channels: Sequence[int] = CHANNELS) -> nn.Sequential:
    """(..., s^2) -> (..., c2 s^2 / 16): two 4x4 stride-2 convolutions of the image."""
    check_activation(activation)
    c1, c2 = channels
    act = ACTIVATIONS[activation]
    return nn.Sequential(
        nn.Unflatten(-1, (1, side, side)),
        Batched(nn.Conv2d(1, c1, 4, 2, 1), act(), nn.Conv2d(c1, c2, 4, 2, 1), act()),
        nn.Flatten(-3),
    )


def conv_feature_dim(side: int, channels: Sequence[int] = CHANNELS) -> int:
    return channels[1] * (side // 4) ** 2


def conv_decoder(
    latent_dim: int,
    side: int,
    hidden: Sequence[int] = (),
    activation: str = "relu",
    channels: Sequence[int] = CHANNELS,
) -> nn.Sequential:
    """(..., p) -> (..., s^2): an MLP to a (c2, s/4, s/4) map, two 4x4 stride-2 transposed
    convolutions, and a per-pixel gain and bias (the last module, as the MLP decoder's last
    module is its output layer)."""
    check_activation(activation)
    c1, c2 = channels
    act = ACTIVATIONS[activation]
    project = list(mlp(latent_dim, conv_feature_dim(side, channels), hidden, activation))
    return nn.Sequential(
        *project,
        act(),
        nn.Unflatten(-1, (c2, side // 4, side // 4)),
        Batched(nn.ConvTranspose2d(c2, c1, 4, 2, 1), act(), nn.ConvTranspose2d(c1, 1, 4, 2, 1)),
        nn.Flatten(-3),
        PixelAffine(side * side),
    )


__all__ = [
    "ARCHITECTURES",
    "CHANNELS",
    "Batched",
    "PixelAffine",
    "conv_decoder",
    "conv_feature_dim",
    "conv_features",
    "image_side",
]
