"""Emulator files: arrays in ``.npz`` plus JSON metadata, no pickle.

An emulator is a directory with two files:

- ``emulator.json``: ``format`` ("stellarfit-emulator"), ``schema_version``,
  ``model_type``, ``config``, ``label_spec`` (``LabelSpec.to_json``),
  ``label_names``, ``wavelength_coverage`` [min, max] A (vacuum),
  ``n_pixels``, ``native_resolution``, ``has_continuum``,
  ``training_grid_hash``, ``metrics``, ``metadata``, ``arrays`` (name ->
  shape, dtype) and ``stellarfit_version``.
- ``arrays.npz``: ``wavelength`` (n_pixels,) float64 and one array per
  parameter, named ``params/<path>`` (for example
  ``params/blocks/0/query/kernel``); optionally ``error_modes`` (n_modes, n_pixels), ``pixel_error`` (n_pixels,)
  and ``physics_error/{wavelength,sigma,stars}`` (a PhysicsError)
  float32, the emulator's own error per pixel.  Read with ``allow_pickle=False``.

Loading checks the format name, the schema version, that the label spec and
label names agree with each other and with the architecture, that every
array is present with the shape the config implies, and (optionally) that
the labels are the ones the caller expects.  Each failure is a ValueError or
FileNotFoundError that says what is wrong and what to do.
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from stellarfit.emulators._params import flatten_params, unflatten_params
from stellarfit._io import atomic_path, atomic_write, to_jsonable
from stellarfit._io import write_json_atomic as write_json_atomic  # JSON written atomically (training checkpoints)
from stellarfit.emulators.base import Emulator
from stellarfit.emulators.model_types import MODEL_TYPES, available_model_types, get_model_type
from stellarfit.labels import LabelSpec

__all__ = ["FORMAT_NAME", "SCHEMA_VERSION", "save_emulator", "read_emulator", "read_metadata", "CheckpointError"]

FORMAT_NAME = "stellarfit-emulator"
SCHEMA_VERSION = 1
METADATA_FILE = "emulator.json"
ARRAYS_FILE = "arrays.npz"


class CheckpointError(ValueError):
    """An emulator file that cannot be used (wrong schema, labels, arrays ...)."""


def _version() -> str:
    try:
        from stellarfit import __version__

        return str(__version__)
    except ImportError:  # pragma: no cover
        return "unknown"


def save_emulator(emulator: Emulator, path: str | os.PathLike, *, overwrite: bool = False) -> str:
    """Write ``emulator`` to directory ``path`` (``emulator.json`` + ``arrays.npz``).

    The files are written to temporary names and renamed, so an interrupted
    save never leaves a half-written emulator.  Returns the directory path.
    """
    path = os.fspath(path)
    if os.path.exists(os.path.join(path, METADATA_FILE)) and not overwrite:
        raise FileExistsError(f"{path} already holds an emulator; pass overwrite=True to replace it")
    os.makedirs(path, exist_ok=True)
    arrays: dict[str, np.ndarray] = {"wavelength": np.asarray(emulator.wavelength, np.float64)}
    for name, value in flatten_params(emulator.params).items():
        arrays[f"params/{name}"] = np.asarray(value)
    if getattr(emulator, "pixel_error", None) is not None:
        arrays["pixel_error"] = np.asarray(emulator.pixel_error, np.float32)
    if getattr(emulator, "error_modes", None) is not None:
        arrays["error_modes"] = np.asarray(emulator.error_modes, np.float32)
    physics = getattr(emulator, "physics_error", None)
    if physics is not None:
        arrays["physics_error/wavelength"] = np.asarray(physics.wavelength, np.float64)
        arrays["physics_error/sigma"] = np.asarray(physics.sigma, np.float64)
        arrays["physics_error/stars"] = np.asarray(physics.stars, dtype=str)
    meta = {
        "format": FORMAT_NAME,
        "schema_version": SCHEMA_VERSION,
        "model_type": emulator.model_type,
        "config": to_jsonable(emulator.config),
        "label_spec": emulator.label_spec.to_json(),
        "label_names": list(emulator.label_names),
        "wavelength_coverage": list(emulator.wavelength_range),
        "n_pixels": emulator.n_pixels,
        "native_resolution": emulator.native_resolution,
        "has_continuum": emulator.has_continuum,
        "training_grid_hash": emulator.metadata.get("training_grid_hash"),
        "metrics": to_jsonable(emulator.metadata.get("metrics", {})),
        "metadata": to_jsonable({k: v for k, v in emulator.metadata.items() if k not in ("training_grid_hash", "metrics")}),
        "n_parameters": emulator.n_parameters,
        "arrays": {name: {"shape": list(a.shape), "dtype": a.dtype.str} for name, a in arrays.items()},
        "stellarfit_version": _version(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    text = json.dumps(meta, indent=1, allow_nan=False)
    # both files written before either is renamed (the arrays first); an error leaves the old pair
    with atomic_path(os.path.join(path, METADATA_FILE)) as json_file, atomic_path(os.path.join(path, ARRAYS_FILE)) as npz_file:
        with open(npz_file, "wb") as handle:
            np.savez(handle, **arrays)
        json_file.write_text(text)
    return path


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The checked JSON metadata of the emulator directory ``path``."""
    path = os.fspath(path)
    meta_path = os.path.join(path, METADATA_FILE)
    if not os.path.isfile(meta_path):
        raise FileNotFoundError(f"{path} is not an emulator directory: {METADATA_FILE} is missing (save one with save_emulator)")
    try:
        with open(meta_path) as handle:
            meta = json.load(handle)
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{meta_path} is not valid JSON ({error}); the file is damaged, re-save the emulator") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{meta_path} is not a stellarfit emulator file (format {meta.get('format') if isinstance(meta, dict) else None!r}, expected {FORMAT_NAME!r})")
    version = meta.get("schema_version")
    if version != SCHEMA_VERSION:
        hint = "upgrade stellarfit to read it" if isinstance(version, int) and version > SCHEMA_VERSION else "re-train or re-save it with this version"
        raise CheckpointError(f"{path}: emulator schema version {version!r} is not supported (this stellarfit reads version {SCHEMA_VERSION}); {hint}")
    for key in ("model_type", "config", "label_spec", "label_names", "has_continuum"):
        if key not in meta:
            raise CheckpointError(f"{meta_path} lacks the required key {key!r}; the file is incomplete, re-save the emulator")
    if meta["model_type"] not in available_model_types():
        raise CheckpointError(f"{path}: unknown model type {meta['model_type']!r}; known: {sorted(available_model_types())} "
                              "(a new type is registered with stellarfit.emulators.register_model_type)")
    return meta


