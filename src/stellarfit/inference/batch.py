"""Catalog fitting: many spectrum files -> one catalog, resumable, with per-spectrum failures recorded.

:func:`fit_batch_files` expands the inputs (files, glob patterns, directories,
list files with one path per line), reads every file with
:func:`stellarfit.spectra.read_spectra` (a file may hold several spectra),
fits each spectrum with :func:`~stellarfit.inference.fit_star` and appends its
catalog row to a journal (``<out>.journal.jsonl``, one fsync-ed line per
spectrum; see :mod:`stellarfit.results.catalog`).  A rerun with the same
output skips the (file, index) pairs already in the journal.  A spectrum that
cannot be read or fitted is recorded with ``status='failed'`` and the reason,
and the run goes on.  At the end the catalog is written atomically from the
journal (the journal is kept, so adding inputs later and rerunning extends the
catalog).

Backends:

- ``'auto'`` (default): ``'processes'`` where it applies (Linux, >= 2 usable
  cores, >= 2 input files, the built-in fit, a stellarfit Emulator, no
  ``vectorize``), else ``'local'``.
- ``'local'``: this process, one spectrum after the other.
- ``'processes'``: worker processes on this machine, each pinned to its own CPU
  core (:mod:`stellarfit._workers`: XLA gains nothing from more cores on one
  small fit, but pinned processes run side by side at full speed).  Like Ray
  below, the driver reads, journals and hands out chunks of ``chunk_size``
  spectra (default 1); each worker loads the emulator once and keeps its
  compiled programs.  NUTS fits run their chains one after another inside a
  worker (``chain_method="sequential"`` unless ``fit_options`` say otherwise).
- ``'ray'``: a Ray cluster (a local one started for the run, or an existing
  one).  The driver (this process) still reads the files, skips what the
  journal has, and alone writes the journal; it sends chunks of
  ``chunk_size`` spectra as Ray tasks (at most twice the number of workers in
  flight) and journals their rows as chunks complete.  Each Ray worker process
  loads the emulator once (shipped through the object store as its checkpoint
  files, so no shared file system is needed) and keeps it, and with it the
  compiled fit functions, for every later chunk.  An interrupted run loses at
  most the chunks in flight.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

# the batch modules' names, importable from here as before the split
from stellarfit.inference._batch_backends import (  # noqa: F401
    BACKENDS,
    DEFAULT_CHUNK_SIZE,
    _auto_backend,
    _check_count,
    _check_for_processes,
    _check_picklable,
    _emulator_payload,
    _fit_chunk,
    _fit_chunk_in_process,
    _import_ray,
    _run_on_processes,
    _run_on_ray,
)
from stellarfit.inference._batch_inputs import _is_list_file, _read, expand_inputs  # noqa: F401
from stellarfit.inference._batch_rows import _fit_item, _fit_items, _Item, _message, _Recorder, _spectra_to_fit  # noqa: F401
from stellarfit.inference._shipping import _checkpoint_digest  # noqa: F401

__all__ = ["BatchSummary", "expand_inputs", "fit_batch_files", "journal_path_for"]


@dataclasses.dataclass
class BatchSummary:
    """What :func:`fit_batch_files` did.

    Attributes:
        out: the catalog file.
        journal: the journal file.
        n_ok, n_failed: rows in the final catalog by status.
        n_fitted: spectra fitted (or failed) in this run; n_skipped: already in the journal.
        n_files: input files after expansion.
        elapsed_s: wall time of this run [s].
        backend: "local", "processes" or "ray" (what "auto" chose); workers: 1 for local, the worker
            processes, or the Ray workers for ray (0: Ray was not needed).
    """

    out: str
    journal: str
    n_ok: int
    n_failed: int
    n_fitted: int
    n_skipped: int
    n_files: int
    elapsed_s: float
    backend: str = "local"
    workers: int = 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def journal_path_for(out: str | os.PathLike) -> Path:
    """The journal file of catalog ``out``: ``<out>.journal.jsonl`` in the same directory."""
    out = Path(out)
    return out.with_name(out.name + ".journal.jsonl")


def _check_vectorize(vectorize: int | None, method: str, fit_function, fit_options: Mapping[str, Any]) -> None:
    if vectorize is None:
        return
    _check_count("vectorize", vectorize)
    if method not in ("map", "nuts") or fit_function is not None:
        raise ValueError("vectorize applies to MAP and NumPyro NUTS fits with the built-in fit (method='map' or "
                         "'nuts', no fit_function); leave it out for BlackJAX or a custom fit_function")
    import inspect

    from stellarfit.inference.fit import fit_stars

    accepted = set(inspect.signature(fit_stars).parameters) - {"spectra", "emulator", "batch_size", "errors", "progress",
                                                                 "method"}
    if method == "map":
        accepted -= {"num_warmup", "num_samples", "num_chains", "max_tree_depth", "target_accept", "mass_matrix",
                     "nuts_settings"}
    unknown = sorted(set(fit_options) - accepted)
    if unknown:
        raise ValueError(f"fit option(s) {', '.join(unknown)} do not apply to vectorized {method} fits; "
                         f"accepted: {', '.join(sorted(accepted))}")


def fit_batch_files(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    emulator,
    out_path: str | os.PathLike,
    *,
    method: str = "map",
    format: str | None = None,  # noqa: A002
    resolution: float | None = None,
    snr: float | None = None,
    air: bool | None = None,
    backend: str = "auto",
    retry_failed: bool = False,
    progress: bool = True,
    fit_options: Mapping[str, Any] | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    fit_function: Callable[..., Any] | None = None,
    workers: int | None = None,
    chunk_size: int | None = None,
    ray_address: str | None = None,
    vectorize: int | None = None,
) -> BatchSummary:
    """Fit every spectrum in ``inputs`` and write one catalog to ``out_path``.

    Args:
        inputs: files, glob patterns, directories or list files (see :func:`expand_inputs`).
        emulator: an emulator object or a name/path for :func:`~stellarfit.emulators.load_emulator`.
        out_path: catalog file; .fits (FITS binary table, HDU 'CATALOG'), .csv or .parquet (needs pyarrow).
        method: fit method of :func:`~stellarfit.inference.fit_star` ("map"; "nuts", "blackjax" where available).
        format: spectrum format for every file (default: detected per file).
        resolution: resolving power for files that do not give it.
        snr: S/N per pixel for files without uncertainties.
        air: True/False: every file's wavelengths are in air/vacuum (default None: what each file says).
        backend: "auto" (default: "processes" where it applies, else "local"; see the module docstring),
            "local" (this process), "processes" (worker processes pinned one per core on this machine)
            or "ray" (a Ray cluster; needs ``pip install 'stellarfit[ray]'``).
        retry_failed: refit spectra recorded as failed in the journal.
        progress: a tqdm progress bar with ETA on stderr.
        fit_options: extra keyword arguments for ``fit_star`` (n_starts, rv_range, ...).
        callback: called (in this process) with each catalog row right after it is journaled
            (tests use it to interrupt a run).
        fit_function: ``fit_function(spectrum, emulator, method=..., **fit_options) -> FitResult``
            instead of :func:`~stellarfit.inference.fit_star` (a custom fit pipeline); with
            backend="ray" it must be picklable (e.g. a module-level function).
        workers: backend="processes": worker processes (default: one per usable core); backend="ray":
            number of Ray workers (CPUs of the local cluster started for the run; chunks in flight are
            at most twice this; default: the CPUs of this machine for a new local cluster, the CPUs of
            the cluster otherwise).
        chunk_size: spectra per task: backend="ray" (default 8) or "processes" (default 1).
        ray_address: backend="ray" only: address of an existing Ray cluster (``"auto"``,
            ``"ray://host:10001"``, ``"host:6379"``).  Default: a local cluster for this run,
            or the one this process is already connected to (``ray.init`` called before).
        vectorize: method "map" or "nuts" (NumPyro): fit this many spectra at a time in one
            vectorized program (:func:`~stellarfit.inference.fit_stars`; spectra on the same pixels
            share it).  The way to fill a GPU; on a CPU it saves MAP's per-star overheads, while
            batched NUTS is slower there than one star at a time.  With backend="ray"
            each worker vectorizes within its chunks (make ``chunk_size`` a multiple of it).
    Returns: a :class:`BatchSummary`.
    Raises:
        FileNotFoundError: missing inputs.  ValueError: bad settings, or the
        journal was written with another emulator or method.
        ImportError: backend="ray" without Ray installed.  TypeError: a fit_function or
        emulator that cannot be sent to Ray workers.  ConnectionError: no Ray cluster at ``ray_address``.
        RuntimeError: the Ray workers could not load the emulator or fit function.
    """
    from stellarfit.inference.fit import fit_star
    from stellarfit.results import Journal, catalog_format, write_catalog

    start = time.perf_counter()
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; available: {', '.join(map(repr, BACKENDS))}")
    if backend == "local":
        given = [name for name, value in (("workers", workers), ("chunk_size", chunk_size), ("ray_address", ray_address))
                 if value is not None]
        if given:
            raise ValueError(f"{', '.join(given)} only apply to backend='ray' or 'processes'; pass one of them or "
                             "leave them out")
    else:
        if backend == "processes" and ray_address is not None:
            raise ValueError("ray_address only applies to backend='ray'")
        _check_count("workers", workers)
        _check_count("chunk_size", chunk_size)
    from stellarfit.inference import fit as fit_module

    methods = tuple(getattr(fit_module, "METHODS", ("map",)))
    if fit_function is None and method not in methods:
        raise ValueError(f"method {method!r} is not available; choose one of {', '.join(methods)}")
    _check_vectorize(vectorize, method, fit_function, dict(fit_options or {}))
    out_path = Path(out_path)
    kind = catalog_format(out_path)
    if kind == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ImportError(f"a Parquet catalog ({out_path.name}) needs pyarrow: pip install pyarrow, or write .fits or .csv") from None
    if not out_path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {out_path}: the directory {out_path.parent} does not exist")
    if backend == "ray":
        ray = _import_ray()  # a clear ImportError before anything is read
        if fit_function is not None:
            _check_picklable(ray, fit_function, f"fit_function {fit_function!r}",
                             "use a module-level function or a picklable callable object")
    files = expand_inputs(inputs)
    if isinstance(emulator, (str, os.PathLike)):
        from stellarfit.emulators import load_emulator

        emulator = load_emulator(emulator)
    if backend == "auto":
        backend = _auto_backend(len(files), emulator, fit_function, vectorize, workers, ray_address)
    if backend == "processes":
        _check_for_processes(emulator, fit_function)
    emulator_name = str(emulator.metadata.get("name", type(emulator).__name__))
    options: dict[str, Any] = {}
    if resolution is not None:
        options["resolution"] = float(resolution)
    if snr is not None:
        options["snr"] = float(snr)
    if air is not None:
        options["air"] = bool(air)
    fit_options = dict(fit_options or {})
    fit = fit_star if fit_function is None else fit_function

    journal_path = journal_path_for(out_path)
    from tqdm import tqdm

    n_workers = 1
    with Journal(journal_path, header={"emulator": emulator_name, "method": method}) as journal:
        bar = tqdm(total=len(files), unit="spectrum", file=sys.stderr, disable=not progress, dynamic_ncols=True,
                   desc="batch fit")
        recorder = _Recorder(journal, bar, callback)
        items = _spectra_to_fit(files, recorder, format=format, options=options, retry_failed=retry_failed, method=method,
                                emulator_name=emulator_name)
        try:
            if backend == "local":
                pending: list[_Item] = []
                for item in items:
                    pending.append(item)
                    if len(pending) >= (vectorize or 1):
                        for row in _fit_items(fit, emulator, pending, method, fit_options, emulator_name, vectorize):
                            recorder.record(row)
                        pending = []
                for row in _fit_items(fit, emulator, pending, method, fit_options, emulator_name, vectorize):
                    recorder.record(row)
            elif backend == "processes":
                n_workers = _run_on_processes(items, recorder, emulator=emulator, fit_function=fit_function,
                                              method=method, fit_options=fit_options, emulator_name=emulator_name,
                                              workers=workers, chunk_size=chunk_size or 1, vectorize=vectorize)
            else:
                n_workers = _run_on_ray(items, recorder, emulator=emulator, fit_function=fit_function, method=method,
                                        fit_options=fit_options, emulator_name=emulator_name, workers=workers,
                                        chunk_size=chunk_size or DEFAULT_CHUNK_SIZE, ray_address=ray_address,
                                        vectorize=vectorize)
        finally:
            items.close()
            bar.close()
        rows = [row for row in journal.rows.values() if row.get("status") != "superseded"]

    order = {str(p.resolve()): i for i, p in enumerate(files)}
    rows.sort(key=lambda r: (order.get(r["source"], len(order)), r["source"], int(r["index"])))
    write_catalog(rows, out_path)
    n_ok = sum(row.get("status") == "ok" for row in rows)
    return BatchSummary(
        out=str(out_path), journal=str(journal_path), n_ok=n_ok, n_failed=len(rows) - n_ok, n_fitted=recorder.n_fitted,
        n_skipped=recorder.n_skipped, n_files=len(files), elapsed_s=time.perf_counter() - start, backend=backend,
        workers=n_workers,
    )
