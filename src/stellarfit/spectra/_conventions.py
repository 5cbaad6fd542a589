"""Conventions of spectra as published, shared by the generic FITS and text readers (private).

Owns the decisions a reader makes when a file does not say something
explicitly, each returned with a short reason that goes into the
spectrum's metadata:

- the wavelength unit of a 1-D FITS WCS axis (CUNIT1, a unit in CTYPE1 such
  as 'ANGSTROM', IRAF's WAT1_001 ``units=``) and, when nothing names it, the
  unit inferred from the range of the values (:func:`infer_wavelength_unit`);
- whether a 1-D image without AIRORVAC/VACUUM/CTYPE1 air-or-vacuum keywords
  was written by IRAF (a ground-based reduction: air wavelengths by convention);
- which zero-flux pixels are gaps (detector gaps, order gaps, unfilled
  regions) rather than data (:func:`zero_flux_gaps`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from stellarfit.spectra import _fits as F

__all__ = ["infer_wavelength_unit", "image_wavelength_unit", "looks_iraf", "zero_flux_gaps", "AIR_IRAF_SOURCE"]

#: ``metadata['air_or_vacuum_source']`` of an IRAF-style image whose header does not say air or vacuum.
AIR_IRAF_SOURCE = (
    "default for images written by IRAF (air, as ground-based reductions are; the header has no AIRORVAC/VACUUM keyword and "
    "CTYPE1 is not AWAV/WAVE; pass air=False or --vacuum if the wavelengths are in vacuum)"
)
#: Sigma above this multiple of the median sigma marks a zero-flux pixel as a gap.
_ABSURD_SIGMA_FACTOR = 1.0e3


def infer_wavelength_unit(values: np.ndarray) -> tuple[str, str]:
    """Guess the unit of wavelengths that nothing names, from their range.

    Args:
        values: (n,) wavelengths in an unknown unit (non-finite values ignored).
    Returns:
        (unit, reason): unit one of 'angstrom', 'nm', 'micron', 'loglam'; reason a
        sentence for ``metadata['wavelength_unit_source']``.
    Rules (on the median m of the finite values): 3000 <= m -> Angstrom;
    80 <= m < 3000 -> nm (so UV spectra in Angstrom below 3000 A need an explicit unit);
    3.3 <= min and max <= 5.5 -> log10(lambda/A); m < 30 -> micron.
    """
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return "angstrom", "default (Angstrom; no finite wavelength to infer a unit from)"
    low, high, middle = float(finite.min()), float(finite.max()), float(np.median(finite))
    span = f"{low:g}-{high:g}"
    if middle >= 3000.0:
        unit = "angstrom"
    elif middle >= 80.0:
        unit = "nm"
    elif 3.3 <= low and high <= 5.5:
        unit = "loglam"
    else:
        unit = "micron"
    return unit, f"inferred from the range {span} ({unit}); pass wavelength_unit= if that is wrong"


def image_wavelength_unit(header: Any) -> tuple[str | None, str | None]:
    """The unit a 1-D image header names for its wavelength axis, and which keyword named it.

    Looks at CUNIT1, then CTYPE1 when it is a unit name (e.g. 'ANGSTROM', as IRAF
    writes for some echelle merges), then IRAF's ``WAT1_001 = '... units=angstroms'``.
    Returns (None, None) when nothing names a unit ('LINEAR', 'wtype=linear' alone).
    Unit values: 'angstrom', 'nm', 'micron' or 'm'.
    """
    for key in ("CUNIT1", "CTYPE1", "WAT1_001"):
        value = header.get(key)
        if not isinstance(value, str) or not value.strip():
            continue
        if key == "WAT1_001" and "units=" not in value.lower():
            continue
        unit = F.unit_name(value)
        if unit is not None:
            return unit, f"header {key} = {value.strip()!r}"
    return None, None


def looks_iraf(*headers: Any) -> bool:
    """True for an image IRAF wrote (a WAT1_001 keyword or an NOAO-IRAF ORIGIN in a header).

    Such files come from ground-based optical reductions whose wavelengths are in air
    by convention unless a keyword says otherwise.  DC-FLAG alone is not enough (other
    pipelines write it for log-lambda vacuum spectra).
    """
    for header in headers:
        if header is None:
            continue
        if "WAT1_001" in header:
            return True
        origin = header.get("ORIGIN")
        if isinstance(origin, str) and "IRAF" in origin.upper():
            return True
    return False


def zero_flux_gaps(flux: np.ndarray, sigma: np.ndarray | None = None) -> np.ndarray:
    """(n,) bool: pixels whose flux is exactly 0 and that are gaps, not data.

    A zero-flux pixel is a gap when it is in a run of at least two exact zeros
    (detector or order gaps filled with 0, as in the Gaia benchmark spectra), or
    when its uncertainty is 0, non-finite or absurd (more than 1000 times the
    median of the positive finite uncertainties).  A single zero with a normal
    uncertainty is kept (it may be a saturated line core).

    Args:
        flux: (n,) flux, any unit.
        sigma: (n,) 1-sigma uncertainties in the flux unit, or None when unknown.
    """
    flux = np.asarray(flux, dtype=np.float64)
    zero = flux == 0.0
    if not zero.any():
        return zero
    neighbour = np.zeros_like(zero)
    neighbour[1:] |= zero[:-1]
    neighbour[:-1] |= zero[1:]
    gap = zero & neighbour
    if sigma is not None:
        sigma = np.asarray(sigma, dtype=np.float64)
        good = np.isfinite(sigma) & (sigma > 0)
        reference = float(np.median(sigma[good])) if good.any() else np.inf
        with np.errstate(invalid="ignore"):
            gap |= zero & (~good | (sigma > _ABSURD_SIGMA_FACTOR * reference))
    return gap
