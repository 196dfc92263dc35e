"""The ``run`` job's result files as bytes (metrics, parameters, the training curve), made
before anything is written; :mod:`gallery.report.atomic` writes them. matplotlib is imported
only when a figure is drawn."""

from __future__ import annotations

import io
import json
import math
from dataclasses import asdict, is_dataclass

import torch
from torch import Tensor


def metrics_bytes(metrics: dict) -> bytes:
    """JSON with non-finite numbers refused: a NaN in results is a bug, not a result."""
    for key, value in metrics.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"metric {key} is {value}; refusing to write non-finite results")
    return (json.dumps(metrics, indent=2) + "\n").encode()


def flat_params(**named_params) -> dict[str, Tensor]:
    """Parameter dataclasses (or dicts) as plain tensors by prefixed name: ``{"svi.loc": ...}``."""
    flat = {}
    for prefix, params in named_params.items():
        fields = asdict(params) if is_dataclass(params) else dict(params)
        for name, tensor in fields.items():
            if tensor is not None:
                flat[f"{prefix}.{name}"] = tensor.detach().cpu()
    return flat


def module_params(**modules) -> dict[str, Tensor]:
    """Every tensor of Pyro's param store by its name, plus each ``nn.Module``'s state dict under
    its role (``decoder.net.0.weight``, ``guide.…``)."""
    import pyro

    store = pyro.get_param_store()
    flat = {name: store[name].detach().cpu().clone() for name in store.keys()}
    for prefix, module in modules.items():
        if isinstance(module, torch.nn.Module):
            flat.update({f"{prefix}.{k}": v.detach().cpu().clone() for k, v in module.state_dict().items()})
    return flat


def params_bytes(tensors: dict[str, Tensor]) -> bytes:
    """``params.pt``: plain tensors by name, loadable with ``torch.load(path, weights_only=True)``."""
    buffer = io.BytesIO()
    torch.save(tensors, buffer)
    return buffer.getvalue()


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curve_png(
    elbo_per_datum: Tensor,
    title: str,
    *,
    lines: dict[str, float] | None = None,
    em_log_likelihoods: Tensor | None = None,
) -> bytes:
    """SVI's ELBO per datum at each step (num_steps,), minibatch estimates, with the final
    estimates ``lines`` as horizontal lines. With EM's log p(x)/N per iteration
    ``em_log_likelihoods`` (iterations,): that in a left panel, and its last value as a line."""
    plt = pyplot()
    lines = dict(lines or {})
    if em_log_likelihoods is None:
        fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
    else:
        fig, (left, ax) = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
        left.plot(em_log_likelihoods.numpy(), marker=".", color="C1")
        left.set(xlabel="EM iteration", ylabel="log p(x) per datum", title="exact EM")
        lines["EM log p(x)"] = float(em_log_likelihoods[-1])
    ax.plot(elbo_per_datum.numpy(), lw=0.7, color="C0", label="ELBO per step (minibatch estimate)")
    for i, (label, value) in enumerate(lines.items()):
        ax.axhline(value, color=f"C{i + 1}", ls="--", lw=1, label=f"{label}: {value:.4f}")
    low = float(torch.quantile(elbo_per_datum.float(), 0.05))
    high = max([float(elbo_per_datum.max()), *lines.values()])
    ax.set_ylim(low - 0.05 * abs(high - low), high + 0.05 * abs(high - low) + 1e-9)
    ax.set(
        xlabel="SVI step", ylabel="nats per datum", title="SVI" if em_log_likelihoods is not None else title
    )
    ax.legend(loc="lower right", fontsize=8)
    if em_log_likelihoods is not None:
        fig.suptitle(title)
    return png_bytes(fig)


def png_bytes(fig, dpi: int = 110) -> bytes:
    """``fig`` as PNG bytes, at ``dpi``; the figure is closed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    pyplot().close(fig)
    return buffer.getvalue()


__all__ = [
    "curve_png",
    "flat_params",
    "metrics_bytes",
    "module_params",
    "params_bytes",
    "png_bytes",
    "pyplot",
]
