"""The model gallery: Gaussian mixture, factor analysis, probabilistic PCA and the variational
autoencoder as Pyro models.

Layers, each importing only those below it:

- :mod:`gallery.data`: bundled data sets, files, memory-mapped rows, moments, input checks;
- :mod:`gallery.models`: one module per model (the Pyro function, its parameters, its exact
  algorithms), registered once in :data:`gallery.models.MODELS`;
- (:mod:`guides` and :mod:`inference`, beside this package, import only models and data);
- :mod:`gallery.report`: result files, atomic writes, ArviZ, figures;
- :mod:`gallery.app`: the command line and its jobs (run, compare, figures).

``import gallery`` loads the models and the data layer only.
"""

from gallery.data import Dataset, check_data, load
from gallery.models import factor_analysis, gmm, linear_gaussian, ppca, vae
from gallery.models.gmm import GMMParams
from gallery.models.linear_gaussian import LinearGaussianParams

__all__ = [
    "Dataset",
    "GMMParams",
    "LinearGaussianParams",
    "check_data",
    "factor_analysis",
    "gmm",
    "linear_gaussian",
    "load",
    "ppca",
    "vae",
]
