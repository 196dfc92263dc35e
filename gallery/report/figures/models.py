"""Figures of the fitted models themselves, for ``python -m gallery figures``: the mixture's
components on iris, the loadings and latent projections of factor analysis and PPCA, and the
VAE's generated examples, reconstructions and latent space. Settings and the figure record come
from :mod:`gallery.report.figures.lecture`.
"""

from __future__ import annotations

import math
from itertools import permutations

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import Ellipse  # noqa: E402
from torch import Tensor  # noqa: E402

from gallery.data import datasets  # noqa: E402
from gallery.models import factor_analysis, gmm, linear_gaussian, ppca  # noqa: E402
from gallery.models.linear_gaussian import LinearGaussianParams  # noqa: E402
from gallery.report.figures import vae as vae_figures  # noqa: E402
from gallery.report.figures.lecture import (  # noqa: E402
    IRIS_COLUMNS,
    IRIS_SPECIES,
    LATENT_DIM,
    Figure,
    Settings,
    checked_em,
    em_stop,
    png_bytes,
)
from inference.em import em_gmm, em_linear_gaussian  # noqa: E402


def _ellipse(ax, loc: Tensor, covariance: Tensor, radius: float, **style) -> None:
    """The contour at Mahalanobis distance ``radius`` of N(loc, covariance) in 2-D."""
    eigvals, eigvecs = torch.linalg.eigh(covariance)  # ascending
    width, height = (2 * radius * eigvals.flip(0).sqrt()).tolist()
    angle = math.degrees(math.atan2(float(eigvecs[1, 1]), float(eigvecs[0, 1])))
    ax.add_patch(Ellipse(loc.tolist(), width, height, angle=angle, fill=False, **style))


def gmm_figure(settings: Settings, iris: datasets.Dataset) -> Figure:
    """The three-component, full-covariance mixture on iris' petal length and width."""
    data = iris.data[:, 2:4].to(settings.device)  # (150, 2)
    init = gmm.init_params(data, 3, "full", generator=torch.Generator().manual_seed(settings.seed))
    em = checked_em(em_gmm, data, init, settings, "the mixture")
    params = em.params.to(device="cpu")
    points = data.double().cpu()
    resp = gmm.log_responsibilities(points, params).exp()  # (N, K)
    order = params.loc[:, 0].argsort()  # components by petal length, so colours follow size
    palette = torch.tensor([[0.84, 0.15, 0.16], [0.17, 0.63, 0.17], [0.12, 0.47, 0.71]], dtype=torch.float64)
    colour = (resp[:, order] @ palette).clamp(0, 1).numpy()  # (N, 3) RGB mix of responsibilities
    labels, hard = iris.labels, resp.argmax(1)
    agree = max(
        sum(int(((hard == k) & (labels == s)).sum()) for k, s in zip(perm, range(3), strict=True))
        for perm in permutations(range(3))
    )
    unsure = int((resp.max(1).values < 0.9).sum())
    fig, ax = plt.subplots(figsize=(6.8, 5.2), constrained_layout=True)
    for species, marker in zip(range(3), "os^", strict=True):
        rows = labels == species
        ax.scatter(
            points[rows, 0],
            points[rows, 1],
            c=colour[rows.numpy()],
            marker=marker,
            s=22,
            edgecolors="none",
            alpha=0.8,
        )
        ax.scatter([], [], marker=marker, color="0.5", label=f"species {IRIS_SPECIES[species]}")
    covariance = params.covariance()
    for rank, k in enumerate(order.tolist()):
        for radius, style in ((1, "-"), (2, "--")):
            _ellipse(ax, params.loc[k], covariance[k], radius, ls=style, lw=1.4, color=palette[rank].numpy())
        ax.plot(
            *params.loc[k].tolist(),
            "x",
            color=palette[rank].numpy(),
            ms=9,
            mew=2,
            label=f"component {rank + 1}, weight {float(params.weights[k]):.2f}",
        )
    ax.plot([], [], "k-", lw=1, label="1-sigma ellipse (39% of mass)")
    ax.plot([], [], "k--", lw=1, label="2-sigma ellipse (86% of mass)")
    ax.set(
        xlabel="petal length (cm)",
        ylabel="petal width (cm)",
        title="Gaussian mixture, K = 3, full covariance, on iris petals",
    )
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    caption = (
        f"The three-component, full-covariance Gaussian mixture fitted by EM ({em_stop(em)}, "
        f"log p(x) = {float(em.log_likelihoods[-1]):.4f} nats per datum) to two columns of iris, petal "
        f"length and width in cm, with each component's 1- and 2-sigma ellipses (Mahalanobis distance 1 "
        f"and 2) and weights {', '.join(f'{float(params.weights[k]):.2f}' for k in order.tolist())}. "
        f"Each point's colour mixes the component colours by its responsibilities; its marker is the "
        f"species: the most responsible component matches the species for {agree} of 150 flowers, "
        f"and {unsure} points have no responsibility above 0.9."
    )
    return Figure("gmm_ellipses.png", "A Gaussian mixture and its responsibilities", png_bytes(fig), caption)


