"""The grid file format (schema version 1): its constants, errors and containers, the checks of labels,
wavelengths and fluxes, train / validation / test splits (:func:`split_indices`), and the atomic writer
used both by :meth:`~stellarfit.grids.SpectralGrid.write` and by the grid-generation runner.

HDF5 layout (one file per grid)::

    /                      attrs: format = "stellarfit-spectral-grid",
                                  schema_version = 1,
                                  label_spec = JSON list of labels (LabelSpec.to_json),
                                  label_names = JSON list of names,
                                  continuum_kind = "absolute" | "log10" | "none"
    /labels                (n_spectra, n_labels) float64, LabelSpec order
    /wavelength            (n_pixels,) float64, vacuum Angstrom, strictly increasing
    /flux                  (n_spectra, n_pixels) float32, continuum-normalized;
                           chunked along spectra, lzf (or gzip level 1) compressed
    /continuum             (n_spectra, n_pixels) float32 (only if the grid has one):
                           absolute continuum flux as the engine gives it, or its log10
    /design_index          (n_spectra,) int64: row of each spectrum in the label
                           design the grid was generated from
    /metadata              scalar UTF-8 string: JSON object (engine, versions,
                           line list, atmospheres, resolution, config, seed, created ...)
    /failures/indices      (n_failed,) int64 design rows whose synthesis failed
    /failures/labels       (n_failed, n_labels) float64 their labels
    /failures/messages     (n_failed,) UTF-8 strings: why each failed

Failed spectra are *excluded* from ``labels``/``flux``/``continuum``; they are
listed only in ``/failures``.  Datasets are written once; a grid file is never
edited in place (writes go to a temporary file in the same directory that is
renamed over the target with :func:`os.replace`, so a reader never sees a
half-written grid).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import h5py
import numpy as np

from stellarfit._io import atomic_path, default_file_mode, to_jsonable
from stellarfit.labels import LabelSpec

__all__ = [
    "FORMAT_NAME",
    "SCHEMA_VERSION",
    "GridBatch",
    "GridFailures",
    "GridFormatError",
    "check_writable",
    "split_indices",
]

#: Value of the root ``format`` attribute that marks a stellarfit grid file.
FORMAT_NAME = "stellarfit-spectral-grid"
#: Version of the layout described in the module docstring.
SCHEMA_VERSION = 1

_CONTINUUM_KINDS = ("absolute", "log10")
_REQUIRED_DATASETS = ("labels", "wavelength", "flux", "metadata")
#: Target size of one HDF5 chunk of flux (bytes); at most 64 spectra per chunk.
_CHUNK_BYTES = 1 << 20
_MAX_CHUNK_ROWS = 64
#: HDF5 chunk cache per open dataset; larger than one chunk so that reading a
#: chunk row by row does not decompress it again each time.
_CACHE_BYTES = 32 << 20


class GridFormatError(ValueError):
    """A file is not a readable stellarfit grid (not HDF5, corrupt, or foreign)."""


class GridBatch(NamedTuple):
    """One batch of a grid.

    Attributes:
        labels: (batch, n_labels) float64, LabelSpec order.
        flux: (batch, n_pixels) float32, continuum-normalized.
        continuum: (batch, n_pixels) float32, or None if the grid has none
            (or it was not asked for).
    """

    labels: np.ndarray
    flux: np.ndarray
    continuum: np.ndarray | None


@dataclasses.dataclass(frozen=True)
class GridFailures:
    """Spectra of a design that could not be synthesized.

    Attributes:
        indices: (n_failed,) int64 rows in the original label design.
        labels: (n_failed, n_labels) float64.
        messages: one reason per failure (exception type and message).
    """

    indices: np.ndarray
    labels: np.ndarray
    messages: tuple[str, ...]

    @classmethod
    def empty(cls, n_labels: int) -> "GridFailures":
        return cls(np.zeros(0, np.int64), np.zeros((0, n_labels), np.float64), ())

    def __post_init__(self) -> None:
        indices = np.asarray(self.indices, dtype=np.int64).reshape(-1)
        labels = np.asarray(self.labels, dtype=np.float64)
        messages = tuple(str(m) for m in self.messages)
        if labels.ndim != 2 or labels.shape[0] != indices.size or len(messages) != indices.size:
            raise ValueError(
                f"failures: indices {indices.shape}, labels {labels.shape} and {len(messages)} messages "
                "must describe the same number of stars (labels of shape (n_failed, n_labels))"
            )
        object.__setattr__(self, "indices", indices)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "messages", messages)

    def __len__(self) -> int:
        return int(self.indices.size)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, GridFailures)
            and np.array_equal(self.indices, other.indices)
            and np.array_equal(self.labels, other.labels)
            and self.messages == other.messages
        )


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
def _json_default(value: Any) -> Any:
    """``json.dumps``' ``default`` hook of grid metadata and settings: numpy values, paths and sets as
    JSON types (:func:`stellarfit._io.to_jsonable`; NaN kept as NaN, as before), a TypeError for the rest."""
    return to_jsonable(value, non_finite="keep", other="error")


def _metadata_json(metadata: Mapping[str, Any]) -> str:
    try:
        return json.dumps(dict(metadata), default=_json_default, sort_keys=True)
    except (TypeError, ValueError) as error:
        raise ValueError(f"grid metadata must be JSON-serializable (str, numbers, lists, dicts): {error}") from None


def _now_utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


#: the mode a new file gets (the umask's); the name the grid modules import
_default_file_mode = default_file_mode


def check_writable(path: str | os.PathLike[str]) -> Path:
    """Check, before any work, that a file can be created at ``path``.

    The parent directory must exist and accept a new file (tested by creating
    and removing a temporary file there); ``path`` must not be a directory.

    Returns:
        ``path`` as an absolute :class:`~pathlib.Path`.

    Raises:
        FileNotFoundError, NotADirectoryError, IsADirectoryError,
        PermissionError: with a message naming the path and what to do.
    """
    path = Path(path).expanduser().absolute()
    parent = path.parent
    if path.is_dir():
        raise IsADirectoryError(f"cannot write the grid to {path}: it is a directory; give a file name such as {path / 'grid.h5'}")
    if not parent.exists():
        raise FileNotFoundError(f"cannot write {path}: the directory {parent} does not exist; create it first (mkdir -p {parent})")
    if not parent.is_dir():
        raise NotADirectoryError(f"cannot write {path}: {parent} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=parent)
    except OSError as error:
        raise PermissionError(f"cannot write {path}: the directory {parent} is not writable ({error.strerror or error}); choose another output path") from None
    os.close(fd)
    os.unlink(probe)
    return path


def split_indices(n: int, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0) -> tuple[np.ndarray, ...]:
    """Random disjoint split of ``range(n)`` into parts of the given fractions.

    Deterministic for a given ``(n, fractions, seed)``.  Part sizes are
    ``floor(n * f)`` with the remaining rows given to the parts with the
    largest remainders, so every row is in exactly one part.

    Args:
        n: number of rows.
        fractions: non-negative, summing to 1 (e.g. train, validation, test).
        seed: seed of the permutation (numpy ``default_rng``).

    Returns:
        One sorted int64 index array per fraction.
    """
    if int(n) != n or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    n = int(n)
    fractions = np.asarray(fractions, dtype=np.float64)
    if fractions.ndim != 1 or fractions.size == 0 or np.any(~np.isfinite(fractions)) or np.any(fractions < 0):
        raise ValueError(f"fractions must be a non-empty sequence of non-negative numbers, got {fractions.tolist()}")
    if abs(fractions.sum() - 1.0) > 1e-6:
        raise ValueError(f"fractions must sum to 1, got {fractions.tolist()} (sum {fractions.sum():g})")
    exact = fractions * n
    counts = np.floor(exact).astype(np.int64)
    remainder = n - int(counts.sum())
    if remainder:
        order = np.argsort(-(exact - counts), kind="stable")
        counts[order[:remainder]] += 1
    permutation = np.random.default_rng(seed).permutation(n)
    bounds = np.concatenate([[0], np.cumsum(counts)])
    return tuple(np.sort(permutation[bounds[i] : bounds[i + 1]]).astype(np.int64) for i in range(len(counts)))


def _check_labels_wavelength(labels: np.ndarray, wavelength: np.ndarray, label_spec: LabelSpec) -> None:
    if labels.ndim != 2:
        raise ValueError(f"labels must have shape (n_spectra, n_labels), got {labels.shape}")
    if labels.shape[1] != len(label_spec):
        raise ValueError(f"labels have {labels.shape[1]} columns but the label spec has {len(label_spec)} labels ({', '.join(label_spec.names)})")
    bad = ~np.isfinite(labels)
    if bad.any():
        rows, cols = np.nonzero(bad)
        raise ValueError(f"labels must be finite; row {rows[0]} has {label_spec.names[cols[0]]}={labels[rows[0], cols[0]]} ({bad.any(axis=1).sum()} bad rows)")
    if wavelength.ndim != 1 or wavelength.size == 0:
        raise ValueError(f"wavelength must have shape (n_pixels,) with n_pixels > 0, got {wavelength.shape}")
    if not np.all(np.isfinite(wavelength)) or np.any(wavelength <= 0):
        raise ValueError("wavelength must be finite and positive (vacuum Angstrom)")
    if wavelength.size > 1 and np.any(np.diff(wavelength) <= 0):
        i = int(np.argmax(np.diff(wavelength) <= 0))
        raise ValueError(f"wavelength must be strictly increasing; pixel {i + 1} ({wavelength[i + 1]!r}) follows {wavelength[i]!r}")


def _check_finite_blocks(name: str, array: np.ndarray, block: int = 256) -> None:
    """Raise if ``array`` (2-D) has non-finite values; scans in blocks to bound memory."""
    for start in range(0, array.shape[0], block):
        part = array[start : start + block]
        finite = np.isfinite(part)
        if not finite.all():
            row = start + int(np.argmax(~finite.all(axis=1)))
            raise ValueError(f"{name} must be finite; spectrum {row} has NaN or infinite values (exclude failed spectra from the grid)")


def _chunk_rows(n_spectra: int, n_pixels: int) -> int:
    return int(max(1, min(n_spectra, _MAX_CHUNK_ROWS, _CHUNK_BYTES // (4 * n_pixels))))


class _GridWriter:
    """Atomic, incremental writer of one grid file (used by write() and generation).

    Usage::

        with _GridWriter(path, labels=..., ...) as writer:
            writer.write_rows(start, flux_rows, continuum_rows)
        # on success the temporary file replaces ``path``; on error it is removed
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        labels: np.ndarray,
        wavelength: np.ndarray,
        label_spec: LabelSpec,
        metadata: Mapping[str, Any],
        continuum_kind: str | None,
        design_index: np.ndarray,
        failures: GridFailures,
        compression: str = "lzf",
    ):
        self.path = check_writable(path)
        if compression not in ("lzf", "gzip", None):
            raise ValueError(f"compression must be 'lzf', 'gzip' or None, got {compression!r}")
        self.labels = np.asarray(labels, dtype=np.float64)
        self.wavelength = np.asarray(wavelength, dtype=np.float64)
        self.label_spec = label_spec
        self.metadata_json = _metadata_json(metadata)
        self.continuum_kind = continuum_kind
        self.design_index = np.asarray(design_index, dtype=np.int64)
        self.failures = failures
        self.compression = compression
        self._file: h5py.File | None = None
        self._tmp: str | None = None

    def __enter__(self) -> "_GridWriter":
        self._atomic = atomic_path(self.path)  # renamed over self.path by __exit__, removed on an error
        self._tmp = str(self._atomic.__enter__())
        try:
            self._file = h5py.File(self._tmp, "w")
            self._write_header()
        except BaseException:
            self._abort(*sys.exc_info())
            raise
        return self

    def _write_header(self) -> None:
        f = self._file
        assert f is not None
        n, n_labels = self.labels.shape
        n_pixels = self.wavelength.size
        f.attrs["format"] = FORMAT_NAME
        f.attrs["schema_version"] = SCHEMA_VERSION
        f.attrs["label_spec"] = json.dumps(self.label_spec.to_json())
        f.attrs["label_names"] = json.dumps(list(self.label_spec.names))
        f.attrs["continuum_kind"] = self.continuum_kind or "none"
        f.create_dataset("labels", data=self.labels)
        f.create_dataset("wavelength", data=self.wavelength)
        f.create_dataset("design_index", data=self.design_index)
        f.create_dataset("metadata", data=self.metadata_json, dtype=h5py.string_dtype("utf-8"))
        options: dict[str, Any] = {}
        if n > 0:
            options["chunks"] = (_chunk_rows(n, n_pixels), n_pixels)
            if self.compression == "gzip":
                options.update(compression="gzip", compression_opts=1, shuffle=True)
            elif self.compression == "lzf":
                options.update(compression="lzf", shuffle=True)
        f.create_dataset("flux", shape=(n, n_pixels), dtype=np.float32, **options)
        if self.continuum_kind is not None:
            f.create_dataset("continuum", shape=(n, n_pixels), dtype=np.float32, **options)
        group = f.create_group("failures")
        group.create_dataset("indices", data=self.failures.indices)
        group.create_dataset("labels", data=self.failures.labels.reshape(-1, n_labels))
        group.create_dataset("messages", data=np.array(self.failures.messages, dtype=object), dtype=h5py.string_dtype("utf-8"))

    def write_rows(self, start: int, flux: np.ndarray, continuum: np.ndarray | None = None) -> None:
        """Write spectra ``start .. start + len(flux)``; flux/continuum (rows, n_pixels)."""
        assert self._file is not None
        stop = start + flux.shape[0]
        self._file["flux"][start:stop] = np.asarray(flux, dtype=np.float32)
        if self.continuum_kind is not None:
            if continuum is None:
                raise ValueError("this grid has a continuum; give continuum rows too")
            self._file["continuum"][start:stop] = np.asarray(continuum, dtype=np.float32)

    def _abort(self, exc_type, exc, tb) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except Exception:  # noqa: BLE001 - best effort cleanup
                pass
            self._file = None
        if self._tmp is not None:
            self._tmp = None
            self._atomic.__exit__(exc_type, exc, tb)  # removes the temporary file

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._abort(exc_type, exc, tb)
            return
        assert self._file is not None and self._tmp is not None
        try:
            self._file.flush()
            self._file.close()
            self._file = None
        except BaseException:
            self._abort(*sys.exc_info())
            raise
        self._tmp = None
        self._atomic.__exit__(None, None, None)  # fsync, the usual file mode, os.replace
