"""Reports: self-contained HTML files with embedded PNG plots (matplotlib, Agg canvas).

- :func:`crb_report`: Cramér-Rao bounds of a planned observation against S/N and
  resolving power, derivative spectra and the correlation matrix, plus a CSV table.
- :func:`catalog_crb_report`: for a fitted catalog, fit errors against the bounds.

Needs matplotlib (the ``plots`` extra).
"""

from stellarfit.reports.crb import CrbReport, catalog_crb_report, crb_report, default_resolutions, default_snrs

__all__ = ["CrbReport", "catalog_crb_report", "crb_report", "default_resolutions", "default_snrs"]
