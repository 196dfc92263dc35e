"""Reports: result files as bytes (:mod:`~gallery.report.outputs`), the atomic result set
(:mod:`~gallery.report.atomic`), ArviZ export and figures (:mod:`gallery.report.figures`).
Plotting libraries are imported only by the modules that draw."""
