"""Inference: the SVI loop, exact EM and closed forms, and evaluation against exact answers."""

from inference.checkpoint import Checkpointing, load_checkpoint, save_checkpoint
from inference.distributed import DataParallel
from inference.em import (
    EMResult,
    em_gmm,
    em_linear_gaussian,
    fit_em,
    gmm_e_step,
    gmm_m_step,
    linear_gaussian_e_step,
    linear_gaussian_m_step,
    ppca_closed_form,
    ppca_max_log_likelihood,
    run_em,
)
from inference.evaluate import BoundDecomposition, decompose, elbo, gaussian_kl, log_likelihood
from inference.gaps import InferenceGaps, best_local_estimate, inference_gaps
from inference.importance import ImportanceEstimate, importance_estimate
from inference.svi import SVIResult, collect_params, fit_svi, make_elbo, minibatches, svi_step
from inference.vem import VEMResult, run_vem

__all__ = [
    "BoundDecomposition",
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
    "elbo",
    "em_gmm",
    "fit_em",
    "em_linear_gaussian",
    "fit_svi",
    "gaussian_kl",
    "gmm_e_step",
    "gmm_m_step",
    "importance_estimate",
    "inference_gaps",
    "linear_gaussian_e_step",
    "linear_gaussian_m_step",
    "load_checkpoint",
    "log_likelihood",
    "make_elbo",
    "minibatches",
    "ppca_closed_form",
    "ppca_max_log_likelihood",
    "run_em",
    "run_vem",
    "save_checkpoint",
    "svi_step",
]
