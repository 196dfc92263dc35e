"""The protocol every model module follows, and the one place that finds a model's module.

A model is one module (``gallery.models.gmm``, ``factor_analysis``, ``ppca``, ``vae``) that owns
everything about it. The generic code (``inference.run_em``, ``run_vem``, ``decompose``,
``log_likelihood``, the command line) calls only the names below; it never tests the type of a
model's parameters. Adding a model is adding one module with these names and listing it once in
:data:`gallery.models.MODELS`.

Every model module has:

- ``NAME``: its command-line name (``"gmm"``, ``"factor-analysis"``, ...);
- ``LATENT``: ``"c"`` (a discrete component, enumerated) or ``"z"`` (continuous);
- ``PREFIX``: the default ``name=`` of its ``pyro.param`` / ``pyro.module`` sites
  (``"factor_analysis"`` gives ``factor_analysis.loc``, ...);
- ``model(data=None, *, ..., init=None, name=PREFIX, subsample=None, subsample_size=None,
  device=None)``: the Pyro model function.

A model with point-estimated parameters and an exact answer (every model but the VAE) also has:

- ``Params``: its parameters' frozen dataclass (``.to()``);
- ``init_params(data, size, *, generator=None, **options) -> Params``: the starting point;
- ``current_params(name=PREFIX) -> Params``: the fitted parameters read back from the store;
- ``posterior_guide``: the exact posterior as a guide, with the model's signature;
- ``log_likelihood(data, params) -> (N,)``: the exact log p(x_n);
- ``em(data, init, **run_em_kwargs) -> EMResult``: exact EM by the generic loop;
- ``posterior(data, params)``: the exact posterior's parameters, per datum;
- ``bound_terms(data, params, q) -> (log p(x_n), ELBO_n, KL_n)``, each (N,), for a guide's
  distribution ``q`` on the site ``LATENT`` (or ``None``: the model sums it out itself);
- ``vem_e_step(data, params, family)``, ``free_energy(data, q, params) -> (N,)`` and
  ``vem_m_step(data, q, params, *, reg_covar, tol) -> Params``: variational EM's pieces.
"""

from __future__ import annotations

from types import ModuleType

REQUIRED = ("NAME", "LATENT", "PREFIX", "model")
EXACT = (
    "Params",
    "init_params",
    "current_params",
    "posterior_guide",
    "log_likelihood",
    "em",
    "posterior",
    "bound_terms",
    "vem_e_step",
    "free_energy",
    "vem_m_step",
)


def missing(module: ModuleType, exact: bool = True) -> list[str]:
    """The protocol names ``module`` lacks (``exact=False``: only those every model needs)."""
    names = REQUIRED + (EXACT if exact else ())
    return [name for name in names if not hasattr(module, name)]
