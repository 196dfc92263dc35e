"""The protocol every model module follows.

A model is one module (``gallery.models.gmm``, ``factor_analysis``, ``ppca``, ``vae``) that owns
everything about it. The generic code (``inference.fit_em``, ``run_vem``, ``decompose``,
``log_likelihood``, the guide registry) calls only the names below, on the module that
:func:`gallery.models.owner` finds for a parameters object; it never tests the type of a
model's parameters. Adding a model is adding one module with these names and listing it once in
:data:`gallery.models.MODELS`.

Every model module has:

- ``NAME``: its command-line name (``"gmm"``, ``"factor-analysis"``, ...);
- ``LATENT``: ``"c"`` (a discrete component, enumerated) or ``"z"`` (continuous, Gaussian q);
- ``PREFIX``: the default ``name=`` of its ``pyro.param`` / ``pyro.module`` sites
  (``"factor_analysis"`` gives ``factor_analysis.loc``, ...);
- ``model(data=None, *, ..., init=None, name=PREFIX, subsample=None, subsample_size=None,
  device=None)``: the Pyro model function. An explicit ``init`` always wins: sites created from
  another object are dropped and created again from it (:func:`gallery.models.common.claim`).

A model with point-estimated parameters and an exact answer (every model but the VAE) also has:

- ``Params``: its parameters' frozen dataclass (``.to()``); ``owns(params) -> bool``;
- ``init_params(data, size, *, generator=None, **options) -> Params``: the starting point;
- ``current_params(name=PREFIX) -> Params``: the fitted parameters read back from the store
  (``ValueError`` when there are none);
- ``posterior_guide``: the exact posterior as a guide, with the model's signature and sites;
- ``log_likelihood(data, params) -> (N,)``: the exact log p(x_n);
- ``posterior(data, params)``: the exact posterior's parameters per datum: log responsibilities
  (N, K) for ``"c"``, ``(loc (N, p), scale_tril (p, p))`` for ``"z"``;
- ``mean_field_posterior(data, params)``: the best factorised q's: the same (N, K) for ``"c"``,
  ``(loc (N, p), scale (p,))`` for ``"z"``;
- ``em_steps(data, init, **options) -> EMSteps``: exact EM's steps for ``inference.run_em``;
- ``bound_terms(data, params, q) -> (log p(x_n), ELBO_n, KL_n)``, each (N,), for a guide's q on
  ``LATENT`` given as ``posterior`` gives it (log q (N, K); (loc, scale_tril (N, p, p))), or
  ``None`` (the model sums the latent out itself);
- ``vem_e_step(data, params, family) -> q``, ``free_energy(data, q, params) -> (N,)`` and
  ``vem_objective(data, q, params, *, reg_covar) -> (objective, start, unpack)``: variational
  EM's pieces (``inference.vem`` maximises ``objective(*raw)`` from ``start`` and returns
  ``unpack(*raw)``).
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any, NamedTuple

REQUIRED = ("NAME", "LATENT", "PREFIX", "model")
EXACT = (
    "Params",
    "owns",
    "init_params",
    "current_params",
    "posterior_guide",
    "log_likelihood",
    "posterior",
    "mean_field_posterior",
    "em_steps",
    "bound_terms",
    "vem_e_step",
    "free_energy",
    "vem_objective",
)


class EMSteps(NamedTuple):
    """What ``inference.run_em`` alternates: ``e_step(data, params) -> (stats, mean log p(x))``
    and ``m_step(data, stats) -> params`` on ``data`` (the model's form of it, e.g. moments);
    ``finish()`` runs once after the loop (checks left pending to avoid host syncs)."""

    data: Any
    e_step: Callable[[Any, Any], tuple[Any, Any]]
    m_step: Callable[[Any, Any], Any]
    finish: Callable[[], None] = lambda: None


def missing(module: ModuleType, exact: bool = True) -> list[str]:
    """The protocol names ``module`` lacks (``exact=False``: only those every model needs)."""
    names = REQUIRED + (EXACT if exact else ())
    return [name for name in names if not hasattr(module, name)]
