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

import collections
import dataclasses
import glob
import hashlib
import io
import json
import os
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["BatchSummary", "expand_inputs", "fit_batch_files", "journal_path_for"]

_SPECTRUM_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz")
_LIST_SUFFIXES = (".txt", ".lst", ".list")
_GLOB_CHARS = set("*?[")


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


def _is_list_file(path: Path) -> bool:
    """A .txt/.lst/.list file that is not itself a text spectrum (numeric columns, see spectra.text)."""
    if not path.name.lower().endswith(_LIST_SUFFIXES):
        return False
    from stellarfit.spectra import text

    return not text.identify(path)


def expand_inputs(inputs: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Input files, in order, without duplicates.

    Each input is a glob pattern (``*``, ``?``, ``[``; ``**`` recursive), a
    directory (its FITS files, recursively: .fits, .fit, .fts, optionally .gz),
    a list file (.txt, .lst, .list: one path per line, ``#`` comments, relative
    paths relative to the list file) or a spectrum file (FITS or text/CSV; a
    .txt file whose lines hold numeric columns is a text spectrum, not a list).

    Raises: FileNotFoundError for a missing path, a pattern matching nothing or no files at all.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    files: list[Path] = []

    def add(path: Path, depth: int = 0) -> None:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.name.lower().endswith(_SPECTRUM_SUFFIXES))
            files.extend(found)
        elif _is_list_file(path) and path.is_file():
            if depth > 4:
                raise ValueError(f"list files nested too deeply at {path}")
            for number, line in enumerate(path.read_text().splitlines(), start=1):
                line = line.split("#", 1)[0].strip()
                if not line:
                    continue
                entry = Path(line).expanduser()
                entry = entry if entry.is_absolute() else path.parent / entry
                if not entry.exists() and not _GLOB_CHARS & set(line):
                    raise FileNotFoundError(f"{path}, line {number}: no such file {entry}")
                expand(str(entry), depth + 1)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"no such file or directory: {path}")

    def expand(text: str, depth: int = 0) -> None:
        text = os.path.expanduser(text)
        if _GLOB_CHARS & set(text) and not os.path.exists(text):
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                raise FileNotFoundError(f"the pattern {text!r} matches no files")
            for match in matches:
                add(Path(match), depth)
        else:
            add(Path(text), depth)

    for item in inputs:
        expand(os.fspath(item))
    unique: list[Path] = []
    seen: set[str] = set()
    for path in files:
        key = str(path.resolve())
        if key not in seen:
            seen.add(key)
            unique.append(path)
    if not unique:
        raise FileNotFoundError(f"no spectrum files found in {list(map(os.fspath, inputs))}")
    return unique


def _read(path: Path, format: str | None, options: Mapping[str, Any]):  # noqa: A002
    from stellarfit.spectra import read_spectra

    try:
        return read_spectra(path, format=format, errors="skip", **options)
    except TypeError as error:
        if "does not take option" not in str(error):
            raise
        return read_spectra(path, format=format, **options)  # single-spectrum readers have no errors= option


