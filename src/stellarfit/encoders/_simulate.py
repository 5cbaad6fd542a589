"""Training spectra made on the fly: an emulator, or a fixed set of labelled spectra (a grid),
observed through a batched forward model.

Each batch draws labels uniformly in the emulator's box (relative abundance constraints
respected) or rows of the grid (:mod:`stellarfit.encoders._sources`), RV, vsini, one resolving power (log-uniform in ``resolution_range``; each
spectrum within 20% below it) and pixel sampling, a smooth multiplicative continuum,
Gaussian noise (S/N log-uniform in ``snr_range``) and masked runs (gaps, cropped coverage).
The broadening (rotation, differential Gaussian LSF, observed-pixel top-hat) is one FFT
product per spectrum on the source's native log-lambda pixels (the transfer functions of
:mod:`stellarfit.forward`), the Doppler shift a move of the sampling positions read with
the quintic spline of :func:`stellarfit.forward.spline_interpolate`.  Batches share one
pixel grid, padded to a few token counts (``token_buckets``) so a jitted step compiles
once per bucket.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from stellarfit.encoders._model import EncoderConfig, patch_features, wavelength_encoding
from stellarfit.encoders._sources import as_spectra_source
from stellarfit.forward import log_doppler_factor, rotation_transfer, spline_interpolate
from stellarfit.wavelengths import FWHM_TO_SIGMA, SPEED_OF_LIGHT_KMS

__all__ = ["PixelBatch", "SimulationSettings", "TrainingBatch", "TrainingSimulator"]


@dataclasses.dataclass(frozen=True)
class SimulationSettings:
    """What the simulated observations span.

    Attributes:
        resolution_range: (min, max) resolving power R; log-uniform per batch.
        pixels_per_fwhm_range: (min, max) pixels per resolution element; uniform per batch.
        snr_range: (min, max) S/N per pixel at the continuum; log-uniform per spectrum.
        rv_range: (min, max) radial velocity [km/s]; uniform.
        vsini_max: largest vsini [km/s]; half the spectra have vsini < 5 km/s.
        continuum_scatter: sd of the linear and quadratic continuum coefficients.
        gap_rate: mean number of masked runs per spectrum (Poisson).
        max_gap_fraction: longest masked run, as a fraction of the pixels.
        crop_probability: chance that only a random part of the window is kept.
        min_coverage: smallest kept part of the window (fraction).
        token_buckets: token counts a batch is padded to (the largest caps a spectrum).
    """

    resolution_range: tuple[float, float] = (1500.0, 30000.0)
    pixels_per_fwhm_range: tuple[float, float] = (2.0, 3.5)
    snr_range: tuple[float, float] = (20.0, 200.0)
    rv_range: tuple[float, float] = (-300.0, 300.0)
    vsini_max: float = 30.0
    continuum_scatter: float = 0.15
    gap_rate: float = 1.0
    max_gap_fraction: float = 0.1
    crop_probability: float = 0.3
    min_coverage: float = 0.3
    token_buckets: tuple[int, ...] = (32, 64, 128, 256, 384, 512, 640)


class TrainingBatch(NamedTuple):
    """One simulated batch (``B`` spectra, ``T`` tokens, ``L`` labels).

    features (B, T, F) float32, encoding (B, T, dim) float32, token_mask (B, T) bool,
    targets (B, L + 1) float32 (scaled labels, then scaled RV), labels (B, L) float64
    physical, rv (B,), resolution (B,), snr (B,).
    """

    features: np.ndarray
    encoding: np.ndarray
    token_mask: np.ndarray
    targets: np.ndarray
    labels: np.ndarray
    rv: np.ndarray
    resolution: np.ndarray
    snr: np.ndarray


class PixelBatch(NamedTuple):
    """One simulated batch as pixels (``B`` spectra on one grid of ``P`` pixels, ``L`` labels).

    log_wavelength (P,) float64 ln(lambda [A, vacuum]); flux, sigma (B, P) float32 (relative flux,
    its 1-sigma noise); good (B, P) bool (False: masked or padding); n_pixels: the grid's real pixels
    (the rest is padding to a token bucket); step: the ln(lambda) pixel step; labels (B, L) float64
    physical, rv (B,), resolution (B,), snr (B,).
    """

    log_wavelength: np.ndarray
    flux: np.ndarray
    sigma: np.ndarray
    good: np.ndarray
    n_pixels: int
    step: float
    labels: np.ndarray
    rv: np.ndarray
    resolution: np.ndarray
    snr: np.ndarray

    def spectra(self) -> list:
        """The batch as ``ObservedSpectrum`` objects (the real pixels; masked ones flagged), each with
        its truth in ``metadata`` (``labels``: the label values in spec order, ``rv``, ``snr``)."""
        from stellarfit.spectra import ObservedSpectrum

        n = self.n_pixels
        wavelength = np.exp(self.log_wavelength[:n])
        out = []
        for i in range(len(self.labels)):
            sigma = np.asarray(self.sigma[i, :n], np.float64)
            out.append(ObservedSpectrum(wavelength, np.asarray(self.flux[i, :n], np.float64), 1.0 / sigma**2, mask=~self.good[i, :n],
                                        resolution=float(self.resolution[i]),
                                        metadata={"source": "simulated", "labels": self.labels[i].tolist(), "rv": float(self.rv[i]),
                                                  "snr": float(self.snr[i])}))
        return out


class TrainingSimulator:
    """Draws :class:`TrainingBatch` es from an emulator or a set of labelled spectra.

    Args:
        source: a stellarfit emulator with a native R (labels drawn uniformly in its box), or a
            :class:`GridSpectra` (its rows drawn at random; e.g. Turbospectrum spectra); its label
            spec defines the labels.
        config: the encoder's architecture (patch size, wavelength encoding).
        settings: what the observations span.
    """

    def __init__(self, source, config: EncoderConfig, settings: SimulationSettings | None = None):
        self.source = source = as_spectra_source(source)
        self.config = config
        self.settings = settings = settings or SimulationSettings()
        self.label_spec = source.label_spec
        native = np.asarray(source.wavelength, dtype=np.float64)
        self.log_step = float(np.log(native[-1] / native[0]) / (native.size - 1))
        self.velocity_step = SPEED_OF_LIGHT_KMS * self.log_step
        self.native_log_start = float(np.log(native[0]))
        self.native_resolution = float(source.native_resolution)
        self.n_native = native.size
        self.pad = 256
        rv_margin = max(abs(v) for v in settings.rv_range) / SPEED_OF_LIGHT_KMS
        margin = rv_margin + 150 * self.log_step
        #: (ln lambda_min, ln lambda_max) of the simulated observations [A, vacuum]
        self.log_window = (float(np.log(native[0])) + margin, float(np.log(native[-1])) - margin)
        if self.log_window[1] <= self.log_window[0]:
            raise ValueError(f"the source's window {native[0]:.1f}-{native[-1]:.1f} A is too short for RVs up to "
                             f"{max(abs(v) for v in settings.rv_range):g} km/s")
        self._observe = jax.jit(self._observe_impl, static_argnames=("n_fft",))
        self._features = jax.jit(patch_features, static_argnames=("patch_size",))

    @property
    def wavelength_range(self) -> tuple[float, float]:
        """(min, max) [A, vacuum] of the simulated observations."""
        return float(np.exp(self.log_window[0])), float(np.exp(self.log_window[1]))

    # ------------------------------------------------------------------ jitted pieces
    def _observe_impl(self, native_flux, sigma_pixels, vsini, box_width, positions, continuum, snr, key, *, n_fft):
        """native_flux (B, n_native) -> (flux, sigma) (B, P) of the observed, noisy spectra."""
        padded = jnp.pad(native_flux, ((0, 0), (self.pad, n_fft - self.n_native - self.pad)), constant_values=1.0)
        frequency = jnp.fft.rfftfreq(n_fft)  # cycles per native pixel
        transfer = (jnp.exp(-2.0 * jnp.pi**2 * sigma_pixels[:, None] ** 2 * frequency**2)
                    * rotation_transfer(vsini[:, None], frequency / self.velocity_step)
                    * jnp.sinc(frequency * box_width))
        broadened = jnp.fft.irfft(jnp.fft.rfft(padded, axis=-1) * transfer, n_fft, axis=-1)
        normalized = jax.vmap(spline_interpolate)(broadened, positions)
        sigma = continuum / snr[:, None]
        flux = continuum * normalized + sigma * jax.random.normal(key, normalized.shape)
        return flux, sigma

    # ------------------------------------------------------------------ sampling
    def draw_labels(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """(n, n_labels) physical labels uniform in the box (relative constraints respected)."""
        return self.label_spec.from_unit_cube(rng.uniform(size=(n, len(self.label_spec))))

    def scale_targets(self, labels: np.ndarray, rv: np.ndarray) -> np.ndarray:
        """(n, L + 1) float32: labels scaled to [-0.5, 0.5] over the box, RV over ``rv_range``."""
        low, high = self.settings.rv_range
        rv_scaled = (np.asarray(rv) - low) / (high - low if high > low else 1.0) - 0.5  # rv_range (0, 0): rest-frame spectra
        return np.concatenate([self.label_spec.scale(labels), rv_scaled[:, None]], axis=1).astype(np.float32)

    def sample(self, rng: np.random.Generator, batch_size: int, *, resolution: float | None = None,
               snr: float | None = None, masks: bool = True, rows: np.ndarray | None = None) -> TrainingBatch:
        """A batch of simulated observations, as tokens.

        Args:
            rng: numpy generator (all randomness comes from it).
            batch_size: spectra in the batch.
            resolution, snr: fix R (no 20% spread) or the S/N instead of drawing them.
            masks: False keeps the whole window unmasked (no gaps, no cropping).
            rows: for a :class:`GridSpectra` source, which of its spectra (``batch_size`` of them;
                default: drawn at random).
        """
        pixels = self.sample_pixels(rng, batch_size, resolution=resolution, snr=snr, masks=masks, rows=rows)
        patch = self.config.patch_size
        bucket = pixels.log_wavelength.size // patch
        token_log_step = np.full((batch_size, bucket), pixels.step, np.float32)
        features, token_mask = self._features(pixels.flux, pixels.sigma, pixels.good, token_log_step, patch_size=patch)
        token_centres = pixels.log_wavelength.reshape(bucket, patch).mean(axis=1)  # float64
        encoding = wavelength_encoding(token_centres, self.config.dim, self.config.min_period, self.config.max_period)
        encoding = np.broadcast_to(encoding[None], (batch_size, *encoding.shape))
        return TrainingBatch(np.asarray(features), encoding, np.asarray(token_mask), self.scale_targets(pixels.labels, pixels.rv),
                             pixels.labels, pixels.rv, pixels.resolution, pixels.snr)

    def sample_pixels(self, rng: np.random.Generator, batch_size: int, *, resolution: float | None = None,
                      snr: float | None = None, masks: bool = True, rows: np.ndarray | None = None) -> PixelBatch:
        """A batch of simulated observations, as pixels (arguments as :meth:`sample`)."""
        s = self.settings
        patch = self.config.patch_size
        if rows is not None and len(rows) != batch_size:
            raise ValueError(f"rows has {len(rows)} entries; expected batch_size = {batch_size}")
        labels, native_flux = self.source.draw(rng, batch_size, rows)
        rv = rng.uniform(*s.rv_range, size=batch_size)
        vsini = np.where(rng.uniform(size=batch_size) < 0.5, rng.uniform(0, 5.0, batch_size), rng.uniform(0, s.vsini_max, batch_size))
        if resolution is None:
            top = np.exp(rng.uniform(*np.log(s.resolution_range)))
            resolutions = top * rng.uniform(0.8, 1.0, batch_size)
        else:
            top = float(resolution)
            resolutions = np.full(batch_size, top)
        snrs = np.full(batch_size, float(snr)) if snr is not None else np.exp(rng.uniform(*np.log(s.snr_range), batch_size))
        # the batch's pixel grid (float64): uniform in ln lambda at the drawn sampling
        step = 1.0 / (top * rng.uniform(*s.pixels_per_fwhm_range))
        step = max(step, self.log_step * 0.999)
        n_pixels = int(np.floor((self.log_window[1] - self.log_window[0]) / step)) + 1
        max_pixels = s.token_buckets[-1] * patch
        start = self.log_window[0]
        if n_pixels > max_pixels:  # too many tokens: a random part of the window
            start += rng.uniform(0, (n_pixels - max_pixels) * step)
            n_pixels = max_pixels
        n_tokens = -(-n_pixels // patch)
        bucket = next(b for b in s.token_buckets if b >= n_tokens)
        n_grid = bucket * patch
        log_wavelength = start + step * np.arange(n_grid)
        good = np.zeros((batch_size, n_grid), dtype=bool)
        good[:, :n_pixels] = True
        if masks:
            good = self._mask_runs(rng, good, n_pixels)
        x = np.linspace(-1.0, 1.0, n_grid)
        coefficients = rng.normal(0, s.continuum_scatter, (batch_size, 2))
        level = np.exp(rng.uniform(np.log(0.01), np.log(100.0), batch_size))
        shape = 1.0 + coefficients[:, :1] * x + coefficients[:, 1:] * (x**2 - 1.0 / 3.0)
        continuum = level[:, None] * np.clip(shape, 0.3, None)
        # rest-frame positions on the padded native pixels (float64, then float32 per spectrum)
        base = (log_wavelength - self.native_log_start) / self.log_step + self.pad
        shift = np.asarray(log_doppler_factor(np.asarray(rv, np.float64)), np.float64) / self.log_step
        positions = (base[None, :] - shift[:, None]).astype(np.float32)
        sigma_velocity = SPEED_OF_LIGHT_KMS * FWHM_TO_SIGMA * np.sqrt(np.clip(1.0 / resolutions**2 - 1.0 / self.native_resolution**2, 0, None))
        n_fft = self.n_native + 2 * self.pad
        key = jax.random.PRNGKey(int(rng.integers(2**31)))
        flux, sigma = self._observe(
            native_flux, jnp.asarray(sigma_velocity / self.velocity_step, jnp.float32), jnp.asarray(vsini, jnp.float32),
            jnp.float32(step / self.log_step), jnp.asarray(positions), jnp.asarray(continuum, jnp.float32),
            jnp.asarray(snrs, jnp.float32), key, n_fft=n_fft)
        return PixelBatch(log_wavelength, np.asarray(flux), np.asarray(sigma), good, n_pixels, step, labels, rv, resolutions, snrs)

    def _mask_runs(self, rng: np.random.Generator, good: np.ndarray, n_pixels: int) -> np.ndarray:
        s = self.settings
        for row in good:
            if rng.uniform() < s.crop_probability:
                width = int(n_pixels * rng.uniform(s.min_coverage, 1.0))
                first = int(rng.integers(0, n_pixels - width + 1))
                row[:first] = False
                row[first + width:] = False
            for _ in range(rng.poisson(s.gap_rate)):
                length = int(n_pixels * rng.uniform(0, s.max_gap_fraction))
                first = int(rng.integers(0, n_pixels))
                row[first:first + length] = False
            if not row.any():
                row[: max(n_pixels // 4, 1)] = True
        return good
