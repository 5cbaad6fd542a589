"""Reports: self-contained HTML files with embedded PNG plots (matplotlib, Agg canvas).

- :func:`crb_report`: Cramér-Rao bounds of a planned observation against S/N and
  resolving power, derivative spectra and the correlation matrix, plus a CSV table.
- :func:`catalog_crb_report`: for a fitted catalog, fit errors against the bounds.
- :func:`fit_report`: one fit: spectrum, model and residuals, summary, correlation
  or corner plot, trace and rank plots, sampler diagnostics.

Needs matplotlib (the ``plots`` extra).
"""

from stellarfit.reports.crb import CrbReport, catalog_crb_report, crb_report, default_resolutions, default_snrs
from stellarfit.reports.fit_report import FitReport, fit_report

__all__ = ["CrbReport", "FitReport", "catalog_crb_report", "crb_report", "default_resolutions", "default_snrs", "fit_report"]
