"""APOGEE apStar files (combined and visit spectra of one star, SDSS DR13-DR17 layout).

Layout (SDSS data model, apStar): HDU0 header only; HDU1 flux, HDU2 sigma
(1-sigma error), HDU3 pixel bitmask (APOGEE_PIXMASK), then sky, telluric, LSF
and visit tables.  Images are (n_rows, 8575) — row 0 the pixel-weighted
combined spectrum, row 1 the globally weighted one, rows 2+ the visits — or
(8575,) for a single visit.  Wavelengths are vacuum and log-linear:
lambda = 10**(CRVAL1 + CDELT1 * i) Angstrom with CRVAL1 = 4.179,
CDELT1 = 6e-6 (1.5145-1.6960 micron).  Flux in 1e-17 erg/s/cm^2/A.

Masked pixels: any of the APOGEE_PIXMASK bits BADPIX (0), CRPIX (1),
SATPIX (2), UNFIXABLE (3), BADDARK (4), BADFLAT (5), BADERR (6), NOSKY (7)
and SIG_SKYLINE (12) (the bits 0-7 are what the ``apogee`` package's
``badpixmask()`` uses, Bovy; SIG_SKYLINE is commonly added for combined
spectra); ``bad_bits=`` overrides.  Resolving power: R ~ 22,500 (Wilson et
al. 2019, PASP 131, 055001) unless ``resolution=`` is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from astropy.io import fits

from stellarfit.spectra import _fits as F
from stellarfit.spectra._spectrum import ObservedSpectrum

__all__ = ["FORMAT", "DESCRIPTION", "identify", "read", "APOGEE_PIXMASK", "DEFAULT_BAD_BITS", "APOGEE_RESOLUTION"]

FORMAT = "apogee-apstar"
DESCRIPTION = "APOGEE apStar: HDU1 flux, HDU2 sigma, HDU3 bitmask, log-linear WCS, row 0 = combined"

#: APOGEE_PIXMASK bit numbers (SDSS data model).
APOGEE_PIXMASK = {
    "BADPIX": 0, "CRPIX": 1, "SATPIX": 2, "UNFIXABLE": 3, "BADDARK": 4, "BADFLAT": 5, "BADERR": 6,
    "NOSKY": 7, "LITTROW_GHOST": 8, "PERSIST_HIGH": 9, "PERSIST_MED": 10, "PERSIST_LOW": 11,
    "SIG_SKYLINE": 12, "SIG_TELLURIC": 13, "NOT_ENOUGH_PSF": 14,
}
#: Bits that mark a pixel bad by default.
DEFAULT_BAD_BITS = (0, 1, 2, 3, 4, 5, 6, 7, 12)
#: Typical APOGEE resolving power (Wilson et al. 2019).
APOGEE_RESOLUTION = 22_500.0


def is_apogee_log_wcs(header: Any) -> bool:
    """True for a log10-linear wavelength WCS in the APOGEE H-band range (CRVAL1 ~ 4.18)."""
    crval = header.get("CRVAL1")
    cdelt = header.get("CDELT1", header.get("CD1_1"))
    if not isinstance(crval, (int, float)) or not isinstance(cdelt, (int, float)):
        return False
    return 4.1 < float(crval) < 4.25 and 0 < float(cdelt) < 1e-4


@F.safe_identify
def identify(hdul: fits.HDUList) -> bool:
    """apStar: HDU1-3 images of one shape, HDU3 integer (a bitmask), APOGEE log-lambda WCS in HDU1."""
    if len(hdul) < 4 or not all(F.is_image(hdul[i]) for i in (1, 2, 3)):
        return False
    shapes = {F.image_shape(hdul[i]) for i in (1, 2, 3)}
    if len(shapes) != 1 or len(next(iter(shapes))) not in (1, 2):
        return False
    return int(hdul[3].header.get("BITPIX", -32)) > 0 and is_apogee_log_wcs(hdul[1].header)


def read(
    source: Any,
    *,
    row: int = 0,
    bad_bits: int | Sequence[int] | None = DEFAULT_BAD_BITS,
    resolution: float | np.ndarray | None = None,
    air: bool | None = None,
    fix_nonfinite: bool = True,
) -> ObservedSpectrum:
    """Read one row of an apStar file (default row 0, the combined spectrum).

    Args:
        source: path or open HDUList.
        row: 0 = combined (pixel-weighted), 1 = combined (global weighting), 2+ = visits.
        bad_bits: APOGEE_PIXMASK bits that mark a pixel bad (bit numbers or a bit
            pattern; None = any bit).
        resolution: resolving power (default 22,500).
        air: override the vacuum convention (True only if you know the file is in air).
        fix_nonfinite: mask NaN/inf flux (default; counted in ``metadata["n_nonfinite_masked"]``); False raises instead.
    """
    with F.open_source(source, FORMAT) as (hdul, name):
        flux = F.image(hdul, 1, "flux")
        sigma = F.image(hdul, 2, "sigma (flux error)")
        bits = F.image(hdul, 3, "pixel bitmask", dtype=np.int64)
        if not (flux.shape == sigma.shape == bits.shape):
            raise F.problem(
                f"flux {flux.shape}, sigma {sigma.shape} and mask {bits.shape} images (HDU1-3) must have one shape"
            )
        if flux.ndim == 2:
            if not 0 <= row < flux.shape[0]:
                raise F.problem(f"row={row} is out of range: the images have {flux.shape[0]} rows (0 = combined)")
            flux, sigma, bits = flux[row], sigma[row], bits[row]
        elif flux.ndim == 1:
            if row != 0:
                raise F.problem(f"row={row} requested but the file holds a single spectrum (1-D images)")
        else:
            raise F.problem(f"flux image (HDU1) is {flux.ndim}-D; expected (n_rows, n_pixels) or (n_pixels,)")
        header = hdul[1].header
        wavelength, _ = F.wcs_wavelength(header, flux.size, log10=True)
        primary = hdul[0].header
        metadata = {
            "source": name,
            "format": FORMAT,
            "row": row,
            "object_id": _object_id(primary),
            "flux_unit": F.header_value([header, primary], "BUNIT") or "1e-17 erg/s/cm^2/A",
            "resolution_source": "user" if resolution is not None else "default",
            "air_or_vacuum_source": "user" if air is not None else "format (vacuum)",
            "header": F.header_subset(primary, header),
        }
        return ObservedSpectrum.from_arrays(
            wavelength,
            flux,
            sigma=sigma,
            mask=F.bitmask_bad(bits, bad_bits),
            resolution=APOGEE_RESOLUTION if resolution is None else resolution,
            air=bool(air),
            fix_nonfinite=fix_nonfinite,
            metadata=metadata,
        )


def _object_id(primary: Any) -> str | None:
    value = F.header_value([primary], "APOGEE_ID", "OBJID", "OBJECT")
    return None if value is None else str(value).strip()
