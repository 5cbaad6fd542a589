"""A baseline for the encoder: an MLP on the raw spectrum (as in Zhao, Ting, Wyse et al. 2026).

A spectrum is moved to the rest frame with a known RV (a survey pipeline's; at R ~ 4,000 its
error of a few km/s is far below the ~75 km/s resolution element; ``rest_frame=False`` reads
the observed spectrum instead), resampled linearly onto one
fixed ln(lambda) grid, and divided by a running pseudo-continuum (the 90th percentile of the
good pixels in chunks of ``continuum_chunk`` pixels, interpolated between chunk centres).  The
input is the normalized flux minus 1 (0 where masked), the good-pixel flags and log10 of the
median S/N; two GELU layers give a mean and a log variance per label (the encoder's Gaussian
negative log-likelihood, on the same scaled labels).  It is trained on the same freshly
observed labelled stars as :func:`adapt_encoder` (:class:`TrainingSimulator`).  It predicts
labels only (no RV), and reads only spectra on its survey's window and resolution.
"""

from __future__ import annotations

import dataclasses
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from stellarfit.encoders._model import LOG_VARIANCE_RANGE, EncoderConfig
from stellarfit.encoders._simulate import SimulationSettings, TrainingSimulator
from stellarfit.encoders._sources import as_spectra_source
from stellarfit.encoders._training import gaussian_nll
from stellarfit.forward import log_doppler_factor

__all__ = ["MLPSettings", "SpectrumMLP", "train_spectrum_mlp"]


@dataclasses.dataclass(frozen=True)
class MLPSettings:
    """The MLP baseline and its training.

    Attributes:
        hidden: widths of the hidden layers.
        steps, batch_size, learning_rate, warmup_steps, weight_decay, gradient_clip: as in
            :class:`AdaptSettings` (AdamW, warm-up then cosine decay to 5%).
        pixels_per_fwhm: sampling of the fixed input grid at the survey's largest R.
        continuum_chunk: pixels per chunk of the running pseudo-continuum.
        rest_frame: train on spectra moved to the rest frame with their true RV (as a survey
            pipeline's RV would); False: on the observed spectra (the network must learn the shifts).
        seed: seeds the network and every batch.
        progress: tqdm progress bar on stderr.
    """

    hidden: tuple[int, ...] = (256, 256)
    steps: int = 500
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_steps: int = 50
    weight_decay: float = 1e-4
    gradient_clip: float = 1.0
    pixels_per_fwhm: float = 2.5
    continuum_chunk: int = 64
    rest_frame: bool = True
    seed: int = 0
    progress: bool = True


class _Network(nnx.Module):
    def __init__(self, n_inputs: int, hidden: tuple[int, ...], n_outputs: int, rngs: nnx.Rngs):
        widths = (n_inputs, *hidden)
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(widths[:-1], widths[1:])])
        self.out = nnx.Linear(widths[-1], 2 * n_outputs, rngs=rngs)

    def __call__(self, x):
        for layer in self.layers:
            x = jax.nn.gelu(layer(x))
        out = self.out(x).reshape(x.shape[0], -1, 2)
        low, high = LOG_VARIANCE_RANGE
        return out[..., 0], low + (high - low) * jax.nn.sigmoid(out[..., 1] + 1.1)


