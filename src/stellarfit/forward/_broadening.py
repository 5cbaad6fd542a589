"""Pure JAX kernels of the observation model on a log-lambda grid.

Everything here acts on spectra sampled uniformly in ln(lambda), where a
velocity is a constant shift in pixels: one pixel is ``velocity_step`` km/s.

- :func:`doppler_factor`: relativistic Doppler factor lambda_obs / lambda_rest.
- :func:`rotation_transfer`: the Fourier transform of the rotational broadening
  profile with linear limb darkening (Gray, *The Observation and Analysis of
  Stellar Photospheres*, eq. 18.14), in closed form (Bessel J1 and the spherical
  Bessel j1), so rotation is a product in Fourier space, analytic in vsini.
- :func:`rotation_kernel`: the same profile as a band-limited kernel on the
  pixel grid (the inverse DFT of :func:`rotation_transfer`), for direct
  convolution; a delta function at vsini = 0.

Why not the profile integrated over each pixel (the kernel used until
2026-11-25).  While vsini is below half a pixel, all of that kernel stays in the
central pixel: the model ignored vsini < 1.7 km/s on ``payne-default``'s
pixels, and each time the profile's edge crossed a pixel boundary (vsini =
1.7, 5.0, 8.3 ... km/s) the model's second derivative in vsini was singular
(the profile's sqrt edge). NUTS then needed tiny steps wherever vsini was
below ~8 km/s. The band-limited form treats the native spectrum as what it is,
samples of a smooth function, and broadens it by the continuous profile: the
change from vsini = 0 is quadratic in vsini, as for a physical line.
- :func:`instrument_kernel`: the differential Gaussian LSF and the observed
  pixel's top-hat as one band-limited kernel that maps native pixel averages to
  observed pixel averages (the forward model's instrument).
- :func:`gaussian_kernel`, :func:`box_kernel`: pixel-integrated Gaussian LSF
  and the top-hat of a detector pixel (simple discrete forms).
- :func:`convolve_same`: convolution with edge padding (a flat spectrum stays flat).
- :func:`convolve_same_many`: one spectrum convolved with several kernels at once
  (the anchor LSFs of a wavelength-dependent resolution).
- :func:`spline_interpolate`: interpolating quintic B-spline (prefilter
  :func:`spline_coefficients`, then six taps per output pixel), the Doppler shift
  of the forward model; :func:`spline_interpolate_between` blends two rows per
  output pixel (per-pixel LSF).
- :func:`cubic_interpolate`: Keys (1981) cubic convolution interpolation (four taps,
  no prefilter), the former Doppler shift, kept as ``interpolation="keys"``;
  :func:`cubic_interpolate_between` is its two-row form.

Why a spline.  A spectrum sampled at 3 pixels per FWHM has power up to near the
Nyquist frequency (0.5 cycles per pixel), where short local kernels are poor:
shifting a unit sine wave by half a pixel, Keys cubic errs by 0.05 at 0.2 cycles
per pixel and 0.21 at 0.3, the quintic spline by 5e-4 and 0.012.  Keys' error
depends on the sub-pixel phase of the shift, which biases a fitted RV: up to
+-33 m/s when the observed pixels are the native pixels of ``payne-default``
(R = 30,000, 3 pixels per FWHM) and +-17 m/s at R = 20,000; the spline's bias is
< 0.3 m/s (``benchmarks/bench_rv_interpolation.py``).  The spline needs a
prefilter (a 49-tap convolution of the whole spectrum) that local kernels do not;
the forward model merges it into its broadening convolution, where it is free.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from stellarfit.wavelengths import SPEED_OF_LIGHT_KMS

__all__ = [
    "doppler_factor",
    "log_doppler_factor",
    "rotation_kernel",
    "rotation_kernel_variance",
    "rotation_transfer",
    "instrument_kernel",
    "gaussian_kernel",
    "box_kernel",
    "convolve_same",
    "convolve_same_many",
    "cubic_interpolate",
    "cubic_interpolate_between",
    "spline_prefilter_kernel",
    "spline_coefficients",
    "spline_interpolate",
    "spline_interpolate_between",
    "INTERPOLATIONS",
]


def doppler_factor(rv_kms):
    """lambda_observed / lambda_rest for a radial velocity [km/s] (relativistic, radial motion)."""
    beta = rv_kms / SPEED_OF_LIGHT_KMS
    return jnp.sqrt((1.0 + beta) / (1.0 - beta))


def log_doppler_factor(rv_kms):
    """ln(lambda_observed / lambda_rest), computed without forming the factor (accurate in float32)."""
    beta = rv_kms / SPEED_OF_LIGHT_KMS
    return 0.5 * (jnp.log1p(beta) - jnp.log1p(-beta))


def _bessel_ratio(x):
    """2 J1(x) / x for x >= 0 (1 at x = 0; absolute error < 1e-7, Abramowitz & Stegun 9.4.4 and 9.4.6)."""
    small = jnp.minimum(x, 3.0)
    t = (small / 3.0) ** 2
    series = 1.0 + 2.0 * t * (-0.56249985 + t * (0.21093573 + t * (-0.03954289 + t * (
        0.00443319 + t * (-0.00031761 + t * 0.00001109)))))
    large = jnp.maximum(x, 3.0)
    y = 3.0 / large
    amplitude = 0.79788456 + y * (0.00000156 + y * (0.01659667 + y * (0.00017105 + y * (
        -0.00249511 + y * (0.00113653 - y * 0.00020033)))))
    phase = large - 2.35619449 + y * (0.12499612 + y * (0.00005650 + y * (-0.00637879 + y * (
        0.00074348 + y * (0.00079824 - y * 0.00029166)))))
    asymptotic = 2.0 * amplitude * jnp.cos(phase) / (large * jnp.sqrt(large))  # not large**1.5: pow is exp(1.5 log)
    return jnp.where(x <= 3.0, series, asymptotic)


def _spherical_ratio(x):
    """3 j1(x) / x = 3 (sin x - x cos x) / x^3 for x >= 0 (1 at x = 0; a series below x = 1)."""
    small = jnp.minimum(x, 1.0)
    s2 = small**2
    series = 1.0 + s2 * (-1.0 / 10.0 + s2 * (1.0 / 280.0 + s2 * (-1.0 / 15120.0 + s2 / 1330560.0)))
    large = jnp.maximum(x, 1.0)
    direct = 3.0 * (jnp.sin(large) - large * jnp.cos(large)) / large**3
    return jnp.where(x < 1.0, series, direct)


def rotation_transfer(vsini_kms, frequency, limb_darkening: float = 0.6):
    """Fourier transform of the rotation profile at ``frequency`` [cycles per km/s], 1 at frequency 0.

    The profile G(u) = [2 (1 - eps) sqrt(1 - u^2) + (pi eps / 2) (1 - u^2)] / [pi (1 - eps / 3)],
    u = dv / vsini, is a weighted sum of a half-ellipse (transform 2 J1(x) / x) and a parabola
    (3 j1(x) / x), x = 2 pi frequency vsini:

        g(x) = [(1 - eps) 2 J1(x) / x + (2 eps / 3) 3 j1(x) / x] / (1 - eps / 3).

    Analytic in vsini, including vsini = 0 (g = 1 - x^2 var/(2 vsini^2) + ...: the change is
    quadratic in vsini, its curvature the profile's variance, :func:`rotation_kernel_variance`).
    """
    epsilon = limb_darkening
    x = 2.0 * jnp.pi * jnp.abs(jnp.asarray(frequency)) * jnp.abs(vsini_kms)
    return ((1.0 - epsilon) * _bessel_ratio(x) + (2.0 * epsilon / 3.0) * _spherical_ratio(x)) / (1.0 - epsilon / 3.0)


@functools.lru_cache(maxsize=32)
def _kernel_cosines(half_width: int, velocity_step_kms: float):
    """(frequencies [cycles per km/s] (2 h + 1,), weights (2 h + 1, 2 h + 1)) of the inverse DFT of period 4 h + 1."""
    period = 4 * half_width + 1
    bins = np.arange(2 * half_width + 1)
    taps = np.arange(-half_width, half_width + 1)
    weights = 2.0 * np.cos(2.0 * np.pi * np.outer(bins, taps) / period) / period
    weights[0] = 1.0 / period
    return bins / (period * velocity_step_kms), weights


def rotation_kernel(vsini_kms, velocity_step_kms: float, half_width: int, limb_darkening: float = 0.6):
    """Rotational broadening kernel on the pixel grid, shape (2 * half_width + 1,), summing to 1.

    The band-limited form of the profile (see :func:`rotation_transfer`): the inverse DFT of its
    transform over a period of 4 * half_width + 1 pixels, kept to +-half_width and normalized.
    Convolving samples of a band-limited spectrum with it broadens the underlying smooth spectrum by
    the continuous profile. It is a delta function at vsini = 0 and smooth in vsini; like any
    band-limited kernel it rings slightly (small negative taps) beyond the profile's edges.
    Choose ``half_width`` >= vsini_max / step + 1.

    Args:
        vsini_kms: projected rotation velocity [km/s] (scalar, may be traced).
        velocity_step_kms: pixel size [km/s].
        half_width: kernel half-width [pixels] (static).
        limb_darkening: linear limb-darkening coefficient epsilon.
    """
    frequency, weights = _kernel_cosines(int(half_width), float(velocity_step_kms))
    transfer = rotation_transfer(vsini_kms, jnp.asarray(frequency, jnp.result_type(vsini_kms, jnp.float32)), limb_darkening)
    kernel = transfer @ jnp.asarray(weights, transfer.dtype)
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


def instrument_kernel(sigma_pixels: float, width_pixels: float, half_width: int | None = None,
                      n_frequencies: int = 4096) -> np.ndarray:
    """Kernel from native pixel averages to observed pixel averages (NumPy, float64, summing to 1).

    A native flux is the spectrum averaged over its native pixel (how the grids are made:
    flux-conserving resampling of the synthesis).  The instrument records the spectrum
    convolved with a Gaussian of ``sigma_pixels`` (the differential LSF) and averaged over
    an observed pixel ``width_pixels`` native pixels wide.  On band-limited spectra that is
    the filter ``exp(-2 pi^2 sigma^2 nu^2) sinc(W nu) / sinc(nu)`` (``nu`` in cycles per
    native pixel, ``|nu| <= 1/2``): the native pixel's top-hat divided out, the observed
    one's applied.  The kernel is that filter's inverse transform, truncated at
    ``half_width`` (default ``ceil(5 sigma + W / 2) + 3``).  ``width_pixels`` <= 0 (unknown)
    counts as one native pixel; sigma <= 0 with a one-pixel width is the identity [1].

    (The discrete forms ``np.convolve(gaussian_kernel(sigma), box_kernel(W))`` count the
    native pixel's top-hat once more and a wide pixel's too broadly: 1-2% of the continuum
    in the core of a line of native width at R = 20,000-25,000 with 2-3 pixels per FWHM.)
    """
    sigma = max(float(sigma_pixels), 0.0)
    width = float(width_pixels)
    if width <= 0.0 or abs(width - 1.0) < 1e-6:
        width = 1.0
    if sigma == 0.0 and width == 1.0:
        return np.ones(1)
    if half_width is None:
        half_width = int(np.ceil(5.0 * sigma + 0.5 * width)) + 3
    frequency = (np.arange(n_frequencies) + 0.5) / (2 * n_frequencies)  # midpoints of (0, 1/2)
    response = np.exp(-2.0 * np.pi**2 * sigma**2 * frequency**2) * np.sinc(width * frequency) / np.sinc(frequency)
    offsets = np.arange(-half_width, half_width + 1)
    kernel = np.cos(2.0 * np.pi * np.outer(offsets, frequency)) @ response / n_frequencies
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


def convolve_same_many(flux, kernels):
    """Convolve one spectrum (n,) with each of K odd-length kernels (K, k), edge-padded; output (K, n).

    One padded copy of ``flux`` is shared by all kernels (direct summation for
    short kernels, FFT for long ones).  Kernels shorter than the others must be
    zero-padded symmetrically to the common length ``k``.
    """
    half = kernels.shape[-1] // 2
    if half == 0:
        return kernels[:, :1] * flux[None, :]
    padded = jnp.concatenate([jnp.repeat(flux[:1], half), flux, jnp.repeat(flux[-1:], half)])
    if half > 32:
        size = padded.shape[-1] + kernels.shape[-1] - 1
        n_fft = 1 << int(np.ceil(np.log2(size)))
        spectrum = jnp.fft.rfft(padded, n_fft)[None, :] * jnp.fft.rfft(kernels, n_fft, axis=-1)
        full = jnp.fft.irfft(spectrum, n_fft, axis=-1)
        return full[:, 2 * half : 2 * half + flux.shape[-1]].astype(flux.dtype)
    # cross-correlation with the reversed kernels = convolution
    out = jax.lax.conv_general_dilated(padded[None, None, :], kernels[:, None, ::-1], (1,), "VALID")
    return out[0]


# -- interpolation on the native pixels (the Doppler shift) ------------------------------------

#: Doppler-shift interpolators of :class:`~stellarfit.forward.ForwardModel`: ``"spline"`` (the
#: interpolating quintic B-spline, the default) and ``"keys"`` (Keys cubic convolution, the former default).
INTERPOLATIONS = ("spline", "keys")

#: Half-width [pixels] of the truncated quintic B-spline prefilter (its exact impulse response decays as 0.4306^|k|).
SPLINE_PREFILTER_HALF_WIDTH = 24


@functools.lru_cache(maxsize=4)
def _prefilter_kernel(half_width: int) -> np.ndarray:
    samples = np.zeros(1024)
    for offset, value in zip(range(-2, 3), (1.0, 26.0, 66.0, 26.0, 1.0)):
        samples[offset] = value / 120.0  # the quintic B-spline at the integers, periodic
    inverse = np.real(np.fft.ifft(1.0 / np.fft.fft(samples)))  # exact up to 0.43^512: nothing
    kernel = np.concatenate([inverse[-half_width:], inverse[: half_width + 1]])
    kernel = kernel / kernel.sum()
    kernel.setflags(write=False)
    return kernel


def spline_prefilter_kernel(half_width: int = SPLINE_PREFILTER_HALF_WIDTH) -> np.ndarray:
    """The quintic B-spline prefilter as a symmetric FIR kernel (2 * half_width + 1,), float64, summing to 1.

    The spline s(x) = sum_k c_k B5(x - k) through samples f_k (s(k) = f_k) has
    coefficients c = f convolved with the inverse of the sampled B-spline,
    (B5(0), B5(+-1), B5(+-2)) = (66, 26, 1) / 120: a symmetric recursive filter with
    poles -0.4306 and -0.0431 (Unser, Aldroubi & Eden 1993, IEEE Trans. Signal
    Process. 41, 821).  Its impulse response decays as 0.4306^|k|; truncated at
    ``half_width`` = 24 pixels the neglected tail is < 1e-8 of the amplitude of a
    Nyquist-frequency signal (and far less for a smooth one).  A convolution
    instead of the recursion keeps it parallel and cheap to differentiate.
    """
    if int(half_width) < 2:
        raise ValueError(f"the spline prefilter half-width must be >= 2 pixels, got {half_width}")
    return _prefilter_kernel(int(half_width)).copy()


def spline_coefficients(values, half_width: int = SPLINE_PREFILTER_HALF_WIDTH):
    """Quintic B-spline coefficients (..., n) of samples ``values`` (..., n).

    The samples are extended beyond the ends with the end values (as in
    :func:`convolve_same`), so a constant gives that constant.
    """
    half_width = int(half_width)
    values = jnp.asarray(values)
    kernel = jnp.asarray(_prefilter_kernel(half_width), dtype=values.dtype)
    padded = jnp.concatenate(
        [jnp.repeat(values[..., :1], half_width, axis=-1), values, jnp.repeat(values[..., -1:], half_width, axis=-1)],
        axis=-1,
    )
    rows = padded.reshape(-1, 1, padded.shape[-1])
    out = jax.lax.conv_general_dilated(rows, kernel[None, None, :], (1,), "VALID")  # symmetric kernel: no flip
    return out.reshape(values.shape)


def _quintic_weights(t):
    """Quintic B-spline weights of the coefficients at offsets -2..3 for fractional offset t in [0, 1).

    Written with explicit powers of t and u = 1 - t (symmetric: w_k(t) = w_{1-k}(u)); nested
    (Horner) forms made XLA's gradient in t ~4x slower on CPU.
    """
    u = 1.0 - t
    t2, u2 = t * t, u * u
    t3, u3 = t2 * t, u2 * u
    t4, u4 = t3 * t, u3 * u
    t5, u5 = t4 * t, u4 * u
    scale = 1.0 / 120.0
    # 120 B5(2 - x) and 120 B5(1 - x) for x in [0, 1]
    outer_t = 1.0 + 5.0 * t + 10.0 * t2 + 10.0 * t3 + 5.0 * t4 - 5.0 * t5
    outer_u = 1.0 + 5.0 * u + 10.0 * u2 + 10.0 * u3 + 5.0 * u4 - 5.0 * u5
    inner_t = 26.0 + 50.0 * t + 20.0 * t2 - 20.0 * t3 - 20.0 * t4 + 10.0 * t5
    inner_u = 26.0 + 50.0 * u + 20.0 * u2 - 20.0 * u3 - 20.0 * u4 + 10.0 * u5
    return (u5 * scale, outer_u * scale, inner_u * scale, inner_t * scale, outer_t * scale, t5 * scale)


def _keys_weights(t):
    """Keys cubic-convolution weights (a = -1/2) of the samples at offsets -1..2 for fractional offset t in [0, 1)."""
    t2, t3 = t * t, t * t * t
    w_minus = -0.5 * t3 + t2 - 0.5 * t
    w_zero = 1.5 * t3 - 2.5 * t2 + 1.0
    w_one = -1.5 * t3 + 2.0 * t2 + 0.5 * t
    w_two = 0.5 * t3 - 0.5 * t2
    return w_minus, w_zero, w_one, w_two


_KEYS_OFFSETS = (-1, 0, 1, 2)
_QUINTIC_OFFSETS = (-2, -1, 0, 1, 2, 3)


def _split_position(position, n):
    position = jnp.clip(position, 0.0, n - 1.0)
    base = jnp.clip(jnp.floor(position), 0, n - 2).astype(jnp.int32)
    return base, position - base


def _interpolate_taps(values, position, offsets, weights_fn):
    """sum_j w_j(t) values[..., base + offset_j] (indices clamped to the ends), (..., m)."""
    n = values.shape[-1]
    base, t = _split_position(position, n)
    out = None
    for offset, tap in zip(offsets, weights_fn(t)):
        term = tap * jnp.take(values, jnp.clip(base + offset, 0, n - 1), axis=-1)
        out = term if out is None else out + term
    return out


def _interpolate_taps_between(values, position, lower_row, weight, offsets, weights_fn):
    """Rows ``lower_row`` and ``lower_row + 1`` of ``values`` (K, n) interpolated and blended per output pixel."""
    n = values.shape[-1]
    base, t = _split_position(position, n)
    flat = values.reshape(-1)
    lower = lower_row.astype(jnp.int32) * n
    weight = weight.astype(values.dtype)
    out = jnp.zeros(position.shape, values.dtype)
    for offset, tap in zip(offsets, weights_fn(t)):
        column = jnp.clip(base + offset, 0, n - 1)
        low = jnp.take(flat, lower + column)
        high = jnp.take(flat, lower + n + column)
        out = out + tap * (low + weight * (high - low))
    return out


def cubic_interpolate(values, position):
    """Interpolate ``values`` (..., n) at fractional pixel ``position`` (m,) with Keys cubic convolution.

    Positions outside [0, n-1] are clamped to the edge values (callers mask them).
    Exact for polynomials up to degree 2; differentiable in ``position``.  Its
    response falls well before the Nyquist frequency and depends on the sub-pixel
    phase, so prefer :func:`spline_interpolate` for spectra sampled near 2-3 pixels per FWHM.
    """
    return _interpolate_taps(values, position, _KEYS_OFFSETS, _keys_weights)


def cubic_interpolate_between(values, position, lower_row, weight):
    """Keys-cubic interpolation of two rows of ``values`` (K, n), blended linearly per output pixel.

    Returns (m,): ``(1 - weight) * f(lower_row) + weight * f(lower_row + 1)``,
    f(row) the row interpolated at ``position`` (m,) as by :func:`cubic_interpolate`;
    ``lower_row`` (m,) int in [0, K-2] and ``weight`` (m,) in [0, 1] are per output pixel.
    """
    return _interpolate_taps_between(values, position, lower_row, weight, _KEYS_OFFSETS, _keys_weights)


def spline_interpolate(values, position, *, prefiltered: bool = False):
    """Interpolate ``values`` (..., n) at fractional pixel ``position`` (m,) with the interpolating quintic B-spline.

    Returns (..., m).  The spline passes through the samples (exact at integer
    positions), reproduces polynomials up to degree 5, is C^4 (smooth gradients
    in ``position``) and is nearly flat in frequency up to ~0.4 of the sampling
    frequency.  Cost: the prefilter (:func:`spline_coefficients`, a 49-tap
    convolution of the n samples) and six taps per output.  With
    ``prefiltered=True``, ``values`` are already spline coefficients (prefilter
    once, evaluate at many shifts).  Positions outside [0, n-1] are clamped to
    the ends (callers mask them).
    """
    coefficients = values if prefiltered else spline_coefficients(values)
    return _interpolate_taps(coefficients, position, _QUINTIC_OFFSETS, _quintic_weights)


def spline_interpolate_between(values, position, lower_row, weight, *, prefiltered: bool = False):
    """Quintic-spline interpolation of two rows of ``values`` (K, n), blended linearly per output pixel.

    As :func:`cubic_interpolate_between` with :func:`spline_interpolate` for f(row).
    """
    coefficients = values if prefiltered else spline_coefficients(values)
    return _interpolate_taps_between(coefficients, position, lower_row, weight, _QUINTIC_OFFSETS, _quintic_weights)
