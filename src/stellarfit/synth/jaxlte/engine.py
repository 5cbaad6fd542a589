"""The ``jax`` grid engine (physics level ``simple``): labels -> spectrum on output pixels.

Owns :class:`JaxLteEngine`, which chains, in pure JAX,

    labels -> atmosnet atmosphere (``stellarfit.synth.atmospheres``)
           -> abundances (``stellarfit.synth.abundances``, linear in the labels)
           -> LTE synthesis at a fine native step (:class:`JaxLTESynthesizer`)
           -> Gaussian LSF of resolving power R integrated over each output
              pixel (a fixed sparse linear operator),

so ``engine.spectrum(label_vector)`` is jit-compiled, vmappable over stars and
differentiable with respect to every label.  It follows the engine protocol
of the grid generator (``engine.wavelength``, ``engine.metadata()``,
``engine.synthesize(labels) -> (normalized, continuum)``), like the
Turbospectrum engine, on the same atmospheres, line list and abundance
mapping.

The pixel operator: output pixel j with edges e_j, e_{j+1} (log-lambda grid)
gets sum_k w_jk F_k / sum_k w_jk over native samples k, with
w_jk = Delta_k [Phi((e_{j+1} - lambda_k) / sigma_j) - Phi((e_j - lambda_k) / sigma_j)],
Delta_k the trapezoid weight of sample k and sigma_j = lambda_j / (2.3548 R):
the pixel average of the LSF-convolved spectrum.  Normalized flux on pixels =
operator(F) / operator(F_continuum), as in the Turbospectrum engine.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import ndtr

from ...wavelengths import pixel_edges
from .._engine import LABEL_DEFAULTS, PixelEngine, merge_labels
from ..abundances import abundance_matrix
from .synthesizer import JaxLTESynthesizer, WindowOptions, default_reference_abundances

__all__ = ["JaxLteEngine", "pixel_operator"]

_FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


def pixel_operator(native: np.ndarray, pixels: np.ndarray, resolution: float, n_sigma: float = 5.0):
    """Sparse LSF-and-pixel-integration operator from native samples to output pixels.

    Args:
        native: (n_native,) increasing wavelengths of the fine spectrum [A].
        pixels: (n_pixels,) output pixel centres [A], inside ``native``.
        resolution: resolving power R of the Gaussian LSF (FWHM = lambda / R).
        n_sigma: kernel half-width in LSF sigmas.

    Returns:
        index (n_pixels, K) int32 and weight (n_pixels, K) float64 (rows sum
        to 1; zero-weight padding), so that out_j = sum_k weight_jk f[index_jk].
    """
    native = np.asarray(native, np.float64)
    pixels = np.asarray(pixels, np.float64)
    edges = pixel_edges(pixels)
    sigma = pixels * _FWHM_TO_SIGMA / resolution
    lo = np.searchsorted(native, edges[:-1] - n_sigma * sigma)
    hi = np.searchsorted(native, edges[1:] + n_sigma * sigma)
    if lo.min() <= 0 or hi.max() >= native.size:
        raise ValueError("the native wavelengths must extend at least 5 LSF sigmas beyond the output pixels")
    width = int((hi - lo).max())
    index = lo[:, None] + np.arange(width)[None, :]
    valid = index < hi[:, None]
    index = np.minimum(index, native.size - 1)
    trapezoid = np.gradient(native)
    lam = native[index]
    w = trapezoid[index] * (
        ndtr((edges[1:, None] - lam) / sigma[:, None]) - ndtr((edges[:-1, None] - lam) / sigma[:, None])
    )
    w = np.where(valid, w, 0.0)
    w /= w.sum(axis=1, keepdims=True)
    return index.astype(np.int32), w


class JaxLteEngine(PixelEngine):
    """Simple-physics spectra from the JAX LTE synthesizer on atmosnet atmospheres.

    Args:
        window: (lower, upper) of the output pixels [A, vacuum].
        resolution: resolving power of the Gaussian LSF of the output.
        sampling: output pixels per resolution element (log-lambda spacing).
        step: native synthesis step [A]; 0.01 A keeps the error after
            convolution to R = 30,000 below ~1e-3, 0.02 A below ~7e-3
            (docs/jaxlte.md).
        margin: extra range synthesized on each side [A].
        linelist: a ``LineList`` (or any object with its arrays), or a path to a
            Turbospectrum-format line list; default the shipped Gaia-ESO subset.
        label_spec: labels the windows must serve (bounds set the reference
            atmospheres and abundances used to plan line windows); default
            :func:`stellarfit.labels.default_label_spec`.
        options: :class:`WindowOptions` (accuracy/speed knobs).
        network: an ``AtmosphereNetwork``; default the shipped one.

    Picklable: only the configuration is pickled and an unpickled engine
    plans its windows again (~10 s) and compiles on first use, so for grids
    on a CPU one worker process is the efficient choice (XLA uses all cores).
    """

    name = "jax"
    physics = "simple"

    def __init__(
        self,
        window: tuple[float, float] = (5000.0, 5500.0),
        resolution: float = 30_000.0,
        sampling: float = 3.0,
        *,
        step: float = 0.01,
        margin: float = 3.0,
        linelist: Any = None,
        label_spec: Any = None,
        options: WindowOptions | None = None,
        network: Any = None,
    ) -> None:
        from stellarfit.labels import default_label_spec
        from stellarfit.wavelengths import air_to_vacuum, vacuum_to_air

        from ..atmospheres import default_atmosphere_network
        from ..linelist import SHIPPED_LINELISTS, load_shipped_linelist, read_turbospectrum_linelist, shipped_linelist_covering

        self._config = {
            "window": window, "resolution": resolution, "sampling": sampling, "step": step, "margin": margin,
            "linelist": linelist, "label_spec": label_spec, "options": options, "network": network,
        }
        lower, upper = self._set_pixels(window, resolution, sampling, step, margin)
        native = np.arange(lower - margin, upper + margin + 0.5 * step, step)
        if linelist is None:
            needed = tuple(float(x) for x in vacuum_to_air(np.array([native[0], native[-1]])))
            covered = shipped_linelist_covering(*needed)
            if covered is None:
                shipped = ", ".join(f"{a:g}-{b:g}" for a, b in SHIPPED_LINELISTS)
                raise ValueError(
                    f"the window {lower:g}-{upper:g} A (vacuum, with a {margin:g} A margin) reaches beyond every "
                    f"shipped Gaia-ESO subset ({shipped} A air); give a line list "
                    "that covers it (linelist=...) or a narrower window"
                )
            linelist = load_shipped_linelist(*covered)
            coverage = tuple(float(x) for x in air_to_vacuum(np.array(covered)))
            self._linelist_name = ("Gaia-ESO line list (Heiter et al. 2021), stellarfit shipped subset "
                                   "{:g}-{:g} A air".format(*covered))
        else:
            coverage = None
            if isinstance(linelist, (str, Path)):
                self._linelist_name = str(linelist)
                linelist = read_turbospectrum_linelist(Path(linelist).expanduser())
            else:
                self._linelist_name = type(linelist).__name__
        self.network = network if network is not None else default_atmosphere_network()
        self.label_spec = label_spec if label_spec is not None else default_label_spec()
        self.label_names = tuple(self.label_spec.names)
        for required in ("teff", "logg", "fe_h"):
            if required not in self.label_names:
                raise ValueError(f"the label spec must contain {required!r}")
        lower_b = np.asarray(self.label_spec.lower, np.float64)
        upper_b = np.asarray(self.label_spec.upper, np.float64)
        bounds = dict(zip(self.label_names, zip(lower_b, upper_b, strict=True), strict=True))
        vmic_range = bounds.get("vmic", (LABEL_DEFAULTS["vmic"],) * 2)

        # reference atmospheres at the corners of (teff, logg, fe_h), alpha_fe = 0
        corners = np.array(
            [
                [teff, logg, fe_h, 0.0]
                for teff in (bounds["teff"][0], 0.5 * sum(bounds["teff"]), bounds["teff"][1])
                for logg in (bounds["logg"][0], 0.5 * sum(bounds["logg"]), bounds["logg"][1])
                for fe_h in bounds["fe_h"]
            ]
        )
        self.network.check_labels(corners)
        references = np.asarray(self.network.predict_arrays(jnp.asarray(corners, jnp.float32)), np.float64)[:, :4]
        reference_abundances = default_reference_abundances(self.label_spec)
        opts = options or WindowOptions()
        opts = WindowOptions(**{**opts.__dict__, "vmic_range": (float(vmic_range[0]), float(vmic_range[1]))})
        self.synthesizer = JaxLTESynthesizer(
            linelist, native, references, reference_abundances, opts, coverage=coverage
        )
        self.native_wavelength = native
        index, weight = pixel_operator(native, self.wavelength, self.resolution)
        self._op_index = index
        self._op_weight = weight
        solar, matrix = abundance_matrix(self.label_names)
        self._solar = solar
        self._matrix = matrix
        self._index = {name: i for i, name in enumerate(self.label_names)}
        self._spectrum_jit = jax.jit(self._spectrum_batch)
        self._native_jit = jax.jit(self._native_batch)

    # ------------------------------------------------------------------ pickling
    def __getstate__(self) -> dict:
        """Only the configuration travels (jitted functions do not pickle); workers rebuild."""
        return dict(self._config)

    def __setstate__(self, config: dict) -> None:
        self.__init__(**config)

    # ------------------------------------------------------------------ metadata
    def metadata(self) -> dict:
        """What made the spectra: goes into the grid file."""
        summary = self.synthesizer.summary()
        opts = self.synthesizer.options
        return self._metadata(
            engine_version="stellarfit.synth.jaxlte (JAX LTE synthesizer)",
            linelist=self._linelist_name + " (no hydrogen lines)",
            atmospheres="atmosnet c3k cool network (atmosnet 1.0.1)",
            radiative_transfer=f"LTE, plane-parallel, flux, scattering as absorption, {opts.n_mu} Gauss-Legendre angles",
            n_lines_used=summary["n_lines_kept"],
            window_options={k: (list(v) if isinstance(v, tuple) else v) for k, v in opts.__dict__.items()},
        )

    # ------------------------------------------------------------------ labels
    def label_vector(self, labels: Mapping[str, float]) -> np.ndarray:
        """Validate a label mapping and return it as a vector in ``label_names`` order.

        Missing vmic / alpha_fe take 1 km/s / 0; missing [X/Fe] labels take
        their default pattern value (alpha_fe for Mg, Si, Ca, Ti; 0 otherwise).

        Raises:
            ValueError: unknown or missing labels, NaN, or values outside the
                label spec's bounds.
        """
        values = merge_labels(labels, self.label_names, "jax")
        alpha = values.get("alpha_fe", 0.0)
        alpha_set = ("mg_fe", "si_fe", "ca_fe", "ti_fe")
        vector = np.array(
            [values.get(name, alpha if name in alpha_set else 0.0) for name in self.label_names], dtype=np.float64
        )
        self.label_spec.validate(vector)
        return vector

    def _split(self, labels):
        """(atmosphere labels (..., 4), abundances (..., 92), vmic (...)) from label vectors."""
        idx = self._index
        alpha = labels[..., idx["alpha_fe"]] if "alpha_fe" in idx else jnp.zeros_like(labels[..., 0])
        atm_labels = jnp.stack([labels[..., idx["teff"]], labels[..., idx["logg"]], labels[..., idx["fe_h"]], alpha], axis=-1)
        abundances = jnp.asarray(self._solar, labels.dtype) + labels @ jnp.asarray(self._matrix.T, labels.dtype)
        vmic = labels[..., idx["vmic"]] if "vmic" in idx else jnp.full(labels.shape[:-1], LABEL_DEFAULTS["vmic"], labels.dtype)
        return atm_labels, abundances, vmic

    # ------------------------------------------------------------------ synthesis
    def _native_batch(self, labels):
        atm_labels, abundances, vmic = self._split(labels)
        atmosphere = self.network.predict_arrays(atm_labels).astype(labels.dtype)
        return self.synthesizer.synthesize(atmosphere, abundances, vmic)

    def _spectrum_batch(self, labels):
        normalized, continuum = self._native_batch(labels)
        index = jnp.asarray(self._op_index)
        weight = jnp.asarray(self._op_weight, labels.dtype)
        flux = normalized * continuum
        flux_pix = jnp.sum(flux[..., index] * weight, axis=-1)
        cont_pix = jnp.sum(continuum[..., index] * weight, axis=-1)
        return flux_pix / cont_pix, cont_pix

    def spectrum(self, labels):
        """Pure JAX: label vectors (..., n_labels) in ``label_names`` order -> pixels.

        Returns (normalized flux (..., n_pixels), continuum (..., n_pixels)
        [erg s^-1 cm^-2 A^-1]).  jit-compiled; differentiable (use float64
        labels under ``jax.enable_x64`` for gradient checks); no bounds
        checks (see :meth:`label_vector`).
        """
        labels = jnp.asarray(labels)
        if not jnp.issubdtype(labels.dtype, jnp.floating):
            labels = labels.astype(jnp.result_type(float))
        return self._spectrum_jit(labels)

    def synthesize(self, labels: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray]:
        """One spectrum on the engine's pixels (:attr:`wavelength`), NumPy float64.

        Returns: normalized flux (n_pixels,), continuum (n_pixels,) [erg/s/cm2/A].

        Raises:
            ValueError: bad labels (see :meth:`label_vector`).
            FloatingPointError: a non-finite spectrum (never returned silently).
        """
        vector = self.label_vector(labels)
        normalized, continuum = (np.asarray(x, np.float64) for x in self.spectrum(vector.astype(np.float32)))
        if not (np.all(np.isfinite(normalized)) and np.all(np.isfinite(continuum))):
            raise FloatingPointError(f"the jax engine produced a non-finite spectrum for {dict(labels)}")
        return normalized, continuum

    def synthesize_batch(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Many spectra at once: labels (n, n_labels) in ``label_names`` order (validated)."""
        values = np.asarray(labels, np.float64)
        if values.ndim != 2 or values.shape[1] != len(self.label_names):
            raise ValueError(f"labels must have shape (n, {len(self.label_names)}) ordered {self.label_names}")
        for row in values:
            self.label_spec.validate(row)
        normalized, continuum = (np.asarray(x, np.float64) for x in self.spectrum(values.astype(np.float32)))
        if not (np.all(np.isfinite(normalized)) and np.all(np.isfinite(continuum))):
            raise FloatingPointError("the jax engine produced a non-finite spectrum in this batch")
        return normalized, continuum

    def synthesize_native(self, labels: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One spectrum at the native step, before any LSF: (wavelength, normalized, continuum)."""
        vector = self.label_vector(labels)
        normalized, continuum = (np.asarray(x, np.float64) for x in self._native_jit(jnp.asarray(vector, jnp.float32)))
        return self.native_wavelength.copy(), normalized, continuum
