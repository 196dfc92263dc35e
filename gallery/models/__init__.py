"""The models: one module per generative process, each owning its Pyro model function, its
parameters dataclass, ``init_params``, the exact ``log_likelihood`` and, where they exist, the
exact posterior (and its guide), EM's steps, the ELBO's terms and variational EM's pieces
(:mod:`gallery.models.protocol` lists the names). Imports only :mod:`gallery.data`.

Every model's ``pyro.param`` sites are named under its ``name=`` (``gmm.loc``, ``ppca.loading``,
``vae.decoder$$$...``), and an explicit ``init=`` replaces sites made from anything else, so
two models, or two fits of one, share one Pyro session safely.

:data:`MODELS` is the one registration: command-line name -> module; :func:`owner` finds the
module of a parameters object."""

from gallery.models import factor_analysis, gmm, linear_gaussian, mfa, mppca, ppca, vae

MODELS = {module.NAME: module for module in (gmm, factor_analysis, ppca, mfa, mppca, vae)}
EM_MODELS = {name: module for name, module in MODELS.items() if module is not vae}


def owner(params: object):
    """The model module whose parameters ``params`` are (each module's ``owns``); raises
    ``ValueError`` for anything else."""
    for module in EM_MODELS.values():
        if module.owns(params):
            return module
    raise ValueError(
        f"no model owns parameters of type {type(params).__name__}; build them with a model's "
        f"init_params ({', '.join(EM_MODELS)})"
    )


__all__ = [
    "EM_MODELS",
    "MODELS",
    "factor_analysis",
    "gmm",
    "linear_gaussian",
    "mfa",
    "mppca",
    "owner",
    "ppca",
    "vae",
]
