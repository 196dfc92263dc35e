"""The ``run vae`` job's files and terminal summary, made before anything is written."""

from __future__ import annotations

import io

import pyro
import torch

from gallery.app.runner import arviz_payloads
from gallery.app.vae_run import VAERunResult
from gallery.models import vae
from gallery.report.figures import vae as vae_figures
from gallery.report.outputs import metrics_bytes


def params_bytes(result: VAERunResult) -> bytes:
    """Every fitted parameter as a plain tensor by its param-store name (``decoder$$$net.0.weight``,
    ``noise_variance``, ...), plus the networks' state dicts under ``decoder.`` and ``guide.``;
    loadable with ``torch.load(path, weights_only=True)``."""
    store = pyro.get_param_store()
    flat = {name: store[name].detach().cpu().clone() for name in store.keys()}
    modules = {"decoder": result.decoder, "guide": result.guide}
    for prefix, module in modules.items():
        if isinstance(module, torch.nn.Module):
            flat.update({f"{prefix}.{k}": v.detach().cpu().clone() for k, v in module.state_dict().items()})
    buffer = io.BytesIO()
    torch.save(flat, buffer)
    return buffer.getvalue()


def render(result: VAERunResult) -> dict[str, bytes]:
    metrics, prepared = result.metrics, result.prepared
    heldout_known = prepared.heldout is not None and not isinstance(result.guide, vae_figures.MeanFieldNormal)
    shown, labels, which = (
        (prepared.heldout, prepared.heldout_labels, "held-out")
        if heldout_known
        else (prepared.train, prepared.train_labels, "training")
    )
    lines = {
        "ELBO (train)": metrics["elbo_per_datum"],
        "log p(x) IW (train)": metrics["log_likelihood_per_datum"],
    }
    if metrics["heldout_elbo_per_datum"] is not None:
        lines["ELBO (held out)"] = metrics["heldout_elbo_per_datum"]
    if "closed_form_log_likelihood_per_datum" in metrics:
        lines["PPCA max log p(x) (train)"] = metrics["closed_form_log_likelihood_per_datum"]
    title = f"vae on {metrics['data']}, guide {metrics['guide']}, p = {metrics['latent_dim']}"
    elbo_trace = -result.svi.losses.double() / metrics["num_data"]
    payloads = {
        "metrics.json": metrics_bytes(metrics),
        "params.pt": params_bytes(result),
        "training_curve.png": vae_figures.curve_png(elbo_trace, lines, title),
        "samples.png": vae_figures.samples_png(result.decoder, prepared.image_shape, seed=metrics["seed"]),
        "reconstructions.png": vae_figures.reconstructions_png(
            result.decoder, result.guide, shown, prepared.image_shape
        ),
        "latent.png": vae_figures.latent_png(result.guide, shown, labels, f"latent means of {which} data"),
    }
    config = prepared.config
    if config.arviz:
        payloads |= arviz_payloads(
            vae.model,
            result.guide,
            prepared.train,
            latent="z",
            elbo_per_datum=elbo_trace,
            num_draws=config.arviz_draws,
            decoder=result.decoder,
        )
    return payloads


def summary(metrics: dict) -> str:
    def fmt(value):
        return "" if value is None else f"{value:12.6f}"

    rows = [
        ("initial parameters, train", "log p(x) IW", metrics["initial_log_likelihood_per_datum"]),
        (f"SVI, guide {metrics['guide']}, train", "log p(x) IW", metrics["log_likelihood_per_datum"]),
        (f"SVI, guide {metrics['guide']}, train", "ELBO", metrics["elbo_per_datum"]),
        ("held out", "log p(x) IW", metrics["heldout_log_likelihood_per_datum"]),
        ("held out", "ELBO", metrics["heldout_elbo_per_datum"]),
        ("held out subset", "approx. gap", metrics["approximation_gap_per_datum"]),
        ("held out subset", "amort. gap", metrics["amortisation_gap_per_datum"]),
    ]
    if "closed_form_log_likelihood_per_datum" in metrics:
        rows += [
            ("exact PPCA log p(x) at the fit, train", "log p(x)", metrics["exact_log_likelihood_per_datum"]),
            (
                "closed form (Tipping-Bishop), train",
                "log p(x)",
                metrics["closed_form_log_likelihood_per_datum"],
            ),
        ]
    lines = [
        f"vae on {metrics['data']} (train N={metrics['num_data']}, held out {metrics['num_heldout']}, "
        f"D={metrics['obs_dim']}), {metrics['device']}, {metrics['num_steps']} steps in "
        f"{metrics['svi_seconds']:.1f} s, K={metrics['eval_particles']}, nats per datum",
    ]
    lines += [f"{a:40s} {b:12s} {fmt(c)}" for a, b, c in rows if c is not None]
    return "\n".join(lines)
