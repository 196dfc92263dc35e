"""Gaussian mixture model, fitted by maximum likelihood.

Generative process, for each data point n = 1..N (Bishop 2006, eq. 9.7-9.12):

    c_n ~ Categorical(weights)                      weights: (K,)
    x_n | c_n = k ~ N(loc[k], Sigma_k)              loc: (K, D)

with ``Sigma_k = scale_tril[k] @ scale_tril[k].T`` (full) or ``diag(scale[k] ** 2)`` (diag).
The weights, locs and scales are ``pyro.param`` sites ``gmm.weights``, ``gmm.loc``, ... (the
model's ``name=``); c is enumerated, so ``TraceEnum_ELBO`` sums it out exactly.

:mod:`gallery.models.gmm.model` has the parameters, densities, the Pyro model and the exact
posterior guide; :mod:`gallery.models.gmm.em` the E-step, M-step and variational EM's pieces.
This package is the model's protocol module (:mod:`gallery.models.protocol`).
"""

from gallery.models.gmm.em import (
    CHUNK_BYTES,
    GMMStats,
    check_cholesky,
    e_step,
    e_step_blocks,
    em_steps,
    free_energy,
    m_step,
    m_step_from_responsibilities,
    sums,
    vem_e_step,
    vem_objective,
)
from gallery.models.gmm.model import (
    COVARIANCE_TYPES,
    PREFIX,
    REG_COVAR,
    GMMParams,
    bound_terms,
    component_dist,
    component_log_prob,
    current_params,
    floored,
    global_params,
    init_params,
    joint_log_prob,
    log_likelihood,
    log_normalizer,
    log_responsibilities,
    mean_field_posterior,
    model,
    owns,
    posterior,
    posterior_guide,
    prior_params,
    responsibilities,
    whitening,
)

NAME, LATENT = "gmm", "c"  # see gallery.models.protocol
Params = GMMParams

__all__ = [
    "CHUNK_BYTES",
    "COVARIANCE_TYPES",
    "GMMParams",
    "GMMStats",
    "LATENT",
    "NAME",
    "PREFIX",
    "Params",
    "REG_COVAR",
    "bound_terms",
    "check_cholesky",
    "component_dist",
    "component_log_prob",
    "current_params",
    "e_step",
    "e_step_blocks",
    "em_steps",
    "floored",
    "free_energy",
    "global_params",
    "init_params",
    "joint_log_prob",
    "log_likelihood",
    "log_normalizer",
    "log_responsibilities",
    "m_step",
    "m_step_from_responsibilities",
    "mean_field_posterior",
    "model",
    "owns",
    "posterior",
    "posterior_guide",
    "prior_params",
    "responsibilities",
    "sums",
    "vem_e_step",
    "vem_objective",
    "whitening",
]
