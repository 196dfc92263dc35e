"""The lecture's figures, redrawn from models fitted here: each builder fits what it needs on
the bundled data and returns a :class:`Figure` (PNG bytes and a caption whose numbers come from
those fits). ``python -m gallery figures`` (:mod:`gallery.figures`) writes them.

1. ``kl_gaussians.png``: KL(N(0, 1) || N(mu, 1)) = mu^2 / 2 against Monte Carlo estimates;
2. ``em_vs_svi.png``: exact EM beside SVI (exact and mean-field guides) on PPCA, one start;
3. ``gmm_ellipses.png``: the mixture on iris' petal length and width, 1- and 2-sigma ellipses;
4. ``factor_analysis_ppca.png``: loadings and E[z | x] of factor analysis and PPCA on iris;
5. ``vae_samples.png``, ``vae_reconstructions.png``, ``vae_latent.png``: the VAE on the digits;
6. ``decomposition.png``: log p(x) = E_q[log p(x|z)] - KL(q || p(z)) + KL(q || p(z|x)) per guide.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from itertools import permutations
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pyro  # noqa: E402
import pyro.distributions as dist  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import Ellipse  # noqa: E402
from pyro import poutine  # noqa: E402
from torch import Tensor  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from gallery import datasets, factor_analysis, gmm, linear_gaussian, ppca, vae_figures  # noqa: E402
from gallery.linear_gaussian import LinearGaussianParams  # noqa: E402
from gallery.registry import make_guide  # noqa: E402
from gallery.runner import RunConfig  # noqa: E402
from inference.em import EMResult, em_gmm, em_linear_gaussian, ppca_max_log_likelihood  # noqa: E402
from inference.evaluate import decompose, decomposition_terms, gaussian_kl  # noqa: E402
from inference.svi import fit_svi  # noqa: E402

FILES = (
    "kl_gaussians.png",
    "em_vs_svi.png",
    "gmm_ellipses.png",
    "factor_analysis_ppca.png",
    "vae_samples.png",
    "vae_reconstructions.png",
    "vae_latent.png",
    "decomposition.png",
)
IRIS_COLUMNS = ("sepal length", "sepal width", "petal length", "petal width")
IRIS_SPECIES = ("setosa", "versicolor", "virginica")
DECOMPOSITION_GUIDES = ("exact", "mean-field", "amortised", "amortised-full", "auto-normal")
LATENT_DIM = 2  # p of factor analysis, PPCA and the VAE: every latent space is drawn directly


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


@dataclass(frozen=True)
class Figure:
    file: str
    title: str
    png: bytes
    caption: str


# Figures ---------------------------------------------------------------------------------------


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return buffer.getvalue()


def _check_em_never_falls(result: EMResult, what: str) -> None:
    """EM's log p(x) may not drop between iterations (Dempster et al. 1977); 1e-10 nats per
    datum allows float64 rounding of a sum of 150 terms of a few nats, nothing more."""
    drops = result.log_likelihoods.diff()
    if bool((drops < -1e-10).any()):
        step = int((drops < -1e-10).nonzero()[0])
        raise RuntimeError(
            f"EM lowered the log-likelihood of {what} at iteration {step + 1} by {-float(drops[step]):.3g}"
        )


def _em(fit, data: Tensor, init, settings: Settings, what: str) -> EMResult:
    with warnings.catch_warnings():  # a stop before tol is reported in the caption instead
        warnings.simplefilter("ignore")
        result = fit(data, init, max_iters=settings.em_iters, tol=1e-8)
    _check_em_never_falls(result, what)
    return result


def _nats(value: float) -> str:
    """Four decimals, without the sign of a rounding error around 0."""
    return f"{value:.4f}".replace("-0.0000", "0.0000")


def _em_stop(result: EMResult) -> str:
    return f"{result.num_iters} iterations" + ("" if result.converged else ", stopped before converging")


def kl_figure(settings: Settings) -> Figure:
    """KL(N(0,1) || N(mu,1)): gaussian_kl against Monte Carlo means of log q(x) - log p(x)."""
    dev, f64 = settings.device, torch.float64
    grid = torch.linspace(-3, 3, 121, dtype=f64, device=dev)  # (G,)
    one = torch.ones(1, 1, dtype=f64, device=dev)
    closed = gaussian_kl(torch.zeros(1, dtype=f64, device=dev), one, grid[:, None], one)  # (G,)
    if not torch.allclose(closed, grid.pow(2) / 2, rtol=0, atol=1e-12):
        raise RuntimeError("gaussian_kl does not give mu^2 / 2 for unit variances")
    mus = torch.linspace(-3, 3, 13, dtype=f64, device=dev)  # (M,)
    generator = torch.Generator(device=dev).manual_seed(settings.seed)
    x = torch.randn(len(mus), settings.kl_samples, generator=generator, dtype=f64, device=dev)  # x ~ q
    q, p = dist.Normal(torch.zeros_like(mus)[:, None], 1.0), dist.Normal(mus[:, None], 1.0)
    log_ratio = q.log_prob(x) - p.log_prob(x)  # (M, S)
    estimate = log_ratio.mean(1)
    stderr = log_ratio.std(1) / math.sqrt(settings.kl_samples)
    z_scores = ((estimate - mus.pow(2) / 2) / stderr.clamp_min(1e-300))[mus != 0]
    within = int((z_scores.abs() <= 2).sum()) + int((mus == 0).sum())  # at mu = 0 the ratio is 0
    fig, ax = plt.subplots(figsize=(6.4, 4.2), constrained_layout=True)
    ax.plot(grid.cpu(), closed.cpu(), color="C0", lw=2, label=r"closed form $\mu^2/2$ (gaussian_kl)")
    ax.errorbar(
        mus.cpu(),
        estimate.cpu(),
        yerr=2 * stderr.cpu(),
        fmt="o",
        ms=4,
        color="C3",
        capsize=3,
        label=f"Monte Carlo, {settings.kl_samples} samples each, $\\pm$2 s.e.",
    )
    ax.set(
        xlabel=r"$\mu$, the mean of $p = N(\mu, 1)$",
        ylabel="KL(q || p)  (nats)",
        title=r"KL$(N(0,1)\,\|\,N(\mu,1))$",
    )
    ax.legend(loc="upper center")
    ax.grid(alpha=0.3)
    caption = (
        f"KL(N(0,1) || N(mu,1)) against mu: the closed form mu^2/2 (`inference.evaluate.gaussian_kl`) "
        f"as a line and the Monte Carlo mean of log q(x) - log p(x) over {settings.kl_samples} draws "
        f"x ~ N(0,1) at {len(mus)} values of mu, with +-2 standard errors. {within} of the "
        f"{len(mus)} estimates lie within 2 standard errors of the closed form (largest deviation "
        f"{float(z_scores.abs().max()):.2f} standard errors)."
    )
    return Figure("kl_gaussians.png", "KL divergence between two Gaussians", _png(fig), caption)


@dataclass(frozen=True)
class PPCAFit:
    data: Tensor  # (150, 4) iris on the device, float64
    em: EMResult


def em_vs_svi_figure(settings: Settings, iris: datasets.Dataset) -> tuple[Figure, PPCAFit]:
    """PPCA (p = 2) on iris from one start: EM's log p(x) per iteration beside SVI's ELBO per
    step with the exact and the mean-field guide."""
    data = iris.data.to(settings.device)
    init = ppca.init_params(data, LATENT_DIM, generator=torch.Generator().manual_seed(settings.seed))
    em = _em(em_linear_gaussian, data, init, settings, "PPCA")
    kwargs = {"latent_dim": LATENT_DIM, "init": init}
    traces, finals = {}, {}
    for name in ("exact", "mean-field"):
        pyro.clear_param_store()
        guide = make_guide(
            "ppca", name, data=data, init=init, size=LATENT_DIM, model_kwargs={"latent_dim": 2}
        )
        svi = fit_svi(
            ppca.model,
            guide,
            data,
            num_steps=settings.num_steps,
            lr=0.05,
            seed=settings.seed,
            progress=False,
            **kwargs,
        )
        traces[name] = -svi.losses.double() / len(data)
        finals[name] = decompose(guide, data, ppca.current_params(), **kwargs)
    best = float(ppca_max_log_likelihood(data, LATENT_DIM))
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True, constrained_layout=True)
    left.plot(em.log_likelihoods.numpy(), marker=".", ms=3, color="C1", label="EM: log p(x)")
    right.plot(traces["exact"].numpy(), color="C0", lw=1.2, label="SVI, exact guide: ELBO = log p(x)")
    right.plot(
        traces["mean-field"].numpy(),
        color="C2",
        lw=0.6,
        alpha=0.8,
        label="SVI, mean-field guide: ELBO (1-sample estimate)",
    )
    for ax in (left, right):
        ax.axhline(best, color="k", ls="--", lw=0.8, label=f"maximum (Tipping-Bishop), {best:.4f}")
        ax.set_xscale("symlog", linthresh=1, linscale=0.4)  # linear from 0 to 1, log beyond
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3)
    start = float(em.log_likelihoods[0])
    low = min(start, float(traces["mean-field"].quantile(0.01)))
    left.set_ylim(low - 0.05 * (best - low), best + 0.05 * (best - low))
    left.set(xlabel="EM iteration (log scale)", ylabel="nats per datum", title="exact EM")
    right.set(
        xlabel="SVI step (log scale)", title=f"SVI, Adam, lr 0.05 decaying 10x, {settings.num_steps} steps"
    )
    handles = [*left.get_legend_handles_labels()[0], *right.get_legend_handles_labels()[0][:2]]
    fig.legend(handles=handles, loc="outside lower center", ncol=4, fontsize=8)
    fig.suptitle("PPCA (p = 2) on iris, EM and SVI from the same initial parameters")
    exact_ll = float(finals["exact"].log_likelihood.mean())
    mf = finals["mean-field"]
    caption = (
        f"PPCA with p = 2 on iris (150 x 4, cm), all fits from the same random start "
        f"(log p(x) = {start:.4f} nats per datum): EM's log p(x) per iteration, never falling (checked), "
        f"reaches {float(em.log_likelihoods[-1]):.4f} in {_em_stop(em)}; SVI with the exact guide, "
        f"whose ELBO is log p(x), reaches {exact_ll:.4f} in {settings.num_steps} steps, and with the "
        f"mean-field guide an ELBO of {float(mf.elbo.mean()):.4f} at log p(x) = "
        f"{float(mf.log_likelihood.mean()):.4f} (closed forms at the end). The dashed line is the "
        f"closed-form maximum {best:.4f}."
    )
    return Figure("em_vs_svi.png", "EM against SVI", _png(fig), caption), PPCAFit(data, em)


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
    em = _em(em_gmm, data, init, settings, "the mixture")
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
        f"The three-component, full-covariance Gaussian mixture fitted by EM ({_em_stop(em)}, "
        f"log p(x) = {float(em.log_likelihoods[-1]):.4f} nats per datum) to two columns of iris, petal "
        f"length and width in cm, with each component's 1- and 2-sigma ellipses (Mahalanobis distance 1 "
        f"and 2) and weights {', '.join(f'{float(params.weights[k]):.2f}' for k in order.tolist())}. "
        f"Each point's colour mixes the component colours by its responsibilities; its marker is the "
        f"species: the most responsible component matches the species for {agree} of 150 flowers, "
        f"and {unsure} points have no responsibility above 0.9."
    )
    return Figure("gmm_ellipses.png", "A Gaussian mixture and its responsibilities", _png(fig), caption)


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
        em = _em(em_linear_gaussian, data, init, settings, name)
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
        f"log p(x) = {float(fa[0].log_likelihoods[-1]):.4f} nats per datum ({_em_stop(fa[0])}; noise "
        f"variances {', '.join(f'{v:.2g}' for v in fa[1].psi.tolist())} cm^2: on iris some head to 0, a "
        f"Heywood case), PPCA "
        f"{float(pp[0].log_likelihoods[-1]):.4f} ({_em_stop(pp[0])}, sigma^2 = "
        f"{float(pp[1].noise_variance):.4f} cm^2)."
    )
    return Figure("factor_analysis_ppca.png", "Factor analysis and PPCA", _png(fig), caption)


def vae_figure_files(settings: Settings) -> list[Figure]:
    """The VAE (p = 2, otherwise the ``run vae`` defaults) on the digits: generated examples,
    reconstructions of held-out digits, and the training digits' latent means by digit."""
    from gallery.vae_run import fit_vae, prepare_vae

    config = RunConfig(
        model="vae",
        guide="amortised",
        data="digits",
        latent_dim=LATENT_DIM,
        num_steps=settings.num_steps,
        eval_particles=settings.vae_eval_particles,
        gap_rows=0,
        device=str(settings.device),
        seed=settings.seed,
        progress=False,
    )
    prepared = prepare_vae(config)
    result = fit_vae(prepared, settings.out)  # writes nothing there: no checkpoint is asked for
    m, shape = result.metrics, prepared.image_shape
    fit = (
        f"the VAE (z in R^2, encoder and decoder MLPs with hidden sizes {','.join(map(str, m['hidden']))}, "
        f"{m['activation']}, Gaussian p(x|z)) fitted by SVI for {m['num_steps']} "
        f"steps to {m['num_data']} digits scaled to [0, 1]: ELBO {m['elbo_per_datum']:.2f}, "
        f"importance-weighted log p(x) {m['log_likelihood_per_datum']:.2f} (K = {m['eval_particles']}) "
        f"nats per datum on them, {m['heldout_elbo_per_datum']:.2f} and "
        f"{m['heldout_log_likelihood_per_datum']:.2f} on the {m['num_heldout']} held out"
    )
    means = vae_figures.latent_means(result.guide, prepared.train).double().cpu()
    latent_title = f"VAE: latent means E_q[z|x] of the {m['num_data']} training digits"
    return [
        Figure(
            "vae_samples.png",
            "The VAE's generated examples",
            vae_figures.samples_png(result.decoder, shape, seed=settings.seed),
            f"64 generated examples, the decoder's mean images f(z) for z ~ N(0, I), of {fit}.",
        ),
        Figure(
            "vae_reconstructions.png",
            "The VAE's reconstructions",
            vae_figures.reconstructions_png(result.decoder, result.guide, prepared.heldout, shape),
            f"16 held-out digits (top) above their reconstructions f(E_q[z|x]) (bottom), by {fit}.",
        ),
        Figure(
            "vae_latent.png",
            "The VAE's latent space",
            vae_figures.labelled_latent_png(means, prepared.train_labels, latent_title),
            f"The encoder's means E_q[z|x] of the training digits, coloured by the digit they show "
            f"(the fit never sees the labels), for {fit}.",
        ),
    ]


