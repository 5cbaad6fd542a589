"""The Emulator interface shared by The Payne and TransformerPayne.

An emulator maps stellar labels (a :class:`~stellarfit.labels.LabelSpec`) to a
continuum-normalized spectrum and, where it was trained on one, the log10
continuum.  Two ways to call it:

- ``emulator.predict(labels, wavelength=None)``: NumPy in, NumPy out, batched,
  jit-compiled, with label validation.  ``labels`` is a mapping name -> array
  or an array (..., n_labels) in ``emulator.label_names`` order; the result is
  normalized flux of shape (n_spectra, n_wavelengths).
- ``emulator.apply_fn(params, scaled_labels, wavelength=None)``: a pure JAX
  function of its arguments (``params`` is a plain nested dict of arrays,
  ``emulator.params``), usable inside ``jax.jit``/``vmap``/``grad``/``jacfwd``,
  NumPyro and BlackJAX models.  ``scaled_labels`` are labels min-max scaled to
  [-0.5, 0.5] over the label box (``emulator.scale_labels``, which is also
  differentiable).  ``emulator.flux_fn()`` wraps both for physical labels.

Wavelengths are vacuum Angstrom.  ``wavelength=None`` means the emulator's
native grid (the training grid).  Wavelengths outside the native coverage are
an error.

Models are Flax NNX modules; the emulator keeps their graph definition and a
pure-dict parameter tree, so ``nnx.merge(graphdef, params)`` rebuilds the module
inside traced code.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Self

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from stellarfit._io import to_jsonable
# the registry of model types (MODEL_TYPES, register_model_type) lives in stellarfit.emulators.model_types
from stellarfit.emulators.model_types import MODEL_TYPES as MODEL_TYPES
from stellarfit.emulators.model_types import register_model_type as register_model_type
from stellarfit._precision import INFERENCE_MATMUL_PRECISION, full_precision
from stellarfit.emulators._params import count_parameters, flatten_params, unflatten_params
from stellarfit.labels import LabelSpec

__all__ = ["Emulator", "MODEL_TYPES", "register_model_type", "is_concrete"]

def is_concrete(x: Any) -> bool:
    """True if ``x`` can be turned into a NumPy array (i.e. is not a JAX tracer)."""
    try:
        np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return False
    return True


class Emulator:
    """Base class of all emulators (see the module docstring for the calling conventions).

    Subclasses set ``model_type``, ``default_config``, ``head_modules`` and
    implement ``_build_module``, ``_prepare_wavelength``, ``_forward_raw``.

    Args:
        label_spec: the labels the emulator takes, in input order.
        wavelength: native wavelength grid, shape (n_pixels,), vacuum A,
            strictly increasing (stored in float64).
        config: model hyper-parameters (merged over ``default_config``).
        params: parameter tree (nested dict of arrays); random initialization
            from ``seed`` when ``None``.
        resolution: native resolving power R of the training grid (``None`` if unknown).
        has_continuum: whether the log10-continuum output is trained.
        metadata: free JSON-able metadata (training-grid hash, metrics, ...).
        seed: seed of the random initialization.
    """

    model_type: ClassVar[str] = ""
    default_config: ClassVar[dict[str, Any]] = {}
    #: top-level parameter groups trained by head-only fine-tuning.
    head_modules: ClassVar[tuple[str, ...]] = ()
    #: True if training feeds random wavelength subsets (False: whole spectra).
    samples_wavelengths: ClassVar[bool] = False

    def __init__(
        self,
        label_spec: LabelSpec,
        wavelength: np.ndarray,
        config: Mapping[str, Any] | None = None,
        params: Mapping[Any, Any] | None = None,
        *,
        resolution: float | None = None,
        has_continuum: bool = False,
        metadata: Mapping[str, Any] | None = None,
        seed: int = 0,
    ):
        if not isinstance(label_spec, LabelSpec):
            raise TypeError(f"label_spec must be a stellarfit LabelSpec, got {type(label_spec).__name__}")
        wavelength = np.array(wavelength, dtype=np.float64)
        if wavelength.ndim != 1 or wavelength.size < 2:
            raise ValueError(f"wavelength must be a 1-D array of at least 2 vacuum wavelengths [A], got shape {wavelength.shape}")
        if not np.all(np.isfinite(wavelength)) or np.any(np.diff(wavelength) <= 0) or wavelength[0] <= 0:
            raise ValueError("wavelength must be finite, positive and strictly increasing (vacuum Angstrom)")
        self.label_spec = label_spec
        self._wavelength = wavelength
        self._wavelength.setflags(write=False)
        self.native_resolution = None if resolution is None else float(resolution)
        self.has_continuum = bool(has_continuum)
        self.metadata: dict[str, Any] = dict(metadata or {})
        cfg = dict(self.default_config)
        if config:
            unknown = sorted(set(config) - set(cfg))
            if unknown:
                raise ValueError(f"unknown {self.model_type} config key(s) {unknown}; known keys: {sorted(cfg)}")
            cfg.update(config)
        self.config = self._complete_config(cfg)

        abstract = nnx.eval_shape(lambda: self._build_module(nnx.Rngs(seed)))
        graphdef, state = nnx.split(abstract)
        template = nnx.to_pure_dict(state)
        if params is None:
            params = init_params(template, seed)
        self.params = _check_params(params, template, self.model_type)
        self._graphdef = graphdef
        self._lower = np.asarray(label_spec.lower, np.float64)
        self._span = np.asarray(label_spec.upper - label_spec.lower, np.float64)
        self._pixel_error: np.ndarray | None = None
        self._error_modes: np.ndarray | None = None
        self._physics_error = None

    @classmethod
    def create(
        cls,
        label_spec: LabelSpec,
        wavelength: np.ndarray,
        config: dict[str, Any] | None = None,
        *,
        with_continuum: bool = False,
        resolution: float | None = None,
        seed: int = 0,
    ) -> Self:
        """A randomly initialized emulator of this class for ``label_spec``; ``wavelength``
        (n_pixels,) vacuum A is its native grid, ``config`` is merged over ``default_config``."""
        return cls(label_spec, wavelength, config, resolution=resolution, has_continuum=with_continuum, seed=seed)

    # ------------------------------------------------------------------ subclass hooks
    def _complete_config(self, config: dict[str, Any]) -> dict[str, Any]:
        """Validate the merged config and fill derived values (JSON-able values only)."""
        return config

    def _build_module(self, rngs: nnx.Rngs) -> nnx.Module:
        raise NotImplementedError

    def _prepare_wavelength(self, wavelength: Any) -> Any:
        """A pytree describing how to evaluate at ``wavelength`` (``None``: native grid)."""
        raise NotImplementedError

    @staticmethod
    def _raw(graphdef: Any, params: Any, scaled: jax.Array, plan: Any) -> jax.Array:
        """Raw network outputs, shape (n_spectra, n_wavelengths, n_outputs); channel 0 is
        normalized flux, channel 1 (if any) the standardized log10 continuum."""
        raise NotImplementedError

    def _forward_raw(self, params: Any, scaled: jax.Array, plan: Any) -> jax.Array:
        return self._raw(self._graphdef, params, scaled, plan)

    def _jit_raw(self, params: Any, scaled: jax.Array, plan: Any) -> jax.Array:
        # one compiled function per (class, architecture), shared by all emulator objects
        return _jitted_raw(type(self), self._graphdef, params, scaled, plan)

    def _native_plan(self) -> Any:
        """The plan for the native grid (cached by subclasses where it costs something)."""
        return None

    def initialize_output_bias(self, params: Any, mean_flux: np.ndarray) -> Any:
        """Params with the output bias set from the training grid's mean flux (n_pixels,)."""
        return params

    def linear_readout(self, wavelength: Any = None) -> tuple[Callable[[jax.Array], jax.Array], np.ndarray, np.ndarray] | None:
        """The emulator's flux as a fixed linear map of label-dependent features, or None.

        Returns ``(features_fn, weight, bias)`` with ``flux_fn(wavelength)(labels) ==
        features_fn(labels) @ weight + bias``: ``features_fn`` maps physical labels (..., n_labels)
        to features (..., n_features) (differentiable), ``weight`` is (n_features, n_wavelengths)
        and ``bias`` (n_wavelengths,), float64 NumPy.  A linear last layer lets the forward model
        move that layer into Fourier space once instead of transforming every predicted spectrum
        (:class:`stellarfit.forward.ForwardModel`).  ``wavelength`` must be concrete (None: the
        native grid).  The base class has no such map (None); The Payne has one.
        """
        return None

    # ------------------------------------------------------------------ description
    @property
    def label_names(self) -> tuple[str, ...]:
        return self.label_spec.names

    @property
    def n_labels(self) -> int:
        return len(self.label_spec)

    @property
    def wavelength(self) -> np.ndarray:
        """Native wavelength grid, shape (n_pixels,), vacuum A, float64 (read-only)."""
        return self._wavelength

    @property
    def n_pixels(self) -> int:
        return int(self._wavelength.size)

    @property
    def wavelength_range(self) -> tuple[float, float]:
        """(min, max) of the native coverage, vacuum A."""
        return float(self._wavelength[0]), float(self._wavelength[-1])

    @property
    def n_parameters(self) -> int:
        return count_parameters(self.params)

    @property
    def graphdef(self) -> Any:
        return self._graphdef

    def module(self, params: Any | None = None) -> nnx.Module:
        """The Flax NNX module with ``params`` (default: the emulator's own)."""
        return nnx.merge(self._graphdef, self.params if params is None else params)

    def __repr__(self) -> str:
        lo, hi = self.wavelength_range
        return (
            f"{type(self).__name__}(labels={list(self.label_names)}, wavelength=[{lo:.2f}, {hi:.2f}] A, "
            f"n_pixels={self.n_pixels}, R={self.native_resolution}, continuum={self.has_continuum}, "
            f"n_parameters={self.n_parameters})"
        )

    # ------------------------------------------------------------------ label scaling
    def scale_labels(self, labels: jax.Array) -> jax.Array:
        """Physical labels (..., n_labels) -> scaled to [-0.5, 0.5] over the box (jnp, differentiable)."""
        lower = jnp.asarray(self._lower, jnp.result_type(labels, jnp.float32))
        span = jnp.asarray(self._span, lower.dtype)
        return (labels - lower) / span - 0.5

    def unscale_labels(self, scaled: jax.Array) -> jax.Array:
        """Inverse of :meth:`scale_labels`."""
        lower = jnp.asarray(self._lower, jnp.result_type(scaled, jnp.float32))
        return (scaled + 0.5) * jnp.asarray(self._span, lower.dtype) + lower

    # ------------------------------------------------------------------ pure functional API
    def _outputs(self, params: Any, scaled_labels: jax.Array, plan: Any) -> tuple[jax.Array, jax.Array | None]:
        scaled_labels = jnp.asarray(scaled_labels)
        if scaled_labels.shape[-1:] != (self.n_labels,):
            raise ValueError(f"scaled_labels must have shape (..., {self.n_labels}) in the order {self.label_names}, got {scaled_labels.shape}")
        batch_shape = scaled_labels.shape[:-1]
        # float32 by default; float64 inputs (with jax_enable_x64) are kept, e.g. for gradient checks
        dtype = jnp.promote_types(scaled_labels.dtype, jnp.float32)
        raw = self._forward_raw(params, scaled_labels.reshape(-1, self.n_labels).astype(dtype), plan)
        flux = raw[..., 0].reshape(*batch_shape, raw.shape[1])
        continuum = None
        if raw.shape[-1] > 1:
            cont = raw[..., 1] * self.config["continuum_scale"] + self.config["continuum_offset"]
            continuum = cont.reshape(*batch_shape, raw.shape[1])
        return flux, continuum

    def apply_fn(self, params: Any, scaled_labels: jax.Array, wavelength: Any = None) -> jax.Array:
        """Normalized flux, shape scaled_labels.shape[:-1] + (n_wavelengths,).

        Pure in ``params`` and ``scaled_labels`` (jit/vmap/grad-friendly).
        ``wavelength`` (n_wavelengths,) vacuum A, or ``None`` for the native
        grid; concrete arrays are preprocessed in float64 NumPy at trace time.
        """
        return self._outputs(params, scaled_labels, self._prepare_wavelength(wavelength))[0]

    def apply_with_continuum_fn(self, params: Any, scaled_labels: jax.Array, wavelength: Any = None) -> tuple[jax.Array, jax.Array]:
        """(normalized flux, log10 continuum), each of shape scaled_labels.shape[:-1] + (n_wavelengths,)."""
        self._require_continuum()
        flux, continuum = self._outputs(params, scaled_labels, self._prepare_wavelength(wavelength))
        return flux, continuum

    def flux_fn(self, wavelength: Any = None, *, with_continuum: bool = False) -> Callable[[jax.Array], Any]:
        """A function of *physical* labels (..., n_labels) -> flux (..., n_wavelengths).

        The parameters are closed over; the wavelength preprocessing is done
        once, here.  Differentiable wrt the labels.  For code that also varies
        the parameters use :meth:`apply_fn`.
        """
        if with_continuum:
            self._require_continuum()
        plan = self._prepare_wavelength(wavelength)
        params = self.params

        @full_precision
        def fn(labels: jax.Array) -> Any:
            flux, continuum = self._outputs(params, self.scale_labels(jnp.asarray(labels)), plan)
            return (flux, continuum) if with_continuum else flux

        return fn

    def _require_continuum(self) -> None:
        if not self.has_continuum:
            raise ValueError(
                f"this {self.model_type} emulator was not trained with a continuum, so it predicts normalized flux only; "
                "train it on a grid with a continuum to get log10 continuum"
            )

    # ------------------------------------------------------------------ batched NumPy API
    def _scaled_from_labels(self, labels: Mapping[str, Any] | np.ndarray, check_bounds: bool) -> np.ndarray:
        array = self.label_spec.to_array(labels)
        if check_bounds:
            problems = self.label_spec.violations(array)
            if problems:
                raise ValueError(
                    "labels outside the emulator's training range: " + "; ".join(problems)
                    + f". Allowed: {self.label_spec.describe_bounds()}. Pass check_bounds=False to extrapolate anyway."
                )
        array = array.reshape(-1, self.n_labels)
        return ((array - self._lower) / self._span - 0.5).astype(np.float32)

    def default_batch_size(self, n_wavelengths: int) -> int:
        """Spectra per compiled call in :meth:`predict`."""
        return 256

    def _predict_raw(self, params: Any, scaled: np.ndarray, plan: Any, batch_size: int | None, n_wavelengths: int) -> np.ndarray:
        """Raw outputs (n, n_wavelengths, n_outputs) in fixed-size (padded) batches."""
        n = scaled.shape[0]
        if n == 0:
            raise ValueError("no labels given")
        size = int(batch_size or self.default_batch_size(n_wavelengths))
        size = max(1, min(size, n))
        pieces = []
        for start in range(0, n, size):
            chunk = scaled[start : start + size]
            pad = size - chunk.shape[0]
            if pad:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
            with jax.default_matmul_precision(INFERENCE_MATMUL_PRECISION):  # full float32 products (stellarfit._precision)
                out = np.asarray(self._jit_raw(params, jnp.asarray(chunk), plan))
            pieces.append(out[: size - pad])
        return np.concatenate(pieces)

    def predict(
        self,
        labels: Mapping[str, Any] | np.ndarray,
        wavelength: np.ndarray | None = None,
        *,
        batch_size: int | None = None,
        check_bounds: bool = True,
    ) -> np.ndarray:
        """Normalized flux, float32 array of shape (n_spectra, n_wavelengths).

        Args:
            labels: mapping name -> value(s) or array (..., n_labels) in
                ``label_names`` order; all leading axes are flattened into n_spectra
                (a single label vector gives shape (1, n_wavelengths)).
            wavelength: (n_wavelengths,) vacuum A inside the native coverage, or
                ``None`` for the native grid.
            batch_size: spectra per compiled call (default: model-dependent).
            check_bounds: raise if labels lie outside the label spec's bounds.
        """
        scaled = self._scaled_from_labels(labels, check_bounds)
        plan = self._prepare_wavelength(None if wavelength is None else np.asarray(wavelength, np.float64))
        n_wave = self.n_pixels if wavelength is None else int(np.size(wavelength))
        raw = self._predict_raw(self.params, scaled, plan, batch_size, n_wave)
        return raw[..., 0]

    def predict_with_continuum(
        self,
        labels: Mapping[str, Any] | np.ndarray,
        wavelength: np.ndarray | None = None,
        *,
        batch_size: int | None = None,
        check_bounds: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(normalized flux, log10 continuum), each (n_spectra, n_wavelengths); see :meth:`predict`."""
        self._require_continuum()
        scaled = self._scaled_from_labels(labels, check_bounds)
        plan = self._prepare_wavelength(None if wavelength is None else np.asarray(wavelength, np.float64))
        n_wave = self.n_pixels if wavelength is None else int(np.size(wavelength))
        raw = self._predict_raw(self.params, scaled, plan, batch_size, n_wave)
        continuum = raw[..., 1] * np.float32(self.config["continuum_scale"]) + np.float32(self.config["continuum_offset"])
        return raw[..., 0], continuum

    # ------------------------------------------------------------------ wavelength checks
    def _check_coverage(self, wavelength: np.ndarray) -> np.ndarray:
        wavelength = np.asarray(wavelength, np.float64)
        if wavelength.ndim != 1 or wavelength.size == 0:
            raise ValueError(f"wavelength must be a non-empty 1-D array (vacuum A), got shape {wavelength.shape}")
        if not np.all(np.isfinite(wavelength)):
            raise ValueError("wavelength contains NaN or infinite values")
        lo, hi = self.wavelength_range
        tol = 1e-9 * hi
        if wavelength.min() < lo - tol or wavelength.max() > hi + tol:
            raise ValueError(
                f"wavelengths [{wavelength.min():.3f}, {wavelength.max():.3f}] A extend outside the emulator's coverage "
                f"[{lo:.3f}, {hi:.3f}] A (vacuum); trim them or use an emulator trained on a wider window"
            )
        return wavelength

    def _is_native(self, wavelength: np.ndarray) -> bool:
        return wavelength.shape == self._wavelength.shape and bool(np.array_equal(wavelength, self._wavelength))

    # ------------------------------------------------------------------ copies and I/O
    @property
    def pixel_error(self) -> np.ndarray | None:
        """(n_pixels,) the emulator's own error per native pixel (RMS of normalized-flux residuals
        on held-out spectra), or None when unknown.  Fits add it to the noise (see
        :func:`stellarfit.inference.fit_star`, ``emulator_error``)."""
        return self._pixel_error

    def with_pixel_error(self, pixel_error: np.ndarray | None) -> "Emulator":
        """A copy whose :attr:`pixel_error` is ``pixel_error`` ((n_pixels,), finite, >= 0) or None."""
        if pixel_error is not None:
            pixel_error = np.array(pixel_error, dtype=np.float32)
            if pixel_error.shape != (self.n_pixels,) or not np.all(np.isfinite(pixel_error)) or np.any(pixel_error < 0):
                raise ValueError(f"pixel_error must be {self.n_pixels} finite values >= 0, got shape {pixel_error.shape}")
            pixel_error.setflags(write=False)
        copy_ = copy.copy(self)
        copy_._pixel_error = pixel_error
        return copy_

    @property
    def physics_error(self):
        """The :class:`~stellarfit.emulators.physics_error.PhysicsError` (the physics' mismatch with real
        stars, per wavelength) fits add to the noise, or None.  Shipped emulators carry the shipped one."""
        return self._physics_error

    def with_physics_error(self, physics_error) -> "Emulator":
        """A copy whose :attr:`physics_error` is ``physics_error`` (a PhysicsError, a name or path for
        :func:`~stellarfit.emulators.physics_error.load_physics_error`, or None)."""
        from stellarfit.emulators.physics_error import PhysicsError, load_physics_error

        if physics_error is not None and not isinstance(physics_error, PhysicsError):
            physics_error = load_physics_error(physics_error)
        copy_ = copy.copy(self)
        copy_._physics_error = physics_error
        return copy_

    @property
    def error_modes(self) -> np.ndarray | None:
        """(n_modes, n_pixels) the correlated part of the emulator's error, or None.

        The leading principal components of the normalized-flux residuals on
        held-out spectra, scaled so that ``error_modes.T @ error_modes`` is their
        covariance (see :func:`~stellarfit.emulators.estimate_error_modes`).  Fits
        marginalize an amplitude per mode (unit Gaussian prior), which is the
        likelihood with covariance noise + modes.T @ modes: errors along lines that
        the emulator gets wrong together are counted once, not pixel by pixel."""
        return self._error_modes

    def with_error_modes(self, error_modes: np.ndarray | None) -> "Emulator":
        """A copy whose :attr:`error_modes` is ``error_modes`` ((n_modes, n_pixels), finite) or None."""
        if error_modes is not None:
            error_modes = np.array(error_modes, dtype=np.float32)
            if error_modes.ndim != 2 or error_modes.shape[1] != self.n_pixels or not np.all(np.isfinite(error_modes)):
                raise ValueError(f"error_modes must be finite with shape (n_modes, {self.n_pixels}), got {error_modes.shape}")
            error_modes.setflags(write=False)
        copy_ = copy.copy(self)
        copy_._error_modes = error_modes
        return copy_

    def replace(self, **changes: Any) -> "Emulator":
        """A copy with some of ``params``, ``config``, ``metadata``, ``wavelength``,
        ``has_continuum``, ``resolution`` replaced (the module is rebuilt when
        the config or wavelength changes)."""
        allowed = {"params", "config", "metadata", "wavelength", "has_continuum", "resolution", "label_spec"}
        unknown = set(changes) - allowed
        if unknown:
            raise TypeError(f"cannot replace {sorted(unknown)}; allowed: {sorted(allowed)}")
        kwargs = dict(
            label_spec=self.label_spec,
            wavelength=self._wavelength,
            config=self.config,
            params=self.params,
            resolution=self.native_resolution,
            has_continuum=self.has_continuum,
            metadata=copy.deepcopy(self.metadata),
        )
        kwargs.update(changes)
        cls = type(self)
        new = cls(
            kwargs.pop("label_spec"), kwargs.pop("wavelength"), kwargs.pop("config"), kwargs.pop("params"), **kwargs
        )
        if self._pixel_error is not None and "wavelength" not in changes and "params" not in changes:
            new._pixel_error = self._pixel_error  # same network on the same pixels: same error
            new._error_modes = self._error_modes
        new._physics_error = self._physics_error  # per wavelength: independent of the network and its pixels
        return new

    def save(self, path: str, *, overwrite: bool = False) -> None:
        """Write the emulator to directory ``path`` (see :func:`stellarfit.emulators.save_emulator`)."""
        # deferred, and the one import circle the package allows (tests/test_import_graph.py): the checkpoint
        # module builds on this class and imports the model types it reads
        from stellarfit.emulators.checkpoint import save_emulator

        save_emulator(self, path, overwrite=overwrite)

    @classmethod
    def load(cls, path: str, *, label_spec: LabelSpec | None = None) -> "Emulator":
        """Read an emulator directory written by :meth:`save`; checks the model type."""
        # deferred, and the one import circle the package allows (tests/test_import_graph.py): the checkpoint
        # module builds on this class and imports the model types it reads
        from stellarfit.emulators.checkpoint import read_emulator

        emulator = read_emulator(path, label_spec=label_spec)
        if cls is not Emulator and not isinstance(emulator, cls):
            raise TypeError(f"{path} holds a {emulator.model_type!r} emulator, not a {cls.model_type!r} one")
        return emulator

    def describe(self) -> dict[str, Any]:
        """JSON-able summary (the checkpoint's metadata without arrays)."""
        return {
            "model_type": self.model_type,
            "config": to_jsonable(self.config),
            "label_names": list(self.label_names),
            "wavelength_coverage": list(self.wavelength_range),
            "n_pixels": self.n_pixels,
            "native_resolution": self.native_resolution,
            "has_continuum": self.has_continuum,
            "n_parameters": self.n_parameters,
            "metadata": to_jsonable(self.metadata),
        }


def init_params(template: Mapping[Any, Any], seed: int) -> dict[Any, Any]:
    """Random initial parameters for a template tree (shapes), drawn with NumPy.

    NumPy avoids one XLA compilation per parameter shape that eager
    ``jax.random`` initialization costs (seconds on a small CPU).  By name:
    ``kernel`` (fan_in, fan_out): LeCun normal, truncated at 2 sigma
    (std 1/sqrt(fan_in)); ``bias``: 0; ``scale`` (RMSNorm): 1;
    ``lora_a`` (fan_in, r): normal with std 1/sqrt(fan_in); ``lora_b``: 0
    (so fresh adapters leave the outputs unchanged).
    """
    rng = np.random.default_rng(seed)
    out = {}
    for name, spec in flatten_params(template).items():
        leaf = name.rsplit("/", 1)[-1]
        shape = tuple(spec.shape)
        if leaf == "kernel":
            # truncated standard normal at +-2, rescaled to unit variance (std of the truncated law: 0.8796)
            z = rng.standard_normal(shape)
            bad = np.abs(z) > 2
            while bad.any():
                z[bad] = rng.standard_normal(int(bad.sum()))
                bad = np.abs(z) > 2
            value = z / 0.87962566103423978 / np.sqrt(shape[0])
        elif leaf == "lora_a":
            value = rng.standard_normal(shape) / np.sqrt(shape[0])
        elif leaf == "scale":
            value = np.ones(shape)
        elif leaf in ("bias", "lora_b"):
            value = np.zeros(shape)
        else:
            raise ValueError(f"no initializer for parameter {name!r}")
        out[name] = value.astype(np.float32)
    return unflatten_params(out)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _jitted_raw(cls: type[Emulator], graphdef: Any, params: Any, scaled: jax.Array, plan: Any) -> jax.Array:
    return cls._raw(graphdef, params, scaled, plan)


def _check_params(params: Mapping[Any, Any], template: Mapping[Any, Any], model_type: str) -> dict[Any, Any]:
    """Check that ``params`` has exactly the template's arrays and shapes; return jnp float arrays."""
    given = flatten_params(params)
    expected = flatten_params(template)
    missing = sorted(set(expected) - set(given))
    extra = sorted(set(given) - set(expected))
    if missing or extra:
        raise ValueError(
            f"parameter arrays do not match the {model_type} architecture in the config: "
            f"missing {missing[:8]}{'...' if len(missing) > 8 else ''}, unexpected {extra[:8]}{'...' if len(extra) > 8 else ''}"
        )
    out = {}
    for name, spec in expected.items():
        value = given[name]
        if tuple(np.shape(value)) != tuple(spec.shape):
            raise ValueError(f"parameter {name!r} has shape {tuple(np.shape(value))}; the config implies {tuple(spec.shape)}")
        out[name] = jnp.asarray(value, dtype=spec.dtype)
    return unflatten_params(out)
