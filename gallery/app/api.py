"""The Python API: ``gallery.fit(model, data, guide=..., **settings)`` in a user's own session.

It runs the ``run`` command's pipeline (:func:`gallery.app.pipeline.prepare` and
:func:`~gallery.app.pipeline.fit`) in memory and writes no file, so its numbers are those of
``python -m gallery run`` with the same settings (``metrics`` is what ``metrics.json`` holds).
It does not clear Pyro's param store: the models' and guides' sites are named under their
prefixes (``gmm.loc``, ``gmm.guide_logits``, ...) and claimed (:func:`gallery.models.common.claim`),
so only those sites are replaced, and the fitted values are kept in the returned object too.

    fitted = gallery.fit("gmm", "iris", guide="mean-field", num_steps=500)
    fitted.log_prob(x)          # (N,) exact log p(x_n); the VAE: importance-weighted
    fitted.posterior(x)         # p(c | x) or p(z | x) (the VAE: q(z | x)), a distribution
    fitted.sample(10)           # (10, D) new x from the fitted generative process
    fitted.save("gmm.pt"); gallery.Fitted.load("gmm.pt")
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import Tensor

import guides
from gallery.app import pipeline, vae_job
from gallery.app.config import RunConfig, flat, make_config, with_settings
from gallery.app.stages import elbo_trace
from gallery.data import Dataset, check_data
from gallery.models import MODELS
from inference.em import EMResult
from inference.importance import importance_estimate

FORMAT = "gallery.fit/1"


def fit(model: str, data: str | Path | Tensor | np.ndarray = None, *, guide: str | None = None, **settings):
    """Fit ``model`` (``"gmm"``, ``"factor-analysis"``, ``"ppca"``, ``"vae"``) to ``data`` by SVI
    with ``guide``, and the EM models by exact EM from the same start, as ``python -m gallery
    run`` does with the same settings.

    :param data: a bundled name (``"iris"``, ``"digits"``), a ``.npy``/``.npz``/``.csv`` path,
        or an (N, D) tensor or array (read as float64, then converted to ``dtype``); ``None``:
        the command line's default (iris; the VAE digits).
    :param guide: a name of :data:`guides.registry.GUIDES`; ``None``: ``"exact"`` (the VAE
        ``"amortised"``).
    :param settings: the command line's settings by their Python names (``num_steps=500``,
        ``components=3``, ``latent_dim=2``, ``seed=0``, ``lr=...``, ``standardize=True``, ...).
    :returns: a :class:`Fitted`. Raises ``ValueError`` with what to change.
    """
    dataset = None
    if data is not None and not isinstance(data, (str, Path)):
        kind = "tensor" if isinstance(data, Tensor) else "array"
        rows = torch.as_tensor(np.asarray(data.detach().cpu() if isinstance(data, Tensor) else data))
        dataset = Dataset(kind, check_data(rows.to(torch.float64), name=f"the data {kind}"))
        data = kind
    config = make_config(model, guide=guide, data=None if data is None else str(data), **settings)
    result = pipeline.fit(pipeline.prepare(config, dataset=dataset))
    return Fitted.from_result(result)


@dataclass
class Fitted:
    """A fitted model: its parameters, SVI's ELBO trace, the run's metrics and EM's fit beside it.

    ``params``: the model's parameters dataclass at the SVI fit (the VAE: its decoder);
    ``elbo_trace``: (num_steps,) SVI's ELBO per datum at each step; ``metrics``: the keys and
    values of ``metrics.json``; ``em``: exact EM from the same start (``None`` for the VAE)."""

    model: str
    settings: dict  # every setting by its flat name, plain types
    params: object
    elbo_trace: Tensor
    metrics: dict
    em: EMResult | None
    sizes: dict  # the model's keyword arguments besides data: num_components, latent_dim, ...
    sites: dict[str, Tensor]  # the param store's values of the model's sites at the fit
    guide_sites: dict[str, Tensor]  # and of the guide's
    guide: Callable | None = None
    data: Tensor | None = field(default=None, repr=False)  # the training rows (in this session)

    @classmethod
    def from_result(cls, result: pipeline.RunResult) -> Fitted:
        config, setup = result.prepared.config, result.setup
        module = MODELS[config.model]
        sizes = {k: v for k, v in setup.model_kwargs.items() if k != "init"}
        rows = result.prepared.data
        rows = rows if isinstance(rows, Tensor) else rows.rows(torch.arange(1))  # a mapped file: one row
        sites = param_sites(module.model, rows, setup.model_kwargs)
        guide_sites = param_sites(setup.guide, rows, setup.model_kwargs)
        fitted = result.fitted
        return cls(
            config.model,
            _plain(flat(config)),
            sizes["decoder"] if config.is_vae else fitted.svi_params,
            elbo_trace(result),
            result.metrics,
            None if config.is_vae else fitted.em,
            sizes,
            sites,
            guide_sites,
            setup.guide,
            result.prepared.data,
        )

    @property
    def module(self):
        return MODELS[self.model]

    def log_prob(self, x: Tensor | np.ndarray, *, seed: int | None = None) -> Tensor:
        """(N,) log p(x_n): exact, in float64, for the EM models; for the VAE the importance-weighted
        estimate with ``eval_particles`` samples of its guide (seeded by ``seed``, default the
        fit's seed; a mean-field guide knows q only for the training rows)."""
        x = self._rows(x)
        if self.model != "vae":
            return self.module.log_likelihood(x.double(), self.params.to(torch.float64))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.settings["seed"] if seed is None else seed)
            estimate = importance_estimate(
                self._model(), self._guide(), x, num_samples=self.settings["eval_particles"], **self.sizes
            )
        return estimate.log_likelihood

    def posterior(self, x: Tensor | np.ndarray) -> dist.Distribution:
        """The posterior of the local latent for each row of ``x`` (N, D): ``Categorical`` p(c_n | x_n)
        (``.probs`` the responsibilities, (N, K)) or ``MultivariateNormal`` p(z_n | x_n) (``.loc``
        (N, p), ``.scale_tril``); for mfa and mppca p(z_n | x_n) = sum_k p(c_n = k | x_n) p(z_n | x_n,
        c_n = k), a ``MixtureSameFamily`` (``.mixture_distribution.probs`` (N, K), its
        ``.component_distribution`` (N, K) Gaussians); for the VAE its amortised q(z_n | x_n)."""
        x = self._rows(x)
        if self.model == "vae":
            if not isinstance(self.guide, guides.AmortisedNormal | guides.AmortisedFlow):
                raise ValueError("posterior(x) needs an amortised guide; fit the vae with guide='amortised'")
            with torch.no_grad():
                return self.guide.encode(x)
        params = self.params.to(x.dtype)
        if getattr(self.module, "LATENTS", None) == ("c", "z"):
            log_q, loc, scale_tril = self.module.posterior(x, params)  # (N, K), (N, K, p), (K, p, p)
            components = dist.MultivariateNormal(loc, scale_tril=scale_tril.expand(*loc.shape, -1))
            return dist.MixtureSameFamily(dist.Categorical(logits=log_q), components)
        if self.module.LATENT == "c":
            return dist.Categorical(logits=self.module.posterior(x, params))
        loc, scale_tril = self.module.posterior(x, params)
        return dist.MultivariateNormal(loc, scale_tril=scale_tril)

    @torch.no_grad()
    def sample(self, num: int, *, seed: int | None = None) -> Tensor:
        """(num, D) new x drawn from the fitted generative process: the model function called with
        ``data=None`` and its parameters set to the fitted values (``poutine.substitute``)."""
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            obs_dim = self.metrics["obs_dim"]
            if self.model == "vae":
                return self._model()(None, num_data=num, **self.sizes)
            return self._model()(None, num_data=num, obs_dim=obs_dim, **self.sizes)

    def to_arviz(self, *, num_draws: int | None = None):
        """The ``--arviz`` data set: posterior draws of the local latents on the training rows and
        the ELBO trace (:func:`gallery.report.arviz_export.export`)."""
        from gallery.report import arviz_export

        if self.data is None or self.guide is None:
            raise ValueError("to_arviz() needs the fit of this session; a loaded fit has no training data")
        return arviz_export.export(
            self._model(),
            self._guide(),
            self.data,
            latent=self.module.LATENT,
            elbo_per_datum=self.elbo_trace,
            num_draws=self.settings["arviz_draws"] if num_draws is None else num_draws,
            **self.sizes,
        )

    def save(self, path: str | Path) -> None:
        """Plain tensors by name and the settings as plain types (``torch.load(weights_only=True)``
        reads it); :meth:`load` gives a fit with the same ``log_prob``."""
        payload = {
            "format": FORMAT,
            "model": self.model,
            "settings": self.settings,
            "metrics": self.metrics,
            "sizes": {k: v for k, v in self.sizes.items() if k != "decoder"},
            "elbo_trace": self.elbo_trace,
            "sites": self.sites,
            "guide_sites": self.guide_sites,
        }
        if self.model == "vae":
            payload["decoder"] = self.params.state_dict()
            if isinstance(self.guide, torch.nn.Module):
                payload["guide"] = {"name": self.guide.name, "state": self.guide.state_dict()}
        else:
            payload["params"] = self.params.as_dict()
            em = self.em
            payload["em"] = {
                "params": em.params.as_dict(),
                "log_likelihoods": em.log_likelihoods,
                "converged": em.converged,
                "num_iters": em.num_iters,
                "seconds": em.seconds,
            }
        torch.save(payload, path)

    @classmethod
    def load(cls, path: str | Path) -> Fitted:
        """The fit :meth:`save` wrote."""
        payload = torch.load(path, weights_only=True)
        if payload.get("format") != FORMAT:
            raise ValueError(f"{str(path)!r} is not a fit saved by Fitted.save")
        model, settings, sizes = payload["model"], payload["settings"], dict(payload["sizes"])
        guide, em = None, None
        if model == "vae":
            saved_guide = payload.get("guide")
            decoder, guide = _networks(
                settings, payload["metrics"]["obs_dim"], None if saved_guide is None else saved_guide["name"]
            )
            decoder.load_state_dict(payload["decoder"])
            sizes["decoder"] = params = decoder
            if guide is not None:
                guide.load_state_dict(saved_guide["state"])
        else:
            params_class = MODELS[model].Params
            params = params_class.from_dict(payload["params"])
            saved = payload["em"]
            em = EMResult(
                params_class.from_dict(saved["params"]),
                saved["log_likelihoods"],
                saved["converged"],
                saved["num_iters"],
                saved["seconds"],
            )
        return cls(
            model,
            settings,
            params,
            payload["elbo_trace"],
            payload["metrics"],
            em,
            sizes,
            payload["sites"],
            payload["guide_sites"],
            guide,
        )

    def _model(self) -> Callable:
        """The model function with the fitted values of its sites, leaving the param store as is."""
        return poutine.substitute(self.module.model, data=self.sites)

    def _guide(self) -> Callable:
        if self.guide is None:
            raise ValueError("this loaded fit has no guide to sample from; refit it in this session")
        return poutine.substitute(self.guide, data=self.guide_sites)

    def _rows(self, x: Tensor | np.ndarray) -> Tensor:
        """``x`` (N, D) as a tensor in the fit's dtype, on its device."""
        x = torch.as_tensor(x)
        dtype = torch.float64 if self.model != "vae" else getattr(torch, self.settings["dtype"])
        return check_data(x.to(device=self.settings["device"], dtype=dtype), name="x")


