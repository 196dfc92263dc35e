"""The model gallery: Gaussian mixture, factor analysis, probabilistic PCA and the variational
autoencoder as Pyro models.

Layers, each importing only those below it:

- :mod:`gallery.data`: bundled data sets, files, memory-mapped rows, moments, input checks;
- :mod:`gallery.models`: one module per model (the Pyro function, its parameters, its exact
  algorithms), registered once in :data:`gallery.models.MODELS`;
- (:mod:`guides` and :mod:`inference`, beside this package, import only models and data);
- :mod:`gallery.report`: result files, atomic writes, ArviZ, figures;
- :mod:`gallery.app`: the command line and its jobs (run, compare, figures).

``import gallery`` loads the models and the data layer only; ``gallery.fit`` and
``gallery.Fitted`` (:mod:`gallery.app.api`, the top layer) are imported on first use.
"""

import importlib

from gallery.data import Dataset, check_data, load
from gallery.models import factor_analysis, gmm, linear_gaussian, ppca, vae
from gallery.models.gmm import GMMParams
from gallery.models.linear_gaussian import LinearGaussianParams

LAZY = {"fit": "gallery.app.api", "Fitted": "gallery.app.api"}  # name -> module, loaded on first use


def __getattr__(name: str):
    """``gallery.fit`` and ``gallery.Fitted`` from the app layer, without importing it eagerly
    (an import statement here would be an upward edge, :mod:`tests.test_layers`)."""
    if name in LAZY:
        return getattr(importlib.import_module(LAZY[name]), name)
    raise AttributeError(f"module 'gallery' has no attribute {name!r}")


__all__ = [
    "Dataset",
    "Fitted",
    "GMMParams",
    "LinearGaussianParams",
    "check_data",
    "factor_analysis",
    "fit",
    "gmm",
    "linear_gaussian",
    "load",
    "ppca",
    "vae",
]
