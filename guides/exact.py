"""Exact-posterior guides, kept under their old names: each model module owns its own
(``posterior_guide``), reading the model's ``pyro.param`` sites.

    factor analysis, PPCA:  q(z_n) = p(z_n | x_n; lambda) = N(M^{-1} W^T Psi^{-1}(x_n - loc), M^{-1})
    mixture:                q(c_n) = p(c_n | x_n; lambda), the responsibilities

With q equal to the posterior, KL(q || p(z|x)) = 0 and the ELBO equals log p(x).
"""

from __future__ import annotations

from gallery.models import factor_analysis, gmm, ppca

gmm_posterior = gmm.posterior_guide
factor_analysis_posterior = factor_analysis.posterior_guide
ppca_posterior = ppca.posterior_guide

__all__ = ["factor_analysis_posterior", "gmm_posterior", "ppca_posterior"]
