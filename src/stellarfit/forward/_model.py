"""The observation model: emulator spectrum -> what the instrument records.

:class:`ForwardModel` maps ``(labels, rv, vsini)`` to the continuum-normalized
model flux at the observed pixels, in this order:

1. the emulator's normalized flux on its native log-lambda pixels (only the
   slice the observation needs, for every RV in ``rv_range``);
2. rotational broadening (vsini, linear limb darkening);
3. the instrumental LSF, broadened *differentially* from the emulator's native
   resolving power R_native to the observation's R_obs:
   sigma_v^2 = (c / 2.3548)^2 (1 / R_obs^2 - 1 / R_native^2); an observation
   sharper than the emulator (at any pixel, by more than 1e-6 relative) is an error here
   (the fits degrade such spectra to R_native first: stellarfit.inference._resolution);
   R_obs equal to R_native gives the identity kernel;
4. the top-hat of an observed pixel (one width: the median observed pixel).  A native
   flux is the spectrum averaged over its native pixel, as grids are made, so steps 3-4
   are one band-limited kernel that divides the native pixel's top-hat out and applies
   the observed one's (:func:`~stellarfit.forward._broadening.instrument_kernel`);
5. the Doppler shift, a translation by ln D(rv) / (native log step) pixels (D the
   relativistic Doppler factor) evaluated with the interpolating quintic B-spline
   (``interpolation="spline"``, the default) or Keys cubic convolution
   (``interpolation="keys"``, the former default).  With the spline and one LSF,
   :meth:`__call__` shifts the *spectrum*: the shift is a phase exp(-2 pi i nu s) in
   the FFT convolution of steps 2-4 (the band-limited shift; its integer part exact),
   and the observed pixels read the spline at their fixed rv = 0 positions with
   constant weights.  Otherwise (Keys, or a per-pixel LSF) the broadened spectrum is
   interpolated at the moving positions lambda_obs / D(rv).

Interpolation.  The native pixels sample the spectrum at ~3 pixels per FWHM, so
it has power close to the Nyquist frequency.  Keys cubic convolution damps and
phase-shifts that power by an amount that depends on the sub-pixel phase of the
shift, which biases a fitted RV periodically in the shift.  On ``payne-default``
(native R = 30,000, 3.33 km/s pixels), fitting the RV alone to noise-free spectra
shifted by an exact band-limited (Fourier) shift, with the observed pixels on the
native ones (every pixel at the same phase, the worst case), Keys is off by up
to +-33 m/s at R_obs = 30,000 and +-17 m/s at R_obs = 20,000 (linear
interpolation: 17 and 8 m/s); the quintic B-spline at the moving positions by
< 0.3 and < 0.03 m/s, and the phase shift of :meth:`__call__` by < 0.005 m/s.
Flux errors at a half-pixel shift: Keys 7e-3 (R_obs = 30,000) and 2e-3
(20,000), spline at moving positions 8e-4 and 1e-5, phase shift 4e-5 and 2e-7.
On a grid of 3 pixels per FWHM at R_obs = 20,000 (pixels between native ones)
Keys' bias drops to 2.4 m/s and both spline paths' to 0.01 m/s
(``benchmarks/bench_rv_interpolation.py``, ``benchmarks/results/rv_interpolation.md``).
The spline's coefficients come from a 49-tap FIR prefilter; :meth:`__call__`
merges it with the rotation and LSF kernels (and the Doppler phase) into one FFT
convolution.  The FFT is longer than the padded slice by >= 32 samples that join
its last value back to its first (a raised cosine), so the periodic signal has
no jump for the sub-pixel phase to ring at.  The prefilter reaches 24 native pixels: the native
slice carries 24 more pixels of margin on each side, and the coverage
(``covered``) is 12 native pixels narrower at each end of the emulator's range
than with Keys (the prefilter weights beyond 12 pixels are < 1e-4).

Per-pixel resolution.  ``observed_resolution`` may be one R per observed pixel
(APOGEE, LAMOST, the DESI arms: the LSF changes across a detector, and arms differ).
When max(R) / min(R) <= 1 + ``lsf_tolerance`` (default 0.02) one LSF at the
median R is used, exactly as for a scalar R.  Otherwise the LSF is
wavelength-dependent: the rotated native spectrum is convolved with K *anchor*
LSFs whose total variances sigma_k^2 (sigma = c / (2.3548 R)) span the observed
range geometrically, adjacent ones differing by at most ``lsf_anchor_step``
(default 10%, i.e. ~5% in sigma: K = 6 for the ~20% range of APOGEE, 16 for
a factor of 2 in R); at each observed pixel the two bracketing convolved spectra
are interpolated at that pixel's Doppler-shifted position and blended linearly
in sigma^2 by that pixel's R.  The LSF belongs to the output pixel, so arms with
different R -- even overlapping in wavelength -- need no special handling.
Accuracy: Gaussian smoothing obeys the heat equation, dF/d(sigma^2) = F''/2,
so linear interpolation in sigma^2 is exact to first order; the error at the
centre of a Gaussian line of depth d and total variance S is at most
(3/32) d (Delta / S)^2 <= 1e-3 d for an anchor step Delta / S <= 0.1.  Against
a brute-force per-pixel Gaussian convolution (tests/test_forward_lsf.py; lines
at the native width, R from 10,000 to 20,000, native R 30,000) the largest
error is 3e-4 of the continuum; the median R instead errs by 0.11.  The cost
is K inverse FFTs of the native slice instead of one (rotation, anchor LSF and
spline prefilter share one FFT convolution per anchor) and two interpolations
per pixel instead of one (see docs/validation/speed.md for timings).

Shared programs for per-pixel LSFs.  By default (``lsf_anchors="ladder"``) the
anchor variances are rungs of one fixed geometric ladder, sigma^2 = v0 (1 +
``lsf_anchor_step``)^j for integers j (v0: R = 10^6), from the rung at or below
the sharpest pixel to the one at or above the broadest: the anchor kernels then
depend on the wavelengths and on that stretch of rungs only, not on the exact
per-pixel R, and each pixel's place between its two rungs (:meth:`lsf_data`) is
data.  Spectra on the same pixels whose R(lambda) differ a little (BOSS fibres,
DESI exposures) share one such model (``shared``) and so one compiled fit, and
can be fitted in one batch; ``FitProblem`` carries the per-pixel part as a leaf.
``lsf_anchors="span"`` spans each spectrum's own range exactly instead (anchors
at its min and max R; no sharing).

The continuum is separate (:mod:`stellarfit.forward._continuum`): a polynomial
per arm multiplying this model, linear in its coefficients, so it can be
profiled or marginalized analytically.

All of it is pure JAX in the labels, rv and vsini (jit, vmap, grad, jacfwd).
The native grid must be uniform in ln(lambda) (the emulators' grids are).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from stellarfit._precision import full_precision
from stellarfit.forward._broadening import (
    _quintic_weights,
    convolve_same,
    convolve_same_many,
    INTERPOLATIONS,
    SPLINE_PREFILTER_HALF_WIDTH,
    cubic_interpolate,
    cubic_interpolate_between,
    doppler_factor,
    instrument_kernel,
    log_doppler_factor,
    rotation_transfer,
    spline_interpolate,
    spline_interpolate_between,
    spline_prefilter_kernel,
)
from stellarfit.wavelengths import FWHM_TO_SIGMA, SPEED_OF_LIGHT_KMS

__all__ = ["ForwardModel", "ObservationOutsideEmulatorError", "LSF_TOLERANCE", "LSF_ANCHOR_STEP", "INTERPOLATIONS"]

#: Per-pixel resolving powers whose max / min is at most 1 + this are modelled with one LSF at their median R.
LSF_TOLERANCE = 0.02
#: Largest relative step in LSF variance (sigma^2) between adjacent anchor LSFs of a varying resolution.
LSF_ANCHOR_STEP = 0.1
#: Native pixels by which the spline's prefilter narrows the coverage at each end of the emulator's range.
_SPLINE_COVERAGE_MARGIN = 12
#: Samples per tile of the fixed-position spline sampling (each observed pixel reads two tiles).
_TILE = 16
#: Least number of FFT samples that join the padded spectrum's end smoothly back to its start.
_TAPER = 32
#: from_emulator's default ``readout_tolerance``: the largest RMS change of the normalized model
#: flux allowed from dropping the top Fourier bins of a linear readout (set_linear_readout).  Over
#: 5,000 pixels at S/N 100 it changes chi^2 by at most 5,000 (1e-5 / 0.01)^2 = 0.005; the emulator's
#: own errors are ~5e-3
READOUT_TOLERANCE = 1e-5


def _box_sample(label_spec, n: int) -> np.ndarray:
    """(n, n_labels) labels: the box centre and n - 1 points uniform in the box (fixed seed)."""
    lower, upper = np.asarray(label_spec.lower, np.float64), np.asarray(label_spec.upper, np.float64)
    points = lower + np.random.default_rng(0).uniform(size=(n - 1, lower.size)) * (upper - lower)
    return np.vstack([(lower + upper) / 2.0, points])


def _smooth_size(minimum: int) -> int:
    """The smallest 2^a 3^b 5^c >= ``minimum`` (a fast FFT length)."""
    best = 1 << int(np.ceil(np.log2(minimum)))
    power5 = 1
    while power5 < best:
        power35 = power5
        while power35 < best:
            size = power35 << max(int(np.ceil(np.log2(minimum / power35))), 0)
            best = min(best, size)
            power35 *= 3
        power5 *= 5
    return best


class ObservationOutsideEmulatorError(ValueError):
    """The observed wavelengths or resolution cannot be modelled by this emulator."""


#: variance (km/s)^2 of rung 0 of the anchor ladder (lsf_anchors="ladder"): R = 10^6
_LADDER_VARIANCE = (SPEED_OF_LIGHT_KMS * FWHM_TO_SIGMA / 1e6) ** 2


def _ladder_rungs(variance: np.ndarray, anchor_step: float) -> tuple[int, int]:
    """The stretch of ladder rungs (first, last) bracketing ``variance``: at least two rungs."""
    position = np.log(np.asarray(variance, dtype=np.float64) / _LADDER_VARIANCE) / np.log1p(anchor_step)
    first = int(np.floor(position.min() + 1e-9))
    last = max(int(np.ceil(position.max() - 1e-9)), first + 1)
    return first, last


def _anchor_lsf(resolution, native_resolution, velocity_step, pixel, anchor_step, ladder: bool = False):
    """Anchor kernels for a per-pixel resolving power and each pixel's place between them.

    The anchors are K resolving powers from max(R) down to min(R) spaced evenly in
    ln(sigma^2) (sigma = c / (2.3548 R), the LSF width in velocity), adjacent variances
    differing by at most ``anchor_step``; with ``ladder``, the rungs of the fixed ladder
    (ratio 1 + ``anchor_step``) that bracket them.  Each anchor kernel is the differential Gaussian
    from the native R to the anchor's R with the top-hat of an observed pixel ``pixel`` native
    pixels wide (:func:`instrument_kernel`).

    Returns (kernels (K, k) float64, anchor R (K,), lower anchor index (n,) int,
    weight (n,) in [0, 1] of the upper anchor, linear in sigma^2).
    """
    variance = (SPEED_OF_LIGHT_KMS * FWHM_TO_SIGMA / resolution) ** 2  # (n,) [km^2/s^2]
    native_variance = (SPEED_OF_LIGHT_KMS * FWHM_TO_SIGMA / native_resolution) ** 2
    if ladder:  # rungs of the fixed ladder (see the module docstring)
        first, last = _ladder_rungs(variance, anchor_step)
        n_anchors = last - first + 1
        anchors = _LADDER_VARIANCE * (1.0 + anchor_step) ** np.arange(first, last + 1, dtype=np.float64)
        position = np.log(variance / anchors[0]) / np.log1p(anchor_step)
    else:
        low, high = float(variance.min()), float(variance.max())
        n_anchors = max(2, int(np.ceil(np.log(high / low) / np.log1p(anchor_step) - 1e-9)) + 1)
        anchors = low * (high / low) ** np.linspace(0.0, 1.0, n_anchors)
        anchors[0], anchors[-1] = low, high
        position = np.log(variance / low) / np.log(high / low) * (n_anchors - 1)
    lower = np.clip(np.floor(position).astype(np.int64), 0, n_anchors - 2)
    weight = np.clip((variance - anchors[lower]) / (anchors[lower + 1] - anchors[lower]), 0.0, 1.0)
    kernels = []
    for anchor in anchors:
        kernels.append(instrument_kernel(np.sqrt(max(anchor - native_variance, 0.0)) / velocity_step, pixel))
    size = max(kernel.size for kernel in kernels)
    padded = np.zeros((n_anchors, size))
    for row, kernel in zip(padded, kernels):
        start = (size - kernel.size) // 2
        row[start : start + kernel.size] = kernel
    return padded, SPEED_OF_LIGHT_KMS * FWHM_TO_SIGMA / np.sqrt(anchors), lower, weight


class ForwardModel:
    """Observation model for one observed pixel grid.

    Args:
        flux_fn: ``flux_fn(labels (n_labels,), wavelength (m,)) -> (m,)``
            normalized flux of the emulator at native wavelengths (pure JAX).
        native_wavelength: (n_native,) emulator pixels [A, vacuum], uniform in ln(lambda).
        native_resolution: R of the emulator's grid.
        observed_wavelength: (n_obs,) [A, vacuum], increasing within each arm.
        observed_resolution: R of the observation: a scalar, or (n_obs,) one per pixel
            (a wavelength-dependent LSF, see the module docstring).
        rv_range: (min, max) radial velocities [km/s] the model must cover.
        vsini_max: largest vsini [km/s] the rotation kernel can represent.
        limb_darkening: linear limb-darkening coefficient of the rotation profile.
        lsf_tolerance: per-pixel R with max / min <= 1 + this use one LSF at the median R.
        lsf_anchor_step: largest relative step in LSF variance between adjacent anchor LSFs.
        lsf_anchors: ``"ladder"`` (anchors on a fixed ladder, so spectra on the same pixels share
            one model; see the module docstring) or ``"span"`` (anchors at this spectrum's own
            min and max R).
        interpolation: the Doppler-shift interpolator on the native pixels: ``"spline"``
            (interpolating quintic B-spline, default) or ``"keys"`` (Keys cubic convolution;
            biases the RV by up to +-30 m/s, see the module docstring).

    Attributes (besides the arguments): ``observed_resolution`` (the R used: a float
    for one LSF, else the (n_obs,) array), ``lsf_anchor_resolution`` ((K,) anchor R,
    or None for one LSF), ``instrument_kernel`` ((k,) or (K, k)), ``native_slice``,
    ``covered`` ((n_obs,) bool: pixels modelled with full kernels for every RV).
    """

    def __init__(
        self,
        flux_fn: Callable,
        native_wavelength: np.ndarray,
        native_resolution: float,
        observed_wavelength: np.ndarray,
        observed_resolution: float | np.ndarray | None,
        *,
        rv_range: tuple[float, float] = (-1000.0, 1000.0),
        vsini_max: float = 300.0,
        limb_darkening: float = 0.6,
        lsf_tolerance: float = LSF_TOLERANCE,
        lsf_anchor_step: float = LSF_ANCHOR_STEP,
        lsf_anchors: str = "ladder",
        interpolation: str = "spline",
    ):
        native = np.asarray(native_wavelength, dtype=np.float64)
        observed = np.asarray(observed_wavelength, dtype=np.float64)
        log_step = np.diff(np.log(native))
        if native.ndim != 1 or native.size < 8 or not np.allclose(log_step, log_step[0], rtol=1e-6, atol=0):
            if native.ndim == 1 and native.size >= 8 and np.any(log_step > 1.5 * np.median(log_step)):
                # an emulator trained over several windows (stellarfit.emulators.join_windows): gaps in its grid
                raise ValueError(
                    "the emulator's native wavelengths have gaps (it covers several windows): the forward model needs a grid "
                    "uniform in ln(lambda); fit its composite of one member per window instead "
                    "(stellarfit.emulators.split_windows(emulator), docs/guide/windows.md)")
            raise ValueError("the emulator's native wavelengths must be uniform in ln(lambda) (as stellarfit grids are)")
        if observed.ndim != 1 or observed.size == 0 or not np.all(np.isfinite(observed)):
            raise ValueError("observed wavelengths must be a non-empty 1-D array of finite values [A, vacuum]")
        if observed_resolution is None:
            raise ObservationOutsideEmulatorError(
                "the observation's resolving power is unknown: give it (e.g. --resolution R or resolution= in Python)"
            )
        if not lsf_tolerance >= 0:
            raise ValueError(f"lsf_tolerance must be >= 0, got {lsf_tolerance}")
        if not 0 < lsf_anchor_step <= 1:
            raise ValueError(f"lsf_anchor_step must be in (0, 1], got {lsf_anchor_step}")
        if lsf_anchors not in ("ladder", "span"):
            raise ValueError(f"lsf_anchors must be 'ladder' or 'span', got {lsf_anchors!r}")
        #: the model that owns this one's compiled programs: itself, or (anchor ladder) the first model
        #: made on the same pixels and rungs (set by stellarfit.inference.forward_model_for)
        self.shared = self
        #: (first, last) ladder rungs of the anchor LSFs, or None (one LSF, or lsf_anchors="span")
        self.lsf_rungs = None
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {', '.join(map(repr, INTERPOLATIONS))}, got {interpolation!r}")
        self.interpolation = interpolation
        #: (emulator, observed wavelength, observed resolution, options) for models made by from_emulator, else None
        self.source = None
        rv_min, rv_max = (float(v) for v in rv_range)
        if not -3e4 < rv_min <= rv_max < 3e4:
            raise ValueError(f"rv_range must satisfy -30000 < min <= max < 30000 km/s, got {rv_range}")
        native_resolution = float(native_resolution)
        per_pixel = self._check_resolution(observed_resolution, observed, native, native_resolution, (rv_min, rv_max))
        self.log_step = float(log_step[0])
        self.velocity_step = SPEED_OF_LIGHT_KMS * self.log_step  # km/s per native pixel (small-step limit)
        self.native_resolution = native_resolution
        self.rv_range = (rv_min, rv_max)
        self.vsini_max = float(vsini_max)
        self.limb_darkening = float(limb_darkening)
        observed_log_step = np.median(np.abs(np.diff(np.log(observed)))) if observed.size > 1 else 0.0
        pixel = observed_log_step / self.log_step  # observed pixel width [native pixels]

        if per_pixel is None or per_pixel.max() / per_pixel.min() <= 1.0 + lsf_tolerance:
            # one LSF: the (median) resolving power; static kernel = differential LSF (x) observed-pixel top-hat
            if per_pixel is None:
                resolution = float(np.asarray(observed_resolution, dtype=np.float64).reshape(-1)[0])
            else:
                resolution = float(np.median(per_pixel))
            self.observed_resolution: float | np.ndarray = resolution
            self.lsf_anchor_resolution = None
            sigma_velocity = SPEED_OF_LIGHT_KMS * FWHM_TO_SIGMA * np.sqrt(
                max(1.0 / resolution**2 - 1.0 / native_resolution**2, 0.0)
            )
            instrument = instrument_kernel(sigma_velocity / self.velocity_step, pixel)
            self.instrument_kernel = jnp.asarray(instrument)
            self._anchor_lower = self._anchor_weight = None
            kernel_size = instrument.size
        else:
            self.observed_resolution = per_pixel
            kernels, anchors, lower, weight = _anchor_lsf(
                per_pixel, native_resolution, self.velocity_step, pixel, lsf_anchor_step, ladder=lsf_anchors == "ladder"
            )
            if lsf_anchors == "ladder":
                self.lsf_rungs = _ladder_rungs((SPEED_OF_LIGHT_KMS * FWHM_TO_SIGMA / per_pixel) ** 2, lsf_anchor_step)
            self.lsf_anchor_resolution = anchors
            self.instrument_kernel = jnp.asarray(kernels)
            self._anchor_lower = jnp.asarray(lower, dtype=jnp.int32)
            self._anchor_weight = jnp.asarray(weight)
            kernel_size = kernels.shape[1]
        self.rotation_half_width = int(np.ceil(self.vsini_max / self.velocity_step)) + 1

        # the slice of native pixels needed for every rv in rv_range, plus kernel and interpolation margins
        spline = interpolation == "spline"
        margin_pixels = self.rotation_half_width + kernel_size // 2 + 3 + (SPLINE_PREFILTER_HALF_WIDTH if spline else 0)
        lo_rest = observed.min() / float(doppler_factor(rv_max))
        hi_rest = observed.max() / float(doppler_factor(rv_min))
        first = int(np.floor(np.log(lo_rest / native[0]) / self.log_step)) - margin_pixels
        last = int(np.ceil(np.log(hi_rest / native[0]) / self.log_step)) + margin_pixels
        self.native_slice = slice(max(first, 0), min(last + 1, native.size))
        self.native_wavelength = native[self.native_slice]
        # observed pixels modelled with full kernels for every rv in rv_range
        edge = (kernel_size // 2 + self.rotation_half_width + (_SPLINE_COVERAGE_MARGIN if spline else 0)) * self.log_step
        self._coverage_edges = (np.log(native[0]) + edge, np.log(native[-1]) - edge)
        self._log_observed = np.log(observed)
        self.covered = self.coverage(self.rv_range)
        if not np.any(self.covered):
            raise ObservationOutsideEmulatorError(
                f"no observed pixel ({observed.min():.1f}-{observed.max():.1f} A) lies inside the emulator's coverage "
                f"({native[0]:.1f}-{native[-1]:.1f} A, vacuum, rest frame) for radial velocities {rv_min:g}..{rv_max:g} km/s; "
                "use an emulator that covers these wavelengths or narrow the RV range"
            )
        self.observed_wavelength = observed
        # pixel positions of the observed wavelengths on the native slice at rv = 0, computed in
        # float64 (ln lambda in float32 would be off by ~0.8 pixel); the rv term is added in the model dtype
        self._base_position_float64 = (np.log(observed) - np.log(self.native_wavelength[0])) / self.log_step
        self._base_position = jnp.asarray(self._base_position_float64)
        self._flux_fn = flux_fn
        self._native_wavelength_jax = jnp.asarray(self.native_wavelength)
        self._setup_fused_broadening()

    def _setup_fused_broadening(self) -> None:
        """The static part of :meth:`__call__`'s one-FFT broadening: the instrument kernel(s),
        convolved with the spline prefilter when ``interpolation == "spline"``, in Fourier space."""
        static = np.atleast_2d(np.asarray(self.instrument_kernel, dtype=np.float64))  # (1 or K, k)
        if self.interpolation == "spline":
            prefilter = spline_prefilter_kernel()
            static = np.stack([np.convolve(row, prefilter) for row in static])
        self._fused_half_width = self.rotation_half_width + static.shape[1] // 2
        # circular convolution of the padded flux (n + 2 h) with the kernel (2 h + 1): the outputs kept,
        # [2 h, 2 h + n), do not wrap around when the FFT is at least as long as the padded flux; _TAPER more
        # samples join the last value smoothly back to the first, so that the periodic signal has no jump
        # for the sub-pixel Doppler phase (:meth:`__call__`) to ring at
        size = self._fused_fft_size = _smooth_size(self.n_native + 2 * self._fused_half_width + _TAPER)
        frequency = np.arange(size // 2 + 1)
        # the rotation kernel is symmetric: its transform is real, times the delay of its centre tap,
        # exp(-2 pi i nu h_rot / n_fft), which is folded in here with the static kernel(s)
        delay = np.exp(-2j * np.pi * frequency * self.rotation_half_width / size)
        self._fused_static_fft = np.fft.rfft(static, size, axis=-1) * delay  # (1 or K, n_fft // 2 + 1)
        # bin nu is nu / (n_fft * velocity_step) cycles per km/s, where rotation_transfer is evaluated
        self._rotation_frequency = frequency / (size * self.velocity_step)
        self._readout = None
        # Fourier bins of the padded spectrum kept: all, unless set_linear_readout finds that the top
        # ones, after the instrument kernel, change the model by less than its tolerance
        self._n_bins = size // 2 + 1
        self._fixed_sampling = self.interpolation == "spline" and self.lsf_anchor_resolution is None
        if self._fixed_sampling:
            self._setup_fixed_sampling()

    def _setup_fixed_sampling(self) -> None:
        """Constant spline weights of the observed pixels at rv = 0, laid out in native tiles (one LSF).

        :meth:`__call__` moves the spectrum, not the pixels: the Doppler shift is a phase in the
        FFT convolution, so every observed pixel samples the spline coefficients at the same
        fractional position for any RV, with constant weights.  The coefficient buffer is cut into
        tiles of ``_TILE`` samples; each observed pixel reads the window of its tile and the next
        (its six taps always fit in it), so the interpolation is one dense batched product
        (tiles x pixels per tile x window) instead of a gather and, for the gradient, a scatter.
        The tiles' outputs are reordered to the observed pixels at the end.
        With anchor LSFs (a per-pixel R) each pixel blends two of K rows and the dense product
        would be K times larger, so that case keeps the spline at the shifted positions.
        """
        half, size = self._fused_half_width, self._fused_fft_size
        # observed pixels in buffer coordinates (native pixel j is output sample j + 2 h of the convolution)
        position = self._base_position_float64 + 2 * half
        base = np.clip(np.floor(position), 2, size - 4)
        fraction = np.clip(position - base, 0.0, 1.0)
        base = base.astype(np.int64)
        weights = np.stack(_quintic_weights(fraction), axis=1)  # (n_obs, 6) for taps base - 2 .. base + 3
        tile = (base - 2) // _TILE
        first, n_tiles = int(tile.min()), int(tile.max() - tile.min()) + 1
        local = tile - first
        counts = np.bincount(local, minlength=n_tiles)
        per_tile = int(counts.max())
        order = np.argsort(local, kind="stable")
        slot = np.empty_like(local)
        slot[order] = np.arange(local.size) - np.concatenate([[0], np.cumsum(counts)[:-1]])[local[order]]
        column = (base - 2 - tile * _TILE)[:, None] + np.arange(6)[None, :]  # (n_obs, 6) in [0, 2 _TILE)
        rows = np.broadcast_to(local[:, None], column.shape)
        slots = np.broadcast_to(slot[:, None], column.shape)
        dense = np.zeros((1, n_tiles, per_tile, 2 * _TILE))
        dense[0, rows, slots, column] = weights
        self._sample_first = first * _TILE
        self._sample_tiles = n_tiles
        self._sample_weights = jnp.asarray(dense, dtype=jnp.float32)
        self._sample_index = jnp.asarray(local * per_tile + slot, dtype=jnp.int32)

    @staticmethod
    def _check_resolution(observed_resolution, observed, native, native_resolution, rv_range) -> np.ndarray | None:
        """Validate R; None for a scalar, else the per-pixel R (n_obs,) with pixels the emulator
        can never reach (outside its wavelengths at every RV) set to the median of the others."""
        try:
            values = np.asarray(observed_resolution, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(
                f"observed resolving power must be a number or one per pixel, got {observed_resolution!r}"
            ) from None
        if values.size == 1:
            resolution = float(values.reshape(-1)[0])
            if not np.isfinite(resolution) or resolution <= 0:
                raise ValueError(f"observed resolving power must be positive, got {resolution}")
            if resolution > native_resolution * (1 + 1e-6):
                raise ObservationOutsideEmulatorError(
                    f"the observation (R={resolution:.0f}) is sharper than the emulator (native R={native_resolution:.0f}); "
                    "an emulator can only be broadened, not sharpened: degrade the spectrum to the emulator's R "
                    "(stellarfit.spectra.degrade_resolution; fit_star and `stellarfit fit` do it unless degrade=False / "
                    "--no-degrade) or use an emulator trained at R >= the observation's"
                )
            return None
        if values.shape != observed.shape:  # includes an empty array
            raise ValueError(
                f"observed resolution has shape {values.shape} but there are {observed.size} observed pixels; "
                "give a scalar R or one R per pixel"
            )
        bad = ~(np.isfinite(values) & (values > 0))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"observed resolving power must be finite and positive in every pixel; {int(bad.sum())} pixel(s) are not "
                f"(first at {observed[i]:.2f} A: {values[i]}); fill them by interpolation"
            )
        # pixels outside the emulator's wavelengths at every RV are never modelled: their R does not matter
        reachable = (observed >= native[0] * float(doppler_factor(rv_range[0]))) & (
            observed <= native[-1] * float(doppler_factor(rv_range[1]))
        )
        if not reachable.any():
            reachable = np.ones(observed.size, dtype=bool)  # the coverage check will explain
        sharp = reachable & (values > native_resolution * (1 + 1e-6))
        if sharp.any():
            worst = int(np.flatnonzero(sharp)[np.argmax(values[sharp])])
            where = observed[sharp]
            raise ObservationOutsideEmulatorError(
                f"the observation is sharper than the emulator at {observed[worst]:.2f} A (R={values[worst]:.0f} there, "
                f"native R={native_resolution:.0f}; {int(sharp.sum())} pixel(s) between {where.min():.2f} and "
                f"{where.max():.2f} A exceed it); an emulator can only be broadened, not sharpened: use an emulator "
                f"trained at R >= {values[sharp].max():.0f}, drop those pixels (spectrum.select(lower, upper)), or degrade "
                f"the spectrum (stellarfit.spectra.degrade_resolution; fit_star does it unless degrade=False)"
            )
        return np.where(reachable, values, np.median(values[reachable]))

    @classmethod
    def from_emulator(cls, emulator, observed_wavelength, observed_resolution, *, linear_readout: bool = True,
                      readout_tolerance: float = READOUT_TOLERANCE, **options) -> "ForwardModel":
        """A forward model whose rest-frame flux is ``emulator`` on its native pixels
        (the emulator is evaluated only on the native slice the observation needs).

        ``linear_readout``: when the emulator has a linear last layer (The Payne;
        ``emulator.linear_readout``), move it into Fourier space (:meth:`set_linear_readout`);
        False evaluates the emulator's flux and transforms it at every call, as other emulators are.
        ``readout_tolerance``: with the readout, the top Fourier bins that change the model flux by
        less than this RMS (checked on 64 labels spread over the emulator's box) are dropped; 0
        keeps all."""
        if emulator.native_resolution is None:
            raise ValueError("the emulator does not record its native resolution; it cannot be broadened to an observation")
        if not (np.isfinite(readout_tolerance) and readout_tolerance >= 0):
            raise ValueError(f"readout_tolerance must be a finite number >= 0 (an RMS change of the normalized flux; "
                             f"0 keeps every Fourier bin), got {readout_tolerance!r}")
        model = cls(None, emulator.wavelength, emulator.native_resolution, observed_wavelength, observed_resolution, **options)
        native_flux = emulator.flux_fn(model.native_wavelength)
        model._flux_fn = lambda labels, wavelength: native_flux(labels)
        readout = emulator.linear_readout(model.native_wavelength) if linear_readout and hasattr(emulator, "linear_readout") else None
        if readout is not None:
            model.set_linear_readout(*readout, sample_labels=_box_sample(emulator.label_spec, 64),
                                     tolerance=readout_tolerance)
        # what rebuilds this model elsewhere (worker processes, see stellarfit.inference._processes)
        model.source = (emulator, np.asarray(observed_wavelength, dtype=np.float64), observed_resolution,
                        dict(options, linear_readout=linear_readout, readout_tolerance=readout_tolerance))
        return model

    def coverage(self, rv_range: tuple[float, float]) -> np.ndarray:
        """(n_obs,) bool: observed pixels modelled with full kernels for every RV in ``rv_range``
        (which must lie inside this model's ``rv_range``)."""
        rv_min, rv_max = (float(v) for v in rv_range)
        if not (self.rv_range[0] - 1e-9 <= rv_min <= rv_max <= self.rv_range[1] + 1e-9):
            raise ValueError(f"rv_range {rv_range} must lie inside the forward model's {self.rv_range} km/s")
        lo_ok, hi_ok = self._coverage_edges
        log_rest_lo = self._log_observed - np.log(float(doppler_factor(rv_max)))
        log_rest_hi = self._log_observed - np.log(float(doppler_factor(rv_min)))
        return (log_rest_lo >= lo_ok) & (log_rest_hi <= hi_ok)

    @property
    def n_native(self) -> int:
        return int(self.native_wavelength.size)

    @full_precision
    def rest_frame(self, labels):
        """Emulator flux on the native slice, (n_native,)."""
        return self._flux_fn(labels, self._native_wavelength_jax)

    def lsf_data(self):
        """The per-pixel part of a varying LSF, (lower anchor (n_obs,) int32, weight of the upper one
        (n_obs,)), or None for one LSF: what :meth:`__call__` takes as ``lsf`` to evaluate this
        spectrum with the programs of ``shared`` (same pixels, same anchor rungs)."""
        if self.lsf_anchor_resolution is None:
            return None
        return (self._anchor_lower, self._anchor_weight)

    @property
    def resolution_varies(self) -> bool:
        """True when the LSF varies from pixel to pixel (anchor LSFs), False for one LSF."""
        return self.lsf_anchor_resolution is not None

    @full_precision
    def broaden(self, rest_flux, vsini):
        """Rotation and instrument applied to native-pixel flux (n_native,).

        Returns (n_native,) for one LSF, or (K, n_native), one row per anchor LSF,
        when the resolution varies (:meth:`shift_to_observed` blends the rows).
        """
        rotated = self.rotate(rest_flux, vsini)
        if self.lsf_anchor_resolution is None:
            return convolve_same(rotated, self.instrument_kernel.astype(rotated.dtype))
        return convolve_same_many(rotated, self.instrument_kernel.astype(rotated.dtype))

    @full_precision
    def rotate(self, rest_flux, vsini):
        """Rotational broadening of native-pixel flux (n_native,): a product with the profile's transform
        (:func:`~stellarfit.forward.rotation_transfer`) in the padded FFT of :meth:`__call__`, the same
        padding (edge values, so a flat spectrum stays flat) and the same bins."""
        half, n, size = self._fused_half_width, self.n_native, self._fused_fft_size
        rest_flux, vsini = jnp.asarray(rest_flux), jnp.asarray(vsini)
        dtype = jnp.result_type(rest_flux.dtype, vsini.dtype, jnp.float32)
        spectrum = jnp.fft.rfft(self._padded(rest_flux.astype(dtype)), size)
        rotation = rotation_transfer(vsini.astype(dtype), jnp.asarray(self._rotation_frequency, dtype), self.limb_darkening)
        return jnp.fft.irfft(spectrum * rotation, size)[half : half + n].astype(dtype)

    @full_precision
    def shift_to_observed(self, broadened, rv, lsf=None):
        """Doppler shift and interpolation (``self.interpolation``) onto the observed pixels, (n_obs,).

        ``broadened``: the output of :meth:`broaden`, (n_native,) or (K, n_native).  ``lsf``: as in
        :meth:`__call__`.
        """
        return self._interpolate(broadened, rv, prefiltered=False, lsf=lsf)

    def _interpolate(self, broadened, rv, *, prefiltered: bool, lsf=None):
        """``broadened`` (or, with ``prefiltered``, its spline coefficients) at the observed pixels' rest positions.
        ``lsf``: (lower, weight) of the pixels' anchors instead of this model's own (:meth:`lsf_data`)."""
        position = self._base_position.astype(broadened.dtype) - log_doppler_factor(rv) / self.log_step
        if self.lsf_anchor_resolution is not None:
            lower, weight = (self._anchor_lower, self._anchor_weight) if lsf is None else lsf
        if self.interpolation == "spline":
            if self.lsf_anchor_resolution is None:
                return spline_interpolate(broadened, position, prefiltered=prefiltered)
            return spline_interpolate_between(broadened, position, lower, weight, prefiltered=prefiltered)
        if self.lsf_anchor_resolution is None:
            return cubic_interpolate(broadened, position)
        return cubic_interpolate_between(broadened, position, lower, weight)

    def _padded(self, flux, xp=jnp):
        """(..., n_native) flux -> (..., n_fft): ``h`` copies of the first value, the flux, ``h`` copies
        of the last, then >= ``_TAPER`` samples joining the last value back to the first (a raised
        cosine), so that the periodic signal has no jump.  Linear in the flux; ``xp`` is jnp or np."""
        half, n, size = self._fused_half_width, flux.shape[-1], self._fused_fft_size
        head, tail = flux[..., :1], flux[..., -1:]
        taper = size - n - 2 * half
        ramp = (0.5 - 0.5 * np.cos(np.pi * np.arange(1, taper + 1) / (taper + 1))).astype(flux.dtype)
        return xp.concatenate([xp.repeat(head, half, axis=-1), flux, xp.repeat(tail, half, axis=-1),
                               tail + (head - tail) * xp.asarray(ramp)], axis=-1)

    def set_linear_readout(self, features_fn: Callable, weight: np.ndarray, bias: np.ndarray, *,
                           sample_labels: np.ndarray | None = None, tolerance: float = 0.0) -> None:
        """Evaluate the rest-frame flux as ``features_fn(labels) @ weight + bias`` (an emulator's
        linear last layer, :meth:`stellarfit.emulators.Emulator.linear_readout`, on this model's
        native slice: ``weight`` (n_features, n_native), ``bias`` (n_native,)) moved into Fourier space.

        The padding and the FFT of :meth:`__call__`'s convolution are linear, so they are applied to
        the weight's rows once, here (in float64): each call then gets the spectrum's transform from
        one product of the features with a (n_features, 2 bins) real matrix (bins <= n_fft // 2 + 1), no larger than the
        layer itself, instead of the layer's output plus a padding and an FFT per evaluation (and
        their adjoints per gradient).  Used by :meth:`__call__` only; :meth:`rest_frame` is unchanged.

        ``sample_labels`` (m, n_labels) and ``tolerance`` > 0: also drop the highest Fourier bins
        whose contribution, after the instrument kernel, changes the normalized model flux by at
        most ``tolerance`` RMS over the native pixels for each of these labels at vsini = 0
        (:meth:`_bins_within`; rotation only attenuates further).  The emulator's spectra are
        smoother than its native pixels and the instrument kernel cuts the top of the band, so for
        ``payne-default`` at R = 22,500 the top ~12% of the bins carry less than 1e-5 of flux even
        for the worst of 64 labels spread over its box; every per-bin operation of a call and its
        gradient shrinks with them (docs/validation/speed.md).  ``from_emulator`` passes such labels.
        """
        weight = np.asarray(weight, np.float64)
        bias = np.asarray(bias, np.float64)
        if weight.ndim != 2 or weight.shape[1] != self.n_native or bias.shape != (self.n_native,):
            raise ValueError(f"a linear readout needs weight (n_features, {self.n_native}) and bias ({self.n_native},) on "
                             f"the native slice, got {weight.shape} and {bias.shape}")
        size = self._fused_fft_size
        transformed = np.fft.rfft(self._padded(np.vstack([weight, bias]), np), size, axis=-1)
        bins = size // 2 + 1
        if tolerance > 0 and sample_labels is not None:
            features = np.asarray(features_fn(jnp.asarray(np.atleast_2d(sample_labels), jnp.float32)), np.float64)
            bins = self._bins_within(features @ transformed[:-1] + transformed[-1], tolerance)
        self._n_bins = bins
        transformed = transformed[:, :bins]
        both = np.concatenate([transformed.real, transformed.imag], axis=-1)  # (n_features + 1, 2 bins)
        # kept in float32 (10.5 MB for payne-default; models are cached per pixel grid), cast where used
        both = both.astype(np.float32)
        self._readout = (features_fn, both[:-1], both[-1])

    def _bins_within(self, spectra: np.ndarray, tolerance: float) -> int:
        """The fewest leading Fourier bins of the padded rest spectra ``spectra`` (m, n_fft // 2 + 1)
        such that dropping the others changes the instrument-broadened flux at the native pixels
        (vsini = 0, every LSF row) by at most ``tolerance`` RMS for each spectrum, in float64.
        With the spline, the buffer holds its coefficients, so the flux at the knots is the buffer
        convolved with the sampled quintic B-spline (66, 26, 1) / 120.  The error is checked at 64
        candidate cuts; the cut returned is one above which every candidate also meets the tolerance."""
        size, half, n = self._fused_fft_size, self._fused_half_width, self.n_native
        total = size // 2 + 1
        angle = 2.0 * np.pi * np.arange(total) / size
        knots = (66.0 + 52.0 * np.cos(angle) + 2.0 * np.cos(2.0 * angle)) / 120.0 if self.interpolation == "spline" else 1.0
        products = spectra[:, None, :] * (self._fused_static_fft * knots)[None, :, :]  # (m, 1 or K, bins)
        candidates = np.unique(np.linspace(total // 8, total, 64).astype(int))
        best = total
        for cut in candidates[::-1]:
            tail = products.copy()
            tail[..., :cut] = 0.0
            error = np.fft.irfft(tail, size, axis=-1)[..., 2 * half : 2 * half + n]
            if np.sqrt(np.mean(error**2, axis=-1)).max() > tolerance:
                break
            best = int(cut)
        return best

    def _rest_spectrum(self, labels):
        """rfft of the padded rest-frame flux, (n_fft // 2 + 1,) complex, from the linear readout."""
        features_fn, matrix, offset = self._readout
        features = features_fn(labels)
        dtype = jnp.result_type(features.dtype, jnp.float32)
        both = features @ jnp.asarray(matrix, dtype) + jnp.asarray(offset, dtype)
        return jax.lax.complex(*jnp.split(both, 2, axis=-1))

    def _broaden_fused(self, rest_flux, vsini, shift=None, *, rest_spectrum=None):
        """Rotation, instrument and (for the spline) the prefilter in one FFT convolution of (n_native,) flux.

        Returns what :meth:`shift_to_observed` interpolates -- for the spline, its coefficients --
        as (n_native,) or (K, n_native); equal to :meth:`broaden` (prefiltered) away from the slice ends.
        With ``shift`` [native pixels], the result is instead the whole (1 or K, n_fft) circular
        convolution buffer delayed by ``shift`` (native pixel j at sample j + 2 h + shift), for
        :meth:`__call__`.  ``rest_spectrum``: the rfft of the padded flux when already known (then
        ``rest_flux`` is unused).
        """
        half, n, size = self._fused_half_width, self.n_native, self._fused_fft_size
        if rest_spectrum is None:
            rest_spectrum = jnp.fft.rfft(self._padded(rest_flux), size)
        dtype = jnp.result_type(jnp.real(rest_spectrum).dtype, jnp.asarray(vsini).dtype, jnp.float32)
        complex_dtype = jnp.result_type(dtype, jnp.complex64)
        bins = self._n_bins  # the transform's bins kept; irfft below zero-fills the rest
        rest_spectrum = rest_spectrum[..., :bins]
        # rotation: the continuous profile's transform at each bin (analytic in vsini).  Here and for the
        # Doppler phase below, optimization_barrier makes XLA compute the per-bin factor once and keep it:
        # otherwise its CPU backend fused the factor's sines, cosines and Bessel polynomials into each of the
        # 4-6 loops that read it (the product, its adjoint, the derivatives in vsini and rv), and they took
        # a quarter of a payne-default gradient (docs/validation/speed.md)
        rotation = jax.lax.optimization_barrier(rotation_transfer(
            jnp.asarray(vsini, dtype), jnp.asarray(self._rotation_frequency[:bins], dtype), self.limb_darkening))
        spectrum = (rest_spectrum * rotation)[None, :] * jnp.asarray(self._fused_static_fft[:, :bins]).astype(complex_dtype)
        if shift is not None:
            # delay by shift = k + f: the integer part's phase exactly (k m mod N in integers), the fraction's
            # as a smooth phase (the band-limited sub-pixel shift; differentiable in the RV)
            whole = jax.lax.stop_gradient(jnp.round(shift))
            fraction = shift - whole
            frequency = np.arange(bins)
            cycles = (jnp.asarray(frequency, jnp.int32) * whole.astype(jnp.int32)) % size
            angle = -2.0 * np.pi * (cycles.astype(dtype) / size + jnp.asarray(frequency / size, dtype) * fraction)
            phase = jax.lax.optimization_barrier(jax.lax.complex(jnp.cos(angle), jnp.sin(angle)).astype(complex_dtype))
            spectrum = spectrum * phase
            return jnp.fft.irfft(spectrum, size, axis=-1).astype(dtype)
        full = jnp.fft.irfft(spectrum, size, axis=-1)[:, 2 * half : 2 * half + n].astype(dtype)
        return full[0] if self.lsf_anchor_resolution is None else full

    def _sample_fixed(self, buffer):
        """The spline of the (1 or K, n_fft) coefficient buffer at the observed pixels' rv = 0 positions, (n_obs,)."""
        start, n_tiles = self._sample_first, self._sample_tiles
        stop = start + (n_tiles + 1) * _TILE
        if stop > buffer.shape[-1]:
            buffer = jnp.pad(buffer, ((0, 0), (0, stop - buffer.shape[-1])))
        blocks = buffer[:, start:stop].reshape(buffer.shape[0], n_tiles + 1, _TILE)
        windows = jnp.concatenate([blocks[:, :-1], blocks[:, 1:]], axis=-1)  # (rows, tiles, 2 _TILE)
        per_tile = jnp.einsum("rtw,rtpw->tp", windows, self._sample_weights.astype(buffer.dtype))
        return per_tile.reshape(-1)[self._sample_index]

    @full_precision
    def __call__(self, labels, rv=0.0, vsini=0.0, lsf=None):
        """Normalized model flux at the observed pixels, (n_obs,), for labels (n_labels,).

        Equal to ``shift_to_observed(broaden(rest_frame(labels), vsini), rv)`` up to the interpolation
        error, computed with one FFT convolution (rotation, LSF and the spline prefilter together).
        With the spline and one LSF, the Doppler shift is a phase in that convolution (the
        band-limited shift) and the observed pixels are read at fixed positions with constant
        weights: exact for band-limited spectra on the native grid, at the cost of the spline at
        moving positions (which per-pixel LSFs keep; see ``benchmarks/bench_rv_interpolation.py``).
        ``lsf``: another spectrum's :meth:`lsf_data` on the same pixels and anchor rungs (a varying LSF).
        """
        if self._readout is None:
            rest, rest_spectrum = self.rest_frame(labels), None
        else:  # the emulator's linear last layer, already in Fourier space (set_linear_readout)
            rest, rest_spectrum = None, self._rest_spectrum(labels)
        if lsf is not None and self.lsf_anchor_resolution is None:
            raise ValueError("lsf data given to a model with one LSF")
        if not self._fixed_sampling:
            return self._interpolate(self._broaden_fused(rest, vsini, rest_spectrum=rest_spectrum), rv, prefiltered=True,
                                     lsf=lsf)
        dtype = jnp.real(rest_spectrum).dtype if rest is None else rest.dtype
        shift = jnp.asarray(log_doppler_factor(rv) / self.log_step, dtype)
        return self._sample_fixed(self._broaden_fused(rest, vsini, shift, rest_spectrum=rest_spectrum))
