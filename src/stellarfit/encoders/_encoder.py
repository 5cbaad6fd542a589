"""The :class:`Encoder`: a trained network with its label spec, RV scaling and domain, and its file format.

An encoder is a directory with two files (no pickle):

- ``encoder.json``: ``format`` ("stellarfit-encoder"), ``schema_version``, ``config``
  (:class:`EncoderConfig`), ``label_spec``, ``output_names`` (labels, then ``rv``),
  ``rv_range`` [km/s], ``wavelength_range`` [A, vacuum] and ``resolution_range`` of the
  training spectra, ``metadata`` (emulator, settings, seed, metrics), ``arrays``.
- ``arrays.npz``: one float32 array per parameter, ``params/<path>``.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from stellarfit.emulators._params import count_parameters, flatten_params, unflatten_params
from stellarfit._io import to_jsonable, write_json_atomic
from stellarfit.emulators.checkpoint import load_arrays, save_arrays_atomic
from stellarfit.encoders._model import EncoderConfig, SpectrumEncoder
from stellarfit.labels import LabelSpec

__all__ = ["DEFAULT_ENCODER", "ENCODER_FORMAT", "ENCODER_SCHEMA_VERSION", "SHIPPED_ENCODERS", "Encoder", "EncoderFileError",
           "encoder_for", "load_encoder"]

ENCODER_FORMAT = "stellarfit-encoder"
ENCODER_SCHEMA_VERSION = 1
_METADATA_FILE = "encoder.json"
_ARRAYS_FILE = "arrays.npz"
#: encoders shipped in ``stellarfit/data/encoders``: name -> directory there (provenance in its README.md)
SHIPPED_ENCODERS = {"payne-default-sim": "payne_default_sim"}
#: the encoder ``stellarfit predict`` and ``fit_star(..., init="encoder")`` use when none is named
DEFAULT_ENCODER = "payne-default-sim"


class EncoderFileError(ValueError):
    """An encoder directory that cannot be used (missing files, wrong format or schema, arrays)."""


class Encoder:
    """A spectrum encoder: network parameters plus what is needed to read its outputs.

    Args:
        config: the architecture.
        label_spec: the labels it predicts (scaled over their boxes).
        params: parameter tree (pure dict) or None for a fresh network from ``seed``.
        rv_range: (min, max) km/s the RV output is scaled over.
        wavelength_range: (min, max) [A, vacuum] of the training spectra; pixels outside are not used.
        resolution_range: (min, max) R of the training spectra.
        metadata: free-form JSON-able dict (emulator, settings, metrics).
        seed: initialization seed when ``params`` is None.
    """

    def __init__(self, config: EncoderConfig, label_spec: LabelSpec, params: dict | None = None, *,
                 rv_range: tuple[float, float] = (-300.0, 300.0), wavelength_range: tuple[float, float] = (0.0, np.inf),
                 resolution_range: tuple[float, float] = (1500.0, 30000.0), metadata: dict | None = None, seed: int = 0):
        self.config = config
        self.label_spec = label_spec
        self.rv_range = tuple(float(v) for v in rv_range)
        self.wavelength_range = tuple(float(v) for v in wavelength_range)
        self.resolution_range = tuple(float(v) for v in resolution_range)
        self.metadata = dict(metadata or {})
        module = SpectrumEncoder(config, len(label_spec) + 1, nnx.Rngs(seed))
        self.graphdef, state = nnx.split(module, nnx.Param)
        if params is not None:
            template = flatten_params(nnx.to_pure_dict(state))
            given = flatten_params(params)
            missing = sorted(set(template) - set(given))
            wrong = [k for k in template if k in given and np.shape(given[k]) != np.shape(template[k])]
            if missing or wrong:
                raise EncoderFileError(f"encoder parameters do not fit the architecture {config}: missing {missing[:5]}, "
                                       f"wrong shapes {wrong[:5]}; the file is damaged or from another version")
            nnx.replace_by_pure_dict(state, unflatten_params({k: jnp.asarray(given[k], jnp.float32) for k in template}))
        self.params = state
        self._apply = jax.jit(self._apply_impl)

    @property
    def output_names(self) -> tuple[str, ...]:
        """The predicted quantities: the labels in spec order, then ``rv``."""
        return (*self.label_spec.names, "rv")

    @property
    def n_parameters(self) -> int:
        return count_parameters(nnx.to_pure_dict(self.params))

    def _apply_impl(self, params, features, encoding, token_mask):
        return nnx.merge(self.graphdef, params)(features, encoding, token_mask)

    def apply(self, features, encoding, token_mask, params=None):
        """Scaled (mean, log variance), each (batch, n_outputs); see :class:`SpectrumEncoder`."""
        return self._apply(self.params if params is None else params, features, encoding, token_mask)

    def unscale(self, mean: np.ndarray, log_variance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scaled outputs (batch, n_outputs) -> physical values and 1-sigma errors (batch, n_outputs)."""
        width = np.append(self.label_spec.upper - self.label_spec.lower, self.rv_range[1] - self.rv_range[0])
        low = np.append(self.label_spec.lower, self.rv_range[0])
        mean = np.asarray(mean, np.float64)
        value = (mean + 0.5) * width + low
        error = np.exp(0.5 * np.asarray(log_variance, np.float64)) * width
        return value, error

    def replace_params(self, params) -> Encoder:
        """A copy with other parameters (an nnx State or pure dict)."""
        tree = nnx.to_pure_dict(params) if isinstance(params, nnx.State) else params
        return Encoder(self.config, self.label_spec, jax.device_get(tree), rv_range=self.rv_range,
                       wavelength_range=self.wavelength_range, resolution_range=self.resolution_range, metadata=self.metadata)

    def __repr__(self) -> str:
        return (f"Encoder(outputs={list(self.output_names)}, patch_size={self.config.patch_size}, dim={self.config.dim}, "
                f"blocks={self.config.blocks}, wavelength=[{self.wavelength_range[0]:.1f}, {self.wavelength_range[1]:.1f}] A, "
                f"n_parameters={self.n_parameters})")

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> str:
        """Write ``encoder.json`` + ``arrays.npz`` to directory ``path`` (atomic renames)."""
        path = os.fspath(path)
        if os.path.exists(os.path.join(path, _METADATA_FILE)) and not overwrite:
            raise FileExistsError(f"{path} already holds an encoder; pass overwrite=True to replace it")
        os.makedirs(path, exist_ok=True)
        arrays = {f"params/{k}": np.asarray(v, np.float32) for k, v in flatten_params(nnx.to_pure_dict(self.params)).items()}
        meta = {
            "format": ENCODER_FORMAT,
            "schema_version": ENCODER_SCHEMA_VERSION,
            "config": dataclasses.asdict(self.config),
            "label_spec": self.label_spec.to_json(),
            "output_names": list(self.output_names),
            "rv_range": list(self.rv_range),
            "wavelength_range": list(self.wavelength_range),
            "resolution_range": list(self.resolution_range),
            "n_parameters": self.n_parameters,
            "metadata": to_jsonable(self.metadata),
            "arrays": {k: {"shape": list(a.shape), "dtype": a.dtype.str} for k, a in arrays.items()},
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        save_arrays_atomic(os.path.join(path, _ARRAYS_FILE), arrays)
        write_json_atomic(os.path.join(path, _METADATA_FILE), meta)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Encoder:
        return load_encoder(path)


def _shipped_path(name: str) -> str:
    import importlib.resources

    resource = importlib.resources.files("stellarfit") / "data" / "encoders" / SHIPPED_ENCODERS[name]
    return os.fspath(resource)


def load_encoder(path: str | os.PathLike) -> Encoder:
    """Read the encoder in directory ``path`` (written by :meth:`Encoder.save` or training), or a shipped
    one by name (:data:`SHIPPED_ENCODERS`, e.g. ``"payne-default-sim"``)."""
    path = os.fspath(path)
    if path in SHIPPED_ENCODERS and not os.path.isdir(path):
        path = _shipped_path(path)
    meta_path = os.path.join(path, _METADATA_FILE)
    if not os.path.isfile(meta_path):
        raise FileNotFoundError(f"{path} is not an encoder directory: {_METADATA_FILE} is missing "
                                "(train one with stellarfit.encoders.train_encoder, or give the directory it saved)")
    try:
        with open(meta_path) as handle:
            meta = json.load(handle)
    except json.JSONDecodeError as error:
        raise EncoderFileError(f"{meta_path} is not valid JSON ({error}); the file is damaged, save the encoder again") from None
    if not isinstance(meta, dict) or meta.get("format") != ENCODER_FORMAT:
        raise EncoderFileError(f"{meta_path} is not a stellarfit encoder file (format {meta.get('format') if isinstance(meta, dict) else None!r})")
    if meta.get("schema_version") != ENCODER_SCHEMA_VERSION:
        raise EncoderFileError(f"{path}: encoder schema version {meta.get('schema_version')!r} is not supported "
                               f"(this stellarfit reads {ENCODER_SCHEMA_VERSION}); use the matching stellarfit version")
    arrays_path = os.path.join(path, _ARRAYS_FILE)
    if not os.path.isfile(arrays_path):
        raise FileNotFoundError(f"{path}: {_ARRAYS_FILE} is missing; the encoder directory is incomplete")
    try:
        config = EncoderConfig(**meta["config"])
        spec = LabelSpec.from_json(meta["label_spec"])
    except (KeyError, TypeError, ValueError) as error:
        raise EncoderFileError(f"{meta_path}: invalid config or label spec ({error})") from None
    arrays = load_arrays(arrays_path)
    params = unflatten_params({k[len("params/"):]: v for k, v in arrays.items() if k.startswith("params/")})
    # JSON has no infinity: an unbounded window (the default, 0 to inf) is written with null for inf
    window = [np.inf if v is None else v for v in meta["wavelength_range"]]
    return Encoder(config, spec, params, rv_range=meta["rv_range"], wavelength_range=window,
                   resolution_range=meta["resolution_range"], metadata=meta.get("metadata"))


_SHIPPED_CACHE: dict[str, Encoder] = {}


def encoder_for(emulator) -> Encoder | None:
    """The shipped encoder that predicts ``emulator``'s labels over (part of) its wavelength coverage, or None."""
    spec = getattr(emulator, "label_spec", None)
    coverage = getattr(emulator, "wavelength_range", None)
    for name in SHIPPED_ENCODERS:
        if name not in _SHIPPED_CACHE:
            _SHIPPED_CACHE[name] = load_encoder(name)
        encoder = _SHIPPED_CACHE[name]
        if encoder.label_spec != spec:
            continue
        if coverage is not None:
            low, high = encoder.wavelength_range
            if high <= coverage[0] or low >= coverage[1]:
                continue
        return encoder
    return None
