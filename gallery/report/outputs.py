"""The ``run`` job's result files as bytes (metrics, parameters, the training curve), made
before anything is written; :mod:`gallery.report.atomic` writes them."""

from __future__ import annotations

import io
import json
import math
from dataclasses import asdict, is_dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def metrics_bytes(metrics: dict) -> bytes:
    """JSON with non-finite numbers refused: a NaN in results is a bug, not a result."""
    for key, value in metrics.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"metric {key} is {value}; refusing to write non-finite results")
    return (json.dumps(metrics, indent=2) + "\n").encode()


def params_bytes(**named_params) -> bytes:
    """Parameters as plain tensors by name (``{"svi.loc": ..., "em.loc": ...}``), loadable with
    ``torch.load(path, weights_only=True)``."""
    flat = {}
    for prefix, params in named_params.items():
        fields = asdict(params) if is_dataclass(params) else dict(params)
        for name, tensor in fields.items():
            if tensor is not None:
                flat[f"{prefix}.{name}"] = tensor.detach().cpu()
    buffer = io.BytesIO()
    torch.save(flat, buffer)
    return buffer.getvalue()


def curve_png(svi_elbo_per_datum: torch.Tensor, em_log_likelihoods: torch.Tensor, title: str) -> bytes:
    """Left: EM's log p(x)/N per iteration. Right: SVI's ELBO/N per step (minibatch estimate)
    with EM's final log p(x)/N as a line."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
    left.plot(em_log_likelihoods.numpy(), marker=".", color="C1")
    left.set(xlabel="EM iteration", ylabel="log p(x) per datum", title="exact EM")
    right.plot(svi_elbo_per_datum.numpy(), lw=0.8, color="C0", label="SVI ELBO (estimate)")
    right.axhline(float(em_log_likelihoods[-1]), color="C1", ls="--", label="EM log p(x)")
    low = float(torch.quantile(svi_elbo_per_datum.float(), 0.05))
    high = max(float(svi_elbo_per_datum.max()), float(em_log_likelihoods[-1]))
    right.set_ylim(low - 0.05 * abs(high - low), high + 0.05 * abs(high - low) + 1e-9)
    right.set(xlabel="SVI step", ylabel="per datum", title="SVI")
    right.legend(loc="lower right")
    fig.suptitle(title)
    return png_bytes(fig)


def png_bytes(fig, dpi: int = 110) -> bytes:
    """``fig`` as PNG bytes, at ``dpi``; the figure is closed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return buffer.getvalue()