def param_sites(fn: Callable, data: Tensor, kwargs: dict) -> dict[str, Tensor]:
    """The (constrained) values of the ``pyro.param`` sites that one call of ``fn`` reads, detached
    copies, except a ``pyro.module``'s (``name$$$weight``), whose module holds them; the call's
    random draws leave the caller's generator as it was."""
    with torch.random.fork_rng(devices=[]), poutine.trace(param_only=True) as capture:
        fn(data, **kwargs)
    nodes = capture.trace.nodes.items()
    return {name: site["value"].detach().clone() for name, site in nodes if "$$$" not in name}


def _plain(settings: dict) -> dict:
    """Settings as plain types (tuples as lists), for ``torch.load(weights_only=True)``."""
    return {key: list(value) if isinstance(value, tuple) else value for key, value in settings.items()}


def _networks(settings: dict, obs_dim: int, guide_name: str | None):
    """The VAE's decoder and (with ``guide_name``) encoder as the run built them, in the fit's
    dtype and on its device, for their saved state dicts (:mod:`gallery.app.vae_job`)."""
    config = with_settings(RunConfig(model="vae"), **settings)
    where = dict(dtype=getattr(torch, settings["dtype"]), device=settings["device"])
    decoder = vae_job.make_decoder(config, obs_dim).to(**where)
    encoder = (
        None if guide_name is None else vae_job.make_encoder(config, obs_dim, name=guide_name).to(**where)
    )
    return decoder, encoder


__all__ = ["Fitted", "fit"]
