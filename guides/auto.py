"""Pyro's own autoguides, set up for the gallery's models.

The only thing added is ``create_plates``: the autoguide's plate over data points is the model's
``"data"`` plate with the same ``subsample`` the training loop passes to the model, so
per-datum autoguide parameters are indexed by the minibatch they describe.
"""

from __future__ import annotations

from collections.abc import Callable

from pyro.infer.autoguide import AutoDelta, AutoNormal
from torch import Tensor

from gallery.models.common import data_plate, resolve_device, resolve_sizes


def _create_plates(
    data: Tensor | None = None,
    *,
    num_data: int | None = None,
    obs_dim: int | None = None,
    subsample: Tensor | None = None,
    subsample_size: int | None = None,
    device=None,
    **model_kwargs,
):
    num_data, _ = resolve_sizes(data, num_data, obs_dim)
    return data_plate(num_data, subsample, subsample_size, resolve_device(data, device))


def auto_normal(model: Callable, **kwargs) -> AutoNormal:
    """``AutoNormal``: q(z_n) = N(loc_n, diag(scale_n^2)) per datum, Pyro's mean-field guide."""
    return AutoNormal(model, create_plates=_create_plates, **kwargs)


def auto_delta(model: Callable, **kwargs) -> AutoDelta:
    """``AutoDelta``: a point mass per datum, i.e. MAP estimates of the local latents. For a
    continuous z its "ELBO" is log p(x, z*), which is not a lower bound on log p(x)."""
    return AutoDelta(model, create_plates=_create_plates, **kwargs)
