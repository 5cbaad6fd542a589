"""Resumable, parallel generation of a SpectralGrid from any grid engine.

This module owns :func:`generate_grid` and the on-disk layout of an unfinished
run.  An *engine* is any picklable object with

- ``engine.wavelength``: (n_pixels,) float64 vacuum Angstrom, strictly increasing;
- ``engine.metadata()``: JSON-serializable dict describing everything that
  changes the spectra (name, version, line list, atmospheres, resolution,
  config ...); it must not contain times or other values that change from
  one call to the next, since it is hashed to detect a changed configuration;
- ``engine.synthesize(labels: dict[str, float]) -> (flux, continuum)`` for one
  star: flux (n_pixels,) continuum-normalized, continuum (n_pixels,) (absolute
  flux, or its log10 with ``continuum_kind='log10'``) or None.  It may raise
  an ``Exception`` for a star; that star is recorded as failed.

Crash safety.  The design (n_spectra label vectors) is cut into fixed chunks
of ``chunk_size`` consecutive rows.  Next to the output ``OUT`` a directory
``OUT.parts/`` holds::

    manifest.json      format, chunk size, config hash, engine metadata, ...
    labels.npy         (n_spectra, n_labels) float64 the full design
    chunk_00000.npz    one per finished chunk: indices, flux, continuum,
    chunk_00001.npz    failed mask and failure messages

Every file is written to a temporary name and renamed with :func:`os.replace`,
so a kill at any moment leaves only complete chunks.  A rerun with the same
labels, engine configuration and chunk size skips the finished chunks; a rerun
with anything different refuses (rather than mixing two grids) and says how
to proceed.  When every chunk is done the final HDF5 grid is assembled
(atomically, streaming chunk by chunk) and ``OUT.parts/`` is removed.

Failed stars are excluded from the grid's flux arrays and listed with their
labels and reasons in its ``/failures`` group (see :mod:`._grid`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import threading
import time
from collections.abc import Mapping
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np

from stellarfit._io import atomic_write
from stellarfit.grids._format import (
    GridFailures,
    SCHEMA_VERSION,
    _GridWriter,
    _json_default,
    _now_utc,
    check_writable,
)
from stellarfit.labels import LabelSpec, default_label_spec

__all__ = ["DEFAULT_CHUNK_SIZE", "GenerationError", "GenerationResult", "generate_grid", "parts_dir_for"]

#: Spectra per chunk when none is given: with a ~10 s/spectrum engine a kill
#: loses at most ~1.5 minutes of work per worker.
DEFAULT_CHUNK_SIZE = 8
_PARTS_FORMAT = "stellarfit-grid-parts"
_PARTS_VERSION = 1
_MANIFEST = "manifest.json"
_LABELS = "labels.npy"
_RESERVED_METADATA = ("engine", "generation", "seed", "design", "created", "schema_version")


class GenerationError(RuntimeError):
    """Grid generation cannot go on (changed inputs on resume, a worker crashed, ...)."""


@dataclasses.dataclass(frozen=True)
class GenerationResult:
    """What :func:`generate_grid` did.

    Attributes:
        path: the output grid file (exists only if ``complete``).
        complete: True if the final grid was written.
        n_requested: label vectors in the design.
        n_spectra: spectra in the final grid (0 if not complete).
        n_failed: failed stars among the finished chunks.
        n_chunks: chunks in the design.
        chunks_computed: chunks computed by this call.
        chunks_reused: chunks found finished from an earlier run.
        elapsed_s: wall time of this call [s].
        parts_dir: directory of the finished chunks (removed once complete).
    """

    path: Path
    complete: bool
    n_requested: int
    n_spectra: int
    n_failed: int
    n_chunks: int
    chunks_computed: int
    chunks_reused: int
    elapsed_s: float
    parts_dir: Path


def parts_dir_for(out_path: str | os.PathLike[str]) -> Path:
    """The directory ``<out_path>.parts`` that holds the chunks of an unfinished run."""
    out = Path(out_path).expanduser().absolute()
    return out.with_name(out.name + ".parts")


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
def _canonical_json(value: Any) -> str:
    return json.dumps(value, default=_json_default, sort_keys=True, separators=(",", ":"))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _stellarfit_version() -> str:
    try:
        return importlib_metadata.version("stellarfit")
    except importlib_metadata.PackageNotFoundError:
        return "unknown"


def _chunk_path(parts: Path, chunk: int, width: int) -> Path:
    return parts / f"chunk_{chunk:0{width}d}.npz"


def _chunk_bounds(chunk: int, chunk_size: int, n: int) -> tuple[int, int]:
    return chunk * chunk_size, min((chunk + 1) * chunk_size, n)


# ---------------------------------------------------------------------------
# the work of one chunk (runs in a worker process or in-process)
# ---------------------------------------------------------------------------
_WORKER_STATE: dict[str, Any] = {}


def _init_worker(
    engine: Any, names: tuple[str, ...], n_pixels: int, parts: str, width: int, config_hash: str, watch_parent: bool = False
) -> None:
    _WORKER_STATE.update(engine=engine, names=names, n_pixels=n_pixels, parts=parts, width=width, config_hash=config_hash)
    if watch_parent:
        # A worker whose parent was killed (kill -9, OOM killer) would otherwise wait
        # forever for work; exit instead.  Finished chunks are already on disk.
        parent = os.getppid()

        def watch() -> None:
            while True:
                time.sleep(1.0)
                if os.getppid() != parent:
                    os._exit(1)

        threading.Thread(target=watch, name="stellarfit-parent-watch", daemon=True).start()


def _synthesize_one(engine: Any, label_dict: dict[str, float], n_pixels: int) -> tuple[np.ndarray, np.ndarray | None]:
    result = engine.synthesize(label_dict)
    if isinstance(result, tuple) and len(result) == 2:
        flux, continuum = result
    else:
        raise TypeError(f"engine.synthesize must return (flux, continuum), got {type(result).__name__}")
    flux = np.asarray(flux, dtype=np.float64)
    if flux.shape != (n_pixels,):
        raise ValueError(f"engine returned flux of shape {flux.shape}; expected ({n_pixels},) like engine.wavelength")
    if not np.all(np.isfinite(flux)):
        raise ValueError(f"engine returned NaN or infinite flux at {int(np.sum(~np.isfinite(flux)))} pixels")
    if continuum is not None:
        continuum = np.asarray(continuum, dtype=np.float64)
        if continuum.shape != (n_pixels,):
            raise ValueError(f"engine returned continuum of shape {continuum.shape}; expected ({n_pixels},)")
        if not np.all(np.isfinite(continuum)):
            raise ValueError(f"engine returned NaN or infinite continuum at {int(np.sum(~np.isfinite(continuum)))} pixels")
    return flux, continuum


def _compute_chunk(chunk: int, start: int, labels: np.ndarray) -> tuple[int, int, int]:
    """Synthesize one chunk and write it atomically; returns (chunk, n_stars, n_failed)."""
    state = _WORKER_STATE
    engine, names, n_pixels = state["engine"], state["names"], state["n_pixels"]
    k = labels.shape[0]
    flux = np.full((k, n_pixels), np.nan, dtype=np.float32)
    continuum = np.full((k, n_pixels), np.nan, dtype=np.float32)
    has_continuum = np.zeros(k, dtype=bool)
    failed = np.zeros(k, dtype=bool)
    messages = [""] * k
    t0 = time.perf_counter()
    for j in range(k):
        label_dict = {name: float(value) for name, value in zip(names, labels[j])}
        try:
            f, c = _synthesize_one(engine, label_dict, n_pixels)
        except Exception as error:  # noqa: BLE001 - a failed star is recorded, not fatal
            failed[j] = True
            messages[j] = f"{type(error).__name__}: {error}"[:2000] or type(error).__name__
            continue
        flux[j] = f
        if c is not None:
            continuum[j] = c
            has_continuum[j] = True
    seconds = time.perf_counter() - t0
    path = _chunk_path(Path(state["parts"]), chunk, state["width"])

    def write(handle: Any) -> None:
        np.savez(
            handle,
            indices=np.arange(start, start + k, dtype=np.int64),
            flux=flux,
            continuum=continuum,
            has_continuum=has_continuum,
            failed=failed,
            messages=np.array(messages, dtype=str) if k else np.zeros(0, dtype="<U1"),
            config_hash=np.array(state["config_hash"]),
            seconds=np.array(seconds),
        )

    atomic_write(path, write)
    return chunk, k, int(failed.sum())


def _load_chunk(path: Path, start: int, stop: int, config_hash: str, n_pixels: int) -> dict[str, np.ndarray] | None:
    """Arrays of a finished chunk file, or None if it is missing, unreadable or not this run's."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            chunk = {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError, KeyError):
        return None
    required = ("indices", "flux", "continuum", "has_continuum", "failed", "messages", "config_hash")
    if any(key not in chunk for key in required):
        return None
    k = stop - start
    if (
        str(chunk["config_hash"]) != config_hash
        or not np.array_equal(chunk["indices"], np.arange(start, stop))
        or chunk["flux"].shape != (k, n_pixels)
        or chunk["continuum"].shape != (k, n_pixels)
        or chunk["failed"].shape != (k,)
        or chunk["messages"].shape != (k,)
    ):
        return None
    return chunk


