"""Gaia DR3 RVS mean spectra (Gaia archive DataLink / bulk products saved as FITS tables).

Gaia DR3 RVS mean spectra (Seabroke et al. 2023; Gaia Collaboration,
Recio-Blanco et al. 2023) are rest-frame, continuum-normalized, sampled at
846-870 nm in 0.01 nm steps (2401 points), vacuum wavelengths; R ~ 11,500
(Cropper et al. 2018, A&A 616, A5).  Two table layouts are understood:

- one row per pixel: ``wavelength`` (nm), ``flux``, ``flux_error``
  (optionally ``source_id``; several sources stacked in one table are split
  on it) — the DataLink 'RVS' product;
- one row per source: array columns ``flux`` and ``flux_error`` (and
  optionally ``wavelength``); without a wavelength column the DR3 grid
  lambda = 846 + 0.01 i nm (i = 0..2400) is used.

The one-row-per-pixel layout is also read from CSV/text files as the
archive and gaiaspec-style tools write them (columns ``source_id, ...,
wavelength, flux, flux_error, ...``; parsed by
:func:`stellarfit.spectra.text.read_text_table`).

Fluxes that are NaN (the DR3 products leave the ends of some spectra
undefined) are masked by default (``fix_nonfinite=True``).  A file with one
source gives one ObservedSpectrum, with several a SpectrumList (also when
``source_ids=`` picks one of them).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from astropy.io import fits

from stellarfit.spectra import _fits as F
from stellarfit.spectra import text as T
from stellarfit.spectra._spectrum import InvalidSpectrumError, ObservedSpectrum, SpectrumList

__all__ = ["FORMAT", "DESCRIPTION", "identify", "read", "GAIA_RVS_RESOLUTION", "dr3_wavelength_nm"]

FORMAT = "gaia-rvs"
DESCRIPTION = "Gaia DR3 RVS mean spectra: table with wavelength [nm, 846-870], flux, flux_error"
#: Gaia RVS resolving power (Cropper et al. 2018).
GAIA_RVS_RESOLUTION = 11_500.0
_WAVELENGTH_COLUMNS = ("WAVELENGTH", "WAVE", "LAMBDA")
_N_DR3 = 2401


def dr3_wavelength_nm() -> np.ndarray:
    """The DR3 RVS sampling: 846.00, 846.01, ..., 870.00 nm (2401 values, float64)."""
    return 846.0 + 0.01 * np.arange(_N_DR3, dtype=np.float64)


def _table_index(hdul: fits.HDUList) -> int | None:
    for index, hdu in enumerate(hdul):
        if F.is_table(hdu) and F.has_columns(hdu, "FLUX", "FLUX_ERROR"):
            return index
    return None


def identify(source: Any) -> bool:
    """Gaia RVS: a table (FITS, or a CSV/text file) with flux and flux_error and wavelengths in
    845-871 nm (or, in FITS, 2401-point arrays)."""
    if T.looks_like_text(source):
        return _identify_text(source)
    return _identify_fits(source)


def _identify_text(path: Any) -> bool:
    try:
        header, fields = T.sniff(path)
        if header is None:
            return False
        lookup = {name.strip().lower(): i for i, name in enumerate(header)}
        if not ("flux" in lookup and "flux_error" in lookup):
            return False
        wave = next((lookup[n.lower()] for n in _WAVELENGTH_COLUMNS if n.lower() in lookup), None)
        if wave is None:
            return False
        return 845.0 <= float(fields[wave]) <= 871.0
    except Exception:  # noqa: BLE001 - identify answers yes/no, never fails
        return False


def _text_hdulist(path: Any) -> fits.HDUList:
    """An in-memory HDUList (primary + one table) of the numeric columns of a CSV/text file."""
    table = T.read_text_table(path)
    columns = [
        fits.Column(name=name, format="K" if values.dtype.kind == "i" else "D", array=values)
        for name, values in table.columns.items()
    ]
    return fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(columns)])


@F.safe_identify
def _identify_fits(hdul: fits.HDUList) -> bool:
    index = _table_index(hdul)
    if index is None:
        return False
    hdu = hdul[index]
    names = F.column_names(hdu)
    data = F.data_of(hdul, index)
    if data is None or len(data) == 0:
        return True  # looks like Gaia RVS; read() will report the empty table
    wave_col = F.find_column(names, _WAVELENGTH_COLUMNS)
    if wave_col is None:
        return np.ndim(data.field(F.find_column(names, ("FLUX",)))) == 2 and np.shape(data.field(F.find_column(names, ("FLUX",))))[1] == _N_DR3
    wavelength = np.asarray(data.field(wave_col), dtype=np.float64).ravel()
    wavelength = wavelength[np.isfinite(wavelength)]
    return wavelength.size > 0 and 845.0 <= wavelength.min() and wavelength.max() <= 871.0


def read(
    source: Any,
    *,
    source_ids: Sequence[int] | None = None,
    errors: str = "raise",
    resolution: float | np.ndarray | None = None,
    air: bool | None = None,
    fix_nonfinite: bool = True,
) -> ObservedSpectrum | SpectrumList:
    """Read Gaia RVS mean spectra.

    Args:
        source: path (FITS, or a CSV/text table) or open HDUList.
        source_ids: read only these Gaia source_ids.
        errors: 'raise' or 'skip' (unusable spectra left out, listed in ``.skipped``) for multi-source tables.
        resolution: resolving power (default 11,500).
        air: override the vacuum convention.
        fix_nonfinite: mask NaN flux/flux_error (default True: NaN marks undefined pixels in DR3).
    Returns: an ObservedSpectrum for one source, a SpectrumList for several.
    """
    if errors not in ("raise", "skip"):
        raise ValueError(f"errors must be 'raise' or 'skip', got {errors!r}")
    text_name = None
    if T.looks_like_text(source):
        text_name = os.fspath(source)
        with F.reader_errors(text_name, FORMAT):
            source = _text_hdulist(source)
    with F.open_source(source, FORMAT, name=text_name) as (hdul, name):
        index = _table_index(hdul)
        if index is None:
            raise F.problem(f"no table with flux and flux_error columns; the file has {F.summarize(hdul)}")
        data = F.table_rows(hdul, index)
        names = F.column_names(hdul[index])
        flux_col = F.find_column(names, ("FLUX",))
        error_col = F.find_column(names, ("FLUX_ERROR",))
        wave_col = F.find_column(names, _WAVELENGTH_COLUMNS)
        id_col = F.find_column(names, ("SOURCE_ID",))
        wave_unit = F.unit_name(hdul[index].columns[wave_col].unit or "") if wave_col else None
        entries = []  # (source_id, wavelength_nm, flux, error)
        if np.ndim(data.field(flux_col)) == 2:  # one row per source
            for row in range(len(data)):
                flux = F.column(data, flux_col, row=row)
                if wave_col is not None:
                    wavelength = F.column(data, wave_col, row=row)
                elif flux.size == _N_DR3:
                    wavelength = dr3_wavelength_nm()
                else:
                    raise F.problem(f"no wavelength column and {flux.size} flux values (the DR3 grid has {_N_DR3})")
                sid = None if id_col is None else data.field(id_col)[row]
                entries.append((sid, wavelength, flux, F.column(data, error_col, row=row)))
        else:  # one row per pixel
            if wave_col is None:
                raise F.problem("a table with one pixel per row needs a wavelength column (nm)")
            wavelength = F.column(data, wave_col)
            flux = F.column(data, flux_col)
            error = F.column(data, error_col)
            if id_col is None:
                entries.append((None, wavelength, flux, error))
            else:
                ids = np.asarray(data.field(id_col))
                for sid in dict.fromkeys(ids.tolist()):  # unique, in file order
                    take = ids == sid
                    entries.append((sid, wavelength[take], flux[take], error[take]))
        several = len(entries) > 1
        if source_ids is not None:
            wanted = [int(s) for s in source_ids]
            by_id = {int(e[0]): e for e in entries if e[0] is not None}
            missing = [s for s in wanted if s not in by_id]
            if missing:
                raise F.problem(f"source_id(s) {missing} not in the file")
            entries = [by_id[s] for s in wanted]
        unit = "angstrom" if wave_unit in ("angstrom",) else "nm"
        primary = hdul[0].header
        spectra, skipped = [], []
        for sid, wavelength, flux, error in entries:
            object_id = None if sid is None else str(int(sid))
            metadata = {
                "source": name,
                "format": FORMAT,
                "object_id": object_id,
                "flux_unit": "normalized",
                "resolution_source": "user" if resolution is not None else "default",
                "air_or_vacuum_source": "user" if air is not None else "format (vacuum)",
                "header": F.header_subset(primary, hdul[index].header),
            }
            try:
                spectra.append(
                    ObservedSpectrum.from_arrays(
                        wavelength,
                        flux,
                        sigma=error,
                        wavelength_unit=unit,
                        resolution=GAIA_RVS_RESOLUTION if resolution is None else resolution,
                        air=bool(air),
                        fix_nonfinite=fix_nonfinite,
                        metadata=metadata,
                    )
                )
            except InvalidSpectrumError as exc:
                if errors == "raise" or not several:
                    label = "" if object_id is None else f"source_id {object_id}: "
                    raise F.problem(f"{label}{exc}") from None
                skipped.append({"object_id": object_id, "reason": str(exc)})
        if not several:
            return spectra[0]
        return SpectrumList(spectra, skipped)
