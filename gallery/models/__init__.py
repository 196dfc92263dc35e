"""The models: one module per generative process, each owning its Pyro model function, its
parameters dataclass, ``init_params``, the exact ``log_likelihood`` and, where they exist, the
exact posterior and exact algorithms. Imports only :mod:`gallery.data`."""

from gallery.models import factor_analysis, gmm, linear_gaussian, ppca, vae

__all__ = ["factor_analysis", "gmm", "linear_gaussian", "ppca", "vae"]
