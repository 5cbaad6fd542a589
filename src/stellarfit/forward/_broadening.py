"""Pure JAX kernels of the observation model on a log-lambda grid.

Everything here acts on spectra sampled uniformly in ln(lambda), where a
velocity is a constant shift in pixels: one pixel is ``velocity_step`` km/s.

- :func:`doppler_factor`: relativistic Doppler factor lambda_obs / lambda_rest.
- :func:`rotation_kernel`: the rotational broadening profile with linear limb
  darkening (Gray, *The Observation and Analysis of Stellar Photospheres*,
  eq. 18.14), integrated exactly over each pixel, so it is smooth in vsini and
  tends to a delta function as vsini -> 0.
- :func:`gaussian_kernel`, :func:`box_kernel`: pixel-integrated Gaussian LSF
  and the top-hat of a detector pixel.
- :func:`convolve_same`: convolution with edge padding (a flat spectrum stays flat).
- :func:`cubic_interpolate`: Keys (1981) cubic convolution interpolation, used
  for the Doppler shift (linear interpolation of a spectrum sampled at 3 pixels
  per resolution element would make line depths wrong by several per cent).
"""

from __future__ import annotations

import jax.numpy as jnp
import jax.scipy.special as jsp
import numpy as np

from stellarfit.wavelengths import SPEED_OF_LIGHT_KMS

__all__ = [
    "doppler_factor",
    "log_doppler_factor",
    "rotation_kernel",
    "rotation_kernel_variance",
    "gaussian_kernel",
    "box_kernel",
    "convolve_same",
    "cubic_interpolate",
]


def doppler_factor(rv_kms):
    """lambda_observed / lambda_rest for a radial velocity [km/s] (relativistic, radial motion)."""
    beta = rv_kms / SPEED_OF_LIGHT_KMS
    return jnp.sqrt((1.0 + beta) / (1.0 - beta))


def log_doppler_factor(rv_kms):
    """ln(lambda_observed / lambda_rest), computed without forming the factor (accurate in float32)."""
    beta = rv_kms / SPEED_OF_LIGHT_KMS
    return 0.5 * (jnp.log1p(beta) - jnp.log1p(-beta))


def _rotation_cdf(u, limb_darkening):
    """Cumulative distribution of the rotation profile G(u), u = dv / vsini in [-1, 1]."""
    u = jnp.clip(u, -1.0 + 1e-7, 1.0 - 1e-7)
    epsilon = limb_darkening
    ellipse = (1.0 - epsilon) * (u * jnp.sqrt(1.0 - u**2) + jnp.arcsin(u))
    parabola = 0.5 * jnp.pi * epsilon * (u - u**3 / 3.0)
    return (ellipse + parabola) / (jnp.pi * (1.0 - epsilon / 3.0)) + 0.5


def rotation_kernel(vsini_kms, velocity_step_kms: float, half_width: int, limb_darkening: float = 0.6):
    """Rotational broadening kernel, shape (2 * half_width + 1,), summing to 1.

    G(u) = [2 (1 - eps) sqrt(1 - u^2) + (pi eps / 2) (1 - u^2)] / [pi (1 - eps / 3)],
    u = dv / vsini, integrated over each pixel of ``velocity_step_kms``.  The
    kernel is truncated at ``half_width`` pixels: choose it >= vsini_max / step.

    Args:
        vsini_kms: projected rotation velocity [km/s] (scalar, may be traced).
        velocity_step_kms: pixel size [km/s].
        half_width: kernel half-width [pixels] (static).
        limb_darkening: linear limb-darkening coefficient epsilon.
    """
    vsini = jnp.maximum(vsini_kms, 1e-3)  # the profile is a delta function below a pixel anyway
    edges = (jnp.arange(-half_width, half_width + 2) - 0.5) * velocity_step_kms / vsini
    cdf = _rotation_cdf(edges, limb_darkening)
    kernel = jnp.diff(cdf)
    return kernel / jnp.sum(kernel)


