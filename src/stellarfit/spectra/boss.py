"""SDSS/BOSS spec-PLATE-MJD-FIBER files (SDSS-III/IV ``spec`` and SDSS-V ``spec-FIELD-MJD-CATALOGID``).

Layout (SDSS data model, spec): HDU0 header (PLATEID, MJD, FIBERID; SDSS-V: FIELD, MJD,
with CATALOGID in the SPALL table of HDU2); HDU1 ``COADD`` table, one row per pixel:
``flux`` (1e-17 erg/s/cm^2/A), ``loglam`` (log10 vacuum Angstrom, steps of
1e-4), ``ivar``, ``and_mask``, ``or_mask``, ``wdisp``, ``sky``, ``model``
(SDSS-V writes the names in upper case; both are accepted).

Resolution: ``wdisp`` is the Gaussian sigma of the LSF in units of the pixel
step in log10(lambda) (1e-4 for coadds; the mean step of ``loglam`` is used), so sigma_lambda = lambda * ln(10) *
wdisp * dloglam and R = lambda / FWHM = 1 / (2.3548 * wdisp * dloglam *
ln 10).  Pixels with wdisp <= 0 are filled by interpolation.

Masks: a pixel is bad when ivar == 0 or any bit of ``and_mask`` is set (bits
set in every exposure: NOPLUG ... NODATA, BRIGHTSKY, see the SDSS SPPIXMASK
bitmask); ``and_mask_bits=`` picks bits, ``use_or_mask=True`` also rejects
pixels bad in any one exposure.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from astropy.io import fits

from stellarfit.spectra import _fits as F
from stellarfit.spectra._spectrum import ObservedSpectrum
from stellarfit.wavelengths import FWHM_TO_SIGMA

__all__ = ["FORMAT", "DESCRIPTION", "identify", "read", "wdisp_to_resolution"]

FORMAT = "boss"
DESCRIPTION = "SDSS/BOSS spec-PLATE-MJD-FIBER: HDU1 COADD table (flux, loglam, ivar, and_mask, wdisp)"


def _coadd_index(hdul: fits.HDUList) -> int | None:
    index = F.find_hdu(hdul, "COADD")
    if index is None and len(hdul) > 1:
        index = 1
    if index is None or not F.is_table(hdul[index]):
        return None
    return index


@F.safe_identify
def identify(hdul: fits.HDUList) -> bool:
    """BOSS: a COADD table with LOGLAM, FLUX, IVAR (an unnamed HDU1 table must also have AND_MASK and WDISP)."""
    index = _coadd_index(hdul)
    if index is None or not F.has_columns(hdul[index], "LOGLAM", "FLUX", "IVAR"):
        return False
    return (hdul[index].name or "").upper() == "COADD" or F.has_columns(hdul[index], "AND_MASK", "WDISP")


def wdisp_to_resolution(wdisp: np.ndarray, dloglam: float | np.ndarray = 1e-4) -> np.ndarray:
    """Resolving power R = 1 / (2.3548 * wdisp * dloglam * ln 10) from BOSS ``wdisp`` [pixels]."""
    return 1.0 / (np.asarray(wdisp, dtype=np.float64) * np.asarray(dloglam) * np.log(10.0) / FWHM_TO_SIGMA)


def read(
    source: Any,
    *,
    and_mask_bits: int | Sequence[int] | None = None,
    use_or_mask: bool = False,
    resolution: float | np.ndarray | None = None,
    air: bool | None = None,
    fix_nonfinite: bool = True,
) -> ObservedSpectrum:
    """Read the coadded spectrum of a BOSS spec file.

    Args:
        source: path or open HDUList.
        and_mask_bits: bits of ``and_mask`` that mark a pixel bad (None = any bit).
        use_or_mask: also mask pixels with any ``or_mask`` bit (in ``and_mask_bits``) set.
        resolution: resolving power instead of the one from ``wdisp``.
        air: override the vacuum convention.
        fix_nonfinite: mask NaN/inf flux or ivar (default; counted in ``metadata["n_nonfinite_masked"]``); False raises instead.
    """
    with F.open_source(source, FORMAT) as (hdul, name):
        index = _coadd_index(hdul)
        if index is None:
            raise F.problem(f"missing HDU 'COADD' (a table with loglam, flux, ivar); the file has {F.summarize(hdul)}")
        hdu = hdul[index]
        names = F.column_names(hdu)
        missing = [col for col in ("LOGLAM", "FLUX", "IVAR") if F.find_column(names, (col,)) is None]
        if missing:
            raise F.problem(f"COADD table lacks column(s) {missing}; it has {names}")
        data = F.table_rows(hdul, index)

        def get(col, dtype=np.float64):
            actual = F.find_column(names, (col,))
            return None if actual is None else F.column(data, actual, dtype=dtype)

        loglam = get("LOGLAM")
        flux = get("FLUX")
        ivar = get("IVAR")
        bad = np.zeros(loglam.size, dtype=bool)
        and_mask = get("AND_MASK", np.int64)
        if and_mask is not None:
            bad |= F.bitmask_bad(and_mask, and_mask_bits)
        if use_or_mask:
            or_mask = get("OR_MASK", np.int64)
            if or_mask is not None:
                bad |= F.bitmask_bad(or_mask, and_mask_bits)

        res_source = "user"
        res = resolution
        lsf_sigma = None
        if resolution is None:
            wdisp = get("WDISP")
            filled = None if wdisp is None else F.fill_positive(wdisp)
            if filled is not None and loglam.size > 1:
                # the coadd grid is uniform in log10(lambda): use the mean step (1e-4), which
                # float32 loglam values give far more precisely than pixel-to-pixel differences
                dloglam = (float(loglam[-1]) - float(loglam[0])) / (loglam.size - 1)
                lsf_sigma = 10.0**loglam * np.log(10.0) * filled * dloglam
                res, res_source = wdisp_to_resolution(filled, dloglam), "file (wdisp)"
            else:
                res_source = None
        primary = hdul[0].header
        metadata = {
            "source": name,
            "format": FORMAT,
            "hdu": index,
            "object_id": _object_id(hdul),
            "flux_unit": F.header_value([primary], "BUNIT") or "1e-17 erg/s/cm^2/A",
            "resolution_source": res_source,
            "air_or_vacuum_source": "user" if air is not None else "format (vacuum)",
            "header": F.header_subset(primary),
        }
        if not np.all(np.isfinite(loglam)):
            raise F.problem("the loglam column has non-finite values")
        return ObservedSpectrum.from_arrays(
            10.0**loglam,  # float64: log10 vacuum Angstrom -> Angstrom
            flux,
            ivar=ivar,
            mask=bad,
            resolution=res,
            lsf_sigma=lsf_sigma,
            air=bool(air),
            fix_nonfinite=fix_nonfinite,
            metadata=metadata,
        )

def _object_id(hdul: fits.HDUList) -> str | None:
    """SDSS-V CATALOGID (SPALL table or header), else PLATE-MJD-FIBER, else OBJID/OBJECT."""
    primary = hdul[0].header
    spall = F.find_hdu(hdul, "SPALL")
    if spall is not None and F.is_table(hdul[spall]):
        column = F.find_column(F.column_names(hdul[spall]), ("CATALOGID",))
        data = F.data_of(hdul, spall)
        if column is not None and data is not None and len(data) > 0:
            return str(int(data.field(column)[0]))
    catalog = F.header_value([primary], "CATALOGID")
    if catalog is not None:
        return str(catalog)
    plate, mjd, fiber = primary.get("PLATEID"), primary.get("MJD"), primary.get("FIBERID")
    if plate is not None and mjd is not None and fiber is not None:
        return f"{int(plate):04d}-{int(mjd)}-{int(fiber):04d}"
    value = F.header_value([primary], "OBJID", "OBJECT")
    return None if value is None else str(value)