def _model_types() -> Mapping[str, type[Emulator]]:
    """model_type -> class (the registry, :mod:`stellarfit.emulators.model_types`)."""
    return MODEL_TYPES


def read_emulator(path: str | os.PathLike, *, label_spec: LabelSpec | None = None) -> Emulator:
    """Load the emulator in directory ``path``.

    Args:
        label_spec: if given, the emulator's labels must equal it (names,
            order, bounds, units), else a CheckpointError names the difference.
    """
    path = os.fspath(path)
    meta = read_metadata(path)
    try:
        spec = LabelSpec.from_json(meta["label_spec"])
    except (ValueError, TypeError, KeyError) as error:
        raise CheckpointError(f"{path}: the label spec in {METADATA_FILE} is invalid ({error})") from None
    if list(spec.names) != list(meta["label_names"]):
        raise CheckpointError(f"{path}: label_names {meta['label_names']} disagree with the label spec {list(spec.names)}; the file is inconsistent")
    if label_spec is not None and label_spec != spec:
        raise CheckpointError(f"{path}: the emulator's labels do not match the expected ones ({label_spec.difference(spec)})")
    arrays_path = os.path.join(path, ARRAYS_FILE)
    if not os.path.isfile(arrays_path):
        raise FileNotFoundError(f"{path}: {ARRAYS_FILE} is missing; the emulator directory is incomplete")
    with np.load(arrays_path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    listed = set(meta.get("arrays", {}))
    missing = sorted(listed - set(arrays)) + ([] if "wavelength" in arrays else ["wavelength"])
    if missing:
        raise CheckpointError(f"{path}: arrays missing from {ARRAYS_FILE}: {sorted(set(missing))}; the file is incomplete or damaged")
    wavelength = arrays["wavelength"]
    coverage = meta.get("wavelength_coverage")
    if coverage is not None and not np.allclose([wavelength[0], wavelength[-1]], coverage, rtol=1e-12, atol=0):
        raise CheckpointError(f"{path}: wavelength array [{wavelength[0]}, {wavelength[-1]}] disagrees with wavelength_coverage {coverage}")
    params = unflatten_params({name[len("params/"):]: value for name, value in arrays.items() if name.startswith("params/")})
    cls = get_model_type(meta["model_type"])
    metadata = dict(meta.get("metadata") or {})
    if meta.get("training_grid_hash") is not None:
        metadata["training_grid_hash"] = meta["training_grid_hash"]
    if meta.get("metrics"):
        metadata["metrics"] = meta["metrics"]
    try:
        emulator = cls(
            spec,
            wavelength,
            meta["config"],
            params,
            resolution=meta.get("native_resolution"),
            has_continuum=bool(meta["has_continuum"]),
            metadata=metadata,
        )
        if "pixel_error" in arrays:
            emulator = emulator.with_pixel_error(arrays["pixel_error"])
        if "error_modes" in arrays:
            emulator = emulator.with_error_modes(arrays["error_modes"])
        if "physics_error/sigma" in arrays:
            from stellarfit.emulators.physics_error import PhysicsError

            emulator = emulator.with_physics_error(PhysicsError(
                arrays["physics_error/wavelength"], arrays["physics_error/sigma"],
                stars=tuple(str(s) for s in arrays.get("physics_error/stars", ())), source=f"{path} (saved with the emulator)"))
        return emulator
    except ValueError as error:
        raise CheckpointError(f"{path}: {error}") from None


def save_arrays_atomic(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> None:
    """``np.savez`` to ``path``, atomically (:func:`stellarfit._io.atomic_write`)."""
    atomic_write(path, lambda handle: np.savez(handle, **{k: np.asarray(v) for k, v in arrays.items()}))


def load_arrays(path: str) -> dict[str, np.ndarray]:
    """Arrays of an ``.npz`` file, without pickle."""
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}

