"""The models: one module per generative process, each owning its Pyro model function, its
parameters dataclass, ``init_params``, the exact ``log_likelihood`` and, where they exist, the
exact posterior and exact algorithms (:mod:`gallery.models.protocol` lists the names). Imports
only :mod:`gallery.data`.

:data:`MODELS` is the one registration: command-line name -> module."""

from gallery.models import factor_analysis, gmm, linear_gaussian, ppca, vae

MODELS = {module.NAME: module for module in (gmm, factor_analysis, ppca, vae)}
EM_MODELS = {name: module for name, module in MODELS.items() if module is not vae}

__all__ = ["EM_MODELS", "MODELS", "factor_analysis", "gmm", "linear_gaussian", "ppca", "vae"]
