"""The application: the command line (:mod:`~gallery.app.cli`) and its jobs, ``run``
(:mod:`~gallery.app.runner`), ``compare`` and ``figures``. The top layer: nothing imports it."""
