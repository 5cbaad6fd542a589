"""Labels with errors from observed spectra: ObservedSpectrum -> tokens -> encoder.

A spectrum is prepared as the training spectra were made: only pixels inside the
encoder's training window are used, and a spectrum sharper than the training
resolutions is smoothed with a Gaussian and resampled to 3 pixels per FWHM at
R = 0.85 x the largest training R, and uncertainties below the training's highest
S/N are raised to it (both said in the returned ``info``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import numpy as np

from stellarfit.encoders._encoder import Encoder
from stellarfit.encoders._model import patch_features, wavelength_encoding
from stellarfit.wavelengths import FWHM_TO_SIGMA

__all__ = ["PreparedSpectrum", "UnusableSpectrumError", "predict", "predict_tokens", "prepare_pixels"]

#: token counts of a batch are rounded up to a multiple of this (fewer compiled shapes)
_TOKEN_MULTIPLE = 32
#: spectra sharper than this fraction of the largest training R are degraded to it
_DEGRADE_FRACTION = 0.85


class UnusableSpectrumError(ValueError):
    """A spectrum the encoder cannot read (no pixels in its window, no usable flux)."""


class PreparedSpectrum(NamedTuple):
    """Pixels ready for tokenization: ln wavelength (n,) float64, flux, sigma (n,), good (n,) bool, info dict."""

    log_wavelength: np.ndarray
    flux: np.ndarray
    sigma: np.ndarray
    good: np.ndarray
    info: dict


#: patch_features compiled once per (batch, token count)
_patch_features = jax.jit(patch_features, static_argnames=("patch_size",))


def predict_tokens(encoder: Encoder, features, encoding, token_mask) -> tuple[np.ndarray, np.ndarray]:
    """Physical (values, 1-sigma errors), each (batch, n_outputs), from token arrays (see SpectrumEncoder)."""
    mean, log_variance = encoder.apply(features, encoding, token_mask)
    return encoder.unscale(np.asarray(mean), np.asarray(log_variance))


def _degrade(log_wavelength, flux, sigma, good, resolution: float, target: float):
    """Gaussian smoothing from R ``resolution`` to ``target`` and resampling to 3 pixels per FWHM (ln lambda, float64)."""
    width = FWHM_TO_SIGMA * np.sqrt(max(1.0 / target**2 - 1.0 / resolution**2, 0.0))  # Gaussian sigma in ln lambda
    step = 1.0 / (3.0 * target)
    grid = np.arange(log_wavelength[0], log_wavelength[-1], step)
    reach = 4.0 * max(width, step)
    first = np.searchsorted(log_wavelength, grid - reach)
    last = np.searchsorted(log_wavelength, grid + reach)
    taps = int(np.max(last - first)) + 1
    index = np.minimum(first[:, None] + np.arange(taps)[None], log_wavelength.size - 1)
    inside = (np.arange(taps)[None] < (last - first)[:, None]) & good[index]
    distance = (log_wavelength[index] - grid[:, None]) / max(width, step / 3.0)
    weight = np.where(inside, np.exp(-0.5 * distance**2), 0.0)
    total = weight.sum(axis=1)
    ok = total > 1e-3  # some weight from good pixels
    safe = np.where(ok, total, 1.0)
    new_flux = np.where(ok, (weight * np.where(inside, flux[index], 0.0)).sum(axis=1) / safe, 0.0)
    new_sigma = np.where(ok, np.sqrt((weight**2 * np.where(inside, sigma[index], 0.0) ** 2).sum(axis=1)) / safe, np.inf)
    return grid, new_flux, new_sigma, ok


def prepare_pixels(encoder: Encoder, spectrum) -> PreparedSpectrum:
    """The pixels of ``spectrum`` (an ObservedSpectrum) the encoder reads (see the module docstring)."""
    wavelength = np.asarray(spectrum.wavelength, np.float64)
    low, high = encoder.wavelength_range
    inside = (wavelength >= low) & (wavelength <= high)
    if not np.any(inside & spectrum.good):
        raise UnusableSpectrumError(
            f"no usable pixel within the encoder's window {low:.1f}-{high:.1f} A (vacuum); the spectrum covers "
            f"{wavelength.min():.1f}-{wavelength.max():.1f} A. Use an encoder trained on this wavelength range "
            "(train_encoder with an emulator that covers it)")
    order = np.argsort(wavelength[inside], kind="stable")
    log_wavelength = np.log(wavelength[inside][order])
    flux = np.asarray(spectrum.flux, np.float64)[inside][order]
    sigma = np.asarray(spectrum.sigma, np.float64)[inside][order]
    good = np.asarray(spectrum.good)[inside][order] & np.isfinite(flux) & np.isfinite(sigma)
    info = {"n_pixels_used": int(good.sum()), "window": [low, high]}
    resolution = spectrum.resolution
    if resolution is None:
        step = np.median(np.diff(log_wavelength)) if log_wavelength.size > 1 else 1.0
        resolution = 1.0 / (2.5 * step)  # assume 2.5 pixels per FWHM
        info["resolution_assumed"] = float(resolution)
    resolution = float(np.median(resolution))
    target = _DEGRADE_FRACTION * encoder.resolution_range[1]
    if resolution > encoder.resolution_range[1]:
        log_wavelength, flux, sigma, good = _degrade(log_wavelength, flux, sigma, good, resolution, target)
        info["degraded_to_resolution"] = target
    if np.count_nonzero(good) < 2:
        raise UnusableSpectrumError("fewer than 2 usable pixels after masking; check the file's flux and uncertainty columns")
    # a spectrum sharper in S/N than the training ones is read as one at the highest training S/N
    # (the network never saw smaller uncertainties; its errors are then conservative)
    snr_max = (encoder.metadata.get("simulation") or {}).get("snr_range", (None, None))[1]
    if snr_max:
        floor = abs(float(np.median(flux[good]))) / float(snr_max)
        if np.median(sigma[good]) < floor:
            info["snr_capped_at"] = float(snr_max)
        sigma = np.maximum(sigma, floor)
    return PreparedSpectrum(log_wavelength, flux, sigma, good, info)


def _token_arrays(encoder: Encoder, prepared: Sequence[PreparedSpectrum]):
    """(features (B, T, F), encoding (B, T, dim), token_mask (B, T)) of prepared spectra, padded to one T."""
    patch = encoder.config.patch_size
    n_tokens = max(-(-p.log_wavelength.size // patch) for p in prepared)
    n_tokens = -(-n_tokens // _TOKEN_MULTIPLE) * _TOKEN_MULTIPLE
    n = n_tokens * patch
    batch = len(prepared)
    flux = np.zeros((batch, n))
    sigma = np.ones((batch, n))
    good = np.zeros((batch, n), bool)
    log_step = np.ones((batch, n_tokens))
    encoding = np.zeros((batch, n_tokens, encoder.config.dim), np.float32)
    for row, p in enumerate(prepared):
        m = p.log_wavelength.size
        step = np.median(np.diff(p.log_wavelength)) if m > 1 else 1e-5
        # padding pixels continue the grid (their tokens are masked; float64 throughout)
        log_wavelength = np.concatenate([p.log_wavelength, p.log_wavelength[-1] + step * np.arange(1, n - m + 1)])
        flux[row, :m], sigma[row, :m], good[row, :m] = p.flux, p.sigma, p.good
        patches = log_wavelength.reshape(n_tokens, patch)
        log_step[row] = np.abs(patches[:, -1] - patches[:, 0]) / max(patch - 1, 1) if patch > 1 else step
        encoding[row] = wavelength_encoding(patches.mean(axis=1), encoder.config.dim, encoder.config.min_period,
                                            encoder.config.max_period)
    features, token_mask = _patch_features(flux, np.where(good, sigma, 1.0), good, log_step, patch_size=patch)
    return features, encoding, token_mask


def predict(encoder: Encoder, spectra, *, batch_size: int = 64, return_info: bool = False):
    """Labels and RV with 1-sigma errors for one ObservedSpectrum or a list of them.

    Args:
        encoder: a trained :class:`Encoder` (e.g. ``load_encoder(path)``).
        spectra: an ObservedSpectrum, or a sequence of them (predicted in batches).
        batch_size: spectra per network call.
        return_info: also return, per spectrum, what was done to it (pixels used, degraded R).
    Returns:
        ``{name: (value, error)}`` (labels in the encoder's label spec, then ``rv`` [km/s]) for one
        spectrum, a list of such dicts for a sequence; with ``return_info``, (result, info).
    Raises:
        UnusableSpectrumError: a spectrum without usable pixels in the encoder's window (for a
            list, the first such spectrum; call per spectrum to skip bad ones).
    """
    single = not isinstance(spectra, (list, tuple))
    items = [spectra] if single else list(spectra)
    prepared = [prepare_pixels(encoder, s) for s in items]
    results = []
    for start in range(0, len(prepared), batch_size):
        chunk = prepared[start:start + batch_size]
        values, errors = predict_tokens(encoder, *_token_arrays(encoder, chunk))
        for value, error in zip(values, errors):
            results.append({name: (float(v), float(e)) for name, v, e in zip(encoder.output_names, value, error)})
    out = results[0] if single else results
    if return_info:
        infos = [p.info for p in prepared]
        return out, (infos[0] if single else infos)
    return out
