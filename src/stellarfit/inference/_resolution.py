"""Observations sharper than the emulator: degraded to its native resolution before a fit.

An emulator predicts spectra at its native resolving power R_native (30,000 for the shipped
ones) and the forward model can only broaden them.  :func:`degrade_for_emulator` is the one
place where :func:`~stellarfit.fit_star`, :func:`~stellarfit.fit_stars` (and so
:func:`~stellarfit.inference.compare_emulators`, ``stellarfit fit``, ``batch`` and
``compare``) bring such an observation down to R_native: when the spectrum's R exceeds
R_native at any pixel the emulator can reach, it is convolved to R_native and resampled onto the
emulator's own log-lambda lattice (:func:`stellarfit.spectra.degrade_resolution`, noise included),
so the forward model broadens it by nothing more than the pixel and rotation kernels, and all
spectra degraded for one emulator share pixels (one compiled fit).  See docs/guide/resolution.md.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["degrade_for_emulator"]


def _emulator_lattice(emulator, low: float, high: float) -> np.ndarray:
    """Wavelengths [A] of the emulator's native ln(lambda) lattice from ``low`` to ``high`` (float64),
    extended beyond the emulator's own range with the same step.  For a composite emulator (one per
    window, :mod:`stellarfit.emulators.composite`), its first window's lattice."""
    emulator = getattr(emulator, "members", (emulator,))[0]
    native = np.asarray(emulator.wavelength, dtype=np.float64)
    step = float(np.log(native[-1] / native[0]) / (native.size - 1))
    origin = float(np.log(native[0]))
    first = int(np.ceil((np.log(low) - origin) / step - 1e-9))
    last = int(np.floor((np.log(high) - origin) / step + 1e-9))
    return np.exp(origin + step * np.arange(first, last + 1, dtype=np.float64))


def degrade_for_emulator(spectrum, emulator) -> tuple[Any, dict[str, Any] | None]:
    """``spectrum`` at the emulator's native resolution, and what was done (None: nothing).

    ``spectrum``: an ObservedSpectrum already cut to the pixels the emulator can reach
    (:func:`~stellarfit.inference.modelled_pixels`).  When its R (scalar or per pixel) exceeds
    ``emulator.native_resolution`` anywhere by more than 1e-6 relative, the arms that do are
    degraded to exactly R_native on the emulator's native lattice; otherwise it is returned as
    it is (also when its resolution is unknown, or the emulator records none: the forward model
    reports those).  The dict is ``metadata["degraded"]`` of
    :func:`~stellarfit.spectra.degrade_resolution`.
    """
    native_resolution = getattr(emulator, "native_resolution", None)
    if native_resolution is None or getattr(spectrum, "resolution", None) is None or not hasattr(spectrum, "arm"):
        return spectrum, None
    resolution = np.asarray(spectrum.resolution, dtype=np.float64)
    if not np.any(resolution > native_resolution * (1.0 + 1e-6)):
        return spectrum, None
    from stellarfit.spectra import degrade_resolution

    low, high = spectrum.wavelength_range
    lattice = _emulator_lattice(emulator, low, high)
    if lattice.size < 2:
        return spectrum, None  # too short to degrade: the forward model explains what is wrong
    degraded = degrade_resolution(spectrum, float(native_resolution), wavelength=lattice)
    return degraded, dict(degraded.metadata["degraded"])
