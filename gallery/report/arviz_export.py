"""Posterior draws and the ELBO trace as an ArviZ data set, written to netCDF.

Groups: ``posterior`` holds draws of the local latents, dims (chain, draw, data[, latent]):
z_n ~ q(z | x_n) from the fitted guide for the continuous models, and for the mixture the
cluster assignments c_n drawn from p(c_n | x_n; lambda) by Pyro's ``infer_discrete`` on the
fitted model. ``constant_data`` holds the SVI ELBO per datum per step (dim step) and, for the
mixture, the most probable assignment of each point (``infer_discrete`` at temperature 0).

Works with ArviZ 0.23 (``InferenceData``) and 1.x (an xarray ``DataTree``); only API present in
both is used: xarray data sets, ``to_netcdf``, ``arviz.summary``.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyro
import torch
import xarray as xr
from pyro import poutine
from pyro.infer import infer_discrete
from torch import Tensor

with warnings.catch_warnings():  # ArviZ 0.23 announces its 1.0 refactor on import
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az


@torch.no_grad()
def guide_draws(guide: Callable, data: Tensor, site: str, num_draws: int, **kwargs) -> Tensor:
    """(num_draws, N, ...) samples of ``site`` from the guide, one guide call per draw."""
    draws = [poutine.trace(guide).get_trace(data, **kwargs).nodes[site]["value"] for _ in range(num_draws)]
    return torch.stack(draws)


@torch.no_grad()
def assignment_draws(model: Callable, data: Tensor, num_draws: int, temperature: int = 1, **kwargs) -> Tensor:
    """(num_draws, N) cluster assignments from p(c | x) under the model's current parameters
    (``temperature=0``: the most probable one), by ``infer_discrete``."""
    sampler = infer_discrete(model, first_available_dim=-2, temperature=temperature)
    return torch.stack(
        [poutine.trace(sampler).get_trace(data, **kwargs).nodes["c"]["value"] for _ in range(num_draws)]
    )


def build(draws: dict[str, Tensor], elbo_per_datum: Tensor, extra: dict[str, Tensor] | None = None):
    """An ArviZ data set from ``draws`` {name: (draws, N[, p])} and the (steps,) ELBO trace."""
    posterior = {}
    for name, value in draws.items():
        dims = ("chain", "draw", "data", "latent")[: value.dim() + 1]
        posterior[name] = (dims, value.detach().cpu().numpy()[None])
    num_draws = next(iter(draws.values())).shape[0]
    posterior_ds = xr.Dataset(posterior, coords={"chain": [0], "draw": np.arange(num_draws)})
    constant = {"elbo_per_datum": (("step",), elbo_per_datum.detach().double().cpu().numpy())}
    for name, value in (extra or {}).items():
        constant[name] = (("data",), value.detach().cpu().numpy())
    constant_ds = xr.Dataset(constant)
    if hasattr(az, "InferenceData"):  # ArviZ 0.x
        return az.InferenceData(posterior=posterior_ds, constant_data=constant_ds)
    return xr.DataTree.from_dict({"posterior": posterior_ds, "constant_data": constant_ds})


def netcdf_bytes(dataset) -> bytes:
    """The data set as the bytes of a netCDF-4 file (written to a scratch file and read back)."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "posterior.nc")
        dataset.to_netcdf(path)
        return Path(path).read_bytes()


def summary_csv(dataset) -> bytes:
    """ArviZ's summary statistics (mean, sd, HDI) of every posterior variable, as CSV."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = az.summary(dataset, kind="stats")
    return table.to_csv().encode()


def load(path: str | Path):
    """Open a file written by :func:`netcdf_bytes` with the installed ArviZ."""
    opener = getattr(az, "from_netcdf", None)
    return opener(str(path)) if opener is not None else xr.open_datatree(str(path))


def export(
    model: Callable,
    guide: Callable,
    data: Tensor,
    *,
    latent: str,
    elbo_per_datum: Tensor,
    num_draws: int,
    **kwargs,
):
    """The ArviZ data set of a fitted model and guide: ``latent`` is ``"c"`` (mixture) or ``"z"``."""
    pyro.set_rng_seed(0)
    if latent == "c":
        draws = {"c": assignment_draws(model, data, num_draws, **kwargs)}
        mode = assignment_draws(model, data, 1, temperature=0, **kwargs)[0]
        return build(draws, elbo_per_datum, {"c_map": mode})
    return build({"z": guide_draws(guide, data, "z", num_draws, **kwargs)}, elbo_per_datum)


__all__ = ["assignment_draws", "build", "export", "guide_draws", "load", "netcdf_bytes", "summary_csv"]
