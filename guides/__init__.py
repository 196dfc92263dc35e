"""Guides (variational families q) for the gallery's models.

- mean-field: one factor per data point (:class:`MeanFieldNormal`, :class:`MeanFieldCategorical`);
- amortised: a density network q(z|x) or q(c|x) (:class:`AmortisedNormal`, :class:`AmortisedCategorical`);
- exact: the true posterior under the model's parameters (``*_posterior``);
- Pyro's autoguides with the model's data plate (:func:`auto_normal`, :func:`auto_delta`).
"""

from guides.amortised import AmortisedCategorical, AmortisedNormal, input_scaling, mlp
from guides.auto import auto_delta, auto_normal
from guides.exact import factor_analysis_posterior, gmm_posterior, ppca_posterior
from guides.mean_field import MeanFieldCategorical, MeanFieldNormal

__all__ = [
    "AmortisedCategorical",
    "AmortisedNormal",
    "MeanFieldCategorical",
    "MeanFieldNormal",
    "auto_delta",
    "auto_normal",
    "factor_analysis_posterior",
    "gmm_posterior",
    "input_scaling",
    "mlp",
    "ppca_posterior",
]
