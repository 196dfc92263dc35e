"""Figures: the lecture's (:mod:`~gallery.report.figures.lecture`), each model's
(:mod:`~gallery.report.figures.models`) and the VAE's (:mod:`~gallery.report.figures.vae`)."""
