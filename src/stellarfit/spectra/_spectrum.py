"""ObservedSpectrum: the one container for an observed spectrum inside stellarfit.

This module owns :class:`ObservedSpectrum` and the exceptions raised when a
spectrum (or a spectrum file) is not usable.  Every reader in
``stellarfit.spectra`` returns ObservedSpectrum objects, and the forward model,
the likelihood and the Cramér-Rao code read only this class.

Invariants after construction (the constructor checks and normalizes):

- ``wavelength`` (n,) float64, vacuum Angstrom, strictly increasing within
  each arm; arms are contiguous blocks of pixels with ids 0, 1, ... in order.
- ``flux`` and ``ivar`` (n,) float64, finite everywhere.  The constructor
  accepts non-finite values only in pixels that carry no information (masked
  or ``ivar == 0``) and replaces them by 0 there; :meth:`from_arrays` and the
  readers mask NaN/inf pixels by default and count them in
  ``metadata['n_nonfinite_masked']``.
- ``ivar >= 0``; ``mask`` (n,) bool, True = do not use.  Pixels with
  ``ivar == 0`` are always masked, so ``~mask`` alone selects the pixels a
  fit uses (``weights`` is ivar with zeros at masked pixels).
- at least one usable pixel.
- all arrays are read-only (the dataclass is frozen; use :meth:`replace`).

Resolution: ``resolution`` is the resolving power R = lambda / FWHM of the
line-spread function (LSF), a scalar or one value per pixel, or None when
unknown.  ``lsf_sigma`` is the per-pixel Gaussian sigma of the LSF in
Angstrom (FWHM = 2 sqrt(2 ln 2) sigma); when only it is given, ``resolution``
is derived from it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from stellarfit.wavelengths import FWHM_TO_SIGMA, air_to_vacuum

__all__ = ["ObservedSpectrum", "SpectrumList", "InvalidSpectrumError", "SpectrumReadError", "UnknownFormatError", "WAVELENGTH_UNITS"]

#: Accepted values of ``wavelength_unit`` and their meaning.
WAVELENGTH_UNITS = {
    "angstrom": "Angstrom",
    "nm": "nanometre (x10 -> Angstrom)",
    "micron": "micrometre (x1e4 -> Angstrom)",
    "loglam": "log10(wavelength / Angstrom) (10**x -> Angstrom)",
}
_UNIT_ALIASES = {
    "angstrom": "angstrom", "angstroms": "angstrom", "a": "angstrom", "aa": "angstrom", "ang": "angstrom",
    "nm": "nm", "nanometer": "nm", "nanometre": "nm", "nanometers": "nm", "nanometres": "nm",
    "micron": "micron", "microns": "micron", "um": "micron", "micrometer": "micron", "micrometre": "micron",
    "loglam": "loglam", "log10": "loglam", "log10_angstrom": "loglam",
}


class InvalidSpectrumError(ValueError):
    """The arrays given for a spectrum are inconsistent or unusable (message says how to fix it)."""


class SpectrumReadError(ValueError):
    """A spectrum file cannot be read; the message names the file, the format and the problem.

    Attributes:
        path: the file (or ``"<HDUList>"`` for an in-memory HDUList).
        format: the reader that failed, or None when no reader was chosen yet.
    """

    def __init__(self, message: str, *, path: str | None = None, format: str | None = None):  # noqa: A002
        super().__init__(message)
        self.path = path
        self.format = format


class UnknownFormatError(SpectrumReadError):
    """No registered reader recognises the file (the message lists the supported formats)."""


class SpectrumList(list):
    """A list of ObservedSpectrum from one multi-object file, plus the entries that were skipped.

    Attributes:
        skipped: one dict per skipped entry (``row``, ``object_id``, ``reason``) when a
            reader was called with ``errors='skip'``; empty otherwise.
    """

    def __init__(self, spectra: Sequence[ObservedSpectrum] = (), skipped: Sequence[dict[str, Any]] = ()):
        super().__init__(spectra)
        self.skipped = list(skipped)


def normalize_wavelength_unit(unit: str) -> str:
    """Map a user spelling ('nm', 'Angstrom', 'um', 'loglam' ...) to one of :data:`WAVELENGTH_UNITS`."""
    key = str(unit).strip().lower()
    if key not in _UNIT_ALIASES:
        raise InvalidSpectrumError(
            f"wavelength_unit={unit!r} is not understood; use one of {sorted(WAVELENGTH_UNITS)} "
            "('loglam' means log10 of the wavelength in Angstrom)"
        )
    return _UNIT_ALIASES[key]


def to_angstrom(values: np.ndarray, unit: str) -> np.ndarray:
    """Convert wavelengths in ``unit`` (see :data:`WAVELENGTH_UNITS`) to Angstrom, float64."""
    values = np.asarray(values, dtype=np.float64)
    unit = normalize_wavelength_unit(unit)
    if unit == "nm":
        return values * 10.0
    if unit == "micron":
        return values * 1.0e4
    if unit == "loglam":
        return 10.0**values
    return values.copy()


def _as_1d(name: str, values: Any, dtype: Any, n: int | None) -> np.ndarray:
    try:
        array = np.array(values, dtype=dtype)  # a copy: the caller's array is never aliased
    except (TypeError, ValueError) as exc:
        raise InvalidSpectrumError(f"{name} cannot be converted to a {np.dtype(dtype).name} array: {exc}") from None
    if array.ndim != 1:
        raise InvalidSpectrumError(
            f"{name} must be 1-D (one value per pixel), got shape {array.shape}; "
            "for several spectra make one ObservedSpectrum each"
        )
    if n is not None and array.size != n:
        raise InvalidSpectrumError(
            f"{name} has {array.size} values but wavelength has {n}: all per-pixel arrays must have the same length"
        )
    return array


def _readonly(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


def _check_wavelength_scale(wavelength: np.ndarray) -> None:
    """Raise a helpful error when the wavelengths are clearly not in Angstrom."""
    low, high = float(wavelength.min()), float(wavelength.max())
    if low <= 0:
        raise InvalidSpectrumError(
            f"wavelength must be positive (vacuum Angstrom), got a minimum of {low:g}; "
            "if these are log10 wavelengths pass wavelength_unit='loglam'"
        )
    if high < 100.0:
        if 3.0 <= low and high <= 5.5:
            guess = "log10(lambda/Angstrom) (pass wavelength_unit='loglam') or microns (wavelength_unit='micron')"
        else:
            guess = "microns (pass wavelength_unit='micron') or log10(lambda/Angstrom) (wavelength_unit='loglam')"
        raise InvalidSpectrumError(
            f"wavelength spans {low:g}-{high:g}, which is not Angstrom: it looks like {guess}"
        )
    if high < 1200.0:
        raise InvalidSpectrumError(
            f"wavelength spans {low:g}-{high:g}, which looks like nanometres, not Angstrom: "
            "pass wavelength_unit='nm' (or multiply by 10)"
        )


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class ObservedSpectrum:
    """An observed spectrum: vacuum wavelengths, flux, inverse variance, mask, resolution, arms.

    Construct it from arrays with :meth:`from_arrays` (unit conversion, air to
    vacuum, sigma -> ivar, optional masking of non-finite values) or read a
    file with :func:`stellarfit.spectra.read_spectrum`.  The constructor itself
    takes arrays that are already in the internal convention and validates them.

    Attributes:
        wavelength: (n,) float64, vacuum Angstrom, strictly increasing within each arm.
        flux: (n,) float64, in the file's units (see ``metadata['flux_unit']``);
            continuum-normalized or not — the forward model fits a continuum.
        ivar: (n,) float64, inverse variance of ``flux`` (same units^-2); 0 = no information.
        mask: (n,) bool, True = bad pixel, ignore.  Pixels with ivar == 0 are always masked.
        resolution: resolving power lambda/FWHM: a float, an (n,) float64 array, or None (unknown).
        lsf_sigma: (n,) float64 Gaussian LSF sigma [Angstrom] per pixel, or None.
        arm: (n,) int16 arm id per pixel (0 for single-arm spectra); arms are contiguous blocks 0, 1, ...
        arm_names: one name per arm (e.g. ``("B", "R", "Z")``).
        metadata: free-form dict; readers fill ``source``, ``format``, ``object_id``,
            ``flux_unit``, ``air_to_vacuum`` (True if converted from air), ``air_or_vacuum``
            ('air'/'vacuum': the file's wavelengths) and ``air_or_vacuum_source`` (why),
            ``n_nonfinite_masked`` (NaN/inf pixels masked by :meth:`from_arrays`),
            ``resolution_source`` and ``header`` (selected keywords).
    """

    wavelength: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray
    mask: np.ndarray | None = None
    resolution: float | np.ndarray | None = None
    lsf_sigma: np.ndarray | None = None
    arm: np.ndarray | None = None
    arm_names: tuple[str, ...] | None = None
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

    # ------------------------------------------------------------------ validation
    def __post_init__(self) -> None:
        setattr_ = object.__setattr__
        wavelength = _as_1d("wavelength", self.wavelength, np.float64, None)
        n = wavelength.size
        if n < 2:
            raise InvalidSpectrumError(f"a spectrum needs at least 2 pixels, got {n}")
        flux = _as_1d("flux", self.flux, np.float64, n)
        ivar = _as_1d("ivar", self.ivar, np.float64, n)
        if self.mask is None:
            mask = np.zeros(n, dtype=bool)
        else:
            raw_mask = np.asarray(self.mask)
            if raw_mask.dtype != bool and not np.issubdtype(raw_mask.dtype, np.integer):
                raise InvalidSpectrumError(
                    f"mask must be boolean (True = bad pixel), got dtype {raw_mask.dtype}; "
                    "for a bitmask pass mask=(bits & bad_bits) != 0"
                )
            mask = _as_1d("mask", raw_mask != 0, bool, n)

        bad_wave = ~np.isfinite(wavelength)
        if bad_wave.any():
            index = int(np.flatnonzero(bad_wave)[0])
            raise InvalidSpectrumError(
                f"wavelength has {int(bad_wave.sum())} non-finite value(s) (first at pixel {index}); "
                "every pixel needs a finite wavelength — drop those pixels before building the spectrum"
            )
        _check_wavelength_scale(wavelength)

        # arms
        if self.arm is None:
            arm = np.zeros(n, dtype=np.int16)
        else:
            raw_arm = np.asarray(self.arm)
            if not np.issubdtype(raw_arm.dtype, np.integer):
                numeric = np.issubdtype(raw_arm.dtype, np.floating)
                if not (numeric and np.all(np.isfinite(raw_arm)) and np.all(raw_arm == np.round(raw_arm))):
                    raise InvalidSpectrumError(f"arm must hold integer arm ids 0, 1, ..., got dtype {raw_arm.dtype}")
            arm = _as_1d("arm", raw_arm, np.int16, n)
        steps = np.diff(arm)
        if arm[0] != 0 or np.any((steps != 0) & (steps != 1)):
            raise InvalidSpectrumError(
                "arm ids must be contiguous blocks numbered 0, 1, 2, ... in pixel order "
                f"(got ids {np.unique(arm).tolist()} in order {_run_labels(arm)}); "
                "concatenate the arms one after the other and number them from 0"
            )
        n_arms = int(arm[-1]) + 1
        if self.arm_names is None:
            arm_names: tuple[str, ...] = tuple(str(i) for i in range(n_arms))
        else:
            arm_names = tuple(str(name) for name in self.arm_names)
            if len(arm_names) != n_arms:
                raise InvalidSpectrumError(f"arm_names has {len(arm_names)} names but the spectrum has {n_arms} arm(s)")

        same_arm = steps == 0
        non_increasing = same_arm & (np.diff(wavelength) <= 0)
        if non_increasing.any():
            i = int(np.flatnonzero(non_increasing)[0]) + 1
            hint = (
                "sort the pixels by wavelength (np.argsort)"
                if n_arms == 1
                else "sort the pixels of each arm by wavelength"
            )
            raise InvalidSpectrumError(
                f"wavelength must increase strictly within each arm, but pixel {i} ({wavelength[i]:.6f} A) "
                f"does not exceed pixel {i - 1} ({wavelength[i - 1]:.6f} A): {hint}; if the data concatenate "
                "several arms that overlap in wavelength, pass arm= ids"
            )

        # ivar, flux, mask
        nonfinite_ivar = ~np.isfinite(ivar)
        negative = (ivar < 0) & ~nonfinite_ivar
        if negative.any():
            index = int(np.flatnonzero(negative)[0])
            raise InvalidSpectrumError(
                f"ivar has {int(negative.sum())} negative value(s) (first at pixel {index}: {ivar[index]:g}); "
                "an inverse variance must be >= 0 (0 = no information): check that the column is really ivar "
                "and not a variance difference or a flag"
            )
        no_info = mask | (ivar == 0)
        for name, array in (("ivar", ivar), ("flux", flux)):
            bad = ~np.isfinite(array) & ~no_info
            if bad.any():
                index = int(np.flatnonzero(bad)[0])
                raise InvalidSpectrumError(
                    f"{name} has {int(bad.sum())} non-finite value(s) (NaN/inf; first at pixel {index}, "
                    f"{wavelength[index]:.3f} A) in pixels that are neither masked nor ivar == 0; mask them "
                    "(mask=...) or build the spectrum with ObservedSpectrum.from_arrays(...) / read_spectrum(...),"
                    " which mask such pixels by default (fix_nonfinite=True)"
                )
        mask = mask | (ivar == 0) | nonfinite_ivar
        ivar = np.where(np.isfinite(ivar), ivar, 0.0)
        ivar[mask & (ivar != 0) & ~np.isfinite(flux)] = 0.0
        flux = np.where(np.isfinite(flux), flux, 0.0)
        if mask.all():
            n_zero = int(np.sum(ivar == 0))
            raise InvalidSpectrumError(
                f"no usable pixel: all {n} pixels are masked or have ivar == 0 ({n_zero} with ivar == 0); "
                "check the mask bits and the ivar/error column (an all-zero ivar usually means the "
                "spectrum was not extracted)"
            )

        # resolution
        resolution: float | np.ndarray | None
        lsf_sigma = None
        if self.lsf_sigma is not None:
            lsf_sigma = _as_1d("lsf_sigma", self.lsf_sigma, np.float64, n)
            if not np.all(np.isfinite(lsf_sigma) & (lsf_sigma > 0)):
                raise InvalidSpectrumError(
                    "lsf_sigma must be finite and > 0 [Angstrom] in every pixel; fill gaps by interpolation"
                )
        if self.resolution is None:
            resolution = None if lsf_sigma is None else wavelength / (lsf_sigma / FWHM_TO_SIGMA)
        elif np.ndim(self.resolution) == 0:
            try:
                resolution = float(self.resolution)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                raise InvalidSpectrumError(f"resolution must be a number, got {self.resolution!r}") from None
            if not (np.isfinite(resolution) and resolution > 0):
                raise InvalidSpectrumError(f"resolution (resolving power lambda/FWHM) must be > 0, got {resolution}")
        else:
            resolution = _as_1d("resolution", self.resolution, np.float64, n)
            if not np.all(np.isfinite(resolution) & (resolution > 0)):
                raise InvalidSpectrumError(
                    "resolution (resolving power per pixel) must be finite and > 0 in every pixel; "
                    "fill gaps by interpolation or pass a scalar"
                )
        if isinstance(resolution, float) and resolution < 10:
            raise InvalidSpectrumError(
                f"resolution={resolution:g} is not a plausible resolving power lambda/FWHM (expected ~1e2-1e6); "
                "did you pass the FWHM or the dispersion in Angstrom?"
            )

        if not isinstance(self.metadata, Mapping):
            raise InvalidSpectrumError(f"metadata must be a dict, got {type(self.metadata).__name__}")

        setattr_(self, "wavelength", _readonly(wavelength))
        setattr_(self, "flux", _readonly(flux))
        setattr_(self, "ivar", _readonly(ivar))
        setattr_(self, "mask", _readonly(mask))
        setattr_(self, "resolution", _readonly(resolution) if isinstance(resolution, np.ndarray) else resolution)
        setattr_(self, "lsf_sigma", None if lsf_sigma is None else _readonly(lsf_sigma))
        setattr_(self, "arm", _readonly(arm))
        setattr_(self, "arm_names", arm_names)
        setattr_(self, "metadata", dict(self.metadata))

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_arrays(
        cls,
        wavelength: Any,
        flux: Any,
        ivar: Any = None,
        sigma: Any = None,
        mask: Any = None,
        resolution: float | Any | None = None,
        *,
        lsf_sigma: Any = None,
        arm: Any = None,
        arm_names: Sequence[str] | None = None,
        air: bool = False,
        wavelength_unit: str = "angstrom",
        fix_nonfinite: bool = True,
        metadata: Mapping[str, Any] | None = None,
    ) -> ObservedSpectrum:
        """Build a spectrum from arrays in any common convention.

        Args:
            wavelength: (n,) wavelengths in ``wavelength_unit``.
            flux: (n,) flux in any unit.
            ivar: (n,) inverse variance (give this or ``sigma``).
            sigma: (n,) or scalar 1-sigma uncertainty of ``flux``; sigma == 0 or non-finite
                means "no information" (ivar 0); negative sigma is an error.
            mask: (n,) bool, True = bad pixel (an integer array is read as "nonzero = bad").
            resolution: resolving power lambda/FWHM, scalar or (n,), or None if unknown.
            lsf_sigma: (n,) Gaussian LSF sigma in the same unit as ``wavelength`` (nm, micron or
                Angstrom; not allowed with 'loglam'), converted to Angstrom.
            arm: (n,) int arm ids (contiguous blocks 0, 1, ...); arm_names: one name per arm.
            air: True if the wavelengths are in air; they are converted to vacuum with
                :func:`stellarfit.wavelengths.air_to_vacuum` and ``metadata['air_to_vacuum']`` is set.
            wavelength_unit: 'angstrom', 'nm', 'micron' or 'loglam' (log10 Angstrom).
            fix_nonfinite: True (default): mask (and give ivar 0) pixels whose flux, ivar or sigma
                is NaN/inf; their number (pixels not already masked by ``mask``) goes to
                ``metadata['n_nonfinite_masked']`` (0 when there are none).  False: such pixels
                are an InvalidSpectrumError unless ``mask`` or ivar == 0 already excludes them.
                Either way an InvalidSpectrumError says so when no usable pixel is left.
            metadata: copied into the spectrum's metadata.
        """
        unit = normalize_wavelength_unit(wavelength_unit)
        wave = _as_1d("wavelength", wavelength, np.float64, None)
        n = wave.size
        flux_array = _as_1d("flux", flux, np.float64, n)
        if (ivar is None) == (sigma is None):
            raise InvalidSpectrumError(
                "give exactly one of ivar= (inverse variance) or sigma= (1-sigma uncertainty) "
                + ("(got both)" if ivar is not None else "(got neither); for a spectrum without errors pass "
                   "sigma=np.median(flux)/snr for an assumed S/N")
            )
        if sigma is not None:
            sigma_array = np.array(sigma, dtype=np.float64)
            if sigma_array.ndim == 0:
                sigma_array = np.full(n, float(sigma_array))
            sigma_array = _as_1d("sigma", sigma_array, np.float64, n)
            if np.any(sigma_array < 0):
                index = int(np.flatnonzero(sigma_array < 0)[0])
                raise InvalidSpectrumError(
                    f"sigma has {int(np.sum(sigma_array < 0))} negative value(s) (first at pixel {index}); "
                    "an uncertainty must be >= 0 (0 or NaN = no information)"
                )
            usable = np.isfinite(sigma_array) & (sigma_array > 0)
            ivar_array = np.zeros(n)
            ivar_array[usable] = 1.0 / sigma_array[usable] ** 2
            nonfinite_error = ~np.isfinite(sigma_array)  # ivar 0 already; counted when fix_nonfinite
        else:
            ivar_array = _as_1d("ivar", ivar, np.float64, n)
            nonfinite_error = ~np.isfinite(ivar_array)
        if mask is None:
            mask_array = np.zeros(n, dtype=bool)
        else:
            raw_mask = np.asarray(mask)
            if raw_mask.dtype != bool and not np.issubdtype(raw_mask.dtype, np.integer):
                raise InvalidSpectrumError(f"mask must be boolean or integer (nonzero = bad), got dtype {raw_mask.dtype}")
            mask_array = _as_1d("mask", raw_mask != 0, bool, n)
        meta = dict(metadata or {})
        if fix_nonfinite:
            bad = (~np.isfinite(flux_array) | nonfinite_error | ~np.isfinite(ivar_array)) & ~mask_array
            mask_array = mask_array | bad
            ivar_array = np.where(bad, 0.0, ivar_array)
            meta["n_nonfinite_masked"] = int(bad.sum())
            if bad.any() and np.all(mask_array | (ivar_array == 0)):
                raise InvalidSpectrumError(
                    f"no usable pixel: {int(bad.sum())} of {n} pixels have NaN/inf flux or uncertainty and the "
                    f"other {n - int(bad.sum())} are masked or have zero weight; check that the flux and "
                    "error columns/HDUs are the right ones (an all-NaN spectrum was usually not extracted)"
                )
        wave_angstrom = to_angstrom(wave, unit)
        sigma_angstrom = None
        if lsf_sigma is not None:
            if unit == "loglam":
                raise InvalidSpectrumError(
                    "lsf_sigma cannot be given with wavelength_unit='loglam'; give it in Angstrom with "
                    "wavelengths in Angstrom, or pass resolution= instead"
                )
            sigma_angstrom = to_angstrom(_as_1d("lsf_sigma", lsf_sigma, np.float64, n), unit)
        if air:
            finite = np.isfinite(wave_angstrom)
            vacuum = air_to_vacuum(np.where(finite, wave_angstrom, 1.0))
            if sigma_angstrom is not None:
                sigma_angstrom = sigma_angstrom * vacuum / wave_angstrom
            wave_angstrom = np.where(finite, vacuum, wave_angstrom)
            meta["air_to_vacuum"] = True
        else:
            meta.setdefault("air_to_vacuum", False)
        meta["air_or_vacuum"] = "air" if air else "vacuum"  # of the wavelengths given (stored: vacuum)
        return cls(
            wavelength=wave_angstrom,
            flux=flux_array,
            ivar=ivar_array,
            mask=mask_array,
            resolution=resolution,
            lsf_sigma=sigma_angstrom,
            arm=arm,
            arm_names=None if arm_names is None else tuple(arm_names),
            metadata=meta,
        )

    # ------------------------------------------------------------------ properties
    @property
    def n_pixels(self) -> int:
        """Number of pixels n."""
        return int(self.wavelength.size)

    def __len__(self) -> int:
        return self.n_pixels

    @property
    def good(self) -> np.ndarray:
        """(n,) bool: pixels a fit uses (not masked, ivar > 0)."""
        return ~self.mask

    @property
    def n_good(self) -> int:
        """Number of usable pixels."""
        return int(np.count_nonzero(~self.mask))

    @property
    def weights(self) -> np.ndarray:
        """(n,) float64: ivar with 0 at masked pixels — what a chi^2 should multiply."""
        return np.where(self.mask, 0.0, self.ivar)

    @property
    def sigma(self) -> np.ndarray:
        """(n,) float64: 1-sigma flux uncertainty; inf where the pixel has no information."""
        weights = self.weights
        with np.errstate(divide="ignore"):
            return np.where(weights > 0, 1.0 / np.sqrt(np.where(weights > 0, weights, 1.0)), np.inf)

    @property
    def n_arms(self) -> int:
        """Number of arms (1 for single-arm spectra)."""
        return len(self.arm_names)  # type: ignore[arg-type]

    @property
    def wavelength_range(self) -> tuple[float, float]:
        """(min, max) wavelength [vacuum Angstrom]."""
        return float(self.wavelength.min()), float(self.wavelength.max())

    @property
    def source(self) -> str:
        """Where the spectrum came from (file name), or '<arrays>'."""
        return str(self.metadata.get("source", "<arrays>"))

    def resolution_per_pixel(self) -> np.ndarray | None:
        """(n,) float64 resolving power per pixel, or None when unknown."""
        if self.resolution is None:
            return None
        return np.broadcast_to(np.asarray(self.resolution, dtype=np.float64), (self.n_pixels,)).copy()

    def lsf_sigma_per_pixel(self) -> np.ndarray | None:
        """(n,) float64 Gaussian LSF sigma [Angstrom] per pixel (from lsf_sigma or from R), or None."""
        if self.lsf_sigma is not None:
            return np.array(self.lsf_sigma)
        resolution = self.resolution_per_pixel()
        if resolution is None:
            return None
        return self.wavelength / resolution * FWHM_TO_SIGMA

    def require_resolution(self) -> float | np.ndarray:
        """The resolution, or a clear error saying how to supply it when it is unknown."""
        if self.resolution is None:
            raise InvalidSpectrumError(
                f"the resolving power of {self.source} is unknown (the file has no LSF information and no "
                "R/RESOLUTN/SPECRES header keyword): pass resolution=R to read_spectrum / "
                "ObservedSpectrum.from_arrays, call spectrum.with_resolution(R), or use --resolution R on the "
                "command line"
            )
        return self.resolution

    # ------------------------------------------------------------------ derived spectra
    def replace(self, **changes: Any) -> ObservedSpectrum:
        """A copy with some fields changed (validated again)."""
        if "resolution" in changes and "lsf_sigma" not in changes:
            changes["lsf_sigma"] = None
        return dataclasses.replace(self, **changes)

    def with_resolution(self, resolution: float | np.ndarray) -> ObservedSpectrum:
        """A copy with the resolving power set (any per-pixel LSF sigma is dropped)."""
        meta = dict(self.metadata, resolution_source="user")
        return self.replace(resolution=resolution, metadata=meta)

    def _subset(
        self, index: np.ndarray, arm_names: tuple[str, ...] | None = None, metadata: dict[str, Any] | None = None
    ) -> ObservedSpectrum:
        arm = self.arm[index]
        # renumber arms that survive so that ids stay contiguous from 0
        kept = [int(a) for a in np.unique(arm)]
        renumber = np.zeros(self.n_arms, dtype=np.int16)
        for new, old in enumerate(kept):
            renumber[old] = new
        names = arm_names if arm_names is not None else tuple(self.arm_names[i] for i in kept)  # type: ignore[index]
        resolution = self.resolution[index] if isinstance(self.resolution, np.ndarray) else self.resolution
        return ObservedSpectrum(
            wavelength=self.wavelength[index],
            flux=self.flux[index],
            ivar=self.ivar[index],
            mask=self.mask[index],
            resolution=resolution,
            lsf_sigma=None if self.lsf_sigma is None else self.lsf_sigma[index],
            arm=renumber[arm],
            arm_names=names,
            metadata=dict(self.metadata) if metadata is None else metadata,
        )

    def select(self, lower: float, upper: float) -> ObservedSpectrum:
        """The pixels with lower <= wavelength <= upper [vacuum Angstrom] (all arms)."""
        if not upper > lower:
            raise InvalidSpectrumError(f"select needs lower < upper, got {lower}, {upper}")
        index = np.flatnonzero((self.wavelength >= lower) & (self.wavelength <= upper))
        if index.size < 2:
            low, high = self.wavelength_range
            raise InvalidSpectrumError(
                f"select({lower}, {upper}) keeps {index.size} pixel(s) of {self.source}, which covers "
                f"{low:.2f}-{high:.2f} A (vacuum)"
            )
        return self._subset(index)

    def arms(self) -> list[ObservedSpectrum]:
        """One single-arm spectrum per arm, in order (a one-element list for single-arm spectra)."""
        out = []
        for i, name in enumerate(self.arm_names):  # type: ignore[arg-type]
            index = np.flatnonzero(self.arm == i)
            out.append(self._subset(index, arm_names=(name,), metadata=dict(self.metadata, arm_name=name)))
        return out

    def snr(self) -> float:
        """Median S/N per pixel, median(flux * sqrt(ivar)) over the usable pixels."""
        good = ~self.mask
        return float(np.median(self.flux[good] * np.sqrt(self.ivar[good])))

    # ------------------------------------------------------------------ output
    def to_table(self):  # -> astropy.table.Table
        """The spectrum as an astropy Table that the generic reader reads back.

        Columns: WAVELENGTH (vacuum Angstrom, float64), FLUX, IVAR (float64),
        MASK (bool), and when present ARM (int16), RESOLUTION (per-pixel R),
        LSF_SIGMA (Angstrom).  ``meta`` holds AIRORVAC='vac', R (scalar
        resolving power), ARMNAMES, OBJECT, BUNIT (flux unit), ORIGFMT and
        ORIGFILE (where the spectrum came from).
        """
        from astropy.table import Table

        table = Table()
        table["WAVELENGTH"] = np.array(self.wavelength)
        table["WAVELENGTH"].unit = "Angstrom"
        table["FLUX"] = np.array(self.flux)
        table["IVAR"] = np.array(self.ivar)
        table["MASK"] = np.array(self.mask)
        if self.n_arms > 1:
            table["ARM"] = np.array(self.arm)
        if isinstance(self.resolution, np.ndarray):
            table["RESOLUTION"] = np.array(self.resolution)
        if self.lsf_sigma is not None:
            table["LSF_SIGMA"] = np.array(self.lsf_sigma)
            table["LSF_SIGMA"].unit = "Angstrom"
        meta = table.meta
        meta["EXTNAME"] = "SPECTRUM"
        meta["AIRORVAC"] = "vac"
        meta["CREATOR"] = "stellarfit"
        if isinstance(self.resolution, float):
            meta["R"] = self.resolution
        if self.n_arms > 1:
            meta["ARMNAMES"] = ",".join(self.arm_names)  # type: ignore[arg-type]
        for key, meta_key in (("OBJECT", "object_id"), ("BUNIT", "flux_unit"), ("ORIGFMT", "format"), ("ORIGFILE", "source")):
            value = self.metadata.get(meta_key)
            if value is not None:
                meta[key] = str(value).encode("ascii", "replace").decode("ascii")
        return table

    def write(self, path: Any, *, overwrite: bool = False) -> None:
        """Write the spectrum as a FITS file (primary HDU + BINTABLE 'SPECTRUM', see :meth:`to_table`)."""
        from astropy.io import fits

        hdu = fits.table_to_hdu(self.to_table())
        fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path, overwrite=overwrite)

    def __repr__(self) -> str:
        low, high = self.wavelength_range
        if self.resolution is None:
            res = "unknown"
        elif isinstance(self.resolution, float):
            res = f"{self.resolution:.0f}"
        else:
            res = f"{np.min(self.resolution):.0f}-{np.max(self.resolution):.0f}"
        arms = "" if self.n_arms == 1 else f", arms={','.join(self.arm_names)}"  # type: ignore[arg-type]
        return (
            f"ObservedSpectrum({self.source!s}, {low:.2f}-{high:.2f} A vacuum, n_pixels={self.n_pixels}, "
            f"n_good={self.n_good}, R={res}{arms})"
        )


def _run_labels(arm: np.ndarray) -> list[int]:
    """Arm ids in order of appearance, one entry per contiguous run (for error messages)."""
    starts = np.concatenate([[0], np.flatnonzero(np.diff(arm)) + 1])
    return [int(arm[i]) for i in starts[:20]]
