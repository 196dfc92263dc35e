"""The model gallery: Gaussian mixture, factor analysis and probabilistic PCA as Pyro models.

Each model module has ``model(data=None, *, ...)``, ``init_params``, ``current_params`` and the
exact ``log_likelihood``.
"""

from gallery import factor_analysis, gmm, linear_gaussian, ppca
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
]