# ---------------------------------------------------------------------------
# manifest
# ---------------------------------------------------------------------------
def _describe_mismatch(old: Mapping[str, Any], new: Mapping[str, Any], old_labels: np.ndarray | None, labels: np.ndarray) -> list[str]:
    problems = []
    if old_labels is None:
        problems.append("its labels.npy is missing or unreadable")
    elif old_labels.shape != labels.shape:
        problems.append(f"the label design has shape {labels.shape}, the earlier run had {old_labels.shape}")
    elif not np.array_equal(old_labels, labels):
        rows = int(np.any(old_labels != labels, axis=1).sum())
        problems.append(f"the label design differs in {rows} of {labels.shape[0]} rows (different seed, design or n?)")
    if old.get("engine") != new["engine"]:
        keys = sorted(set(old.get("engine", {})) | set(new["engine"]))
        changed = [k for k in keys if old.get("engine", {}).get(k) != new["engine"].get(k)]
        problems.append(f"the engine configuration differs (engine.metadata() keys changed: {', '.join(changed)})")
    for key, what in (
        ("wavelength_sha256", "the engine wavelength grid differs"),
        ("label_spec", "the label spec differs"),
        ("continuum_kind", "continuum_kind differs"),
    ):
        if old.get(key) != new[key]:
            problems.append(what)
    if old.get("chunk_size") != new["chunk_size"]:
        problems.append(f"chunk_size is {new['chunk_size']}, the earlier run used {old.get('chunk_size')} (pass chunk_size={old.get('chunk_size')} or leave it unset)")
    return problems


