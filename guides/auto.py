"""Pyro's own autoguides, set up for the gallery's models.

Two things are added. ``create_plates``: the autoguide's plate over data points is the model's
``"data"`` plate with the same ``subsample`` the training loop passes to the model, so
per-datum autoguide parameters are indexed by the minibatch they describe. And a name: Pyro
names an autoguide's sites after the module's ``_pyro_name`` (``AutoNormal.locs.z``); here it is
``name=`` (default a fresh ``auto_normal.<i>`` on first use), claimed on every call
(:func:`gallery.models.common.claim`), so two autoguides in one session never share sites.
"""

from __future__ import annotations

from collections.abc import Callable

from pyro.infer.autoguide import AutoDelta, AutoNormal
from torch import Tensor

from gallery.models.common import claim, data_plate, free_name, resolve_device, resolve_sizes


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


class _Named:
    """Names the autoguide's sites ``{name}.locs.z``, ... before its first call builds them."""

    def _set_name(self, name: str | None, base: str) -> None:
        self._gallery_name, self._gallery_base = name, base

    def __call__(self, *args, **kwargs):
        if self._gallery_name is None:
            self._gallery_name = free_name(self._gallery_base)
        if self.prototype_trace is None:  # the submodules are named after _pyro_name when built
            self._pyro_name = self._gallery_name
        claim(self._gallery_name, self)
        return super().__call__(*args, **kwargs)


class NamedAutoNormal(_Named, AutoNormal):
    pass


class NamedAutoDelta(_Named, AutoDelta):
    pass


def auto_normal(model: Callable, *, name: str | None = None, **kwargs) -> AutoNormal:
    """``AutoNormal``: q(z_n) = N(loc_n, diag(scale_n^2)) per datum, Pyro's mean-field guide."""
    guide = NamedAutoNormal(model, create_plates=_create_plates, **kwargs)
    guide._set_name(name, "auto_normal")
    return guide


def auto_delta(model: Callable, *, name: str | None = None, **kwargs) -> AutoDelta:
    """``AutoDelta``: a point mass per datum, i.e. MAP estimates of the local latents. For a
    continuous z its "ELBO" is log p(x, z*), which is not a lower bound on log p(x)."""
    guide = NamedAutoDelta(model, create_plates=_create_plates, **kwargs)
    guide._set_name(name, "auto_delta")
    return guide
