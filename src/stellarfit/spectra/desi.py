"""DESI coadd (and spectra) files: many spectra per file, arms B, R, Z kept separate.

Layout (DESI data model, coadd-SURVEY-PROGRAM-HEALPIX / coadd-TILE-...):
HDU0 header; ``FIBERMAP`` table, one row per spectrum (TARGETID,
TARGET_RA, TARGET_DEC, ...); then per arm X in B, R, Z: ``X_WAVELENGTH``
(n_X,) vacuum Angstrom (linear, 0.8 A steps), ``X_FLUX`` and ``X_IVAR``
(n_spec, n_X) in 1e-17 erg/s/cm^2/A, ``X_MASK`` (n_spec, n_X) integer (nonzero
= bad), ``X_RESOLUTION`` (n_spec, n_diag, n_X) resolution-matrix diagonals.
A camera-combined file has a single 'BRZ' arm and is read the same way.

Resolution matrix: the diagonals are stored as in scipy's dia_matrix with
offsets ``n_diag // 2 - arange(n_diag)`` (desispec ``Resolution``), so
column j of the matrix — the LSF that spreads pixel j — is ``data[:, j]``
at displacements ``-offsets``.  The per-pixel LSF sigma is the square root
of its second central moment (negative entries clipped to 0), sigma_lambda =
sigma_pixels * d(lambda)/d(pixel), and R = lambda / (2.3548 sigma_lambda).
Pixels whose kernel is empty or degenerate are filled by interpolation.

Each spectrum becomes one ObservedSpectrum with the arms concatenated in
file order (ids 0, 1, 2 and names 'B', 'R', 'Z'); the overlapping arm
edges are kept (wavelength increases within each arm only).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from astropy.io import fits

from stellarfit.spectra import _fits as F
from stellarfit.spectra._spectrum import InvalidSpectrumError, ObservedSpectrum, SpectrumList

__all__ = ["FORMAT", "DESCRIPTION", "identify", "read", "resolution_sigma_pixels"]

FORMAT = "desi-coadd"
DESCRIPTION = "DESI coadd: FIBERMAP + {B,R,Z}_WAVELENGTH/_FLUX/_IVAR/_MASK/_RESOLUTION, one spectrum per FIBERMAP row"
_ARM_PATTERN = re.compile(r"^([A-Z]+)_WAVELENGTH$")


def _arms_in_file(hdul: fits.HDUList) -> list[str]:
    arms = []
    for hdu in hdul:
        match = _ARM_PATTERN.match((hdu.name or "").upper())
        if match:
            arms.append(match.group(1))
    return arms


@F.safe_identify
def identify(hdul: fits.HDUList) -> bool:
    """DESI: a FIBERMAP table and at least one X_WAVELENGTH image with a matching X_FLUX image."""
    if F.find_hdu(hdul, "FIBERMAP") is None:
        return False
    return any(F.find_hdu(hdul, f"{arm}_FLUX") is not None for arm in _arms_in_file(hdul))


def resolution_sigma_pixels(diagonals: np.ndarray) -> np.ndarray:
    """Per-pixel Gaussian-equivalent LSF sigma [pixels] from resolution-matrix diagonals.

    Args:
        diagonals: (n_diag, n_pixels) as stored in DESI ``X_RESOLUTION`` for one spectrum.
    Returns: (n_pixels,) sigma in pixels; NaN where the kernel is empty or degenerate.
    """
    diagonals = np.asarray(diagonals, dtype=np.float64)
    n_diag = diagonals.shape[0]
    displacement = -(n_diag // 2 - np.arange(n_diag, dtype=np.float64))[:, None]
    weights = np.clip(np.nan_to_num(diagonals, nan=0.0), 0.0, None)
    total = weights.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (weights * displacement).sum(axis=0) / total
        variance = (weights * displacement**2).sum(axis=0) / total - mean**2
    sigma = np.sqrt(np.where(variance > 0, variance, np.nan))
    return np.where(total > 0, sigma, np.nan)


def _scalar(value: Any) -> Any:
    if isinstance(value, (bytes, np.bytes_)):
        return value.decode("ascii", "replace").strip()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, str):
        return value.strip()
    return value


def read(
    source: Any,
    *,
    targetids: Sequence[int] | None = None,
    rows: Sequence[int] | None = None,
    arms: Sequence[str] | None = None,
    errors: str = "raise",
    resolution: float | np.ndarray | None = None,
    air: bool | None = None,
    fix_nonfinite: bool = True,
) -> SpectrumList:
    """Read the spectra of a DESI coadd file, one per FIBERMAP row.

    Args:
        source: path or open HDUList.
        targetids: read only these TARGETIDs (in the order given).
        rows: read only these FIBERMAP rows (not with ``targetids``).
        arms: which arms, e.g. ('B', 'R') (default: all in the file).
        errors: 'raise' (a spectrum that is unusable, e.g. all ivar == 0, is an error) or
            'skip' (leave it out and record it in the result's ``.skipped``).
        resolution: resolving power instead of the one from the resolution matrices.
        air: override the vacuum convention.
        fix_nonfinite: mask NaN/inf flux or ivar (default; counted in ``metadata["n_nonfinite_masked"]``); False raises instead.
    Returns: SpectrumList (a list of ObservedSpectrum, with ``.skipped``).
    """
    if errors not in ("raise", "skip"):
        raise ValueError(f"errors must be 'raise' or 'skip', got {errors!r}")
    with F.open_source(source, FORMAT) as (hdul, name):
        fibermap_index = F.require_hdu(hdul, "FIBERMAP", "one row per spectrum")
        fibermap = F.table_rows(hdul, fibermap_index)
        n_spec = len(fibermap)
        fib_names = F.column_names(hdul[fibermap_index])
        target_col = F.find_column(fib_names, ("TARGETID",))
        target_ids = None if target_col is None else np.asarray(fibermap.field(target_col))

        file_arms = _arms_in_file(hdul)
        wanted = [a.upper() for a in arms] if arms is not None else file_arms
        absent = [a for a in wanted if a not in file_arms]
        if absent:
            raise F.problem(f"arm(s) {absent} not in the file (it has {file_arms})")
        if not wanted:
            raise F.problem(f"no X_WAVELENGTH HDU found; the file has {F.summarize(hdul)}")

        arm_data = []
        for arm in wanted:
            wavelength = F.image(hdul, f"{arm}_WAVELENGTH", f"{arm}-arm wavelengths")
            if wavelength.ndim != 1:
                raise F.problem(f"{arm}_WAVELENGTH should be 1-D, has shape {wavelength.shape}")
            n_pix = wavelength.size
            arrays = {}
            for kind, required in (("FLUX", True), ("IVAR", True), ("MASK", False), ("RESOLUTION", False)):
                key = f"{arm}_{kind}"
                if F.find_hdu(hdul, key) is None:
                    if required:
                        F.require_hdu(hdul, key, f"{arm}-arm {kind.lower()}")
                    continue
                # keep the file's float32 (a full healpix coadd has thousands of spectra); rows are
                # converted to float64 one spectrum at a time
                values = F.image(hdul, key, f"{arm}-arm {kind.lower()}", dtype=np.int64 if kind == "MASK" else None)
                if values.ndim == (2 if kind == "RESOLUTION" else 1):
                    values = values[None]
                expected_ndim = 3 if kind == "RESOLUTION" else 2
                if values.ndim != expected_ndim or values.shape[0] != n_spec or values.shape[-1] != n_pix:
                    want = f"({n_spec}, n_diag, {n_pix})" if kind == "RESOLUTION" else f"({n_spec}, {n_pix})"
                    raise F.problem(
                        f"{key} has shape {values.shape}, expected {want} "
                        f"({n_spec} FIBERMAP rows, {n_pix} pixels in {arm}_WAVELENGTH)"
                    )
                arrays[kind] = values
            arm_data.append((arm, wavelength, arrays))

        if targetids is not None and rows is not None:
            raise ValueError("give targetids= or rows=, not both")
        if targetids is not None:
            if target_ids is None:
                raise F.problem("targetids= given but FIBERMAP has no TARGETID column")
            selection = []
            for tid in targetids:
                found = np.flatnonzero(target_ids == tid)
                if found.size == 0:
                    raise F.problem(f"TARGETID {tid} is not in the FIBERMAP")
                selection.append(int(found[0]))
        elif rows is not None:
            selection = [int(r) for r in rows]
            bad_rows = [r for r in selection if not 0 <= r < n_spec]
            if bad_rows:
                raise F.problem(f"rows {bad_rows} out of range: the FIBERMAP has {n_spec} rows")
        else:
            selection = list(range(n_spec))

        primary = hdul[0].header
        flux_unit = F.header_value([hdul[F.find_hdu(hdul, f"{wanted[0]}_FLUX")].header, primary], "BUNIT")
        scalar_cols = [c for c in fib_names if np.ndim(fibermap.field(c)[0]) == 0]
        spectra, skipped = [], []
        for row in selection:
            object_id = None if target_ids is None else str(_scalar(target_ids[row]))
            try:
                spectra.append(
                    _one_spectrum(row, arm_data, resolution, air, fix_nonfinite, {
                        "source": name,
                        "format": FORMAT,
                        "row": row,
                        "object_id": object_id,
                        "targetid": None if target_ids is None else _scalar(target_ids[row]),
                        "flux_unit": flux_unit or "1e-17 erg/s/cm^2/A",
                        "air_or_vacuum_source": "user" if air is not None else "format (vacuum)",
                        "fibermap": {c: _scalar(fibermap.field(c)[row]) for c in scalar_cols},
                        "header": F.header_subset(primary),
                    })
                )
            except InvalidSpectrumError as exc:
                if errors == "raise":
                    raise F.problem(f"spectrum in FIBERMAP row {row} (TARGETID {object_id}): {exc}") from None
                skipped.append({"row": row, "object_id": object_id, "reason": str(exc)})
        return SpectrumList(spectra, skipped)


def _one_spectrum(row, arm_data, resolution, air, fix_nonfinite, metadata) -> ObservedSpectrum:
    waves, fluxes, ivars, masks, arm_ids, sigmas = [], [], [], [], [], []
    have_lsf = resolution is None and all("RESOLUTION" in arrays for _, _, arrays in arm_data)
    for i, (_, wavelength, arrays) in enumerate(arm_data):
        waves.append(wavelength)
        fluxes.append(arrays["FLUX"][row])
        ivars.append(arrays["IVAR"][row])
        masks.append(arrays["MASK"][row] != 0 if "MASK" in arrays else np.zeros(wavelength.size, dtype=bool))
        arm_ids.append(np.full(wavelength.size, i))
        if have_lsf:
            sigma_pix = F.fill_positive(resolution_sigma_pixels(arrays["RESOLUTION"][row]))
            if sigma_pix is None:
                have_lsf = False
            else:
                sigmas.append(sigma_pix * np.abs(np.gradient(wavelength)))
    if resolution is not None:
        metadata["resolution_source"] = "user"
    elif have_lsf:
        metadata["resolution_source"] = "file (resolution matrix)"
    else:
        metadata["resolution_source"] = None
    wavelength = np.concatenate(waves)
    # ObservedSpectrum derives R = lambda / (2.3548 * lsf_sigma) from the per-pixel sigma
    lsf_sigma = np.concatenate(sigmas) if have_lsf else None
    return ObservedSpectrum.from_arrays(
        wavelength,
        np.concatenate(fluxes),
        ivar=np.concatenate(ivars),
        mask=np.concatenate(masks),
        resolution=resolution,
        lsf_sigma=lsf_sigma,
        arm=np.concatenate(arm_ids),
        arm_names=[arm for arm, _, _ in arm_data],
        air=bool(air),
        fix_nonfinite=fix_nonfinite,
        metadata=metadata,
    )

