"""The model gallery: Gaussian mixture, factor analysis, probabilistic PCA and the variational
autoencoder as Pyro models.

Each EM model module has ``model(data=None, *, ...)``, ``init_params``, ``current_params`` and
the exact ``log_likelihood``; ``vae`` has ``model(data=None, *, decoder, ...)`` and ``Decoder``.
"""

from gallery import factor_analysis, gmm, linear_gaussian, ppca, vae
from gallery.common import check_data
from gallery.datasets import Dataset, load
from gallery.gmm import GMMParams
from gallery.linear_gaussian import LinearGaussianParams

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