def _prepare_parts(parts: Path, manifest: dict[str, Any], labels: np.ndarray, chunk_size_given: bool) -> dict[str, Any]:
    """Create the parts directory, or check that an existing one is this run's. Returns the manifest in force."""
    manifest_path = parts / _MANIFEST
    if manifest_path.exists():
        try:
            old = json.loads(manifest_path.read_text())
            if old.get("format") != _PARTS_FORMAT:
                raise ValueError("not a stellarfit parts manifest")
        except (OSError, ValueError) as error:
            raise GenerationError(
                f"{parts} exists but its {_MANIFEST} is unreadable ({error}); delete the directory (rm -r '{parts}') to start over"
            ) from None
        if not chunk_size_given:
            manifest = dict(manifest, chunk_size=old.get("chunk_size"), n_chunks=old.get("n_chunks"))
        try:
            old_labels = np.load(parts / _LABELS, allow_pickle=False)
        except (OSError, ValueError):
            old_labels = None
        problems = _describe_mismatch(old, manifest, old_labels, labels)
        if problems:
            n_done = len(list(parts.glob("chunk_*.npz")))
            raise GenerationError(
                f"cannot resume: {parts} holds {n_done} finished chunk(s) of an earlier run with different inputs: "
                + "; ".join(problems)
                + ". To resume that run, call again with its original labels, engine settings and chunk size; "
                f"to start over, delete the directory (rm -r '{parts}') or write to another output path."
            )
        return old
    if parts.exists() and not parts.is_dir():
        raise GenerationError(f"{parts} exists and is not a directory; remove it or choose another output path")
    parts.mkdir(exist_ok=True)
    atomic_write(parts / _LABELS, lambda handle: np.save(handle, labels, allow_pickle=False))
    text = json.dumps(manifest, indent=1, sort_keys=True)
    atomic_write(parts / _MANIFEST, lambda handle: handle.write(text.encode()))
    return json.loads(text)


