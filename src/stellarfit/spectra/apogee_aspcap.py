"""APOGEE aspcapStar files (ASPCAP's continuum-normalized spectrum of one star).

Layout (SDSS data model, aspcapStar, DR14-DR17): HDU0 header only; HDU1 the
normalized flux, HDU2 its 1-sigma error, HDU3 the best-fit ASPCAP model (all
1-D on the apStar grid: lambda = 10**(CRVAL1 + CDELT1 * i), CRVAL1 = 4.179,
CDELT1 = 6e-6, vacuum), HDU4 a table of ASPCAP results.  Pixels that ASPCAP
did not use (chip gaps, masked pixels) hold zero flux and/or zero error and
are masked.  R ~ 22,500 (Wilson et al. 2019) unless ``resolution=`` is given.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from astropy.io import fits

from stellarfit.spectra import _fits as F
from stellarfit.spectra._spectrum import ObservedSpectrum
from stellarfit.spectra.apogee_apstar import APOGEE_RESOLUTION, is_apogee_log_wcs

__all__ = ["FORMAT", "DESCRIPTION", "identify", "read"]

FORMAT = "apogee-aspcapstar"
DESCRIPTION = "APOGEE aspcapStar: 1-D HDU1 normalized flux, HDU2 error, HDU3 model on the apStar log-lambda grid"


@F.safe_identify
def identify(hdul: fits.HDUList) -> bool:
    """aspcapStar: HDU1 and HDU2 1-D float images of one length with the APOGEE log-lambda WCS (not apStar)."""
    if len(hdul) < 3 or not (F.is_image(hdul[1]) and F.is_image(hdul[2])):
        return False
    shape = F.image_shape(hdul[1])
    if len(shape) != 1 or F.image_shape(hdul[2]) != shape:
        return False
    if int(hdul[1].header.get("BITPIX", 8)) > 0 or int(hdul[2].header.get("BITPIX", 8)) > 0:
        return False
    if len(hdul) > 3 and F.is_image(hdul[3]) and int(hdul[3].header.get("BITPIX", -32)) > 0:
        return False  # integer HDU3 = a bitmask: that is an apStar file
    return is_apogee_log_wcs(hdul[1].header)


def read(
    source: Any,
    *,
    resolution: float | np.ndarray | None = None,
    air: bool | None = None,
    fix_nonfinite: bool = True,
) -> ObservedSpectrum:
    """Read an aspcapStar file: normalized flux, error (zero flux or error = masked), R = 22,500 by default."""
    with F.open_source(source, FORMAT) as (hdul, name):
        flux = F.image(hdul, 1, "normalized flux")
        sigma = F.image(hdul, 2, "flux error")
        if flux.ndim != 1 or flux.shape != sigma.shape:
            raise F.problem(f"flux (HDU1, {flux.shape}) and error (HDU2, {sigma.shape}) must be 1-D of one length")
        wavelength, _ = F.wcs_wavelength(hdul[1].header, flux.size, log10=True)
        primary = hdul[0].header
        object_id = F.header_value([primary], "APOGEE_ID", "OBJID", "OBJECT")
        metadata = {
            "source": name,
            "format": FORMAT,
            "object_id": None if object_id is None else str(object_id).strip(),
            "flux_unit": "normalized",
            "resolution_source": "user" if resolution is not None else "default",
            "air_or_vacuum_source": "user" if air is not None else "format (vacuum)",
            "header": F.header_subset(primary, hdul[1].header),
        }
        gap = (flux == 0) | ~(np.isfinite(sigma) & (sigma > 0))
        return ObservedSpectrum.from_arrays(
            wavelength,
            flux,
            sigma=np.where(np.isfinite(sigma) & (sigma > 0), sigma, 0.0),
            mask=gap,
            resolution=APOGEE_RESOLUTION if resolution is None else resolution,
            air=bool(air),
            fix_nonfinite=fix_nonfinite,
            metadata=metadata,
        )
