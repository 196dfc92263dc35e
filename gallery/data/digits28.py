"""``digits28``: 10,000 binarised 28x28 digits made from the bundled 8x8 ones, MNIST's shape
for trying MNIST-sized networks offline (Pyro's VAE example architecture, 784-400-z50).

Each image n takes the bundled digit n mod 1,797 (values 0-16 scaled to [0, 1]), upsampled
bilinearly to 28x28 through a random affine map (rotation within 10 degrees, scale 0.9 to 1.1
of a 20x20 box centred as MNIST centres its digits, shift within 2 pixels), and binarised
stochastically, pixel ~ Bernoulli(grey value), as binarised MNIST is (Salakhutdinov and Murray
2008). Everything is drawn from one seeded generator, so the set is the same on every machine.
These are not MNIST digits: upsampled from 8x8, their strokes are blurred blocks.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional

SIDE, NUM_IMAGES, SEED = 28, 10_000, 0


def make_digits28(
    digits: torch.Tensor, labels: torch.Tensor, num_images: int = NUM_IMAGES, seed: int = SEED
) -> tuple[torch.Tensor, torch.Tensor]:
    """(num_images, 784) float64 values in {0, 1} and (num_images,) labels from the (1797, 64)
    bundled digits (values 0-16) and their labels."""
    gen = torch.Generator().manual_seed(seed)
    index = torch.arange(num_images) % len(digits)
    source = (digits[index] / 16).float().view(num_images, 1, 8, 8)
    angle = (torch.rand(num_images, generator=gen) * 2 - 1) * math.radians(10)
    scale = (SIDE / 20) / (0.9 + 0.2 * torch.rand(num_images, generator=gen))  # output -> input coords
    shift = (torch.rand(num_images, 2, generator=gen) * 2 - 1) * (2 / (SIDE / 2))
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], -1), torch.stack([sin, cos, shift[:, 1]], -1)], 1
    )
    grid = functional.affine_grid(theta, (num_images, 1, SIDE, SIDE), align_corners=False)
    grey = functional.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    grey = grey.view(num_images, SIDE * SIDE).clamp(0, 1)
    binary = torch.bernoulli(grey, generator=gen)
    return binary.double(), labels[index].clone()


__all__ = ["NUM_IMAGES", "SIDE", "make_digits28"]
