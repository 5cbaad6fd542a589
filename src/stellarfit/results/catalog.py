"""Catalog rows, the resumable JSON-lines journal, and catalog table I/O.

A *row* is a flat dict, one per fitted (or failed) spectrum, with the columns
listed in :data:`BASE_COLUMNS` plus, per parameter ``name`` (labels, ``rv``,
``vsini``): ``name`` (value), ``e_name`` (error, astra style),
``name_lower``, ``name_upper``, ``name_map`` and ``name_crb`` (Cramér-Rao
sigma).  Correlations between labels (from the Laplace covariance of the MAP)
are columns ``rho_<a>__<b>``.

The *journal* (:class:`Journal`) is an append-only JSON-lines file next to the
catalog (``<catalog>.journal.jsonl``).  Each line is written, flushed and
``fsync``-ed before the next spectrum starts, so a killed run loses at most the
spectrum being fitted; a truncated last line (kill during a write) is ignored
and cut off on the next open.  The first line is a header recording the
emulator and method, so that a rerun with different settings is refused
instead of silently mixing results.

Catalogs are written atomically (a temporary file in the same directory, then
``os.replace``) as a FITS binary table (``.fits``, ``.fit``, ``.fits.gz``),
CSV (``.csv``) or Parquet (``.parquet``, needs ``pyarrow``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stellarfit._io import atomic_path, to_jsonable

__all__ = [
    "BASE_COLUMNS",
    "PARAMETER_SUFFIXES",
    "Journal",
    "JournalMismatchError",
    "catalog_format",
    "failed_row",
    "read_catalog",
    "result_row",
    "rows_to_table",
    "write_catalog",
]

#: columns every row has, in catalog order (parameter columns follow, then the trailing ones)
BASE_COLUMNS = ("source", "index", "object_id", "format", "status", "error")
#: columns after the parameter columns
TRAILING_COLUMNS = ("chi2", "reduced_chi2", "snr", "n_pixels", "flags", "elapsed_s", "method", "emulator", "stellarfit_version")
#: per-parameter column (prefix, suffix) pairs: value, error, lower, upper, map, crb
PARAMETER_SUFFIXES = (("", ""), ("e_", ""), ("", "_lower"), ("", "_upper"), ("", "_map"), ("", "_crb"))
_FIELD_OF = {("", ""): "value", ("e_", ""): "error", ("", "_lower"): "lower", ("", "_upper"): "upper", ("", "_map"): "map", ("", "_crb"): "crb"}
_STRING_COLUMNS = {"source", "object_id", "format", "status", "error", "method", "emulator", "stellarfit_version"}
_INT_COLUMNS = {"index", "n_pixels", "flags", "n_nonfinite_masked"}
_FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz")


class JournalMismatchError(ValueError):
    """The journal next to a catalog was written by a run with other settings."""


def _clean(value: Any) -> Any:
    """JSON-safe scalar: non-finite floats -> None, numpy scalars -> Python (:func:`stellarfit._io.to_jsonable`)."""
    return to_jsonable(value)


def result_row(result, *, source: str, index: int, object_id: str | None = None, format: str | None = None) -> dict[str, Any]:  # noqa: A002
    """The catalog row of a :class:`~stellarfit.inference.FitResult` (JSON-safe dict)."""
    from stellarfit import __version__

    row: dict[str, Any] = {
        "source": str(source), "index": int(index), "object_id": object_id, "format": format,
        "status": "ok", "error": None,
    }
    names = list(result.labels)
    for name in names:
        entry = result.labels[name]
        for key, field in _FIELD_OF.items():
            row[f"{key[0]}{name}{key[1]}"] = _clean(entry.get(field, float("nan")))
    covariance = np.asarray(getattr(result, "covariance", np.zeros((0, 0))), dtype=np.float64)
    label_names = [name for name in names if name not in ("rv", "vsini")]
    if covariance.ndim == 2 and covariance.shape[0] >= len(label_names) and covariance.shape[0] == covariance.shape[1]:
        sigma = np.sqrt(np.clip(np.diag(covariance), 0.0, None))
        for i in range(len(label_names)):
            for j in range(i + 1, len(label_names)):
                denominator = sigma[i] * sigma[j]
                rho = covariance[i, j] / denominator if denominator > 0 and np.isfinite(denominator) else float("nan")
                row[f"rho_{label_names[i]}__{label_names[j]}"] = _clean(rho)
    row.update({
        "chi2": _clean(result.chi2), "reduced_chi2": _clean(result.reduced_chi2), "snr": _clean(result.snr),
        "n_pixels": int(result.n_pixels), "flags": int(result.flags), "elapsed_s": _clean(result.elapsed_s),
        "method": result.method, "emulator": result.emulator, "stellarfit_version": __version__,
    })
    # NaN/inf pixels masked on reading (FitResult.diagnostics; -1 in failed rows)
    row["n_nonfinite_masked"] = int((getattr(result, "diagnostics", None) or {}).get("n_nonfinite_masked", 0))
    return row


def failed_row(*, source: str, index: int, error: str, object_id: str | None = None, format: str | None = None,
               method: str = "", emulator: str = "", elapsed_s: float = 0.0, flags: int = 2) -> dict[str, Any]:  # noqa: A002
    """The catalog row of a spectrum that could not be read or fitted (``status='failed'``, flag ``fit_failed``)."""
    from stellarfit import __version__

    return {
        "source": str(source), "index": int(index), "object_id": object_id, "format": format,
        "status": "failed", "error": str(error), "n_pixels": 0, "flags": int(flags), "elapsed_s": _clean(elapsed_s),
        "method": method, "emulator": emulator, "stellarfit_version": __version__,
    }


class Journal:
    """Append-only JSON-lines record of finished spectra, keyed by (source, index).

    Args:
        path: the journal file (created on the first :meth:`append`).
        header: settings of this run (e.g. ``{"emulator": ..., "method": ...}``);
            if the file exists with a different header, :class:`JournalMismatchError`.
    """

    def __init__(self, path: str | os.PathLike, header: Mapping[str, Any] | None = None):
        self.path = Path(path)
        self.header = {"stellarfit_journal": 1, **dict(header or {})}
        self.rows: dict[tuple[str, int], dict[str, Any]] = {}
        self._handle = None
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        data = self.path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]  # a kill mid-write leaves an unterminated last line
        if len(complete) != len(data):
            with open(self.path, "r+b") as handle:
                handle.truncate(len(complete))
        lines = complete.decode("utf-8", errors="replace").splitlines()
        for number, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a damaged line is as if the spectrum was not done
            if "stellarfit_journal" in record:
                mismatched = {k: (record.get(k), v) for k, v in self.header.items() if k in record and record.get(k) != v}
                if mismatched:
                    details = ", ".join(f"{k}: journal {old!r} vs now {new!r}" for k, (old, new) in mismatched.items())
                    raise JournalMismatchError(
                        f"{self.path} was written by a run with other settings ({details}); "
                        "rerun with the same settings to resume, or delete the journal (or choose another output) to start over"
                    )
                continue
            if number == 0 and "source" not in record:
                continue
            if "source" in record and "index" in record:
                self.rows[(str(record["source"]), int(record["index"]))] = record

    def __contains__(self, key: tuple[str, int]) -> bool:
        return (str(key[0]), int(key[1])) in self.rows

    def done(self, source: str, index: int, *, retry_failed: bool = False) -> bool:
        """Whether (source, index) is finished (failed entries count unless ``retry_failed``)."""
        row = self.rows.get((str(source), int(index)))
        return row is not None and (not retry_failed or row.get("status") == "ok")

    def sources_done(self, source: str) -> list[dict[str, Any]]:
        """Rows already recorded for one source file."""
        return [row for (src, _), row in self.rows.items() if src == str(source)]

    def append(self, row: Mapping[str, Any]) -> None:
        """Record one row durably (write, flush, fsync); a later row for the same key replaces it."""
        row = {k: _clean(v) for k, v in row.items()}
        if self._handle is None:
            new = not self.path.exists() or self.path.stat().st_size == 0
            self._handle = open(self.path, "a", encoding="utf-8")
            if new:
                self._write_line(self.header)
        self._write_line(row)
        self.rows[(str(row["source"]), int(row["index"]))] = dict(row)

    def _write_line(self, record: Mapping[str, Any]) -> None:
        self._handle.write(json.dumps(record, allow_nan=False) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _parameter_names(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Parameter names in order of first appearance (rows with ``e_<name>`` columns)."""
    names: list[str] = []
    for row in rows:
        for key in row:
            if key.startswith("e_") and key[2:] not in names and f"{key[2:]}_crb" in row:
                names.append(key[2:])
    # labels first, nuisance parameters last
    return [n for n in names if n not in ("rv", "vsini")] + [n for n in ("rv", "vsini") if n in names]


