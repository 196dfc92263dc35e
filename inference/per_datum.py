"""Which guides keep a q of their own for every data point (one rule, used by every check).

A guide with per-datum parameters, q(z_n; lambda_n) for n = 1..N, cannot be trained on rows
read from a file a minibatch at a time (its tables are indexed by the row numbers of the whole
data) nor split over data-parallel processes (each would train its own copy of its rows), so
``--stream``, ``--num-processes`` and :func:`inference.svi.fit_svi` all refuse it.
"""

from __future__ import annotations

from collections.abc import Callable


def keeps_q_per_datum(guide: Callable | str, *, latent: str = "z") -> bool:
    """True for a guide with parameters of its own for each data point: the mean-field tables,
    and a Pyro autoguide with a latent site in the data plate (``AutoNormal`` for z; for the
    mixture, whose c is summed out in the model, it has none).

    :param guide: a guide, or a guide's command-line name (checked before it is built).
    :param latent: the model's local latent, ``"c"`` or ``"z"``, when ``guide`` is a name.
    """
    if isinstance(guide, str):
        return guide == "mean-field" or (guide == "auto-normal" and latent == "z")
    from pyro.infer.autoguide import AutoGuide

    from guides.mean_field import MeanFieldCategorical, MeanFieldNormal

    if isinstance(guide, MeanFieldNormal | MeanFieldCategorical):
        return True
    prototype = getattr(guide, "prototype_trace", None) if isinstance(guide, AutoGuide) else None
    if prototype is None:
        return False
    sites = prototype.iter_stochastic_nodes()
    return any(frame.name == "data" for _, site in sites for frame in site["cond_indep_stack"])


__all__ = ["keeps_q_per_datum"]
