"""The application, the top layer (nothing imports it): the command line (:mod:`~gallery.app.cli`)
and its jobs, ``run``, ``compare`` and ``figures``.

``run`` is one pipeline for every model (:mod:`~gallery.app.pipeline`): prepare -> fit (SVI)
-> evaluate -> render, with the model-specific part in a job, :mod:`~gallery.app.em_job` (the
mixture, factor analysis, PPCA: exact EM from the same start, exact log p(x)) or
:mod:`~gallery.app.vae_job` (held-out split, importance-weighted log p(x), gaps). Settings are
typed dataclasses split by who reads them (:mod:`~gallery.app.config`); the stages pass
:mod:`~gallery.app.stages`' types; ``metrics.json`` has one schema (:mod:`~gallery.app.metrics`).
``compare`` (:mod:`~gallery.app.compare`) and ``figures`` (:mod:`~gallery.app.figures`) fit
through the same pipeline."""