def rows_to_table(rows: Iterable[Mapping[str, Any]]):
    """An astropy Table with one row per dict: fixed column order, NaN for missing floats, '' for missing strings."""
    from astropy.table import Table

    rows = list(rows)
    names = _parameter_names(rows)
    columns = list(BASE_COLUMNS)
    for name in names:
        columns += [f"{prefix}{name}{suffix}" for prefix, suffix in PARAMETER_SUFFIXES]
    extra = sorted({key for row in rows for key in row if key.startswith("rho_")})
    columns += extra + list(TRAILING_COLUMNS)
    seen = set(columns)
    columns += [key for row in rows for key in row if key not in seen and not seen.add(key)]  # anything else, stable
    table = Table()
    for column in columns:
        values = [row.get(column) for row in rows]
        if column in _STRING_COLUMNS or any(isinstance(v, str) for v in values):
            table[column] = np.array(["" if v is None else str(v) for v in values], dtype=str) if rows else np.array([], dtype="U1")
        elif column in _INT_COLUMNS:
            table[column] = np.array([-1 if v is None else int(v) for v in values], dtype=np.int64)
        else:
            table[column] = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    for name in names:
        table[f"e_{name}"].description = f"1-sigma error of {name}"
        table[f"{name}_crb"].description = f"Cramér-Rao bound on {name}"
    table.meta["CREATOR"] = "stellarfit"
    return table


