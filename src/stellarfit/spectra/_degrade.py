"""Degrade an observed spectrum to a lower resolving power, with honest noise.

:func:`degrade_resolution` convolves an :class:`~stellarfit.spectra.ObservedSpectrum` with
the Gaussian that takes its LSF to a target resolving power R and (by default) resamples it
onto a coarser log-lambda grid.  It is what the fits do to an observation sharper than the
emulator's native R (a HARPS, UVES, ESPaDOnS, MIKE or HIRES spectrum fitted with an R = 30,000
emulator): an emulator can be broadened to an observation, never sharpened.

The operator.  In x = ln(lambda) the LSF of resolving power R is a Gaussian of sigma
FWHM_TO_SIGMA / R, so going from R_obs to R_target takes a Gaussian of
sigma_extra^2 = (FWHM_TO_SIGMA / R_target)^2 - (FWHM_TO_SIGMA / R_obs)^2 (per output pixel,
R_obs and R_target interpolated there).  Output pixel j at x_j is

    F_j = sum_k W_jk f_k / c_j,   W_jk = g_k w_jk,   c_j = sum_k W_jk,

with w_jk the Gaussian integrated over input pixel k (its edges halfway to its neighbours;
the Gaussian's sigma is reduced by the variance of the pixel's top-hat, width^2 / 12, so that
the result has the target LSF), and g_k = 1 for good input pixels (not masked, ivar > 0), 0
otherwise.  This is a *normalized* convolution: masked pixels, whatever flux they hold, never
reach the output.  c_j is the fraction of the kernel's weight on good pixels (1 in the middle
of good data); output pixels with c_j < ``min_coverage`` (near a gap or an end) are masked,
so gaps stay gaps, and those at the ends of each arm are dropped.

Noise.  For independent input noise (variance v_k = 1 / ivar_k) the output variance is exact:

    var_j = sum_k W_jk^2 v_k / c_j^2.

The smoothing correlates neighbouring output pixels: cov_jl = sum_k W_jk W_lk v_k / (c_j c_l).
A chi^2 summed over output pixels as if they were independent would count the same photons
several times; so the returned ivar is 1 / (var_j f_j), with f_j = sum_l rho_jl the sum of the
correlation coefficients of pixel j with all output pixels (itself included), computed from
the actual weights.  For a signal that is smooth on the kernel's scale (a continuum, a broad
line), sum_l (C^-1)_jl = 1 / (var_j f_j), so this diagonal chi^2 gives the same Fisher
information as the full covariance.  For densely sampled white noise and a kernel of sigma s
on output pixels d apart, rho(m d) = exp(-(m d)^2 / (4 s^2)) and f = sum_m rho(m d) ~
2 sqrt(pi) s / d: about 4.4 when degrading R = 115,000 to 30,000 at 3 pixels per resolution
element.

Limits of the noise treatment (see docs/guide/resolution.md):

- signals with structure on the kernel's scale (the lines themselves) are given *less*
  information than the full covariance would give them (at most a factor sigma_target /
  sigma_line_before in variance for a Gaussian line): the errors are conservative, never
  too small;
- the chi^2 of a model that describes the data is then ~ N / f, not N: a reduced chi^2 of
  1 / f is a perfect fit (the fits account for this, ``diagnostics["reduced_chi2_expected"]``);
- the input noise is taken as independent between pixels; a spectrum that was already
  resampled (correlated noise) gets too large an ivar by its own correlation factor.

Everything here is float64 (wavelength arithmetic in ln lambda needs it).  Needs scipy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from stellarfit.spectra._spectrum import InvalidSpectrumError, ObservedSpectrum
from stellarfit.wavelengths import FWHM_TO_SIGMA

__all__ = ["DEFAULT_MIN_COVERAGE", "DEFAULT_PIXELS_PER_RESOLUTION", "degrade_resolution"]

#: output pixels whose kernel has less than this fraction of its weight on good input pixels are masked.
#: At a one-sided edge a kernel cut to a fraction c is off-centre (by 0.19 sigma at c = 0.8 and 0.8
#: sigma at c = 0.5), so its pixel does not have the target LSF: 0.8 keeps that shift small.
DEFAULT_MIN_COVERAGE = 0.8
#: output sampling: pixels per resolution element lambda / R_target (the emulators' native sampling)
DEFAULT_PIXELS_PER_RESOLUTION = 3.0
#: kernels are cut at this many sigma (the weight beyond is < 6e-7)
_KERNEL_SIGMAS = 5.0
#: relative excess of R over the target tolerated as equal (float noise of R read from files)
_R_TOLERANCE = 1e-6


def degrade_resolution(
    spectrum: ObservedSpectrum,
    resolution: float | np.ndarray,
    *,
    pixels_per_resolution: float | None = DEFAULT_PIXELS_PER_RESOLUTION,
    wavelength: np.ndarray | None = None,
    min_coverage: float = DEFAULT_MIN_COVERAGE,
) -> ObservedSpectrum:
    """The spectrum convolved down to resolving power ``resolution`` and resampled, with its noise.

    Args:
        spectrum: the observation; its resolution must be known (scalar or per pixel, from R or
            ``lsf_sigma``).
        resolution: target resolving power lambda / FWHM: a scalar, or (n_pixels,) one per
            input pixel (interpolated to the output pixels).
        pixels_per_resolution: output sampling, uniform in ln(lambda) with step
            1 / (R_target * pixels_per_resolution) on the lattice ln(lambda) = k * step
            (so spectra degraded alike share pixels); R_target is the arm's largest target R.
            None keeps the input pixels.
        wavelength: (m,) increasing output wavelengths [A, vacuum] instead (each arm gets those
            inside its range); overrides ``pixels_per_resolution``.
        min_coverage: output pixels whose kernel has less than this fraction of its weight on
            good input pixels are masked (interior) or dropped (arm ends); in (0, 1].

    Each arm is degraded on its own.  An arm whose R nowhere exceeds the target (to 1e-6) is
    returned unchanged, pixels included; where the target exceeds an arm's R at some pixels
    only, those pixels keep their R (they are only resampled).  The noise: exact diagonal
    variance, and ivar divided by the sum of each output pixel's correlation coefficients with
    its neighbours, so that a chi^2 over output pixels as if independent has the Fisher
    information of the full covariance for smooth signals (module docstring: how, and limits).

    Returns a new ObservedSpectrum: wavelength (m,), flux, ivar, mask, resolution (a float when
    one value everywhere, else (m,)), arms as the input's (arms left without a good pixel are
    dropped).  ``metadata["degraded"]`` records what was done: ``resolution_in`` (median R of
    the degraded pixels) and ``resolution_in_range`` (min, max), ``resolution_out``,
    ``n_pixels_in`` and ``n_pixels_out`` (the degraded arms'), ``pixels_per_resolution``,
    ``min_coverage``, ``ivar_correlation_factor`` (median f over good output pixels) and its
    ``ivar_correlation_factor_range``, ``n_masked_out`` and ``arms`` (names of the degraded arms).

    Raises InvalidSpectrumError (a ValueError) for an unknown resolution, bad arguments, or
    when nothing usable is left.
    """
    if not isinstance(spectrum, ObservedSpectrum):
        raise TypeError(f"degrade_resolution needs an ObservedSpectrum, got {type(spectrum).__name__}")
    r_in = np.asarray(spectrum.resolution_per_pixel() if spectrum.resolution is not None else spectrum.require_resolution(),
                      dtype=np.float64)
    target = np.asarray(resolution, dtype=np.float64)
    if target.ndim == 0:
        target = np.full(spectrum.n_pixels, float(target))
    if target.shape != (spectrum.n_pixels,):
        raise InvalidSpectrumError(f"resolution must be a scalar or one value per pixel ({spectrum.n_pixels}), "
                                   f"got shape {target.shape}")
    if not np.all(np.isfinite(target) & (target > 0)):
        raise InvalidSpectrumError("the target resolution must be finite and > 0 (a resolving power lambda / FWHM)")
    if not 0.0 < min_coverage <= 1.0:
        raise InvalidSpectrumError(f"min_coverage must be in (0, 1], got {min_coverage}")
    if wavelength is not None:
        wavelength = np.asarray(wavelength, dtype=np.float64)
        if wavelength.ndim != 1 or wavelength.size < 2 or not np.all(np.diff(wavelength) > 0) or wavelength[0] <= 0:
            raise InvalidSpectrumError("wavelength must be a 1-D, strictly increasing array of >= 2 positive "
                                       "wavelengths [A, vacuum]")
    elif pixels_per_resolution is not None and not (np.isfinite(pixels_per_resolution) and pixels_per_resolution > 0):
        raise InvalidSpectrumError(f"pixels_per_resolution must be > 0 (or None to keep the pixels), got {pixels_per_resolution}")

    pieces, degraded_arms, stats = [], [], []
    for arm_id, name in enumerate(spectrum.arm_names):
        index = np.flatnonzero(spectrum.arm == arm_id)
        if not np.any(r_in[index] > target[index] * (1.0 + _R_TOLERANCE)):
            pieces.append(_Piece(spectrum.wavelength[index], spectrum.flux[index], spectrum.ivar[index],
                                 spectrum.mask[index], r_in[index], name))
            continue
        piece, info = _degrade_arm(spectrum, index, r_in[index], target[index], pixels_per_resolution, wavelength,
                                   min_coverage, name)
        if piece is not None:
            pieces.append(piece)
        degraded_arms.append(name)
        stats.append(info)
    if not degraded_arms:
        return spectrum.replace(metadata=dict(spectrum.metadata))
    if not pieces or sum(p.wavelength.size for p in pieces) < 2 or all(p.mask.all() for p in pieces):
        raise InvalidSpectrumError(f"degrading {spectrum.source} to R={np.median(target):.0f} leaves no usable pixel "
                                   f"(min_coverage={min_coverage}): too few good pixels, or gaps everywhere")
    r_out = np.concatenate([p.resolution for p in pieces])
    uniform = np.all(r_out == r_out[0])
    factors = np.concatenate([s["factors"] for s in stats]) if stats else np.ones(0)
    r_degraded = np.concatenate([s["r_in"] for s in stats])
    record: dict[str, Any] = {
        "resolution_in": float(np.median(r_degraded)),
        "resolution_in_range": [float(r_degraded.min()), float(r_degraded.max())],
        "resolution_out": float(r_out[0]) if uniform else [float(r_out.min()), float(r_out.max())],
        "n_pixels_in": int(sum(s["n_in"] for s in stats)),
        "n_pixels_out": int(sum(s["n_out"] for s in stats)),
        "n_masked_out": int(sum(s["n_masked"] for s in stats)),
        "pixels_per_resolution": None if wavelength is not None else pixels_per_resolution,
        "min_coverage": float(min_coverage),
        "ivar_correlation_factor": float(np.median(factors)) if factors.size else 1.0,
        "ivar_correlation_factor_range": [float(factors.min()), float(factors.max())] if factors.size else [1.0, 1.0],
        "arms": degraded_arms,
    }
    return ObservedSpectrum(
        wavelength=np.concatenate([p.wavelength for p in pieces]),
        flux=np.concatenate([p.flux for p in pieces]),
        ivar=np.concatenate([p.ivar for p in pieces]),
        mask=np.concatenate([p.mask for p in pieces]),
        resolution=float(r_out[0]) if uniform else r_out,
        arm=np.concatenate([np.full(p.wavelength.size, i, dtype=np.int16) for i, p in enumerate(pieces)]),
        arm_names=tuple(p.name for p in pieces),
        metadata=dict(spectrum.metadata, degraded=record),
    )


class _Piece:
    """One arm of the output."""

    def __init__(self, wavelength, flux, ivar, mask, resolution, name):
        self.wavelength, self.flux, self.ivar, self.mask = wavelength, flux, ivar, mask
        self.resolution, self.name = np.asarray(resolution, dtype=np.float64), name


def _output_grid(x: np.ndarray, target_max: float, pixels_per_resolution, wavelength) -> tuple[np.ndarray, np.ndarray]:
    """(ln(lambda), lambda [A]) of the output pixels inside [x[0], x[-1]] (float64; given or kept
    wavelengths are returned exactly)."""
    if wavelength is not None:
        y = np.log(wavelength)
        inside = (y >= x[0]) & (y <= x[-1])
        return y[inside], wavelength[inside]
    if pixels_per_resolution is None:
        return x.copy(), np.exp(x)
    step = 1.0 / (target_max * pixels_per_resolution)
    first, last = int(np.ceil(x[0] / step - 1e-9)), int(np.floor(x[-1] / step + 1e-9))
    y = np.arange(first, last + 1, dtype=np.float64) * step
    return y, np.exp(y)


def _degrade_arm(spectrum, index, r_in, target, pixels_per_resolution, wavelength, min_coverage, name):
    """(_Piece or None, stats) for the pixels ``index`` of one arm."""
    from scipy.sparse import csr_matrix
    from scipy.special import ndtr

    x = np.log(spectrum.wavelength[index])  # (n,) float64
    flux, ivar = spectrum.flux[index], spectrum.ivar[index]
    good = ~spectrum.mask[index] & (ivar > 0)
    y, out_wavelength = _output_grid(x, float(target.max()), pixels_per_resolution, wavelength)
    if wavelength is None and pixels_per_resolution is None:
        out_wavelength = spectrum.wavelength[index]
    stats = {"n_in": int(index.size), "n_out": 0, "n_masked": 0, "factors": np.ones(0), "r_in": r_in}
    if y.size == 0:
        return None, stats
    # input pixel edges in ln(lambda): halfway between neighbours, the end pixels as wide as their neighbour
    middle = 0.5 * (x[1:] + x[:-1])
    edges = np.concatenate([[2.0 * x[0] - middle[0]], middle, [2.0 * x[-1] - middle[-1]]])
    width = np.diff(edges)
    r_obs = np.interp(y, x, r_in)
    r_out = np.minimum(np.interp(y, x, target), r_obs)
    # the Gaussian applied: sigma_extra^2 less the variance of the input pixel's top-hat
    local_width = np.interp(y, x, width)
    variance = (FWHM_TO_SIGMA / r_out) ** 2 - (FWHM_TO_SIGMA / r_obs) ** 2 - local_width**2 / 12.0
    sigma = np.sqrt(np.maximum(variance, (1e-3 * local_width) ** 2))  # (m,) in ln(lambda)
    reach = _KERNEL_SIGMAS * sigma + local_width
    lo = np.searchsorted(x, y - reach, side="left")
    hi = np.maximum(np.searchsorted(x, y + reach, side="right"), lo + 1)
    lo, hi = np.clip(lo, 0, x.size - 1), np.clip(hi, 1, x.size)
    counts = hi - lo
    rows = np.repeat(np.arange(y.size), counts)
    cols = lo[rows] + np.arange(rows.size) - np.repeat(np.cumsum(counts) - counts, counts)
    weight = ndtr((edges[cols + 1] - y[rows]) / sigma[rows]) - ndtr((edges[cols] - y[rows]) / sigma[rows])
    weight *= good[cols]  # normalized convolution: bad pixels carry no weight, whatever their flux
    coverage = np.bincount(rows, weight, minlength=y.size)  # (m,) fraction of the kernel on good pixels
    keep = coverage >= min_coverage
    # drop the ends of the arm that the kernel cannot cover; interior gaps stay (masked)
    if not keep.any():
        return None, stats
    first, last = int(np.argmax(keep)), int(keep.size - np.argmax(keep[::-1]))
    variance_in = np.where(good, 1.0 / np.where(good, ivar, 1.0), 0.0)
    safe = np.where(keep, coverage, 1.0)
    out_flux = np.where(keep, np.bincount(rows, weight * flux[cols], minlength=y.size) / safe, 0.0)
    out_variance = np.bincount(rows, weight**2 * variance_in[cols], minlength=y.size) / safe**2
    keep &= out_variance > 0
    # correlation of output pixels: cov = A A^T with A_jk = W_jk sqrt(v_k) / c_j; f_j = sum_l cov_jl / (sd_j sd_l)
    operator = csr_matrix((weight * np.sqrt(variance_in[cols]) / safe[rows], (rows, cols)), shape=(y.size, x.size))
    inverse_sd = np.where(keep, 1.0 / np.sqrt(np.where(keep, out_variance, 1.0)), 0.0)
    factor = inverse_sd * (operator @ (operator.T @ inverse_sd))
    out_ivar = np.where(keep, 1.0 / np.where(keep, out_variance * factor, 1.0), 0.0)
    part = slice(first, last)
    stats.update(n_out=last - first, n_masked=int((~keep[part]).sum()), factors=factor[keep])
    piece = _Piece(out_wavelength[part], out_flux[part], out_ivar[part], ~keep[part], r_out[part], name)
    return piece, stats
