"""Fit results as catalogs: catalog rows, the resumable journal, and FITS/CSV/Parquet table I/O.

- :func:`result_row`, :func:`failed_row`: one flat catalog row per spectrum
  (value, ``e_<name>``, ``<name>_lower/_upper/_map/_crb``, chi2, S/N, flags,
  timing, versions).
- :class:`Journal`: append-only, fsync-ed JSON-lines record that makes batch
  runs resumable.
- :func:`write_catalog` (atomic), :func:`read_catalog`, :func:`rows_to_table`.
- :func:`write_fit`, :func:`read_fit`: one fit (summary, spectra, covariance,
  samples) as a FITS file, for ``stellarfit report``.
"""

from stellarfit.results import catalog
from stellarfit.results.catalog import (
    BASE_COLUMNS,
    PARAMETER_SUFFIXES,
    Journal,
    JournalMismatchError,
    catalog_format,
    failed_row,
    read_catalog,
    result_row,
    rows_to_table,
    write_catalog,
)
from stellarfit.results.fitfile import FitFileError, read_fit, read_fit_metadata, write_fit

__all__ = ["FitFileError", "read_fit", "read_fit_metadata", "write_fit"]
__all__ += catalog.__all__
