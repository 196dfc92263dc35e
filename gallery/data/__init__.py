"""The data layer: bundled data sets and files (:mod:`~gallery.data.datasets`), rows left on
disk and column moments (:mod:`~gallery.data.mapped`), input checks
(:mod:`~gallery.data.checks`) and atomic file writes (:mod:`~gallery.data.files`). Imports
nothing else of the project."""

from gallery.data.checks import check_data, clock
from gallery.data.datasets import Dataset, load

__all__ = ["Dataset", "check_data", "clock", "load"]
