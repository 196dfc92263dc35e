"""The figures: the lecture's (:mod:`~gallery.report.figures.lecture`), the fitted models'
(:mod:`~gallery.report.figures.models`) and the VAE's (:mod:`~gallery.report.figures.vae`).
This package's own names import no plotting library; its modules import matplotlib and are
imported only to draw."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

LATENT_DIM = 2  # p of factor analysis, PPCA and the VAE: every latent space is drawn directly

FILES = (
    "kl_gaussians.png",
    "em_vs_svi.png",
    "gmm_ellipses.png",
    "factor_analysis_ppca.png",
    "vae_samples.png",
    "vae_reconstructions.png",
    "vae_latent.png",
    "decomposition.png",
    "vem.png",
)


@dataclass(frozen=True)
class Settings:
    num_steps: int  # SVI steps of every fit
    em_iters: int  # at most, every EM fit
    vae_eval_particles: int  # K of the VAE's importance-weighted log p(x)
    kl_samples: int  # Monte Carlo samples per KL estimate
    device: torch.device
    seed: int
    out: Path  # where the files go, and nothing else
    command: str  # how to make these figures again, for index.md
    compile: str = "auto"  # SVI's step (inference.compiled): off, graph, inductor, auto


@dataclass(frozen=True)
class Figure:
    file: str
    title: str
    png: bytes
    caption: str


__all__ = ["FILES", "LATENT_DIM", "Figure", "Settings"]
