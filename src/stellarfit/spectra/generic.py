"""Generic FITS spectra: a BINTABLE with wavelength/flux/uncertainty columns, or a 1-D image with a WCS.

This is the fallback reader (tried last by auto-detection) and the format
:meth:`ObservedSpectrum.write` produces, so a spectrum round-trips through it.

Table layout (first table HDU that has a wavelength and a flux column, or ``hdu=``):

- wavelength: WAVELENGTH, WAVE, LAMBDA, LAM, WL (unit from TUNIT: Angstrom by
  default, nm, um, m), or LOGLAM / LOGLAMBDA / LOGWAVE (log10 Angstrom);
- flux: FLUX, FLUX_DENSITY, F_LAMBDA, FLAM, SPEC;
- uncertainty: IVAR / INVVAR / INV_VAR / FLUX_IVAR, or ERROR / SIGMA / ERR /
  FLUX_ERROR / FLUX_ERR / E_FLUX / ERR_FLUX / UNCERTAINTY / NOISE, or
  VARIANCE / VAR / FLUX_VAR;
- optional: MASK / BADMASK / PIXMASK / AND_MASK / ANDMASK (nonzero = bad),
  RESOLUTION / RESOLVING_POWER / SPECRES (R per pixel), LSF_SIGMA (Angstrom),
  ARM (arm ids; names in the ARMNAMES header keyword).

Column names are matched case-insensitively.  Either one row per pixel, or
one row holding array columns (``row=`` picks a row when there are several).

Image layout (1-D spectra as published, e.g. the Gaia benchmark, NOAO atlas,
MIKE and HARPS files): the first image HDU with NAXIS = 1 and a wavelength
WCS (CRVAL1, CDELT1 or CD1_1, CRPIX1 honoured; log10 when DC-FLAG = 1 or
CTYPE1 = 'LOG-LINEAR'; FITS 'WAVE-LOG'/'AWAV-LOG' also understood).  The unit
comes from CUNIT1 (nm, NM, Angstrom, A, um, ...), a unit in CTYPE1
('ANGSTROM') or IRAF's WAT1_001 ``units=``; when nothing names it, it is
inferred from the range (>= 3000: Angstrom, 80-3000: nm) and
``metadata['wavelength_unit_source']`` says so.  Uncertainties come from an
image HDU of the same length named IVAR, ERROR/SIGMA/ERR/UNCERTAINTY or
VARIANCE/VAR; a MASK image is used when present.  Files without
uncertainties need ``snr=`` (``--snr`` on the command line).

Air or vacuum: AIRORVAC ('air'/'vac'), VACUUM (T/F) or CTYPE1 ('AWAV' = air,
'WAVE' = vacuum) in the data or primary header; ``air=True/False`` overrides.
When the header says nothing: air for images IRAF wrote (WAT1_001 or an
NOAO-IRAF ORIGIN: ground-based reductions), vacuum otherwise.
``metadata['air_or_vacuum_source']`` records which rule applied.

Masking: NaN/inf flux or uncertainty pixels are masked and counted in
``metadata['n_nonfinite_masked']`` (``fix_nonfinite=False`` refuses them
instead); runs of exactly zero flux (gaps) and zero-flux pixels with a zero
or absurd uncertainty are masked and counted in
``metadata['n_zero_flux_masked']``.  Resolution: RESOLUTION column, else
header keyword R / RESOLUTN / SPECRES / SPEC_RES / RESOLVPW, else unknown
(``resolution=`` / ``--resolution``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from astropy.io import fits

from stellarfit.spectra import _conventions as C
from stellarfit.spectra import _fits as F
from stellarfit.spectra._spectrum import ObservedSpectrum

__all__ = ["FORMAT", "DESCRIPTION", "identify", "read"]

FORMAT = "generic"
DESCRIPTION = "generic FITS: BINTABLE with wavelength, flux and ivar/error columns, or a 1-D image with a wavelength WCS"

WAVELENGTH_COLUMNS = ("WAVELENGTH", "WAVE", "LAMBDA", "LAM", "WL", "WAVELENGTH_VAC", "WAVELENGTH_AIR")
LOG_WAVELENGTH_COLUMNS = ("LOGLAM", "LOGLAMBDA", "LOGWAVE", "LOG_WAVELENGTH")
FLUX_COLUMNS = ("FLUX", "FLUX_DENSITY", "F_LAMBDA", "FLAM", "SPEC")
IVAR_COLUMNS = ("IVAR", "INVVAR", "INV_VAR", "FLUX_IVAR")
ERROR_COLUMNS = ("ERROR", "SIGMA", "ERR", "FLUX_ERROR", "FLUX_ERR", "E_FLUX", "ERR_FLUX", "UNCERTAINTY", "NOISE")
VARIANCE_COLUMNS = ("VARIANCE", "VAR", "FLUX_VAR")
MASK_COLUMNS = ("MASK", "BADMASK", "PIXMASK", "AND_MASK", "ANDMASK")
RESOLUTION_COLUMNS = ("RESOLUTION", "RESOLVING_POWER", "SPECRES")
LSF_SIGMA_COLUMNS = ("LSF_SIGMA",)
ARM_COLUMNS = ("ARM",)

IVAR_HDUS = ("IVAR", "INVVAR")
ERROR_HDUS = ("ERROR", "SIGMA", "ERR", "UNCERTAINTY", "NOISE")
VARIANCE_HDUS = ("VARIANCE", "VAR")
#: ``metadata['air_or_vacuum_source']`` when neither the caller nor the header says air or vacuum.
_AIR_DEFAULT_SOURCE = "default (vacuum; the header does not say)"


def _table_hdu(hdul: fits.HDUList) -> int | None:
    for i, hdu in enumerate(hdul):
        if F.is_table(hdu):
            names = F.column_names(hdu)
            if F.find_column(names, WAVELENGTH_COLUMNS + LOG_WAVELENGTH_COLUMNS) and F.find_column(names, FLUX_COLUMNS):
                return i
    return None


def _image_hdu(hdul: fits.HDUList) -> int | None:
    for i, hdu in enumerate(hdul):
        if F.is_image(hdu) and len(F.image_shape(hdu)) == 1 and "CRVAL1" in hdu.header:
            if "CDELT1" in hdu.header or "CD1_1" in hdu.header:
                return i
    return None


@F.safe_identify
def identify(hdul: fits.HDUList) -> bool:
    """True if the file has a table with wavelength and flux columns, or a 1-D image with a wavelength WCS."""
    return _table_hdu(hdul) is not None or _image_hdu(hdul) is not None


def read(
    source: Any,
    *,
    hdu: int | str | None = None,
    row: int | None = None,
    wavelength_unit: str | None = None,
    air: bool | None = None,
    resolution: float | np.ndarray | None = None,
    snr: float | None = None,
    fix_nonfinite: bool = True,
    use_mask: bool = True,
) -> ObservedSpectrum:
    """Read a generic FITS spectrum.

    Args:
        source: path or open HDUList.
        hdu: which HDU holds the spectrum (index or EXTNAME); default: the first suitable one.
        row: for tables of array columns with several rows, which row.
        wavelength_unit: override the unit ('angstrom', 'nm', 'micron', 'loglam'); default: from
            TUNIT/CUNIT1/CTYPE1/WAT1_001, else inferred from the range (recorded in metadata).
        air: True/False to say the wavelengths are air/vacuum (default: from the header, else air
            for IRAF-style images and vacuum otherwise; see the module docstring).
        resolution: resolving power to use instead of what the file says.
        snr: assume this S/N per pixel (sigma = |median flux| / snr) when the file has no uncertainties.
        fix_nonfinite: mask NaN/inf flux or uncertainty values (default; counted in
            ``metadata['n_nonfinite_masked']``); False raises instead.
        use_mask: apply the MASK column/HDU (nonzero = bad).
    Returns: one ObservedSpectrum (vacuum Angstrom).
    """
    with F.open_source(source, FORMAT) as (hdul, name):
        if hdu is not None:
            index = F.require_hdu(hdul, hdu, "the spectrum")
            if F.is_table(hdul[index]):
                return _read_table(hdul, index, name, row, wavelength_unit, air, resolution, snr, fix_nonfinite, use_mask)
            return _read_image(hdul, index, name, wavelength_unit, air, resolution, snr, fix_nonfinite, use_mask)
        index = _table_hdu(hdul)
        if index is not None:
            return _read_table(hdul, index, name, row, wavelength_unit, air, resolution, snr, fix_nonfinite, use_mask)
        index = _image_hdu(hdul)
        if index is not None:
            return _read_image(hdul, index, name, wavelength_unit, air, resolution, snr, fix_nonfinite, use_mask)
        raise F.problem(
            "no table with wavelength and flux columns (e.g. WAVELENGTH, FLUX, IVAR or ERROR) and no 1-D image "
            f"with a wavelength WCS (CRVAL1, CDELT1); the file has {F.summarize(hdul)}"
        )


def _resolution(resolution: Any, column_values: np.ndarray | None, *headers: Any) -> tuple[Any, str | None]:
    if resolution is not None:
        return resolution, "user"
    if column_values is not None:
        filled = F.fill_positive(column_values)
        if filled is not None:
            return filled, "file"
    value = F.header_resolution(*headers)
    if value is not None:
        return value, "header"
    return None, None


def _uncertainty(ivar: Any, sigma: Any, variance: Any, flux: np.ndarray, snr: float | None, where: str) -> dict[str, Any]:
    if ivar is not None:
        return {"ivar": ivar}
    if sigma is not None:
        return {"sigma": sigma}
    if variance is not None:
        variance = np.asarray(variance, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            return {"ivar": np.where(np.isfinite(variance) & (variance > 0), 1.0 / np.where(variance > 0, variance, 1.0), 0.0)}
    if snr is not None:
        if not snr > 0:
            raise F.problem(f"snr must be > 0, got {snr}")
        scale = float(np.nanmedian(np.abs(flux)))
        if not (np.isfinite(scale) and scale > 0):
            raise F.problem("cannot assume a S/N: the median |flux| is zero or undefined")
        return {"sigma": np.full(flux.size, scale / snr)}
    raise F.problem(
        f"no uncertainties found in {where} (looked for IVAR, ERROR/SIGMA/ERR/FLUX_ERROR or VARIANCE); "
        "add such a column/HDU, or pass snr=<S/N per pixel> (command line: --snr S/N) to assume a uniform "
        "noise level"
    )


def sigma_of(uncertainty: dict[str, Any]) -> np.ndarray:
    """(n,) 1-sigma uncertainties from ``{"ivar": ...}`` or ``{"sigma": ...}`` (inf where ivar <= 0)."""
    if "sigma" in uncertainty:
        return np.asarray(uncertainty["sigma"], dtype=np.float64)
    ivar = np.asarray(uncertainty["ivar"], dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ivar > 0, 1.0 / np.sqrt(np.where(ivar > 0, ivar, 1.0)), np.inf)


def gap_mask(flux: np.ndarray, uncertainty: dict[str, Any], mask: np.ndarray | None, assumed: bool) -> tuple[np.ndarray, int]:
    """(mask with zero-flux gaps added (n,) bool, number of pixels this added); see
    :func:`stellarfit.spectra._conventions.zero_flux_gaps` (``assumed``: the sigma came from snr=)."""
    gaps = C.zero_flux_gaps(flux, None if assumed else sigma_of(uncertainty))
    base = np.zeros(flux.size, dtype=bool) if mask is None else np.asarray(mask) != 0
    added = gaps & ~base
    return base | gaps, int(added.sum())


def _read_table(hdul, index, name, row, wavelength_unit, air, resolution, snr, fix_nonfinite, use_mask):
    hdu = hdul[index]
    names = F.column_names(hdu)
    data = F.table_rows(hdul, index)
    wave_col = F.find_column(names, WAVELENGTH_COLUMNS)
    unit = wavelength_unit
    if wave_col is None:
        wave_col = F.find_column(names, LOG_WAVELENGTH_COLUMNS)
        if wave_col is None:
            raise F.problem(f"HDU {index} has no wavelength column (looked for {WAVELENGTH_COLUMNS + LOG_WAVELENGTH_COLUMNS}); columns: {names}")
        unit = unit or "loglam"
    flux_col = F.find_column(names, FLUX_COLUMNS)
    if flux_col is None:
        raise F.problem(f"HDU {index} has no flux column (looked for {FLUX_COLUMNS}); columns: {names}")
    column_unit = hdu.columns[wave_col].unit
    scale = 1.0
    unit_source = "user" if wavelength_unit is not None else ("column name" if unit else None)
    if unit is None:
        parsed = F.unit_name(column_unit or "")
        if parsed == "m":
            parsed, scale = "angstrom", 1e10
        unit = parsed
        unit_source = None if parsed is None else f"TUNIT of {wave_col} = {column_unit!r}"

    vector = np.ndim(data.field(wave_col)) == 2
    if vector:
        if row is None:
            if len(data) != 1:
                raise F.problem(f"HDU {index} holds {len(data)} spectra as array columns: pass row=<0..{len(data) - 1}>")
            row = 0
        if not 0 <= row < len(data):
            raise F.problem(f"row={row} is out of range: HDU {index} has {len(data)} row(s)")
    elif row not in (None, 0):
        raise F.problem(f"row={row} given but HDU {index} stores one pixel per row (a single spectrum)")
    pick = row if vector else None

    def get(candidates, dtype=np.float64):
        col = F.find_column(names, candidates)
        return None if col is None else F.column(data, col, row=pick, dtype=dtype)

    wavelength = F.column(data, wave_col, row=pick) * scale
    if unit is None:
        unit, unit_source = C.infer_wavelength_unit(wavelength)
    flux = F.column(data, flux_col, row=pick)
    if flux.size != wavelength.size:
        raise F.problem(f"column {flux_col!r} has {flux.size} values but {wave_col!r} has {wavelength.size}")
    errors = (get(IVAR_COLUMNS), get(ERROR_COLUMNS), get(VARIANCE_COLUMNS))
    uncertainty = _uncertainty(*errors, flux, snr, f"HDU {index}")
    mask, n_gap = gap_mask(flux, uncertainty, get(MASK_COLUMNS, dtype=np.int64) if use_mask else None,
                           assumed=all(e is None for e in errors))
    arm = get(ARM_COLUMNS, dtype=np.int64)
    lsf_sigma = get(LSF_SIGMA_COLUMNS)
    primary = hdul[0].header
    res, res_source = _resolution(resolution, get(RESOLUTION_COLUMNS), hdu.header, primary)
    is_air, air_source = F.air_convention(air, hdu.header, primary, default=_AIR_DEFAULT_SOURCE)
    arm_names = None
    if arm is not None:
        names_card = F.header_value([hdu.header, primary], "ARMNAMES")
        if isinstance(names_card, str) and names_card:
            arm_names = tuple(part.strip() for part in names_card.split(","))
    flux_unit = hdu.columns[flux_col].unit or F.header_value([hdu.header, primary], "BUNIT")
    metadata = _metadata(name, index, hdu.header, primary, flux_unit, res_source, air_source)
    metadata.update(wavelength_unit=unit, wavelength_unit_source=unit_source, n_zero_flux_masked=n_gap)
    if row is not None:
        metadata["row"] = row
    return ObservedSpectrum.from_arrays(
        wavelength,
        flux,
        mask=mask,
        resolution=res,
        lsf_sigma=lsf_sigma if res_source != "user" else None,
        arm=arm,
        arm_names=arm_names,
        air=is_air,
        wavelength_unit=unit,
        fix_nonfinite=fix_nonfinite,
        metadata=metadata,
        **uncertainty,
    )


def _read_image(hdul, index, name, wavelength_unit, air, resolution, snr, fix_nonfinite, use_mask):
    header = hdul[index].header
    flux = F.image(hdul, index, "flux")
    if flux.ndim != 1:
        raise F.problem(f"{F.hdu_label(hdul, index)} is a {flux.ndim}-D image; a generic image spectrum must be 1-D")
    wavelength, _ = F.wcs_wavelength(header, flux.size)
    if wavelength_unit is not None:
        unit, unit_source = wavelength_unit, "user"
    else:
        unit, unit_source = C.image_wavelength_unit(header)
        if unit is None:
            unit, unit_source = C.infer_wavelength_unit(wavelength)
        if unit == "m":
            wavelength, unit = wavelength * 1e10, "angstrom"

    def companion(names):
        for candidate in names:
            i = F.find_hdu(hdul, candidate)
            if i is not None and i != index:
                values = F.image(hdul, i, candidate)
                if values.shape != flux.shape:
                    raise F.problem(f"HDU {candidate} has shape {values.shape} but the flux has {flux.shape}")
                return values
        return None

    errors = (companion(IVAR_HDUS), companion(ERROR_HDUS), companion(VARIANCE_HDUS))
    uncertainty = _uncertainty(*errors, flux, snr, "the file")
    mask = None
    if use_mask:
        mask_index = F.find_hdu(hdul, "MASK")
        if mask_index is not None:
            mask = F.image(hdul, mask_index, "mask", dtype=np.int64)
            if mask.shape != flux.shape:
                raise F.problem(f"HDU MASK has shape {mask.shape} but the flux has {flux.shape}")
    mask, n_gap = gap_mask(flux, uncertainty, mask, assumed=all(e is None for e in errors))
    primary = hdul[0].header
    res, res_source = _resolution(resolution, None, header, primary)
    is_air, air_source = F.air_convention(air, header, primary, default=_AIR_DEFAULT_SOURCE)
    if air is None and air_source == _AIR_DEFAULT_SOURCE and C.looks_iraf(header, primary):
        is_air, air_source = True, C.AIR_IRAF_SOURCE
    flux_unit = F.header_value([header, primary], "BUNIT")
    metadata = _metadata(name, index, header, primary, flux_unit, res_source, air_source)
    metadata.update(wavelength_unit=unit, wavelength_unit_source=unit_source, n_zero_flux_masked=n_gap)
    return ObservedSpectrum.from_arrays(
        wavelength,
        flux,
        mask=mask,
        resolution=res,
        air=is_air,
        wavelength_unit=unit,
        fix_nonfinite=fix_nonfinite,
        metadata=metadata,
        **uncertainty,
    )


def _metadata(name, index, header, primary, flux_unit, res_source, air_source) -> dict[str, Any]:
    object_id = F.header_value([header, primary], "OBJECT", "OBJID", "SOURCE_ID", "TARGETID")
    return {
        "source": name,
        "format": FORMAT,
        "hdu": index,
        "object_id": None if object_id is None else str(object_id),
        "flux_unit": None if flux_unit in (None, "") else str(flux_unit),
        "resolution_source": res_source,
        "air_or_vacuum_source": air_source,
        "header": F.header_subset(header, primary),
    }