# ---------------------------------------------------------------------------
# the runner
# ---------------------------------------------------------------------------
def generate_grid(
    engine: Any,
    labels: np.ndarray | Mapping[str, Any],
    out_path: str | os.PathLike[str],
    *,
    label_spec: LabelSpec | None = None,
    workers: int | None = None,
    chunk_size: int | None = None,
    progress: bool = True,
    metadata: Mapping[str, Any] | None = None,
    seed: int | None = None,
    design: str | None = None,
    continuum_kind: str = "absolute",
    compression: str = "lzf",
    overwrite: bool = False,
    start_method: str = "spawn",
    max_chunks: int | None = None,
) -> GenerationResult:
    """Synthesize a spectrum for every label vector and write a SpectralGrid file.

    Resumable: finished chunks are kept in ``<out_path>.parts/``; calling
    again with the same inputs after a crash or Ctrl-C computes only the
    missing chunks.  See the module docstring for the engine protocol and the
    file layout.

    Args:
        engine: picklable grid engine (``wavelength``, ``metadata()``, ``synthesize()``).
        labels: (n_spectra, n_labels) design in ``label_spec`` order (or a mapping
            name -> (n_spectra,) values), e.g. from :func:`sample_labels`.
        out_path: the HDF5 grid to write.
        label_spec: the labels' spec; default :func:`default_label_spec` (must match
            the number of columns).  Labels must satisfy it.
        workers: worker processes (default ``os.cpu_count()``); 1 runs in this process.
        chunk_size: spectra per chunk (default 8, or the earlier run's when resuming).
            A kill loses at most one chunk per worker.
        progress: show a tqdm progress bar (stderr) counting spectra, with ETA.
        metadata: extra JSON-serializable metadata for the grid file.
        seed, design: the sampling seed and design name, stored in the metadata.
        continuum_kind: what the engine's continuum is: 'absolute' or 'log10'.
        compression: HDF5 compression of the flux datasets: 'lzf', 'gzip' (level 1) or None.
        overwrite: replace an existing ``out_path`` (else FileExistsError).
        start_method: multiprocessing start method of the workers ('spawn' is safe
            with threaded libraries such as JAX).
        max_chunks: compute at most this many new chunks and stop (for tests and
            for splitting a run into pieces); the result then has ``complete=False``.

    Returns:
        :class:`GenerationResult`.

    Raises:
        FileExistsError / FileNotFoundError / PermissionError: output path problems
            (checked before any work).
        ValueError: labels outside ``label_spec`` or malformed engine.
        GenerationError: the parts directory belongs to a run with other inputs,
            or a worker crashed (finished chunks are kept; rerun to resume).
        KeyboardInterrupt: re-raised after saying how to resume.
    """
    t_start = time.perf_counter()
    out = check_writable(out_path)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass overwrite=True (CLI: --overwrite) or choose another output path")
    parts = parts_dir_for(out)

    # -- inputs ---------------------------------------------------------------
    labels_in = labels
    if label_spec is None:
        label_spec = default_label_spec()
        n_cols = len(labels_in) if isinstance(labels_in, Mapping) else np.shape(labels_in)[-1]
        if n_cols != len(label_spec):
            raise ValueError(f"labels have {n_cols} columns; pass the label_spec that describes them (the default spec has {len(label_spec)})")
    if not isinstance(label_spec, LabelSpec):
        raise TypeError(f"label_spec must be a LabelSpec, got {type(label_spec).__name__}")
    design_labels = np.ascontiguousarray(label_spec.to_array(labels_in), dtype=np.float64)
    if design_labels.ndim != 2 or design_labels.shape[0] == 0:
        raise ValueError(f"labels must have shape (n_spectra, n_labels) with n_spectra >= 1, got {design_labels.shape}")
    label_spec.validate(design_labels)
    n = design_labels.shape[0]

    for attribute in ("wavelength", "metadata", "synthesize"):
        if not hasattr(engine, attribute):
            raise TypeError(f"engine {type(engine).__name__} has no {attribute!r}; an engine needs wavelength, metadata() and synthesize(labels)")
    wavelength = np.ascontiguousarray(engine.wavelength, dtype=np.float64)
    if wavelength.ndim != 1 or wavelength.size == 0 or not np.all(np.isfinite(wavelength)) or np.any(np.diff(wavelength) <= 0):
        raise ValueError("engine.wavelength must be a non-empty 1-D array of finite, strictly increasing vacuum wavelengths [A]")
    engine_meta = engine.metadata()
    if not isinstance(engine_meta, Mapping):
        raise TypeError(f"engine.metadata() must return a dict, got {type(engine_meta).__name__}")
    engine_meta = json.loads(_canonical_json(dict(engine_meta)))
    if continuum_kind not in ("absolute", "log10"):
        raise ValueError(f"continuum_kind must be 'absolute' or 'log10', got {continuum_kind!r}")
    user_meta = dict(metadata or {})
    clash = sorted(set(user_meta) & set(_RESERVED_METADATA))
    if clash:
        raise ValueError(f"metadata keys {clash} are set by generate_grid; use other names (seed and design are arguments)")
    _canonical_json(user_meta)
    chunk_size_given = chunk_size is not None
    chunk_size = DEFAULT_CHUNK_SIZE if chunk_size is None else chunk_size
    if int(chunk_size) != chunk_size or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    workers = (os.cpu_count() or 1) if workers is None else workers
    if int(workers) != workers or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    if max_chunks is not None and (int(max_chunks) != max_chunks or max_chunks < 0):
        raise ValueError(f"max_chunks must be a non-negative integer, got {max_chunks!r}")

    # -- parts directory ----------------------------------------------------
    manifest = {
        "format": _PARTS_FORMAT,
        "version": _PARTS_VERSION,
        "engine": engine_meta,
        "wavelength_sha256": _sha256(wavelength.tobytes()),
        "n_pixels": int(wavelength.size),
        "label_spec": label_spec.to_json(),
        "continuum_kind": continuum_kind,
        "chunk_size": int(chunk_size),
        "n_spectra": int(n),
        "n_chunks": -(-n // int(chunk_size)),
        "labels_sha256": _sha256(design_labels.tobytes()),
    }
    manifest = _prepare_parts(parts, manifest, design_labels, chunk_size_given)
    chunk_size = int(manifest["chunk_size"])
    n_chunks = -(-n // chunk_size)
    config_hash = _sha256(_canonical_json({k: manifest[k] for k in ("engine", "wavelength_sha256", "label_spec", "continuum_kind", "chunk_size", "labels_sha256")}).encode())
    width = max(5, len(str(n_chunks - 1)))
    for stray in parts.glob(".chunk_*"):  # temp files of chunks killed mid-write
        stray.unlink(missing_ok=True)

    done: set[int] = set()
    n_failed = 0
    for chunk in range(n_chunks):
        start, stop = _chunk_bounds(chunk, chunk_size, n)
        data = _load_chunk(_chunk_path(parts, chunk, width), start, stop, config_hash, wavelength.size)
        if data is not None:
            done.add(chunk)
            n_failed += int(data["failed"].sum())
        else:
            _chunk_path(parts, chunk, width).unlink(missing_ok=True)
    reused = len(done)
    todo = [c for c in range(n_chunks) if c not in done]
    if max_chunks is not None:
        todo = todo[: int(max_chunks)]

    # -- compute missing chunks ------------------------------------------------
    from tqdm.auto import tqdm

    n_done_spectra = sum(_chunk_bounds(c, chunk_size, n)[1] - _chunk_bounds(c, chunk_size, n)[0] for c in done)
    bar = tqdm(
        total=n, initial=n_done_spectra, unit="spec", desc=f"grid {out.name}", file=sys.stderr, disable=not progress, dynamic_ncols=True, mininterval=0.5
    )
    if n_failed:
        bar.set_postfix(failed=n_failed)
    computed = 0
    init_args = (engine, label_spec.names, int(wavelength.size), str(parts), width, config_hash)

    def finished(result: tuple[int, int, int]) -> None:
        nonlocal computed, n_failed
        chunk, k, k_failed = result
        computed += 1
        done.add(chunk)
        n_failed += k_failed
        bar.update(k)
        if k_failed:
            bar.set_postfix(failed=n_failed)

    def resume_hint() -> str:
        return (
            f"{len(done)} of {n_chunks} chunks (or more) are saved in {parts}; run the same command again "
            "(same labels, engine settings and chunk size) to resume from there."
        )

    try:
        if workers == 1 or len(todo) <= 1:
            _init_worker(*init_args)
            try:
                for chunk in todo:
                    start, stop = _chunk_bounds(chunk, chunk_size, n)
                    finished(_compute_chunk(chunk, start, design_labels[start:stop]))
            finally:
                _WORKER_STATE.clear()
        else:
            context = multiprocessing.get_context(start_method)
            executor = concurrent.futures.ProcessPoolExecutor(
                max_workers=min(int(workers), len(todo)), mp_context=context, initializer=_init_worker, initargs=(*init_args, True)
            )
            try:
                futures = []
                for chunk in todo:
                    start, stop = _chunk_bounds(chunk, chunk_size, n)
                    futures.append(executor.submit(_compute_chunk, chunk, start, design_labels[start:stop]))
                for future in concurrent.futures.as_completed(futures):
                    finished(future.result())
            except BaseException:
                executor.shutdown(wait=False, cancel_futures=True)
                raise
            executor.shutdown(wait=True)
    except KeyboardInterrupt:
        bar.close()
        print(f"\nInterrupted. {resume_hint()}", file=sys.stderr, flush=True)
        raise
    except concurrent.futures.process.BrokenProcessPool as error:
        bar.close()
        raise GenerationError(f"a worker process died ({error}; out of memory or killed?). {resume_hint()}") from error
    except Exception as error:
        bar.close()
        raise GenerationError(f"grid generation stopped: {type(error).__name__}: {error}. {resume_hint()}") from error
    bar.close()

    elapsed = time.perf_counter() - t_start
    if len(done) < n_chunks:
        return GenerationResult(out, False, n, 0, n_failed, n_chunks, computed, reused, elapsed, parts)

    # -- assemble the final grid ------------------------------------------------
    n_ok = _assemble(
        out=out,
        parts=parts,
        n=n,
        n_chunks=n_chunks,
        chunk_size=chunk_size,
        width=width,
        config_hash=config_hash,
        labels=design_labels,
        wavelength=wavelength,
        label_spec=label_spec,
        continuum_kind=continuum_kind,
        compression=compression,
        metadata={
            **user_meta,
            "schema_version": SCHEMA_VERSION,
            "created": _now_utc(),
            "engine": engine_meta,
            "seed": seed,
            "design": design,
            "generation": {
                "stellarfit_version": _stellarfit_version(),
                "n_requested": int(n),
                "chunk_size": chunk_size,
                "config_hash": config_hash,
                "continuum_kind": continuum_kind,
            },
        },
    )
    shutil.rmtree(parts)
    return GenerationResult(out, True, n, n_ok, n - n_ok, n_chunks, computed, reused, time.perf_counter() - t_start, parts)


def _assemble(
    *,
    out: Path,
    parts: Path,
    n: int,
    n_chunks: int,
    chunk_size: int,
    width: int,
    config_hash: str,
    labels: np.ndarray,
    wavelength: np.ndarray,
    label_spec: LabelSpec,
    continuum_kind: str,
    compression: str,
    metadata: dict[str, Any],
) -> int:
    """Write the final grid from the chunk files (two streaming passes). Returns the number of good spectra."""
    n_pixels = wavelength.size

    def load(chunk: int) -> dict[str, np.ndarray]:
        start, stop = _chunk_bounds(chunk, chunk_size, n)
        data = _load_chunk(_chunk_path(parts, chunk, width), start, stop, config_hash, n_pixels)
        if data is None:
            raise GenerationError(f"chunk {chunk} in {parts} vanished or is corrupt; run again to recompute it")
        return data

    failed = np.zeros(n, dtype=bool)
    messages: dict[int, str] = {}
    has_cont = np.zeros(n, dtype=bool)
    cpu_seconds = 0.0
    for chunk in range(n_chunks):  # pass 1: which stars failed, is there a continuum
        data = load(chunk)
        start, stop = _chunk_bounds(chunk, chunk_size, n)
        failed[start:stop] = data["failed"]
        has_cont[start:stop] = data["has_continuum"]
        cpu_seconds += float(data.get("seconds", 0.0))
        for j in np.flatnonzero(data["failed"]):
            messages[start + int(j)] = str(data["messages"][j])
    ok = ~failed
    if ok.any() and has_cont[ok].any() and not has_cont[ok].all():
        missing = int((ok & ~has_cont).sum())
        raise GenerationError(f"the engine returned a continuum for some stars but None for {missing} others; a grid needs all or none")
    with_continuum = bool(ok.any() and has_cont[ok].all())
    design_index = np.flatnonzero(ok).astype(np.int64)
    failed_index = np.flatnonzero(failed).astype(np.int64)
    failures = GridFailures(failed_index, labels[failed_index], tuple(messages[int(i)] for i in failed_index))
    metadata = dict(metadata)
    metadata["generation"] = dict(metadata["generation"], n_failed=int(failed.sum()), engine_cpu_seconds=round(cpu_seconds, 3))
    if not with_continuum:
        metadata["generation"]["continuum_kind"] = None

    with _GridWriter(
        out,
        labels=labels[design_index],
        wavelength=wavelength,
        label_spec=label_spec,
        metadata=metadata,
        continuum_kind=continuum_kind if with_continuum else None,
        design_index=design_index,
        failures=failures,
        compression=compression,
    ) as writer:
        row = 0
        for chunk in range(n_chunks):  # pass 2: copy the good spectra
            data = load(chunk)
            good = ~data["failed"]
            k = int(good.sum())
            if k:
                writer.write_rows(row, data["flux"][good], data["continuum"][good] if with_continuum else None)
                row += k
    return int(design_index.size)
