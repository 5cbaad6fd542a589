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

Backends: ``'local'`` (this process, one spectrum after the other).  ``'ray'``
is planned and raises :class:`NotImplementedError` for now.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

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
    """

    out: str
    journal: str
    n_ok: int
    n_failed: int
    n_fitted: int
    n_skipped: int
    n_files: int
    elapsed_s: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def journal_path_for(out: str | os.PathLike) -> Path:
    """The journal file of catalog ``out``: ``<out>.journal.jsonl`` in the same directory."""
    out = Path(out)
    return out.with_name(out.name + ".journal.jsonl")


def _is_list_file(path: Path) -> bool:
    return path.name.lower().endswith(_LIST_SUFFIXES)


def expand_inputs(inputs: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Input files, in order, without duplicates.

    Each input is a glob pattern (``*``, ``?``, ``[``; ``**`` recursive), a
    directory (its FITS files, recursively: .fits, .fit, .fts, optionally .gz),
    a list file (.txt, .lst, .list: one path per line, ``#`` comments, relative
    paths relative to the list file) or a spectrum file.

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


def fit_batch_files(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    emulator,
    out_path: str | os.PathLike,
    *,
    method: str = "map",
    format: str | None = None,  # noqa: A002
    resolution: float | None = None,
    snr: float | None = None,
    backend: str = "local",
    retry_failed: bool = False,
    progress: bool = True,
    fit_options: Mapping[str, Any] | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    fit_function: Callable[..., Any] | None = None,
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
        backend: "local" (this process); "ray" is not implemented yet.
        retry_failed: refit spectra recorded as failed in the journal.
        progress: a tqdm progress bar with ETA on stderr.
        fit_options: extra keyword arguments for ``fit_star`` (n_starts, rv_range, ...).
        callback: called with each catalog row right after it is journaled (tests use it to interrupt a run).
        fit_function: ``fit_function(spectrum, emulator, method=..., **fit_options) -> FitResult``
            instead of :func:`~stellarfit.inference.fit_star` (a custom fit pipeline).
    Returns: a :class:`BatchSummary`.
    Raises:
        FileNotFoundError: missing inputs.  ValueError: bad settings, or the
        journal was written with another emulator or method.
        NotImplementedError: backend="ray".
    """
    from stellarfit.inference.fit import FLAGS, fit_star
    from stellarfit.results import Journal, catalog_format, failed_row, result_row, write_catalog

    start = time.perf_counter()
    if backend == "ray":
        raise NotImplementedError("backend='ray' is not implemented yet; use backend='local'")
    if backend != "local":
        raise ValueError(f"unknown backend {backend!r}; available: 'local' ('ray' is planned)")
    from stellarfit.inference import fit as fit_module

    methods = tuple(getattr(fit_module, "METHODS", ("map",)))
    if fit_function is None and method not in methods:
        raise ValueError(f"method {method!r} is not available; choose one of {', '.join(methods)}")
    out_path = Path(out_path)
    kind = catalog_format(out_path)
    if kind == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ImportError(f"a Parquet catalog ({out_path.name}) needs pyarrow: pip install pyarrow, or write .fits or .csv") from None
    if not out_path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {out_path}: the directory {out_path.parent} does not exist")
    files = expand_inputs(inputs)
    if isinstance(emulator, (str, os.PathLike)):
        from stellarfit.emulators import load_emulator

        emulator = load_emulator(emulator)
    emulator_name = str(emulator.metadata.get("name", type(emulator).__name__))
    options: dict[str, Any] = {}
    if resolution is not None:
        options["resolution"] = float(resolution)
    if snr is not None:
        options["snr"] = float(snr)
    fit_options = dict(fit_options or {})
    fit = fit_star if fit_function is None else fit_function

    journal_path = journal_path_for(out_path)
    n_fitted = n_skipped = 0
    from tqdm import tqdm

    with Journal(journal_path, header={"emulator": emulator_name, "method": method}) as journal:
        bar = tqdm(total=len(files), unit="spectrum", file=sys.stderr, disable=not progress, dynamic_ncols=True,
                   desc="batch fit")
        try:
            for path in files:
                source = str(path.resolve())
                common = {"source": source, "method": method, "emulator": emulator_name}
                unreadable = journal.rows.get((source, -1), {}).get("status") == "failed"
                if unreadable and not retry_failed:  # the file itself could not be read before
                    n_skipped += 1
                    bar.update(1)
                    continue
                t0 = time.perf_counter()
                try:
                    spectra = _read(path, format, options)
                except Exception as error:  # unreadable file: one failed row, go on
                    row = failed_row(index=-1, error=_message(error), elapsed_s=time.perf_counter() - t0, **common)
                    journal.append(row)
                    n_fitted += 1
                    bar.update(1)
                    if callback is not None:
                        callback(row)
                    continue
                if unreadable:  # the file was unreadable before and reads now
                    journal.append({**journal.rows[(source, -1)], "status": "superseded"})
                entries = [(int(s.metadata.get("row", i)), s, None) for i, s in enumerate(spectra)]
                entries += [(int(s.get("row", -2)), None, s) for s in getattr(spectra, "skipped", [])]
                bar.total += max(len(entries), 1) - 1
                bar.refresh()
                for index, spectrum, skipped in sorted(entries, key=lambda e: e[0]):
                    if journal.done(source, index, retry_failed=retry_failed):
                        n_skipped += 1
                        bar.update(1)
                        continue
                    t0 = time.perf_counter()
                    object_id = None
                    if spectrum is not None:
                        object_id = spectrum.metadata.get("object_id")
                    elif skipped is not None:
                        object_id = skipped.get("object_id")
                    object_id = None if object_id is None else str(object_id)
                    file_format = None if spectrum is None else spectrum.metadata.get("format")
                    if skipped is not None:
                        row = failed_row(index=index, error=f"unusable spectrum: {skipped.get('reason')}", object_id=object_id,
                                         elapsed_s=0.0, **common)
                    else:
                        try:
                            result = fit(spectrum, emulator, method=method, **fit_options)
                            row = result_row(result, source=source, index=index, object_id=object_id, format=file_format)
                        except Exception as error:  # one bad spectrum must not stop the catalog
                            row = failed_row(index=index, error=_message(error), object_id=object_id, format=file_format,
                                             elapsed_s=time.perf_counter() - t0, flags=FLAGS["fit_failed"], **common)
                    journal.append(row)
                    n_fitted += 1
                    bar.update(1)
                    if callback is not None:
                        callback(row)
        finally:
            bar.close()
        rows = [row for row in journal.rows.values() if row.get("status") != "superseded"]

    order = {str(p.resolve()): i for i, p in enumerate(files)}
    rows.sort(key=lambda r: (order.get(r["source"], len(order)), r["source"], int(r["index"])))
    write_catalog(rows, out_path)
    n_ok = sum(row.get("status") == "ok" for row in rows)
    return BatchSummary(
        out=str(out_path), journal=str(journal_path), n_ok=n_ok, n_failed=len(rows) - n_ok, n_fitted=n_fitted,
        n_skipped=n_skipped, n_files=len(files), elapsed_s=time.perf_counter() - start,
    )
