"""Inference: generic algorithms that call a model's protocol (:mod:`gallery.models.protocol`).

The SVI loop (:mod:`inference.svi`), exact EM's loop (:func:`run_em`, :func:`fit_em`), variational
EM's loop (:func:`run_vem`) and evaluation against exact answers (:mod:`inference.evaluate`).
The models' maths (E- and M-steps, PPCA's closed form, the ELBO's terms) lives in the model
modules and is re-exported here under its old names."""

from inference.checkpoint import Checkpointing, load_checkpoint, save_checkpoint
from inference.distributed import DataParallel
from inference.em import (
    EMResult,
    GMMStats,
    em_gmm,
    em_linear_gaussian,
    fit_em,
    gmm_e_step,
    gmm_e_step_stats,
    gmm_m_step,
    linear_gaussian_e_step,
    linear_gaussian_m_step,
    ppca_closed_form,
    ppca_max_log_likelihood,
    run_em,
)
from inference.evaluate import (
    BoundDecomposition,
    DecompositionTerms,
    decompose,
    decomposition_terms,
    elbo,
    gaussian_kl,
    linear_gaussian_elbo,
    log_likelihood,
    mean_log_likelihood,
)
from inference.gaps import InferenceGaps, best_local_estimate, inference_gaps
from inference.importance import ImportanceEstimate, importance_estimate
from inference.svi import SVIResult, collect_params, fit_svi, make_elbo, minibatches, svi_step
from inference.vem import VEMResult, free_energy, run_vem, vem_e_step, vem_m_step

__all__ = [
    "BoundDecomposition",
    "DecompositionTerms",
    "GMMStats",
    "Checkpointing",
    "DataParallel",
    "EMResult",
    "ImportanceEstimate",
    "InferenceGaps",
    "SVIResult",
    "VEMResult",
    "best_local_estimate",
    "collect_params",
    "decompose",
    "decomposition_terms",
    "free_energy",
    "elbo",
    "em_gmm",
    "fit_em",
    "em_linear_gaussian",
    "fit_svi",
    "gaussian_kl",
    "gmm_e_step",
    "gmm_e_step_stats",
    "gmm_m_step",
    "importance_estimate",
    "inference_gaps",
    "linear_gaussian_e_step",
    "linear_gaussian_elbo",
    "linear_gaussian_m_step",
    "load_checkpoint",
    "log_likelihood",
    "mean_log_likelihood",
    "make_elbo",
    "minibatches",
    "ppca_closed_form",
    "ppca_max_log_likelihood",
    "run_em",
    "run_vem",
    "save_checkpoint",
    "svi_step",
    "vem_e_step",
    "vem_m_step",
]