def catalog_format(path: str | os.PathLike) -> str:
    """'fits', 'csv' or 'parquet' from the file name (a clear error otherwise)."""
    name = str(path).lower()
    if name.endswith(_FITS_SUFFIXES):
        return "fits"
    if name.endswith(".csv"):
        return "csv"
    if name.endswith(".parquet") or name.endswith(".pq"):
        return "parquet"
    raise ValueError(f"cannot tell the catalog format of {path!s}: use a .fits, .csv or .parquet file name")


def write_catalog(rows_or_table, path: str | os.PathLike) -> Path:
    """Write rows (or a Table) atomically as FITS, CSV or Parquet, chosen by ``path``'s extension."""
    from astropy.table import Table

    path = Path(path)
    kind = catalog_format(path)
    if kind == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ImportError(f"writing {path.name} as Parquet needs pyarrow: pip install pyarrow (or use a .fits or .csv catalog)") from None
    table = rows_or_table if isinstance(rows_or_table, Table) else rows_to_table(rows_or_table)
    with atomic_path(path) as temporary:
        if kind == "fits":
            from astropy.io import fits

            hdu = fits.table_to_hdu(table)
            hdu.name = "CATALOG"
            fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(temporary, overwrite=True)
        elif kind == "csv":
            table.write(temporary, format="ascii.csv", overwrite=True)
        else:
            table.write(temporary, format="parquet", overwrite=True)
    return path


def read_catalog(path: str | os.PathLike):
    """Read a catalog written by :func:`write_catalog` as an astropy Table."""
    from astropy.table import Table

    kind = catalog_format(path)
    if kind == "fits":
        table = Table.read(path, format="fits", hdu="CATALOG", mask_invalid=False)  # NaN stays NaN, not masked
        table.convert_bytestring_to_unicode()
        return table
    if kind == "csv":
        return Table.read(path, format="ascii.csv")
    return Table.read(path, format="parquet")
