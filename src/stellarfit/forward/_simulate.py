"""Simulated observations of a model spectrum (injection-recovery tests, examples, benchmarks)."""

from __future__ import annotations

import numpy as np

from stellarfit.forward._model import ForwardModel

__all__ = ["simulate_observation"]


def simulate_observation(
    native_wavelength: np.ndarray,
    native_flux: np.ndarray,
    native_resolution: float,
    wavelength: np.ndarray,
    resolution: float | np.ndarray,
    *,
    rv: float = 0.0,
    vsini: float = 0.0,
    snr: float | None = 100.0,
    continuum: np.ndarray | float = 1.0,
    rng: np.random.Generator | int | None = None,
    arm: np.ndarray | None = None,
):
    """Observe a rest-frame, normalized model spectrum as an instrument would.

    The spectrum (on ``native_wavelength``, uniform in ln lambda, vacuum, at
    ``native_resolution``) is rotated (``vsini`` [km/s]), broadened to
    ``resolution`` (a scalar R or one R per pixel of ``wavelength``; differential
    Gaussian LSF plus the pixel top-hat, as in :class:`ForwardModel`), Doppler
    shifted (``rv`` [km/s]) and interpolated onto ``wavelength``, multiplied by
    ``continuum`` and given Gaussian noise with sigma = continuum / ``snr``
    (``snr=None``: noise-free, ivar still continuum-based at S/N 1e4).
    ``arm``: optional (n,) arm ids (contiguous blocks 0, 1, ...) for multi-arm spectra.

    Returns a :class:`~stellarfit.spectra.ObservedSpectrum`.
    """
    from stellarfit.spectra import ObservedSpectrum

    native_flux = np.asarray(native_flux, dtype=np.float64)
    wavelength = np.asarray(wavelength, dtype=np.float64)
    if resolution is not None and np.ndim(resolution) > 0:
        resolution = np.asarray(resolution, dtype=np.float64)
    if native_flux.shape != np.shape(native_wavelength):
        raise ValueError(f"native_flux has shape {native_flux.shape}, native_wavelength {np.shape(native_wavelength)}")
    if snr is not None and not snr > 0:
        raise ValueError(f"snr must be positive (or None for noise-free), got {snr}")
    model = ForwardModel(lambda labels, w: labels, native_wavelength, native_resolution, wavelength, resolution,
                         rv_range=(rv - 1.0, rv + 1.0), vsini_max=max(2.0 * vsini, 10.0))
    normalized = np.asarray(model.shift_to_observed(model.broaden(native_flux[model.native_slice], vsini), rv), dtype=np.float64)
    continuum = np.broadcast_to(np.asarray(continuum, dtype=np.float64), wavelength.shape)
    sigma = continuum / (snr if snr is not None else 1e4)
    flux = continuum * normalized
    if snr is not None:
        generator = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        flux = flux + sigma * generator.normal(size=wavelength.size)
    ivar = np.where(model.covered, 1.0 / sigma**2, 0.0)
    return ObservedSpectrum.from_arrays(wavelength, flux, ivar=ivar, resolution=resolution, arm=arm)