def canonical_rotation(params: LinearGaussianParams) -> LinearGaussianParams:
    """The same model with z rotated (W -> W R, R orthogonal, log p(x) unchanged) so that
    W^T Psi^{-1} W is diagonal and decreasing, and each column's largest entry positive: one
    representative of the loadings, which the likelihood determines only up to R."""
    _, eigvecs = torch.linalg.eigh(params.loading.T / params.psi @ params.loading)  # ascending
    loading = params.loading @ eigvecs.flip(1)  # (d, p)
    signs = loading.gather(0, loading.abs().argmax(0, keepdim=True)).sign()  # (1, p)
    return LinearGaussianParams(params.loc, loading * signs, params.noise_variance)


def linear_gaussian_figure(settings: Settings, iris: datasets.Dataset) -> Figure:
    """Factor analysis and PPCA (p = 2) on iris by EM: loadings and E[z | x] by species."""
    data = iris.data.to(settings.device)
    fig, axes = plt.subplots(2, 2, figsize=(10, 7.6), width_ratios=(1, 1.6), constrained_layout=True)
    fits = {}
    for row, (name, module) in enumerate((("factor analysis", factor_analysis), ("PPCA", ppca))):
        init = module.init_params(data, LATENT_DIM, generator=torch.Generator().manual_seed(settings.seed))
        em = checked_em(em_linear_gaussian, data, init, settings, name)
        params = canonical_rotation(em.params)
        vmax = 2.0  # cm: both models' loadings on iris stay below, one scale for both heatmaps
        if float(params.loading.abs().max()) > vmax:
            vmax = math.ceil(float(params.loading.abs().max()))
        rotated_ll = float(linear_gaussian.log_likelihood(data.double(), params).mean())
        if abs(rotated_ll - float(em.log_likelihoods[-1])) > 1e-10:
            raise RuntimeError(f"rotating z changed the log-likelihood of {name}")
        fits[name] = (em, params)
        loading = params.loading.cpu().numpy()
        heat, scatter = axes[row]
        image = heat.imshow(loading, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto")
        for (i, j), value in np.ndenumerate(loading):
            heat.text(
                j, i, f"{value:.2f}", ha="center", va="center", color="w" if abs(value) > vmax / 2 else "k"
            )
        noise = ", ".join(f"{v:.2g}" for v in params.psi.tolist()[: 1 if params.isotropic else None])
        symbol = r"$\sigma^2$" if params.isotropic else r"$\psi$"
        heat.set(
            xticks=[0, 1],
            xticklabels=["z1", "z2"],
            yticks=range(4),
            yticklabels=IRIS_COLUMNS,
            title=f"{name}: loading W\nnoise variance {symbol} = {noise} cm$^2$",
        )
        fig.colorbar(image, ax=heat, shrink=0.8, label="cm per unit of z")
        means, _ = linear_gaussian.posterior(data.double(), params.to(torch.float64))
        means = means.cpu()
        for species in range(3):
            rows = iris.labels == species
            scatter.scatter(
                means[rows, 0], means[rows, 1], s=12, color=f"C{species}", label=IRIS_SPECIES[species]
            )
        scatter.set(xlabel="E[z1 | x]", ylabel="E[z2 | x]", title=f"{name}: posterior means of z, by species")
        scatter.legend(fontsize=8)
        scatter.grid(alpha=0.3)
    fig.suptitle(
        "Factor analysis and PPCA (p = 2) on iris, fitted by EM; "
        r"z rotated so that $W^\top \Psi^{-1} W$ is diagonal"
    )
    fa, pp = fits["factor analysis"], fits["PPCA"]
    caption = (
        f"Factor analysis and PPCA with p = 2 fitted by EM to iris (4 measurements in cm): the loading "
        f"matrices W (left) and the posterior means E[z|x] coloured by species (right), z rotated so that "
        f"W^T Psi^-1 W is diagonal (the likelihood fixes W only up to a rotation). Factor analysis reaches "
        f"log p(x) = {float(fa[0].log_likelihoods[-1]):.4f} nats per datum ({em_stop(fa[0])}; noise "
        f"variances {', '.join(f'{v:.2g}' for v in fa[1].psi.tolist())} cm^2: on iris some head to 0, a "
        f"Heywood case), PPCA "
        f"{float(pp[0].log_likelihoods[-1]):.4f} ({em_stop(pp[0])}, sigma^2 = "
        f"{float(pp[1].noise_variance):.4f} cm^2)."
    )
    return Figure("factor_analysis_ppca.png", "Factor analysis and PPCA", png_bytes(fig), caption)


def vae_figure_files(settings: Settings, result, prepared) -> list[Figure]:
    """The VAE's generated examples, reconstructions of held-out digits, and the training digits'
    latent means by digit, from a ``run vae`` ``result`` fitted on ``prepared`` (the app's
    figures job fits it)."""
    m, shape = result.metrics, prepared.image_shape
    fit = (
        f"the VAE (z in R^2, encoder and decoder MLPs with hidden sizes {','.join(map(str, m['hidden']))}, "
        f"{m['activation']}, Gaussian p(x|z)) fitted by SVI for {m['num_steps']} "
        f"steps to {m['num_data']} digits scaled to [0, 1]: ELBO {m['elbo_per_datum']:.2f}, "
        f"importance-weighted log p(x) {m['log_likelihood_per_datum']:.2f} (K = {m['eval_particles']}) "
        f"nats per datum on them, {m['heldout_elbo_per_datum']:.2f} and "
        f"{m['heldout_log_likelihood_per_datum']:.2f} on the {m['num_heldout']} held out"
    )
    decoder = result.setup.model_kwargs["decoder"]
    means = vae_figures.latent_means(result.guide, prepared.data).double().cpu()
    latent_title = f"VAE: latent means E_q[z|x] of the {m['num_data']} training digits"
    return [
        Figure(
            "vae_samples.png",
            "The VAE's generated examples",
            vae_figures.samples_png(decoder, shape, seed=settings.seed),
            f"64 generated examples, the decoder's mean images f(z) for z ~ N(0, I), of {fit}.",
        ),
        Figure(
            "vae_reconstructions.png",
            "The VAE's reconstructions",
            vae_figures.reconstructions_png(decoder, result.guide, prepared.heldout, shape),
            f"16 held-out digits (top) above their reconstructions f(E_q[z|x]) (bottom), by {fit}.",
        ),
        Figure(
            "vae_latent.png",
            "The VAE's latent space",
            vae_figures.labelled_latent_png(means, prepared.labels, latent_title),
            f"The encoder's means E_q[z|x] of the training digits, coloured by the digit they show "
            f"(the fit never sees the labels), for {fit}.",
        ),
    ]
