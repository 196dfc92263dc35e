"""The VAE's figures, as PNG bytes: generated examples, reconstructions beside their inputs, the
latent means of held-out data, and the training curve."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pyro  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from gallery.models import vae  # noqa: E402
from gallery.report.outputs import png_bytes  # noqa: E402
from guides import AmortisedFlow, AmortisedNormal, MeanFieldNormal  # noqa: E402


def _as_images(rows: Tensor, image_shape: tuple[int, int] | None) -> Tensor:
    """(n, d) -> (n, h, w); rows that are not images are drawn as (1, d) strips."""
    rows = rows.detach().double().cpu()
    if image_shape is None:
        side = math.isqrt(rows.shape[1])
        image_shape = (side, side) if side * side == rows.shape[1] else (1, rows.shape[1])
    return rows.reshape(len(rows), *image_shape)


def _grid(axes, images: Tensor, title: str | None = None) -> None:
    for ax, image in zip(axes.flat, images, strict=False):
        ax.imshow(image.numpy(), cmap="gray_r", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    for ax in axes.flat:
        ax.set_axis_off()
    if title:
        axes.flat[0].figure.suptitle(title)


def samples_png(decoder: vae.Decoder, image_shape, *, num_samples: int = 64, seed: int = 0) -> bytes:
    """f(z) (or sigmoid f(z)) for z drawn from the prior: the generated examples."""
    generator = torch.Generator().manual_seed(seed)
    images = _as_images(vae.sample(decoder, num_samples, generator=generator).clamp(0, 1), image_shape)
    cols = 8
    fig, axes = plt.subplots(
        math.ceil(num_samples / cols), cols, figsize=(cols, math.ceil(num_samples / cols))
    )
    _grid(axes, images, "generated examples: f(z), z ~ N(0, I)")
    return png_bytes(fig)


def latent_means(guide, data: Tensor) -> Tensor:
    """(N, p) the means of q(z | x_n): from the encoder, or the per-datapoint table (the rows of
    ``data`` must then be the ones it was trained on)."""
    with torch.no_grad():
        if isinstance(guide, AmortisedNormal | AmortisedFlow):
            return guide.mean(data)
        if isinstance(guide, MeanFieldNormal):
            return pyro.param(f"{guide.name}_loc").detach()
    raise ValueError(f"no latent means for a guide of type {type(guide).__name__}")


def reconstructions_png(decoder: vae.Decoder, guide, data: Tensor, image_shape, *, num: int = 16) -> bytes:
    """Top row inputs x_n, bottom row E[x | z = E_q[z | x_n]]."""
    num = min(num, len(data))
    with torch.no_grad():
        out = decoder.mean(latent_means(guide, data)[:num])
    inputs, recon = _as_images(data[:num], image_shape), _as_images(out.clamp(0, 1), image_shape)
    fig, axes = plt.subplots(2, num, figsize=(num * 0.8, 2.0), squeeze=False)
    _grid(axes[:1], inputs)
    _grid(axes[1:], recon)
    axes[0, 0].set_title("x", loc="left", fontsize=8)
    axes[1, 0].set_title("f(E_q[z|x])", loc="left", fontsize=8)
    fig.suptitle("reconstructions beside their inputs")
    return png_bytes(fig)


def latent_png(guide, data: Tensor, labels: Tensor | None, title: str) -> bytes:
    """The latent means, directly when p = 2 (or 1), else their first two principal components;
    coloured by label when there are labels."""
    means = latent_means(guide, data).double().cpu()
    axis = "z"
    if means.shape[1] > 2:
        centred = means - means.mean(0)
        _, _, v = torch.linalg.svd(centred, full_matrices=False)
        means, axis = centred @ v[:2].T, "principal component"
    if means.shape[1] == 1:
        means = torch.cat([means, torch.zeros_like(means)], 1)
    if labels is not None:
        return labelled_latent_png(means, labels, title, axis)
    fig, ax = plt.subplots(figsize=(5.5, 4.5), constrained_layout=True)
    ax.scatter(means[:, 0].numpy(), means[:, 1].numpy(), s=6)
    ax.set(xlabel=f"{axis} 1", ylabel=f"{axis} 2", title=title)
    return png_bytes(fig)


def labelled_latent_png(means: Tensor, labels: Tensor, title: str, axis: str = "z") -> bytes:
    """(N, 2) latent means coloured by label, one legend entry per label, each label written at
    its points' median. ``axis`` names the coordinates ("z", or "principal component")."""
    fig, ax = plt.subplots(figsize=(6.4, 5.2), constrained_layout=True)
    for label in labels.unique().tolist():
        rows = means[labels == label]
        ax.scatter(
            rows[:, 0].numpy(), rows[:, 1].numpy(), s=5, color=plt.cm.tab10(label % 10), label=str(label)
        )
        centre = rows.median(0).values.tolist()
        ax.text(
            *centre,
            str(label),
            fontsize=13,
            weight="bold",
            ha="center",
            va="center",
            bbox={"boxstyle": "circle,pad=0.15", "fc": "white", "ec": plt.cm.tab10(label % 10), "alpha": 0.8},
        )
    names = ("E_q[z1 | x]", "E_q[z2 | x]") if axis == "z" else (f"{axis} 1", f"{axis} 2")
    ax.set(xlabel=names[0], ylabel=names[1], title=title)
    ax.legend(title="label", loc="center left", bbox_to_anchor=(1, 0.5), markerscale=3, fontsize=8)
    ax.grid(alpha=0.3)
    return png_bytes(fig)
