"""LAMOST low-resolution survey (LRS) spectra, both file layouts.

- Up to DR8: the primary HDU is a (5, n) float image whose rows are flux,
  ivar, wavelength, andmask, ormask (n ~ 3900, 3690-9100 A, log-spaced).
- DR9 and later: HDU1 (often EXTNAME 'COADD') is a one-row table with array
  columns FLUX, IVAR, WAVELENGTH, ANDMASK, ORMASK (and NORMALIZATION).

LAMOST wavelengths are in vacuum (LAMOST data release documentation; the
header keyword VACUUM = T says so where present, and a header that says air
is honoured).  Flux is relative (calibrated in shape, not in absolute
scale).  A pixel is bad when ivar == 0 or ANDMASK != 0 (``and_mask_bits=``
picks bits).  R ~ 1800 (Cui et al. 2012, RAA 12, 1197) unless ``resolution=``
is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from astropy.io import fits

from stellarfit.spectra import _fits as F
from stellarfit.spectra._spectrum import ObservedSpectrum

__all__ = ["FORMAT", "DESCRIPTION", "identify", "read", "LAMOST_LRS_RESOLUTION"]

FORMAT = "lamost-lrs"
DESCRIPTION = "LAMOST LRS: primary (5, n) image (<= DR8) or HDU1 one-row table FLUX/IVAR/WAVELENGTH/ANDMASK (DR9+)"
#: Typical LAMOST LRS resolving power (Cui et al. 2012).
LAMOST_LRS_RESOLUTION = 1_800.0
_TABLE_COLUMNS = ("FLUX", "IVAR", "WAVELENGTH", "ANDMASK")


def _table_index(hdul: fits.HDUList) -> int | None:
    if F.find_hdu(hdul, "COADD_B") is not None or F.find_hdu(hdul, "COADD_R") is not None:
        return None  # medium-resolution file
    for index in range(1, min(len(hdul), 3)):
        if F.is_table(hdul[index]) and F.has_columns(hdul[index], *_TABLE_COLUMNS):
            return index
    return None


def _is_image_layout(hdul: fits.HDUList) -> bool:
    primary = hdul[0]
    shape = F.image_shape(primary)
    if len(shape) != 2 or shape[0] < 3 or shape[0] > 5 or shape[1] < 10:
        return False
    telescope = str(primary.header.get("TELESCOP", "")).upper()
    if "LAMOST" in telescope:
        return True
    wavelength = np.asarray(F.data_of(hdul, 0)[2], dtype=np.float64)
    return bool(np.all(np.diff(wavelength) > 0) and 3000 < wavelength[0] < 5000 and wavelength[-1] < 11000)


@F.safe_identify
def identify(hdul: fits.HDUList) -> bool:
    """LAMOST LRS: a (5, n) primary image with a wavelength row, or a one-row FLUX/IVAR/WAVELENGTH/ANDMASK table."""
    return _table_index(hdul) is not None or _is_image_layout(hdul)


def read(
    source: Any,
    *,
    and_mask_bits: int | Sequence[int] | None = None,
    resolution: float | np.ndarray | None = None,
    air: bool | None = None,
    fix_nonfinite: bool = True,
) -> ObservedSpectrum:
    """Read a LAMOST LRS spectrum (either layout).

    Args:
        source: path or open HDUList.
        and_mask_bits: ANDMASK bits that mark a pixel bad (None = any bit).
        resolution: resolving power (default 1800).
        air: override; by default vacuum unless the header says air.
        fix_nonfinite: mask NaN/inf flux or ivar (default; counted in ``metadata["n_nonfinite_masked"]``); False raises instead.
    """
    with F.open_source(source, FORMAT) as (hdul, name):
        index = _table_index(hdul)
        if index is not None:
            data = F.table_rows(hdul, index)
            if len(data) != 1:
                raise F.problem(f"HDU {index} should hold one row (one spectrum), found {len(data)}")
            names = F.column_names(hdul[index])

            def get(col, dtype=np.float64):
                actual = F.find_column(names, (col,))
                return None if actual is None else F.column(data, actual, row=0, dtype=dtype)

            flux, ivar, wavelength = get("FLUX"), get("IVAR"), get("WAVELENGTH")
            and_mask = get("ANDMASK", np.int64)
            header = hdul[index].header
            layout = "table (DR9+)"
        else:
            if len(F.image_shape(hdul[0])) == 0:
                raise F.problem(f"no LAMOST LRS data: no (5, n) primary image and no FLUX/IVAR/WAVELENGTH table; the file has {F.summarize(hdul)}")
            image = F.image(hdul, 0, "flux/ivar/wavelength/andmask/ormask image")
            if image.ndim != 2 or image.shape[0] < 3:
                raise F.problem(f"the primary image has shape {image.shape}; LAMOST LRS (<= DR8) uses (5, n_pixels)")
            flux, ivar, wavelength = image[0], image[1], image[2]
            and_mask = image[3] if image.shape[0] > 3 else None
            header = hdul[0].header
            layout = "image (<= DR8)"
        sizes = {array.size for array in (flux, ivar, wavelength) if array is not None}
        if len(sizes) != 1:
            raise F.problem(f"FLUX, IVAR and WAVELENGTH have different lengths {sorted(sizes)}")
        primary = hdul[0].header
        is_air, air_source = F.air_convention(air, header, primary)
        bad = np.zeros(flux.size, dtype=bool) if and_mask is None else F.bitmask_bad(and_mask, and_mask_bits)
        object_id = F.header_value([primary, header], "OBSID", "DESIG", "OBJNAME", "OBJECT")
        metadata = {
            "source": name,
            "format": FORMAT,
            "layout": layout,
            "object_id": None if object_id is None else str(object_id).strip(),
            "flux_unit": F.header_value([header, primary], "BUNIT") or "relative",
            "resolution_source": "user" if resolution is not None else "default",
            "air_or_vacuum_source": air_source,
            "header": F.header_subset(primary, header),
        }
        return ObservedSpectrum.from_arrays(
            wavelength,
            flux,
            ivar=ivar,
            mask=bad,
            resolution=LAMOST_LRS_RESOLUTION if resolution is None else resolution,
            air=is_air,
            fix_nonfinite=fix_nonfinite,
            metadata=metadata,
        )
