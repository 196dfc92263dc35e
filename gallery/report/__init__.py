"""Reports: result files as bytes (:mod:`~gallery.report.outputs`: metrics, parameters, the
training curve), the atomic result set (:mod:`~gallery.report.atomic`), the ArviZ export
(:mod:`~gallery.report.arviz_export`) and the figures package (:mod:`gallery.report.figures`).
matplotlib and ArviZ are imported only when something is drawn or exported, so the command
line and a prepared run load neither."""
