"""The lecture's figures, redrawn from models fitted here: each builder fits what it needs on
the bundled data and returns a :class:`Figure` (PNG bytes and a caption whose numbers come from
those fits). ``python -m gallery figures`` (:mod:`gallery.app.figures`) writes them.

1. ``kl_gaussians.png``: KL(N(0, 1) || N(mu, 1)) = mu^2 / 2 against Monte Carlo estimates;
2. ``em_vs_svi.png``: exact EM beside SVI (exact and mean-field guides) on PPCA, one start;
3. ``gmm_ellipses.png``: the mixture on iris' petal length and width, 1- and 2-sigma ellipses;
4. ``factor_analysis_ppca.png``: loadings and E[z | x] of factor analysis and PPCA on iris;
5. ``vae_samples.png``, ``vae_reconstructions.png``, ``vae_latent.png``: the VAE on the digits;
6. ``decomposition.png``: log p(x) = E_q[log p(x|z)] - KL(q || p(z)) + KL(q || p(z|x)) per guide;
7. ``vem.png``: variational EM with the exact and the mean-field q.

Figures 3 to 5 are in :mod:`gallery.report.figures.models`.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pyro  # noqa: E402
import pyro.distributions as dist  # noqa: E402
import torch  # noqa: E402
from pyro import poutine  # noqa: E402
from torch import Tensor  # noqa: E402

from gallery.data import datasets  # noqa: E402
from gallery.models import factor_analysis, linear_gaussian, ppca  # noqa: E402
from gallery.report import outputs  # noqa: E402
from gallery.report.figures import FILES, LATENT_DIM, Figure, Settings  # noqa: E402, F401
from guides.registry import make_guide  # noqa: E402
from inference.em import EMResult, em_linear_gaussian, ppca_max_log_likelihood  # noqa: E402
from inference.evaluate import decompose, decomposition_terms, gaussian_kl  # noqa: E402
from inference.svi import fit_svi  # noqa: E402
from inference.vem import run_vem  # noqa: E402

IRIS_COLUMNS = ("sepal length", "sepal width", "petal length", "petal width")
IRIS_SPECIES = ("setosa", "versicolor", "virginica")
DECOMPOSITION_GUIDES = ("exact", "mean-field", "amortised", "amortised-full", "auto-normal")


# Figures ---------------------------------------------------------------------------------------


png_bytes = functools.partial(outputs.png_bytes, dpi=120)  # the lecture's figures, a little finer


def _check_em_never_falls(result: EMResult, what: str) -> None:
    """EM's log p(x) may not drop between iterations (Dempster et al. 1977); 1e-10 nats per
    datum allows float64 rounding of a sum of 150 terms of a few nats, nothing more."""
    drops = result.log_likelihoods.diff()
    if bool((drops < -1e-10).any()):
        step = int((drops < -1e-10).nonzero()[0])
        raise RuntimeError(
            f"EM lowered the log-likelihood of {what} at iteration {step + 1} by {-float(drops[step]):.3g}"
        )


def checked_em(fit, data: Tensor, init, settings: Settings, what: str) -> EMResult:
    with warnings.catch_warnings():  # a stop before tol is reported in the caption instead
        warnings.simplefilter("ignore")
        result = fit(data, init, max_iters=settings.em_iters, tol=1e-8)
    _check_em_never_falls(result, what)
    return result


def nats(value: float) -> str:
    """Four decimals, without the sign of a rounding error around 0."""
    return f"{value:.4f}".replace("-0.0000", "0.0000")


def em_stop(result: EMResult) -> str:
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
    return Figure("kl_gaussians.png", "KL divergence between two Gaussians", png_bytes(fig), caption)


@dataclass(frozen=True)
class PPCAFit:
    data: Tensor  # (150, 4) iris on the device, float64
    em: EMResult


def em_vs_svi_figure(settings: Settings, iris: datasets.Dataset) -> tuple[Figure, PPCAFit]:
    """PPCA (p = 2) on iris from one start: EM's log p(x) per iteration beside SVI's ELBO per
    step with the exact and the mean-field guide."""
    data = iris.data.to(settings.device)
    init = ppca.init_params(data, LATENT_DIM, generator=torch.Generator().manual_seed(settings.seed))
    em = checked_em(em_linear_gaussian, data, init, settings, "PPCA")
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
            compile=settings.compile,
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
        f"reaches {float(em.log_likelihoods[-1]):.4f} in {em_stop(em)}; SVI with the exact guide, "
        f"whose ELBO is log p(x), reaches {exact_ll:.4f} in {settings.num_steps} steps, and with the "
        f"mean-field guide an ELBO of {float(mf.elbo.mean()):.4f} at log p(x) = "
        f"{float(mf.log_likelihood.mean()):.4f} (closed forms at the end). The dashed line is the "
        f"closed-form maximum {best:.4f}."
    )
    return Figure("em_vs_svi.png", "EM against SVI", png_bytes(fig), caption), PPCAFit(data, em)


def vem_figure(settings: Settings, iris: datasets.Dataset) -> Figure:
    """Variational EM (inference.vem) on factor analysis, iris, p = 2, from one start: the exact
    family (= EM) and the mean-field family; log p(x) per iteration, and F after every half-step
    with log p(x) above it for the mean-field run."""
    init = factor_analysis.init_params(
        iris.data, LATENT_DIM, generator=torch.Generator().manual_seed(settings.seed)
    )
    iters = min(settings.em_iters, 60)
    with warnings.catch_warnings():  # a fixed number of iterations, tol=0: "not converged" is expected
        warnings.simplefilter("ignore")
        runs = {
            family: run_vem(iris.data, init, family=family, max_iters=iters, tol=0.0)
            for family in ("exact", "mean-field")
        }
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for family, style in (("exact", {"color": "C1"}), ("mean-field", {"color": "C0", "ls": "--"})):
        left.plot(runs[family].log_likelihoods.numpy(), label=f"{family} q", **style)
    left.set(xlabel="iteration", ylabel="log p(x) per datum", title="variational EM: log p(x)")
    left.legend(loc="lower right")
    mean_field = runs["mean-field"]
    ll, bound = mean_field.log_likelihoods, mean_field.elbos  # (T+1,), (2T+1,): E0, M1, E1, M2, ...
    after_e = ll - bound[0::2]  # log p(x; lambda_t) - F(q_t, lambda_t)
    after_m = ll[1:] - bound[1::2]  # log p(x; lambda_t+1) - F(q_t, lambda_t+1)
    right.semilogy(after_e.clamp_min(1e-12).numpy(), "C0.-", ms=3, label="after the E-step")
    right.semilogy((torch.arange(len(after_m)) + 1).numpy(), after_m.clamp_min(1e-12).numpy(), "C3x", ms=4,
                   label="after the M-step")  # fmt: skip
    right.set(xlabel="iteration", ylabel="log p(x) - F per datum", title="mean-field q: the gap to log p(x)")
    right.legend(loc="upper right")
    exact_rise = float(runs["exact"].log_likelihoods.diff().min())
    mf_rise = float(mean_field.log_likelihoods.diff().min())
    f_rise = float(mean_field.elbos.diff().min())
    gap = float(mean_field.log_likelihoods[-1] - mean_field.elbos[-1])
    caption = (
        f"Variational EM on factor analysis (iris, p = 2) from one start, {iters} iterations. With the "
        f"exact posterior as q, VEM is EM: log p(x) never falls (smallest change {exact_rise:+.2e}) and "
        f"reaches {nats(float(runs['exact'].log_likelihoods[-1]))}. With mean-field q only the bound F is "
        f"guaranteed to rise at every E- and M-step (smallest change {f_rise:+.2e}); log p(x) has no such "
        f"guarantee (here its smallest change was {mf_rise:+.2e}), it reaches "
        f"{nats(float(mean_field.log_likelihoods[-1]))}, and F ends {gap:.1e} below it. For these models a "
        "rotation of the loadings makes the posterior factorise at the maximum, so mean-field q loses "
        "speed, not the limit (tests/inference/test_vem.py)."
    )
    return Figure("vem.png", "Variational EM with exact and mean-field q", png_bytes(fig), caption)


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
                compile=settings.compile,
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
        gaps.text(i, value, nats(value), ha="center", va="bottom", fontsize=8)
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
    listed = "; ".join(f"{name} {r:.3f} - {-e:.3f} + {nats(g)}" for name, (r, e, g) in means.items())
    caption = (
        f"The three terms of log p(x) = E_q[log p(x|z)] - KL(q(z|x) || p(z)) + KL(q(z|x) || p(z|x)), in "
        f"closed form and averaged over iris, for each guide's q fitted by SVI ({settings.num_steps} steps, "
        f"8 particles) with PPCA fixed at EM's parameters (log p(x) = {log_likelihood:.4f} nats per datum; "
        f"the terms sum to it within 1e-8 for every flower, checked): {listed}. At EM's rotation of W the "
        f"posterior of z is correlated, so no diagonal q (mean-field, amortised, auto-normal) can pay less "
        f"error than {best_diagonal:.4f} nats (Bishop 2006 sec. 10.1.2), while a full covariance can pay 0."
    )
    return Figure("decomposition.png", "The decomposition of log p(x)", png_bytes(fig), caption)