def decomposition_figure(settings: Settings, fit: PPCAFit) -> Figure:
    """Each guide's q(z|x), fitted by SVI with the model fixed at EM's PPCA parameters, and the
    three closed-form terms of log p(x) under it."""
    data, params = fit.data, fit.em.params
    kwargs = {"latent_dim": LATENT_DIM, "init": params}
    fixed_model = poutine.block(ppca.model, hide_types=["param"])  # only q is fitted
    terms = {}
    for name in DECOMPOSITION_GUIDES:
        pyro.clear_param_store()
        guide = make_guide(
            "ppca", name, data=data, init=params, size=LATENT_DIM, model_kwargs={"latent_dim": 2}
        )
        if name != "exact":  # 8 particles: the q tables of 150 rows see a noisy gradient otherwise
            fit_svi(
                fixed_model,
                guide,
                data,
                num_steps=settings.num_steps,
                lr=0.02,
                num_particles=8,
                seed=settings.seed,
                progress=False,
                **kwargs,
            )
            if not torch.equal(ppca.current_params().loading, params.loading):
                raise RuntimeError("fitting q moved the model's parameters")
        terms[name] = decomposition_terms(guide, data, params, **kwargs)
    precision = linear_gaussian.posterior_precision(params.to(torch.float64))
    best_diagonal = float(0.5 * (precision.diagonal().log().sum() - torch.logdet(precision)))
    log_likelihood = float(terms["exact"].log_likelihood.mean())
    means = {
        name: [float(t.reconstruction.mean()), -float(t.encoding.mean()), float(t.error.mean())]
        for name, t in terms.items()
    }
    fig, (bars, gaps) = plt.subplots(1, 2, figsize=(11, 4.8), width_ratios=(1.7, 1), constrained_layout=True)
    labels = (
        "E_q[log p(x|z)] (reconstruction)",
        "-KL(q(z|x) || p(z)) (encoding)",
        "+KL(q(z|x) || p(z|x)) (error)",
    )
    for i, values in enumerate(means.values()):
        up = down = 0.0
        for j, value in enumerate(values):
            base = up if value >= 0 else down
            bars.bar(i, value, bottom=base, width=0.6, color=f"C{j}", label=labels[j] if i == 0 else None)
            up, down = (up + value, down) if value >= 0 else (up, down + value)
        bars.plot(i, sum(values), "kD", ms=6, label="log p(x) = sum of the three" if i == 0 else None)
    bars.axhline(log_likelihood, color="k", ls="--", lw=0.8)
    bars.axhline(0, color="k", lw=0.5)
    bars.set(
        xticks=range(len(means)),
        xticklabels=list(means),
        ylabel="nats per datum",
        title="log p(x) = E_q[log p(x|z)] - KL(q || p(z)) + KL(q || p(z|x))",
    )
    bars.legend(loc="upper left", bbox_to_anchor=(0, -0.12), ncol=2, fontsize=8)
    errors = [values[2] for values in means.values()]
    gaps.bar(range(len(errors)), errors, width=0.6, color="C2")
    for i, value in enumerate(errors):
        gaps.text(i, value, _nats(value), ha="center", va="bottom", fontsize=8)
    gaps.axhline(best_diagonal, color="k", ls=":", lw=1, label=f"best diagonal q, {best_diagonal:.4f}")
    gaps.set(
        xticks=range(len(errors)),
        xticklabels=list(means),
        ylabel="nats per datum",
        title="the error KL(q(z|x) || p(z|x)) = log p(x) - ELBO",
    )
    gaps.set_ylim(0, 1.15 * max(errors + [best_diagonal]))
    gaps.legend(loc="upper right", fontsize=8)
    for ax in (bars, gaps):
        ax.tick_params(axis="x", labelrotation=20)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"PPCA (p = 2) on iris at EM's parameters, log p(x) = {log_likelihood:.4f} nats per datum")
    listed = "; ".join(f"{name} {r:.3f} - {-e:.3f} + {_nats(g)}" for name, (r, e, g) in means.items())
    caption = (
        f"The three terms of log p(x) = E_q[log p(x|z)] - KL(q(z|x) || p(z)) + KL(q(z|x) || p(z|x)), in "
        f"closed form and averaged over iris, for each guide's q fitted by SVI ({settings.num_steps} steps, "
        f"8 particles) with PPCA fixed at EM's parameters (log p(x) = {log_likelihood:.4f} nats per datum; "
        f"the terms sum to it within 1e-8 for every flower, checked): {listed}. At EM's rotation of W the "
        f"posterior of z is correlated, so no diagonal q (mean-field, amortised, auto-normal) can pay less "
        f"error than {best_diagonal:.4f} nats (Bishop 2006 sec. 10.1.2), while a full covariance can pay 0."
    )
    return Figure("decomposition.png", "The decomposition of log p(x)", _png(fig), caption)


# The command ----------------------------------------------------------------------------------


def make_figures(settings: Settings, progress: bool = True) -> list[Figure]:
    """Fit everything and draw every figure, in memory; nothing is written."""
    iris = datasets.load("iris")
    with plt.rc_context({"font.size": 9}), tqdm(total=6, desc="figures", disable=not progress) as bar:

        def step(label: str, draw, *args):
            bar.set_postfix_str(label)
            made = draw(*args)
            bar.update()
            return made

        kl = step("KL", kl_figure, settings)
        em_svi, ppca_fit = step("EM vs SVI", em_vs_svi_figure, settings, iris)
        mixture = step("mixture", gmm_figure, settings, iris)
        linear = step("FA and PPCA", linear_gaussian_figure, settings, iris)
        vae = step("VAE", vae_figure_files, settings)
        decomposition = step("decomposition", decomposition_figure, settings, ppca_fit)
    return [kl, em_svi, mixture, linear, *vae, decomposition]