def rotation_kernel_variance(vsini_kms: float, limb_darkening: float = 0.6) -> float:
    """Analytic variance [km^2/s^2] of the (untruncated, continuous) rotation profile."""
    epsilon = limb_darkening
    return vsini_kms**2 * ((1.0 - epsilon) / 4.0 + 2.0 * epsilon / 15.0) / (1.0 - epsilon / 3.0)


def gaussian_kernel(sigma_pixels: float, half_width: int | None = None) -> np.ndarray:
    """Pixel-integrated Gaussian kernel (NumPy, float64), summing to 1.

    ``sigma_pixels`` <= 0 gives the identity kernel [1].
    """
    if sigma_pixels <= 0:
        return np.ones(1)
    from scipy.special import ndtr

    if half_width is None:
        half_width = int(np.ceil(5.0 * sigma_pixels)) + 1
    edges = (np.arange(-half_width, half_width + 2) - 0.5) / sigma_pixels
    kernel = np.diff(ndtr(edges))
    return kernel / kernel.sum()


def box_kernel(width_pixels: float) -> np.ndarray:
    """Pixel-integrated top-hat of total width ``width_pixels`` (NumPy), summing to 1."""
    if width_pixels <= 1.0:
        return np.ones(1)
    half_width = int(np.ceil(width_pixels / 2.0))
    left = np.arange(-half_width, half_width + 1) - 0.5
    overlap = np.clip(np.minimum(left + 1.0, width_pixels / 2.0) - np.maximum(left, -width_pixels / 2.0), 0.0, None)
    return overlap / overlap.sum()


def convolve_same(flux, kernel):
    """Convolve (..., n) with an odd-length kernel (k,), padding with edge values; output (..., n).

    Direct summation for short kernels, FFT for long ones (e.g. rotation up to 300 km/s).
    """
    half = kernel.shape[-1] // 2
    if half == 0:
        return flux * kernel[0]
    padded = jnp.concatenate(
        [jnp.repeat(flux[..., :1], half, axis=-1), flux, jnp.repeat(flux[..., -1:], half, axis=-1)], axis=-1
    )
    if half > 16:
        size = padded.shape[-1] + kernel.shape[-1] - 1
        n_fft = 1 << int(np.ceil(np.log2(size)))
        spectrum = jnp.fft.rfft(padded, n_fft, axis=-1) * jnp.fft.rfft(kernel, n_fft)
        full = jnp.fft.irfft(spectrum, n_fft, axis=-1)
        return full[..., 2 * half : 2 * half + flux.shape[-1]].astype(flux.dtype)
    if flux.ndim == 1:
        return jnp.convolve(padded, kernel[::-1], mode="valid")
    flat = padded.reshape(-1, padded.shape[-1])
    out = jnp.stack([jnp.convolve(row, kernel[::-1], mode="valid") for row in flat])
    return out.reshape(flux.shape)


def _keys_weights(t):
    """Keys cubic-convolution weights (a = -1/2) for fractional offset t in [0, 1)."""
    t2, t3 = t * t, t * t * t
    w_minus = -0.5 * t3 + t2 - 0.5 * t
    w_zero = 1.5 * t3 - 2.5 * t2 + 1.0
    w_one = -1.5 * t3 + 2.0 * t2 + 0.5 * t
    w_two = 0.5 * t3 - 0.5 * t2
    return w_minus, w_zero, w_one, w_two


def cubic_interpolate(values, position):
    """Interpolate ``values`` (..., n) at fractional pixel ``position`` (m,) with Keys cubic convolution.

    Positions outside [0, n-1] are clamped to the edge values (callers mask them).
    Exact for polynomials up to degree 2; differentiable in ``position``.
    """
    n = values.shape[-1]
    position = jnp.clip(position, 0.0, n - 1.0)
    base = jnp.clip(jnp.floor(position), 0, n - 2).astype(jnp.int32)
    t = position - base
    w_minus, w_zero, w_one, w_two = _keys_weights(t)
    index = lambda offset: jnp.clip(base + offset, 0, n - 1)  # noqa: E731
    take = lambda offset: jnp.take(values, index(offset), axis=-1)  # noqa: E731
    return w_minus * take(-1) + w_zero * take(0) + w_one * take(1) + w_two * take(2)