class SpectrumMLP:
    """A trained MLP baseline: its input grid, network and label spec.

    Args:
        log_wavelength: (P,) float64 ln(lambda [A, vacuum]) of the fixed input grid.
        label_spec: the labels it predicts.
        settings: the architecture and training settings.
        params: the network's parameters (pure dict) or None for a fresh network.
    """

    def __init__(self, log_wavelength: np.ndarray, label_spec, settings: MLPSettings, params: dict | None = None):
        self.log_wavelength = np.asarray(log_wavelength, np.float64)
        self.label_spec = label_spec
        self.settings = settings
        module = _Network(2 * self.log_wavelength.size + 1, tuple(settings.hidden), len(label_spec), nnx.Rngs(settings.seed))
        self.graphdef, state = nnx.split(module, nnx.Param)
        if params is not None:
            nnx.replace_by_pure_dict(state, params)
        self.params = state
        self._apply = jax.jit(lambda params, x: nnx.merge(self.graphdef, params)(x))

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(self.label_spec.names)

    def inputs(self, log_wavelength, flux, sigma, good, rv) -> np.ndarray:
        """(B, 2 P + 1) float32 network inputs from B spectra (each: ln lambda, flux, sigma, good; RV [km/s])."""
        grid = self.log_wavelength
        chunk = self.settings.continuum_chunk
        n_chunks = -(-grid.size // chunk)
        rows = []
        for lw, f, s, g, v in zip(log_wavelength, flux, sigma, good, np.atleast_1d(rv)):
            lw = np.asarray(lw, np.float64) - float(log_doppler_factor(float(v)))
            g = np.asarray(g, bool) & np.isfinite(f) & np.isfinite(s) & (np.asarray(s) > 0)
            if g.sum() < 2:
                rows.append(np.zeros(2 * grid.size + 1, np.float32))
                continue
            resampled = np.interp(grid, lw[g], np.asarray(f, np.float64)[g])
            inside = (grid >= lw[g][0]) & (grid <= lw[g][-1]) & (np.interp(grid, lw, g.astype(float)) > 0.5)
            padded = np.full(n_chunks * chunk, np.nan)
            padded[: grid.size] = np.where(inside, resampled, np.nan)
            blocks = padded.reshape(n_chunks, chunk)
            has = np.isfinite(blocks).sum(axis=1) >= 3
            if not np.any(has):
                rows.append(np.zeros(2 * grid.size + 1, np.float32))
                continue
            level = np.nanpercentile(blocks[has], 90.0, axis=1)
            centres = grid[np.minimum(np.arange(n_chunks) * chunk + chunk // 2, grid.size - 1)][has]
            continuum = np.interp(grid, centres, level)
            normalized = np.where(inside & (continuum > 0), resampled / np.where(continuum > 0, continuum, 1.0) - 1.0, 0.0)
            snr = np.median(np.abs(np.asarray(f)[g]) / np.asarray(s)[g])
            rows.append(np.concatenate([np.clip(normalized, -3, 3), inside.astype(float), [np.log10(max(snr, 1e-3)) - 2.0]]))
        return np.asarray(rows, np.float32)

    def apply(self, inputs, params=None):
        """Scaled (mean, log variance), each (B, n_labels)."""
        return self._apply(self.params if params is None else params, inputs)

    def predict(self, spectra, rv=None) -> list[dict]:
        """{name: (value, error)} per ObservedSpectrum of ``spectra`` (a list), each moved to the rest
        frame with its RV (``rv``: (n,) km/s; None: read as observed, for a model trained with ``rest_frame=False``)."""
        rv = np.zeros(len(spectra)) if rv is None else np.asarray(rv, np.float64)
        values, errors = [], []
        for start in range(0, len(spectra), 64):
            chunk = spectra[start:start + 64]
            x = self.inputs([np.log(s.wavelength) for s in chunk], [s.flux for s in chunk], [s.sigma for s in chunk],
                            [s.good for s in chunk], rv[start:start + 64])
            mean, log_variance = self.apply(x)
            width = self.label_spec.upper - self.label_spec.lower
            values.append((np.asarray(mean, np.float64) + 0.5) * width + self.label_spec.lower)
            errors.append(np.exp(0.5 * np.asarray(log_variance, np.float64)) * width)
        values, errors = np.concatenate(values), np.concatenate(errors)
        return [{name: (float(v), float(e)) for name, v, e in zip(self.output_names, vr, er)} for vr, er in zip(values, errors)]


def train_spectrum_mlp(source, settings: MLPSettings | None = None, *, simulation: SimulationSettings | None = None
                       ) -> tuple[SpectrumMLP, list[dict]]:
    """Train the MLP baseline on the labelled spectra of ``source`` observed as ``simulation`` says.

    Args:
        source: a :class:`GridSpectra` (or an emulator).
        settings: the network and training (default ``MLPSettings()``).
        simulation: the survey's observations (default ``SimulationSettings()``).
    Returns:
        (the trained SpectrumMLP, history: a list of {step, loss, seconds}).
    """
    settings = settings or MLPSettings()
    simulation = simulation or SimulationSettings()
    source = as_spectra_source(source)
    # patch size 1: the simulator only makes pixels here; one "token bucket" that holds the whole window
    window = np.log(source.wavelength[-1] / source.wavelength[0])
    most = int(window * max(simulation.resolution_range) * max(simulation.pixels_per_fwhm_range)) + 2
    simulator = TrainingSimulator(source, EncoderConfig(patch_size=1, dim=8, heads=1),
                                  dataclasses.replace(simulation, token_buckets=(most,)))
    step = 1.0 / (settings.pixels_per_fwhm * max(simulation.resolution_range))
    grid = np.arange(simulator.log_window[0], simulator.log_window[1], step)
    model = SpectrumMLP(grid, source.label_spec, settings)
    schedule = optax.warmup_cosine_decay_schedule(0.0, settings.learning_rate, max(settings.warmup_steps, 1),
                                                  max(settings.steps, settings.warmup_steps + 1), settings.learning_rate * 0.05)
    tx = optax.chain(optax.clip_by_global_norm(settings.gradient_clip), optax.adamw(schedule, weight_decay=settings.weight_decay))
    params = model.params
    opt_state = tx.init(params)
    graphdef = model.graphdef

    @jax.jit
    def train_step(params, opt_state, x, targets):
        def loss_fn(params):
            mean, log_variance = nnx.merge(graphdef, params)(x)
            return gaussian_nll(mean, log_variance, targets)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    history, start = [], time.perf_counter()
    bar = tqdm(total=settings.steps, file=sys.stderr, disable=not settings.progress, dynamic_ncols=True, desc="train MLP baseline")
    for i in range(settings.steps):
        pixels = simulator.sample_pixels(np.random.default_rng([settings.seed, i]), settings.batch_size)
        n = pixels.n_pixels
        x = model.inputs([pixels.log_wavelength[:n]] * settings.batch_size, pixels.flux[:, :n], pixels.sigma[:, :n],
                         pixels.good[:, :n], pixels.rv if settings.rest_frame else np.zeros_like(pixels.rv))
        targets = jnp.asarray(source.label_spec.scale(pixels.labels), jnp.float32)
        params, opt_state, loss = train_step(params, opt_state, x, targets)
        history.append({"step": i + 1, "loss": float(loss), "seconds": time.perf_counter() - start})
        bar.update(1)
    bar.close()
    model.params = params
    return model, history
