"""Wavelength utilities: air/vacuum conversion, log-lambda grids, LSF convolution, resampling.

Conventions: wavelengths in Angstrom, **vacuum** inside stellarfit.  Wavelength
arithmetic is done in float64 (a float32 wavelength near 5000 A is only good to
~0.0005 A, i.e. ~0.03 km/s, and log-lambda steps of 1e-5 need more digits).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "air_to_vacuum",
    "vacuum_to_air",
    "log_lambda_grid",
    "resolution_sigma_kms",
    "convolve_gaussian_log_lambda",
    "convolve_to_resolution",
    "resample_flux_conserving",
    "pixel_edges",
    "SPEED_OF_LIGHT_KMS",
    "FWHM_TO_SIGMA",
]

SPEED_OF_LIGHT_KMS = 299_792.458
#: sigma = FWHM * FWHM_TO_SIGMA for a Gaussian.
FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))


def vacuum_to_air(wavelength_vacuum: np.ndarray) -> np.ndarray:
    """Vacuum to air wavelength [A] (Birch & Downs 1994 refractivity, as used by VALD).

    Valid above 2000 A; shorter wavelengths are returned unchanged (as is the
    usual convention, air wavelengths are not defined there).
    """
    wavelength = np.asarray(wavelength_vacuum, dtype=np.float64)
    s2 = (1e4 / wavelength) ** 2
    n = 1.0 + 0.0000834254 + 0.02406147 / (130.0 - s2) + 0.00015998 / (38.9 - s2)
    return np.where(wavelength >= 2000.0, wavelength / n, wavelength)


def air_to_vacuum(wavelength_air: np.ndarray) -> np.ndarray:
    """Air to vacuum wavelength [A] (N. Piskunov's inversion of Birch & Downs, as used by VALD).

    Round trip with :func:`vacuum_to_air` agrees to better than 1e-5 A in the optical.
    """
    wavelength = np.asarray(wavelength_air, dtype=np.float64)
    s2 = (1e4 / wavelength) ** 2
    n = 1.0 + 0.00008336624212083 + 0.02408926869968 / (130.1065924522 - s2) + 0.0001599740894897 / (38.92568793293 - s2)
    return np.where(wavelength >= 2000.0, wavelength * n, wavelength)


def log_lambda_grid(lower: float, upper: float, resolution: float, sampling: float = 3.0) -> np.ndarray:
    """Wavelengths [A] uniform in ln(lambda) from ``lower`` to at most ``upper``.

    The step is d(ln lambda) = 1 / (resolution * sampling), i.e. ``sampling``
    pixels per resolution element lambda/R.  The default model (5000-5500 A,
    R = 30,000, 3 pixels) has 8,578 pixels.

    Returns: wavelength, shape (n_pixels,), float64.
    """
    if not (lower > 0 and upper > lower):
        raise ValueError(f"need 0 < lower < upper, got lower={lower}, upper={upper}")
    if resolution <= 0 or sampling <= 0:
        raise ValueError(f"resolution and sampling must be positive, got {resolution}, {sampling}")
    step = 1.0 / (resolution * sampling)
    n_pixels = int(np.floor(np.log(upper / lower) / step + 1e-9)) + 1
    return lower * np.exp(step * np.arange(n_pixels, dtype=np.float64))


def resolution_sigma_kms(resolution: float) -> float:
    """Gaussian sigma [km/s] of an LSF with FWHM = lambda / resolution."""
    return SPEED_OF_LIGHT_KMS / resolution * FWHM_TO_SIGMA


def _gaussian_kernel(sigma_pixels: float) -> np.ndarray:
    half = int(np.ceil(5.0 * sigma_pixels))
    x = np.arange(-half, half + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma_pixels) ** 2)
    return kernel / kernel.sum()


def convolve_gaussian_log_lambda(flux: np.ndarray, sigma_pixels: float) -> np.ndarray:
    """Convolve flux sampled uniformly in ln(lambda) with a Gaussian of ``sigma_pixels``.

    Edges are handled by reflecting the spectrum, so a flat spectrum stays flat.

    Args:
        flux: (..., n_pixels)
        sigma_pixels: Gaussian sigma in pixels of the log-lambda grid.
    Returns: convolved flux, same shape.
    """
    flux = np.asarray(flux, dtype=np.float64)
    if sigma_pixels <= 0:
        return flux.copy()
    kernel = _gaussian_kernel(sigma_pixels)
    half = kernel.size // 2
    if half >= flux.shape[-1]:
        raise ValueError(f"LSF kernel ({kernel.size} pixels) is wider than the spectrum ({flux.shape[-1]} pixels)")
    padded = np.concatenate([flux[..., half:0:-1], flux, flux[..., -2 : -half - 2 : -1]], axis=-1)
    n_fft = 1 << int(np.ceil(np.log2(padded.shape[-1] + kernel.size)))
    spectrum = np.fft.rfft(padded, n_fft, axis=-1) * np.fft.rfft(kernel, n_fft)
    convolved = np.fft.irfft(spectrum, n_fft, axis=-1)
    return convolved[..., 2 * half : 2 * half + flux.shape[-1]]


def convolve_to_resolution(
    wavelength: np.ndarray,
    flux: np.ndarray,
    resolution: float,
    *,
    input_resolution: float | None = None,
    oversampling: float = 10.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Convolve a spectrum on any increasing wavelength grid with a Gaussian LSF of resolving power R.

    The flux is first interpolated onto a log-lambda grid with ``oversampling``
    pixels per resolution element (never coarser than the input's finest step),
    convolved there with a kernel of constant velocity width, and returned on
    that log-lambda grid.  If ``input_resolution`` is given, the spectrum is
    taken to be already at that resolution and is broadened differentially
    (sigma^2 = sigma_out^2 - sigma_in^2).

    Args:
        wavelength: (n_in,) [A], strictly increasing.
        flux: (..., n_in)
    Returns:
        (log-lambda wavelength (n_out,), convolved flux (..., n_out))
    """
    wavelength = np.asarray(wavelength, dtype=np.float64)
    flux = np.asarray(flux, dtype=np.float64)
    if np.any(np.diff(wavelength) <= 0):
        raise ValueError("wavelength must be strictly increasing")
    if input_resolution is not None and input_resolution <= resolution:
        raise ValueError(
            f"cannot convolve from R={input_resolution:g} to a higher R={resolution:g}; the target resolution must be lower"
        )
    finest_step = np.min(np.diff(np.log(wavelength)))
    step = min(1.0 / (resolution * oversampling), finest_step)
    n = int(np.floor(np.log(wavelength[-1] / wavelength[0]) / step)) + 1
    log_grid = wavelength[0] * np.exp(step * np.arange(n))
    log_grid = log_grid[log_grid <= wavelength[-1]]
    flat = flux.reshape(-1, flux.shape[-1])
    interpolated = np.stack([np.interp(log_grid, wavelength, row) for row in flat]).reshape(flux.shape[:-1] + (log_grid.size,))
    sigma_velocity = FWHM_TO_SIGMA / resolution  # in units of d(ln lambda)
    if input_resolution is not None:
        sigma_velocity = np.sqrt(sigma_velocity**2 - (FWHM_TO_SIGMA / input_resolution) ** 2)
    return log_grid, convolve_gaussian_log_lambda(interpolated, sigma_velocity / step)


def pixel_edges(wavelength: np.ndarray) -> np.ndarray:
    """Pixel edges (n+1,) from pixel centres (n,): midpoints, outer edges mirrored."""
    wavelength = np.asarray(wavelength, dtype=np.float64)
    if wavelength.size < 2:
        raise ValueError("need at least two pixels to define pixel edges")
    middle = 0.5 * (wavelength[1:] + wavelength[:-1])
    return np.concatenate([[wavelength[0] - (middle[0] - wavelength[0])], middle, [wavelength[-1] + (wavelength[-1] - middle[-1])]])


def resample_flux_conserving(
    wavelength_in: np.ndarray, flux_in: np.ndarray, wavelength_out: np.ndarray
) -> np.ndarray:
    """Resample flux density onto new pixels, conserving the integrated flux.

    Each output pixel gets the mean of the input flux density (a piecewise
    linear function through the input samples) over the output pixel's extent,
    so the integral of flux over any range of whole output pixels equals the
    integral of the input over the same range.

    Args:
        wavelength_in: (n_in,) pixel centres [A], increasing.
        flux_in: (..., n_in) flux density.
        wavelength_out: (n_out,) pixel centres [A], inside the input range.
    Returns: (..., n_out)
    """
    wavelength_in = np.asarray(wavelength_in, dtype=np.float64)
    wavelength_out = np.asarray(wavelength_out, dtype=np.float64)
    flux_in = np.asarray(flux_in, dtype=np.float64)
    edges = pixel_edges(wavelength_out)
    if edges[0] < wavelength_in[0] - 1e-9 or edges[-1] > wavelength_in[-1] + 1e-9:
        raise ValueError(
            f"output pixels span {edges[0]:.3f}-{edges[-1]:.3f} A but the input covers only "
            f"{wavelength_in[0]:.3f}-{wavelength_in[-1]:.3f} A"
        )
    # cumulative integral of the piecewise-linear input (trapezoid rule), then
    # exact integral up to each edge: the cumulative value at the left sample
    # plus the partial trapezoid.
    segment = 0.5 * (flux_in[..., 1:] + flux_in[..., :-1]) * np.diff(wavelength_in)
    cumulative = np.concatenate([np.zeros(flux_in.shape[:-1] + (1,)), np.cumsum(segment, axis=-1)], axis=-1)
    index = np.clip(np.searchsorted(wavelength_in, edges, side="right") - 1, 0, wavelength_in.size - 2)
    x0 = wavelength_in[index]
    width = wavelength_in[index + 1] - x0
    t = (edges - x0) / width
    f0 = flux_in[..., index]
    f1 = flux_in[..., index + 1]
    partial = width * (f0 * t + 0.5 * (f1 - f0) * t**2)
    integral_at_edges = cumulative[..., index] + partial
    return np.diff(integral_at_edges, axis=-1) / np.diff(edges)
