"""LAMOST medium-resolution survey (MRS) spectra: the blue and red coadds as one two-arm spectrum.

Layout (LAMOST MRS data release documentation): HDU0 header; ``COADD_B``
and ``COADD_R`` one-row tables with array columns FLUX, IVAR, WAVELENGTH and
a pixel mask (PIXMASK or ANDMASK; ORMASK), often NORMALIZATION; then one
table per single exposure.  Blue arm ~4950-5350 A, red ~6300-6800 A, both
vacuum (LAMOST convention; a header saying air is honoured).  The arms
become arm 0 ('B') and arm 1 ('R') of one ObservedSpectrum so that the
forward model fits a continuum per arm.  A file with only one of the two
coadds gives a one-arm spectrum.  R ~ 7500 (Liu et al. 2020,
arXiv:2005.07210) unless ``resolution=`` is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from astropy.io import fits

from stellarfit.spectra import _fits as F
from stellarfit.spectra._spectrum import ObservedSpectrum

__all__ = ["FORMAT", "DESCRIPTION", "identify", "read", "LAMOST_MRS_RESOLUTION"]

FORMAT = "lamost-mrs"
DESCRIPTION = "LAMOST MRS: COADD_B and COADD_R one-row tables (FLUX, IVAR, WAVELENGTH, PIXMASK) -> arms B, R"
#: Typical LAMOST MRS resolving power (Liu et al. 2020).
LAMOST_MRS_RESOLUTION = 7_500.0
_MASK_COLUMNS = ("PIXMASK", "ANDMASK")


@F.safe_identify
def identify(hdul: fits.HDUList) -> bool:
    """LAMOST MRS: a COADD_B or COADD_R table with FLUX and WAVELENGTH columns."""
    for arm in ("COADD_B", "COADD_R"):
        index = F.find_hdu(hdul, arm)
        if index is not None and F.is_table(hdul[index]) and F.has_columns(hdul[index], "FLUX", "WAVELENGTH"):
            return True
    return False


def read(
    source: Any,
    *,
    arms: Sequence[str] = ("B", "R"),
    mask_bits: int | Sequence[int] | None = None,
    resolution: float | np.ndarray | None = None,
    air: bool | None = None,
    fix_nonfinite: bool = True,
) -> ObservedSpectrum:
    """Read the coadded MRS spectrum (blue and red arms as arms 0 and 1).

    Args:
        source: path or open HDUList.
        arms: which arms to read, of 'B' and 'R' (default both; those missing in the file are skipped).
        mask_bits: PIXMASK/ANDMASK bits that mark a pixel bad (None = any bit).
        resolution: resolving power (default 7500).
        air: override; by default vacuum unless the header says air.
        fix_nonfinite: mask NaN/inf flux or ivar (default; counted in ``metadata["n_nonfinite_masked"]``); False raises instead.
    """
    with F.open_source(source, FORMAT) as (hdul, name):
        pieces = []
        for arm in arms:
            extname = f"COADD_{str(arm).upper()}"
            index = F.find_hdu(hdul, extname)
            if index is None:
                continue
            if not F.is_table(hdul[index]):
                raise F.problem(f"HDU {extname} should be a table, found {type(hdul[index]).__name__}")
            names = F.column_names(hdul[index])
            missing = [col for col in ("FLUX", "IVAR", "WAVELENGTH") if F.find_column(names, (col,)) is None]
            if missing:
                raise F.problem(f"HDU {extname} lacks column(s) {missing}; it has {names}")
            data = F.table_rows(hdul, index)
            if len(data) != 1:
                raise F.problem(f"HDU {extname} should hold one row, found {len(data)}")

            def get(col, dtype=np.float64, names=names, data=data):
                actual = F.find_column(names, (col,))
                return None if actual is None else F.column(data, actual, row=0, dtype=dtype)

            wavelength, flux, ivar = get("WAVELENGTH"), get("FLUX"), get("IVAR")
            if not (wavelength.size == flux.size == ivar.size):
                raise F.problem(
                    f"HDU {extname}: WAVELENGTH ({wavelength.size}), FLUX ({flux.size}) and IVAR ({ivar.size}) differ in length"
                )
            mask_col = F.find_column(names, _MASK_COLUMNS)
            bad = (
                np.zeros(flux.size, dtype=bool)
                if mask_col is None
                else F.bitmask_bad(F.column(data, mask_col, row=0, dtype=np.int64), mask_bits)
            )
            pieces.append((str(arm).upper(), wavelength, flux, ivar, bad, hdul[index].header))
        if not pieces:
            raise F.problem(f"no COADD_B or COADD_R table for arms {list(arms)}; the file has {F.summarize(hdul)}")
        primary = hdul[0].header
        is_air, air_source = F.air_convention(air, primary, *(piece[5] for piece in pieces))
        object_id = F.header_value([primary], "OBSID", "DESIG", "OBJNAME", "OBJECT")
        metadata = {
            "source": name,
            "format": FORMAT,
            "object_id": None if object_id is None else str(object_id).strip(),
            "flux_unit": F.header_value([primary], "BUNIT") or "relative",
            "resolution_source": "user" if resolution is not None else "default",
            "air_or_vacuum_source": air_source,
            "header": F.header_subset(primary),
        }
        return ObservedSpectrum.from_arrays(
            np.concatenate([p[1] for p in pieces]),
            np.concatenate([p[2] for p in pieces]),
            ivar=np.concatenate([p[3] for p in pieces]),
            mask=np.concatenate([p[4] for p in pieces]),
            arm=np.concatenate([np.full(p[1].size, i) for i, p in enumerate(pieces)]),
            arm_names=[p[0] for p in pieces],
            resolution=LAMOST_MRS_RESOLUTION if resolution is None else resolution,
            air=is_air,
            fix_nonfinite=fix_nonfinite,
            metadata=metadata,
        )
