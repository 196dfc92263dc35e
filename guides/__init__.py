"""Guides (variational families q) for the gallery's models.

- mean-field: one factor per data point (:class:`MeanFieldNormal`, :class:`MeanFieldCategorical`);
- amortised: a density network q(z|x) or q(c|x) (:class:`AmortisedNormal`, :class:`AmortisedCategorical`);
- flow: a density network's Gaussian through inverse autoregressive flow layers conditioned on x
  (:class:`AmortisedFlow`);
- exact: the true posterior under the model's parameters, owned by each model module
  (``posterior_guide``) and re-exported as ``gmm_posterior``, ``factor_analysis_posterior``, ...;
- Pyro's autoguides with the model's data plate (:func:`auto_normal`, :func:`auto_delta`).

Every guide's sites are named under its ``name=`` (default: a fresh ``mean_field.<i>``,
``amortised_normal.<i>``, ... on first use), and a guide claims its name on every call, so a
new guide starts from its own values. :mod:`guides.registry` names them after the model.
Imports only :mod:`gallery.models` and :mod:`gallery.data`, never :mod:`inference`.
"""

from guides.amortised import AmortisedCategorical, AmortisedNormal, input_scaling, mlp
from guides.auto import auto_delta, auto_normal
from guides.exact import factor_analysis_posterior, gmm_posterior, ppca_posterior
from guides.flow import AmortisedFlow
from guides.mean_field import MeanFieldCategorical, MeanFieldNormal

__all__ = [
    "AmortisedCategorical",
    "AmortisedFlow",
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