def _message(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return f"{type(error).__name__}: {text}"


@dataclasses.dataclass
class _Item:
    """One spectrum to fit, with what its catalog row needs."""

    source: str
    index: int
    object_id: str | None
    format: str | None
    spectrum: Any


class _Recorder:
    """Journals rows (the driver alone writes the journal), counts them, moves the progress bar, calls the callback."""

    def __init__(self, journal, bar, callback: Callable[[dict[str, Any]], None] | None):
        self.journal = journal
        self.bar = bar
        self.callback = callback
        self.n_fitted = 0
        self.n_skipped = 0

    def record(self, row: dict[str, Any]) -> None:
        self.journal.append(row)
        self.n_fitted += 1
        self.bar.update(1)
        if self.callback is not None:
            self.callback(row)

    def skip(self) -> None:
        self.n_skipped += 1
        self.bar.update(1)


def _spectra_to_fit(files: Sequence[Path], recorder: _Recorder, *, format: str | None,  # noqa: A002
                    options: Mapping[str, Any], retry_failed: bool, method: str, emulator_name: str):
    """Read the files in order and yield an :class:`_Item` per spectrum still to fit.

    Entries already in the journal are skipped; unreadable files and unusable
    entries of multi-spectrum files are journaled as failed rows right here.
    """
    from stellarfit.results import failed_row

    journal, bar = recorder.journal, recorder.bar
    for path in files:
        source = str(path.resolve())
        common = {"source": source, "method": method, "emulator": emulator_name}
        unreadable = journal.rows.get((source, -1), {}).get("status") == "failed"
        if unreadable and not retry_failed:  # the file itself could not be read before
            recorder.skip()
            continue
        t0 = time.perf_counter()
        try:
            spectra = _read(path, format, options)
        except Exception as error:  # unreadable file: one failed row, go on
            recorder.record(failed_row(index=-1, error=_message(error), elapsed_s=time.perf_counter() - t0, **common))
            continue
        if unreadable:  # the file was unreadable before and reads now
            journal.append({**journal.rows[(source, -1)], "status": "superseded"})
        entries = [(int(s.metadata.get("row", i)), s, None) for i, s in enumerate(spectra)]
        entries += [(int(s.get("row", -2)), None, s) for s in getattr(spectra, "skipped", [])]
        bar.total += max(len(entries), 1) - 1
        bar.refresh()
        for index, spectrum, skipped in sorted(entries, key=lambda e: e[0]):
            if journal.done(source, index, retry_failed=retry_failed):
                recorder.skip()
                continue
            object_id = None
            if spectrum is not None:
                object_id = spectrum.metadata.get("object_id")
            elif skipped is not None:
                object_id = skipped.get("object_id")
            object_id = None if object_id is None else str(object_id)
            if skipped is not None:
                recorder.record(failed_row(index=index, error=f"unusable spectrum: {skipped.get('reason')}",
                                           object_id=object_id, elapsed_s=0.0, **common))
                continue
            yield _Item(source, index, object_id, spectrum.metadata.get("format"), spectrum)


def _fit_item(fit: Callable[..., Any], emulator, item: _Item, method: str, fit_options: Mapping[str, Any],
              emulator_name: str) -> dict[str, Any]:
    """The catalog row of one spectrum: its fit, or a failed row with the reason if the fit raises."""
    from stellarfit.inference.fit import FLAGS
    from stellarfit.results import failed_row, result_row

    t0 = time.perf_counter()
    try:
        result = fit(item.spectrum, emulator, method=method, **fit_options)
        return result_row(result, source=item.source, index=item.index, object_id=item.object_id, format=item.format)
    except Exception as error:  # one bad spectrum must not stop the catalog
        return failed_row(source=item.source, index=item.index, error=_message(error), object_id=item.object_id,
                          format=item.format, method=method, emulator=emulator_name, elapsed_s=time.perf_counter() - t0,
                          flags=FLAGS["fit_failed"])


def _fit_items(fit: Callable[..., Any], emulator, items: Sequence[_Item], method: str, fit_options: Mapping[str, Any],
               emulator_name: str, vectorize: int | None) -> list[dict[str, Any]]:
    """Catalog rows of ``items``: one fit per spectrum, or (``vectorize``) MAP or NUTS fits of
    ``vectorize`` spectra at a time in one vmapped program (:func:`~stellarfit.inference.fit_stars`)."""
    if not vectorize or len(items) < 2:
        return [_fit_item(fit, emulator, item, method, fit_options, emulator_name) for item in items]
    from stellarfit.inference.fit import FLAGS, fit_stars
    from stellarfit.results import failed_row, result_row

    t0 = time.perf_counter()
    try:
        results = fit_stars([item.spectrum for item in items], emulator, batch_size=vectorize, errors="collect",
                            method=method, **fit_options)
    except Exception:  # noqa: BLE001 - not a per-spectrum failure: fit one at a time, recording each reason
        return [_fit_item(fit, emulator, item, method, fit_options, emulator_name) for item in items]
    share = (time.perf_counter() - t0) / len(items)
    rows = []
    for item, result in zip(items, results):
        if isinstance(result, BaseException):
            rows.append(failed_row(source=item.source, index=item.index, error=_message(result), object_id=item.object_id,
                                   format=item.format, method=method, emulator=emulator_name, elapsed_s=share,
                                   flags=FLAGS["fit_failed"]))
        else:
            rows.append(result_row(result, source=item.source, index=item.index, object_id=item.object_id,
                                   format=item.format))
    return rows


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
        accepted -= {"num_warmup", "num_samples", "num_chains", "max_tree_depth", "target_accept", "mass_matrix"}
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


#: where fit_batch_files fits
BACKENDS = ("auto", "local", "processes", "ray")


def _auto_backend(n_files: int, emulator, fit_function, vectorize, workers, ray_address) -> str:
    """backend="auto": "processes" for the built-in fit of several files on a multi-core Linux machine, else "local"."""
    from stellarfit import _workers
    from stellarfit.emulators import Emulator

    if ray_address is not None:
        return "ray"
    if workers is not None:  # asked for workers: processes where they can run, else the explicit error of "processes"
        return "processes"
    if (n_files >= 2 and fit_function is None and vectorize is None and isinstance(emulator, Emulator)
            and _workers.can_pin() and len(_workers.usable_cores()) >= 2):
        return "processes"
    return "local"


def _check_for_processes(emulator, fit_function) -> None:
    """Clear errors, before anything is read, for what cannot go to worker processes."""
    import pickle

    from stellarfit.emulators import Emulator

    if fit_function is not None:
        try:
            pickle.dumps(fit_function)
        except Exception as error:
            raise TypeError(f"fit_function {fit_function!r} cannot be sent to worker processes ({_message(error)}); "
                            "use a function defined at module level in an importable module, or backend='local'") from None
    if not isinstance(emulator, Emulator):
        try:
            pickle.dumps(emulator)
        except Exception as error:
            raise TypeError(f"the emulator ({type(emulator).__name__}) cannot be sent to worker processes "
                            f"({_message(error)}); pass a stellarfit Emulator or its name/path, or use backend='local'") from None


def _check_count(name: str, value: int | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


# -- the Ray backend ---------------------------------------------------------------------
#: spectra per Ray task unless ``chunk_size`` says otherwise
DEFAULT_CHUNK_SIZE = 8
#: emulators each Ray worker process keeps loaded (most recently used)
_WORKER_CACHE_SIZE = 2
#: in the Ray worker processes: emulator key -> loaded emulator (its compiled forward models stay cached with it)
_WORKER_EMULATORS: "collections.OrderedDict[str, Any]" = collections.OrderedDict()
_REMOTE_FIT_CHUNK = None


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ImportError("backend='ray' needs Ray, which is not installed: pip install 'stellarfit[ray]' "
                          "(or pip install 'ray>=2.9'), or use backend='local'") from None
    return ray


def _emulator_payload(emulator) -> tuple[str, str, Any]:
    """(kind, key, payload) to send an emulator to Ray workers.

    A stellarfit :class:`~stellarfit.emulators.Emulator` travels as its
    checkpoint files (``Emulator.save``: JSON + npz arrays, no pickle), keyed
    by their SHA-1 so that workers load each emulator once.  Any other object
    (a stand-in for a custom ``fit_function``) travels as Ray serializes it.
    """
    from stellarfit.emulators import Emulator

    if isinstance(emulator, Emulator):
        with tempfile.TemporaryDirectory(prefix="stellarfit-emulator-") as directory:
            emulator.save(directory, overwrite=True)
            files = {path.name: path.read_bytes() for path in sorted(Path(directory).iterdir()) if path.is_file()}
        return "files", "files-" + _checkpoint_digest(files), files
    return "object", f"object-{id(emulator)}-{uuid.uuid4().hex}", emulator


def _checkpoint_digest(files: Mapping[str, bytes]) -> str:
    """SHA-1 of a saved emulator's content (JSON without its save time, array values), the same for every save."""
    digest = hashlib.sha1()
    for name, data in sorted(files.items()):
        digest.update(name.encode() + b"\0")
        if name.endswith(".json"):
            try:
                meta = json.loads(data)
            except ValueError:
                meta = None
            if isinstance(meta, dict):
                meta.pop("created", None)
                data = json.dumps(meta, sort_keys=True).encode()
        elif name.endswith(".npz"):
            with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
                for key in sorted(arrays.files):
                    value = np.ascontiguousarray(arrays[key])
                    digest.update(f"{key}:{value.dtype.str}:{value.shape}".encode())
                    digest.update(value.tobytes())
            continue
        digest.update(data)
    return digest.hexdigest()


def _worker_emulator(spec: Mapping[str, Any]):
    """The emulator of ``spec`` in this Ray worker process: loaded on first use, then kept (with its compiled functions)."""
    key = spec["key"]
    cached = _WORKER_EMULATORS.get(key)
    if cached is not None:
        _WORKER_EMULATORS.move_to_end(key)
        return cached
    import ray

    payload = ray.get(spec["ref"])
    if spec["kind"] == "files":
        from stellarfit.emulators import load_emulator

        with tempfile.TemporaryDirectory(prefix="stellarfit-emulator-") as directory:
            for name, data in payload.items():
                Path(directory, name).write_bytes(data)
            emulator = load_emulator(directory)  # reads every array into memory: the files can go
    else:
        emulator = payload
    _WORKER_EMULATORS[key] = emulator
    while len(_WORKER_EMULATORS) > _WORKER_CACHE_SIZE:
        _WORKER_EMULATORS.popitem(last=False)
    return emulator


class _WorkerSetupError(RuntimeError):
    """A Ray worker could not get ready to fit (emulator loading)."""


def _one_core_options(method: str, fit_options: Mapping[str, Any]) -> Mapping[str, Any]:
    """In a worker that owns one core: NUTS chains one after another unless the options say otherwise."""
    if method in ("nuts", "blackjax") and "chain_method" not in fit_options:
        return {**fit_options, "chain_method": "sequential"}
    return fit_options


def _fit_chunk(emulator_spec: Mapping[str, Any], fit_function, method: str, fit_options: Mapping[str, Any],
               emulator_name: str, items: Sequence[_Item], vectorize: int | None = None) -> list[dict[str, Any]]:
    """Runs in a Ray worker: the catalog rows of a chunk of spectra."""
    if emulator_spec.get("pin"):
        from stellarfit._workers import pin_to_free_core

        pin_to_free_core()  # before JAX runs here: one core per worker process, as the processes backend does
    try:
        emulator = _worker_emulator(emulator_spec)
    except Exception as error:
        raise _WorkerSetupError(f"the Ray worker could not load the emulator: {_message(error)}") from error
    if fit_function is None:
        from stellarfit.inference.fit import fit_star as fit_function
    return _fit_items(fit_function, emulator, items, method, _one_core_options(method, fit_options), emulator_name,
                      vectorize)


def _feed_chunks(items: Iterable[_Item], chunk_size: int, submit: Callable[[list[_Item]], None],
                 collect: Callable[[bool], None], in_flight: Mapping[Any, list[_Item]]) -> None:
    """Hand ``items`` out in chunks of ``chunk_size`` (``submit``, which waits for a free worker), journaling
    finished chunks as they come (``collect(block)``), until every chunk ``in_flight`` is done."""
    chunk: list[_Item] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= chunk_size:
            submit(chunk)
            chunk = []
        collect(block=False)
    if chunk:
        submit(chunk)
    while in_flight:
        collect(block=True)


# -- the processes backend ---------------------------------------------------------------
def _identity(value):
    return value


def _fit_chunk_in_process(emulator_key: str, fit_function, method: str, fit_options: Mapping[str, Any],
                          emulator_name: str, items: Sequence[_Item], vectorize: int | None) -> list[dict[str, Any]]:
    """Runs in a pinned worker process: the catalog rows of a chunk of spectra."""
    from stellarfit import _workers

    try:
        emulator = _workers.shared(emulator_key)
    except Exception as error:
        raise _WorkerSetupError(f"the worker process could not load the emulator: {_message(error)}") from error
    if fit_function is None:
        from stellarfit.inference.fit import fit_star as fit_function
    return _fit_items(fit_function, emulator, items, method, _one_core_options(method, fit_options), emulator_name,
                      vectorize)


def _run_on_processes(items: Iterable[_Item], recorder: _Recorder, *, emulator, fit_function, method: str,
                      fit_options: Mapping[str, Any], emulator_name: str, workers: int | None, chunk_size: int,
                      vectorize: int | None) -> int:
    """Fit ``items`` on pinned worker processes, journaling rows as chunks complete; returns the number of workers.

    The workers start (and the emulator is sent) when the first chunk is ready: a rerun
    with nothing left to fit starts none.  One chunk per worker in flight.
    """
    from stellarfit import _workers
    from stellarfit.emulators import Emulator
    from stellarfit.inference.fit import FLAGS
    from stellarfit.results import failed_row

    n_workers = workers or max(1, len(_workers.usable_cores()))
    session: dict[str, Any] = {}
    in_flight: dict[int, list[_Item]] = {}

    def start() -> None:
        if isinstance(emulator, Emulator):
            from stellarfit.inference._processes import _emulator_files, load_emulator_files

            key, files = _emulator_files(emulator)
            shared = {key: (load_emulator_files, (files,))}
        else:
            key = f"object-{id(emulator)}-{uuid.uuid4().hex}"
            shared = {key: (_identity, (emulator,))}
        session.update(pool=_workers.get_pool(n_workers), key=key, shared=shared)

    def submit(chunk: list[_Item]) -> None:
        if not session:
            start()
        pool = session["pool"]
        while pool.busy >= pool.n_workers:
            collect(block=True)
        task = pool.submit(_fit_chunk_in_process, session["key"], fit_function, method, fit_options, emulator_name, chunk,
                           vectorize, shared=session["shared"])
        in_flight[task] = chunk

    def collect(block: bool) -> None:
        if not session:
            return
        for task, (ok, value) in sorted(session["pool"].collect(block=block).items()):
            chunk = in_flight.pop(task, None)
            if chunk is None:  # a task of an earlier, interrupted use of the shared pool
                continue
            if ok:
                rows = value
            elif isinstance(value, _workers.WorkerDied):  # record, go on (the pool replaces the worker)
                rows = [failed_row(source=item.source, index=item.index, object_id=item.object_id, format=item.format,
                                   error=f"{_message(value)} (rerun with retry_failed to refit)", method=method,
                                   emulator=emulator_name, flags=FLAGS["fit_failed"]) for item in chunk]
            else:  # raised by our code outside the per-spectrum fits (each fit records its own failure)
                raise RuntimeError(f"the worker processes could not fit: {_message(value)}") from value
            for row in rows:
                recorder.record(row)

    try:
        _feed_chunks(items, chunk_size, submit, collect, in_flight)
    finally:
        if in_flight:  # interrupted: the chunks in flight are lost (not journaled); stop their workers
            session["pool"].close()
    return n_workers


def _remote_fit_chunk(ray):
    global _REMOTE_FIT_CHUNK
    if _REMOTE_FIT_CHUNK is None:
        # one CPU per task; a worker that dies (killed, out of memory) is replaced and its chunk retried twice
        _REMOTE_FIT_CHUNK = ray.remote(num_cpus=1, max_retries=2)(_fit_chunk)
    return _REMOTE_FIT_CHUNK


def _check_picklable(ray, value, what: str, hint: str) -> None:
    try:
        ray.cloudpickle.dumps(value)
    except Exception as error:
        raise TypeError(f"{what} cannot be sent to Ray workers ({_message(error)}); {hint}") from None


def _put(ray, value, what: str, hint: str):
    try:
        return ray.put(value)
    except Exception as error:
        raise TypeError(f"{what} cannot be sent to Ray workers ({_message(error)}); {hint}") from None


def _init_ray(ray, address: str | None, workers: int | None, **options) -> None:
    """``ray.init``: connect to ``address``, or start a local cluster with ``workers`` CPUs (default: all)."""
    with warnings.catch_warnings():
        # Ray starts its processes with subprocess (fork + exec at once); JAX warns on every fork of a
        # process where it is initialized, which does not apply to a fork followed by exec.
        warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
        if address is not None:
            ray.init(address=address, **options)
        else:
            ray.init(num_cpus=workers or os.cpu_count() or 1, include_dashboard=False, **options)


def _run_on_ray(items: Iterable[_Item], recorder: _Recorder, *, emulator, fit_function, method: str,
                fit_options: Mapping[str, Any], emulator_name: str, workers: int | None, chunk_size: int,
                ray_address: str | None, vectorize: int | None = None) -> int:
    """Fit ``items`` in chunks on Ray, journaling rows as chunks complete; returns the number of Ray workers.

    The cluster is started (or connected to), and the emulator sent, only when
    the first chunk is ready: a rerun with nothing left to fit needs no Ray.
    """
    ray = _import_ray()
    from stellarfit.inference.fit import FLAGS
    from stellarfit.results import failed_row

    if ray.is_initialized() and ray_address is not None:
        raise ValueError("this process is already connected to a Ray cluster (ray.init was called); "
                         "leave ray_address out to use it, or call ray.shutdown() first")
    started = False
    session: dict[str, Any] = {}  # filled by start(): workers, max_in_flight, emulator_spec, fit_reference, remote
    in_flight: dict[Any, list[_Item]] = {}

    def start() -> None:
        nonlocal started
        if not ray.is_initialized():
            try:
                _init_ray(ray, ray_address, workers)
            except ConnectionError as error:
                raise ConnectionError(f"cannot connect to the Ray cluster at {ray_address!r}: {error}; start it with "
                                      "`ray start --head` or check the address") from None
            started = True
        n_workers = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        kind, key, payload = _emulator_payload(emulator)
        session.update(
            workers=n_workers, max_in_flight=2 * n_workers, remote=_remote_fit_chunk(ray),
            emulator_spec={"kind": kind, "key": key, "pin": True,
                           "ref": _put(ray, payload, "the emulator", "pass a stellarfit Emulator or its name/path")},
            fit_reference=None if fit_function is None else _put(
                ray, fit_function, f"fit_function {fit_function!r}", "use a module-level function or a picklable callable object"),
        )

    def submit(chunk: list[_Item]) -> None:
        if not session:
            start()
        while len(in_flight) >= session["max_in_flight"]:
            collect(block=True)
        reference = session["remote"].remote(session["emulator_spec"], session["fit_reference"], method, fit_options,
                                             emulator_name, chunk, vectorize)
        in_flight[reference] = chunk

    def collect(block: bool) -> None:
        if not in_flight:
            return
        ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=None if block else 0)
        if ready:  # and whatever else is finished by now
            ready, _ = ray.wait(list(in_flight), num_returns=len(in_flight), timeout=0)
        for reference in ready:
            chunk = in_flight.pop(reference)
            try:
                rows = ray.get(reference)
            except ray.exceptions.RayTaskError as error:  # raised by our code outside the per-spectrum fits
                cause = getattr(error, "cause", None) or error
                raise RuntimeError(f"the Ray workers could not fit: {_message(cause)}") from None
            except ray.exceptions.RayError as error:  # the worker died even after retries: record, go on
                rows = [failed_row(source=item.source, index=item.index, object_id=item.object_id, format=item.format,
                                   error=f"Ray worker failed: {_message(error)} (rerun with retry_failed to refit)",
                                   method=method, emulator=emulator_name, flags=FLAGS["fit_failed"]) for item in chunk]
            for row in rows:
                recorder.record(row)

    try:
        _feed_chunks(items, chunk_size, submit, collect, in_flight)
    finally:
        # interrupted: the chunks in flight are lost (not journaled). Their workers are killed, not sent a
        # KeyboardInterrupt (ray.cancel without force): one that lands mid-import (a worker's first chunk imports
        # JAX and Flax for seconds) leaves half-initialized modules behind, and the worker could never load an
        # emulator again. Ray starts fresh workers for the next run.
        for reference in in_flight:
            try:
                ray.cancel(reference, force=True)
            except Exception:  # noqa: BLE001 - best effort; the worker may be gone already
                pass
        if started:
            ray.shutdown()
    if session:
        return session["workers"]
    if workers is not None:
        return workers
    return max(1, int(ray.cluster_resources().get("CPU", 1))) if ray.is_initialized() else 0
