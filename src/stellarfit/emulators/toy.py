"""An analytic toy grid for tests, examples and quick benchmarks (not physics).

Spectra of Gaussian absorption lines on a log-lambda grid whose depths, widths
and positions depend smoothly on three labels, plus a sloped log10 continuum:

- ``temp`` (0..1): line depths change (some lines strengthen, others weaken);
- ``metal`` (-1..+1): all depths scale as 10**(0.3 metal);
- ``shift`` (-1..+1): line positions move by up to +-2 pixels and widths by ~20%.

It stands in for a real grid wherever a cheap, exactly known mapping from
labels to spectra is needed.
"""

from __future__ import annotations

import numpy as np

from stellarfit.emulators.training import TrainingData
from stellarfit.labels import Label, LabelSpec

__all__ = ["toy_label_spec", "toy_spectra", "make_toy_grid"]


def toy_label_spec() -> LabelSpec:
    """Three labels: ``temp`` [0, 1], ``metal`` [-1, 1], ``shift`` [-1, 1] (dimensionless)."""
    return LabelSpec([Label("temp", "", 0.0, 1.0, "toy temperature"), Label("metal", "", -1.0, 1.0, "toy metallicity"), Label("shift", "", -1.0, 1.0, "toy line shift")])


def toy_spectra(labels: np.ndarray, wavelength: np.ndarray, *, n_lines: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(normalized flux, log10 continuum), each (n_spectra, n_pixels), for labels (n_spectra, 3)."""
    rng = np.random.default_rng(seed)
    labels = np.atleast_2d(np.asarray(labels, np.float64))
    wavelength = np.asarray(wavelength, np.float64)
    lo, hi = wavelength[0], wavelength[-1]
    step = np.median(np.diff(wavelength))
    centres = rng.uniform(lo + 0.05 * (hi - lo), hi - 0.05 * (hi - lo), n_lines)
    base_depth = rng.uniform(0.2, 0.7, n_lines)
    temp_slope = rng.uniform(-0.8, 0.8, n_lines)
    sigma0 = step * rng.uniform(1.5, 3.0, n_lines)
    temp, metal, shift = labels[:, 0:1], labels[:, 1:2], labels[:, 2:3]
    depth = np.clip(base_depth * (1 + temp_slope * (temp - 0.5)) * 10 ** (0.3 * metal), 0.0, 0.95)  # (n, n_lines)
    position = centres + 2.0 * step * shift  # (n, n_lines)
    sigma = sigma0 * (1 + 0.2 * shift)
    profile = np.exp(-0.5 * ((wavelength[None, None, :] - position[..., None]) / sigma[..., None]) ** 2)
    tau = np.sum(depth[..., None] * profile, axis=1)
    flux = np.exp(-tau)
    x = (wavelength - lo) / (hi - lo)
    log10_continuum = 14.0 + 0.5 * temp + 0.1 * metal + (0.2 - 0.1 * temp) * x[None, :]
    return flux.astype(np.float32), log10_continuum.astype(np.float32)


def make_toy_grid(n_spectra: int, n_pixels: int = 200, *, seed: int = 0, window: tuple[float, float] = (5000.0, 5050.0), with_continuum: bool = True) -> TrainingData:
    """A toy grid: labels uniform in the box, log-lambda wavelengths over ``window`` (vacuum A).

    The line list is fixed (``seed=0`` inside), so grids drawn with different
    ``seed`` share the same physics and differ only in their labels.
    """
    spec = toy_label_spec()
    rng = np.random.default_rng(seed)
    labels = spec.lower + rng.uniform(size=(n_spectra, len(spec))) * (spec.upper - spec.lower)
    wavelength = np.geomspace(window[0], window[1], n_pixels)
    flux, cont = toy_spectra(labels, wavelength)
    return TrainingData(labels, flux, wavelength, cont if with_continuum else None, spec)
