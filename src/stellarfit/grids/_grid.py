"""SpectralGrid: a grid of synthetic spectra with its labels, in memory (:class:`SpectralGrid`) or as an
open HDF5 file streamed in batches (:class:`SpectralGridFile`).  The file layout, the checks and the
writer: :mod:`stellarfit.grids._format`."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from stellarfit.labels import LabelSpec
from stellarfit.grids._format import (  # noqa: F401 - the format's names, importable from here as before
    _CACHE_BYTES,
    _CONTINUUM_KINDS,
    _REQUIRED_DATASETS,
    FORMAT_NAME,
    SCHEMA_VERSION,
    GridBatch,
    GridFailures,
    GridFormatError,
    _check_finite_blocks,
    _check_labels_wavelength,
    _chunk_rows,
    _default_file_mode,
    _GridWriter,
    _json_default,
    _metadata_json,
    _now_utc,
    check_writable,
    split_indices,
)

__all__ = [
    "FORMAT_NAME",
    "SCHEMA_VERSION",
    "GridBatch",
    "GridFailures",
    "GridFormatError",
    "SpectralGrid",
    "SpectralGridFile",
    "check_writable",
    "split_indices",
]


# ---------------------------------------------------------------------------
# shared behaviour of in-memory grids and open grid files
# ---------------------------------------------------------------------------
class _GridBase:
    labels: np.ndarray
    wavelength: np.ndarray
    label_spec: LabelSpec
    metadata: dict[str, Any]
    continuum_kind: str | None
    design_index: np.ndarray
    failures: GridFailures

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def n_spectra(self) -> int:
        return len(self)

    @property
    def n_pixels(self) -> int:
        return int(self.wavelength.size)

    @property
    def label_names(self) -> tuple[str, ...]:
        return self.label_spec.names

    @property
    def has_continuum(self) -> bool:
        return self.continuum_kind is not None

    @property
    def continuum_is_log10(self) -> bool:
        """True if the stored continuum is log10 of the flux, False if absolute (or absent)."""
        return self.continuum_kind == "log10"

    def split(self, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0) -> tuple[np.ndarray, ...]:
        """Disjoint random index arrays covering the grid (see :func:`split_indices`).

        Example:
            >>> train, val, test = grid.split((0.8, 0.1, 0.1), seed=0)  # doctest: +SKIP
            >>> train_grid = grid.subset(train)                           # doctest: +SKIP
        """
        return split_indices(len(self), fractions, seed)

    def _source(self) -> str:
        return "in memory"

    def describe(self) -> str:
        """Multi-line human-readable summary (size, wavelength range, label ranges, provenance)."""
        lines = [f"SpectralGrid ({self._source()})"]
        lines.append(f"  spectra: {len(self)}   pixels: {self.n_pixels}   failed: {len(self.failures)}")
        if self.n_pixels:
            w = self.wavelength
            lines.append(f"  wavelength: {w[0]:.3f} - {w[-1]:.3f} A (vacuum)")
        lines.append(f"  continuum: {self.continuum_kind or 'none'}")
        lines.append("  labels (grid min .. max | spec bounds):")
        for i, label in enumerate(self.label_spec):
            if len(self):
                lo, hi = self.labels[:, i].min(), self.labels[:, i].max()
                rng = f"{lo:10.4g} .. {hi:<10.4g}"
            else:
                rng = f"{'-':>10} .. {'-':<10}"
            lines.append(f"    {label.name:<10} {rng} | [{label.lower:g}, {label.upper:g}] {label.unit}")
        engine = self.metadata.get("engine")
        if isinstance(engine, Mapping):
            name = engine.get("name") or engine.get("engine") or "?"
            version = engine.get("version") or engine.get("engine_version") or ""
            lines.append(f"  engine: {name} {version}".rstrip())
        for key in ("created", "seed", "design"):
            if key in self.metadata:
                lines.append(f"  {key}: {self.metadata[key]}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_spectra={len(self)}, n_pixels={self.n_pixels}, labels={list(self.label_names)})"


# ---------------------------------------------------------------------------
# in-memory grid
# ---------------------------------------------------------------------------
class SpectralGrid(_GridBase):
    """A grid of synthetic spectra held in memory.

    Args:
        labels: (n_spectra, n_labels) float64, in ``label_spec`` order.
        wavelength: (n_pixels,) float64, vacuum Angstrom, strictly increasing.
        flux: (n_spectra, n_pixels) float32, continuum-normalized flux.
        label_spec: the labels' names, units and bounds.
        continuum: (n_spectra, n_pixels) float32 or None; the continuum as the
            engine gives it (``continuum_kind='absolute'``, erg/s/cm2/A) or its
            log10 (``continuum_kind='log10'``).
        continuum_kind: 'absolute' or 'log10' (ignored if ``continuum`` is None).
        metadata: JSON-serializable dict (engine name/version, line list,
            atmospheres, resolution, full config, seed, design ...).  ``created``
            (UTC ISO time) and ``schema_version`` are added if missing.
        design_index: (n_spectra,) int64 row of each spectrum in the design it
            was generated from (default ``arange(n_spectra)``).
        failures: stars of the design that failed (default none).

    Example:
        >>> grid = SpectralGrid(labels, wavelength, flux, spec, continuum=cont)  # doctest: +SKIP
        >>> grid.write("grid.h5")                                               # doctest: +SKIP
        >>> with SpectralGrid.open("grid.h5") as f:                               # doctest: +SKIP
        ...     for labels, flux, continuum in f.iter_batches(256): ...
    """

    def __init__(
        self,
        labels: np.ndarray,
        wavelength: np.ndarray,
        flux: np.ndarray,
        label_spec: LabelSpec,
        *,
        continuum: np.ndarray | None = None,
        continuum_kind: str = "absolute",
        metadata: Mapping[str, Any] | None = None,
        design_index: np.ndarray | None = None,
        failures: GridFailures | None = None,
    ):
        if not isinstance(label_spec, LabelSpec):
            raise TypeError(f"label_spec must be a stellarfit.labels.LabelSpec, got {type(label_spec).__name__}")
        self.label_spec = label_spec
        self.labels = np.ascontiguousarray(labels, dtype=np.float64)
        self.wavelength = np.ascontiguousarray(wavelength, dtype=np.float64)
        _check_labels_wavelength(self.labels, self.wavelength, label_spec)
        n, n_pixels = self.labels.shape[0], self.wavelength.size
        self.flux = np.ascontiguousarray(flux, dtype=np.float32)
        if self.flux.shape != (n, n_pixels):
            raise ValueError(f"flux has shape {self.flux.shape}; expected (n_spectra, n_pixels) = ({n}, {n_pixels}) from labels and wavelength")
        _check_finite_blocks("flux", self.flux)
        if continuum is None:
            self.continuum = None
            self.continuum_kind = None
        else:
            if continuum_kind not in _CONTINUUM_KINDS:
                raise ValueError(f"continuum_kind must be one of {_CONTINUUM_KINDS}, got {continuum_kind!r}")
            self.continuum = np.ascontiguousarray(continuum, dtype=np.float32)
            if self.continuum.shape != (n, n_pixels):
                raise ValueError(f"continuum has shape {self.continuum.shape}; expected ({n}, {n_pixels}) like flux")
            _check_finite_blocks("continuum", self.continuum)
            self.continuum_kind = continuum_kind
        if design_index is None:
            design_index = np.arange(n, dtype=np.int64)
        self.design_index = np.asarray(design_index, dtype=np.int64).reshape(-1)
        if self.design_index.size != n:
            raise ValueError(f"design_index has {self.design_index.size} entries; expected one per spectrum ({n})")
        self.failures = failures if failures is not None else GridFailures.empty(len(label_spec))
        if self.failures.labels.shape[1] != len(label_spec):
            raise ValueError(f"failures.labels has {self.failures.labels.shape[1]} columns; expected {len(label_spec)}")
        meta = dict(metadata or {})
        meta.setdefault("schema_version", SCHEMA_VERSION)
        meta.setdefault("created", _now_utc())
        _metadata_json(meta)  # fail now, not at write time
        self.metadata = meta

    # -- conversions --------------------------------------------------------
    def log10_continuum(self) -> np.ndarray | None:
        """(n_spectra, n_pixels) float32 log10 of the continuum (None if the grid has none)."""
        if self.continuum is None:
            return None
        if self.continuum_kind == "log10":
            return self.continuum
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log10(self.continuum).astype(np.float32)

    def subset(self, indices: np.ndarray | Sequence[int]) -> "SpectralGrid":
        """A new in-memory grid with the spectra at ``indices`` (in that order)."""
        idx = _as_indices(indices, len(self))
        return SpectralGrid(
            self.labels[idx],
            self.wavelength,
            self.flux[idx],
            self.label_spec,
            continuum=None if self.continuum is None else self.continuum[idx],
            continuum_kind=self.continuum_kind or "absolute",
            metadata=dict(self.metadata),
            design_index=self.design_index[idx],
            failures=self.failures,
        )

    def iter_batches(
        self,
        batch_size: int,
        indices: np.ndarray | Sequence[int] | None = None,
        *,
        with_continuum: bool = True,
        shuffle: bool = False,
        seed: int = 0,
    ) -> Iterator[GridBatch]:
        """Yield :class:`GridBatch` (labels, flux, continuum) of ``batch_size`` spectra (last may be short).

        ``indices`` (default all rows) are visited in the given order, or in a
        random permutation of them (``numpy.random.default_rng(seed)``) if
        ``shuffle``.
        """
        idx = _as_indices(indices, len(self))
        _check_batch_size(batch_size)
        if shuffle:
            idx = np.random.default_rng(seed).permutation(idx)
        for start in range(0, idx.size, batch_size):
            rows = idx[start : start + batch_size]
            cont = self.continuum[rows] if (with_continuum and self.continuum is not None) else None
            yield GridBatch(self.labels[rows], self.flux[rows], cont)

    # -- I/O ----------------------------------------------------------------
    def write(self, path: str | os.PathLike[str], *, compression: str = "lzf") -> Path:
        """Write the grid to an HDF5 file, atomically (temp file + os.replace).

        Args:
            path: output file; an existing file is replaced.
            compression: 'lzf' (default, fast), 'gzip' (level 1) or None.

        Returns:
            The absolute path written.
        """
        with _GridWriter(
            path,
            labels=self.labels,
            wavelength=self.wavelength,
            label_spec=self.label_spec,
            metadata=self.metadata,
            continuum_kind=self.continuum_kind,
            design_index=self.design_index,
            failures=self.failures,
            compression=compression,
        ) as writer:
            block = 1024
            for start in range(0, len(self), block):
                cont = None if self.continuum is None else self.continuum[start : start + block]
                writer.write_rows(start, self.flux[start : start + block], cont)
        return writer.path

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> "SpectralGrid":
        """Load a whole grid file into memory (see :meth:`open` for streaming)."""
        with SpectralGridFile(path) as f:
            return f.load()

    @staticmethod
    def open(path: str | os.PathLike[str]) -> "SpectralGridFile":
        """Open a grid file for streaming; use as a context manager."""
        return SpectralGridFile(path)


def _as_indices(indices: np.ndarray | Sequence[int] | None, n: int) -> np.ndarray:
    if indices is None:
        return np.arange(n, dtype=np.int64)
    idx = np.asarray(indices)
    if idx.dtype == bool:
        if idx.shape != (n,):
            raise ValueError(f"a boolean mask must have shape ({n},), got {idx.shape}")
        return np.nonzero(idx)[0].astype(np.int64)
    if idx.size == 0:
        return np.zeros(0, dtype=np.int64)
    if not np.issubdtype(idx.dtype, np.integer) or idx.ndim != 1:
        raise TypeError(f"indices must be a 1-D integer array (or a boolean mask), got dtype {idx.dtype} shape {idx.shape}")
    idx = idx.astype(np.int64)
    if idx.min() < -n or idx.max() >= n:
        raise IndexError(f"indices out of range for a grid of {n} spectra (got {idx.min()} .. {idx.max()})")
    return np.where(idx < 0, idx + n, idx)


def _check_batch_size(batch_size: int) -> None:
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")


# ---------------------------------------------------------------------------
# open grid file (streaming)
# ---------------------------------------------------------------------------
class SpectralGridFile(_GridBase):
    """A grid file opened read-only; labels and metadata in memory, flux streamed.

    Use as a context manager (or call :meth:`close`).  Labels
    ((n_spectra, n_labels) float64), wavelength, label spec, metadata and
    failures are loaded on opening; flux and continuum are read on demand.

    Raises:
        FileNotFoundError: no such file.
        GridFormatError: not HDF5, corrupt/truncated, or an HDF5 file that is
            not a stellarfit grid (the message says what is missing).
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path).expanduser().absolute()
        if not self.path.exists():
            raise FileNotFoundError(f"grid file {self.path} does not exist")
        if self.path.is_dir():
            raise GridFormatError(f"{self.path} is a directory, not a grid file")
        try:
            is_hdf5 = h5py.is_hdf5(self.path)
        except OSError as error:
            raise GridFormatError(f"cannot read {self.path}: {error}") from None
        if not is_hdf5:
            raise GridFormatError(
                f"{self.path} is not an HDF5 file (no HDF5 signature); a stellarfit grid is an HDF5 file written by SpectralGrid.write or generate_grid"
            )
        try:
            self._file = h5py.File(self.path, "r", rdcc_nbytes=_CACHE_BYTES)
        except OSError as error:
            raise GridFormatError(f"{self.path} is an HDF5 file but cannot be opened; it is probably corrupt or truncated (an interrupted copy?): {error}") from None
        try:
            self._load_header()
        except BaseException:
            self._file.close()
            raise

    def _fail(self, what: str) -> GridFormatError:
        return GridFormatError(f"{self.path} is not a valid stellarfit grid: {what}")

    def _load_header(self) -> None:
        f = self._file
        try:
            marker = f.attrs.get("format")
            if isinstance(marker, bytes):
                marker = marker.decode()
            if marker != FORMAT_NAME:
                found = "no 'format' attribute" if marker is None else f"format attribute {marker!r}"
                raise self._fail(f"it is an HDF5 file but not a stellarfit grid ({found}; expected format={FORMAT_NAME!r})")
            version = int(f.attrs.get("schema_version", -1))
            if version < 1:
                raise self._fail("missing or invalid 'schema_version' attribute")
            if version > SCHEMA_VERSION:
                raise self._fail(f"schema version {version} is newer than this stellarfit supports ({SCHEMA_VERSION}); upgrade stellarfit")
            missing = [name for name in _REQUIRED_DATASETS if name not in f]
            if missing:
                raise self._fail(f"missing dataset(s) {missing}")
            try:
                self.label_spec = LabelSpec.from_json(_attr_str(f.attrs["label_spec"]))
            except (KeyError, ValueError, TypeError) as error:
                raise self._fail(f"missing or invalid 'label_spec' attribute ({error})") from None
            kind = _attr_str(f.attrs.get("continuum_kind", "none"))
            if kind not in (*_CONTINUUM_KINDS, "none"):
                raise self._fail(f"unknown continuum_kind {kind!r}")
            self.continuum_kind = None if kind == "none" else kind
            if self.continuum_kind is not None and "continuum" not in f:
                raise self._fail(f"continuum_kind is {kind!r} but the 'continuum' dataset is missing")
            self.labels = np.asarray(f["labels"][...], dtype=np.float64)
            self.wavelength = np.asarray(f["wavelength"][...], dtype=np.float64)
            try:
                _check_labels_wavelength(self.labels, self.wavelength, self.label_spec)
            except ValueError as error:
                raise self._fail(str(error)) from None
            n, n_pixels = self.labels.shape[0], self.wavelength.size
            self._flux = f["flux"]
            if self._flux.shape != (n, n_pixels):
                raise self._fail(f"flux has shape {self._flux.shape}; expected ({n}, {n_pixels}) from labels and wavelength")
            self._continuum = f["continuum"] if self.continuum_kind is not None else None
            if self._continuum is not None and self._continuum.shape != (n, n_pixels):
                raise self._fail(f"continuum has shape {self._continuum.shape}; expected ({n}, {n_pixels})")
            try:
                self.metadata = json.loads(_attr_str(f["metadata"][()]))
            except (ValueError, TypeError) as error:
                raise self._fail(f"the metadata dataset is not valid JSON ({error})") from None
            if not isinstance(self.metadata, dict):
                raise self._fail("the metadata dataset is not a JSON object")
            self.design_index = np.asarray(f["design_index"][...], dtype=np.int64) if "design_index" in f else np.arange(n, dtype=np.int64)
            if self.design_index.shape != (n,):
                raise self._fail(f"design_index has shape {self.design_index.shape}; expected ({n},)")
            if "failures" in f:
                g = f["failures"]
                try:
                    self.failures = GridFailures(
                        g["indices"][...],
                        np.asarray(g["labels"][...]).reshape(-1, len(self.label_spec)),
                        tuple(_attr_str(m) for m in g["messages"][...]),
                    )
                except (KeyError, ValueError) as error:
                    raise self._fail(f"invalid 'failures' group ({error})") from None
            else:
                self.failures = GridFailures.empty(len(self.label_spec))
        except GridFormatError:
            raise
        except (OSError, RuntimeError, KeyError) as error:
            raise self._fail(f"the file is corrupt or truncated ({type(error).__name__}: {error})") from None

    # -- context manager -----------------------------------------------------
    def close(self) -> None:
        if getattr(self, "_file", None) is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> "SpectralGridFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _source(self) -> str:
        return str(self.path)

    def _require_open(self) -> None:
        if self._file is None:
            raise ValueError(f"the grid file {self.path} is closed; open it again with SpectralGrid.open")

    # -- reading ------------------------------------------------------------
    def _read_dataset_rows(self, dataset: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (any order, repeats allowed) of a 2-D dataset, reading whole HDF5 chunks."""
        out = np.empty((rows.size, dataset.shape[1]), dtype=np.float32)
        if rows.size == 0:
            return out
        try:
            lo, hi = int(rows.min()), int(rows.max())
            if hi - lo + 1 == rows.size and np.all(np.diff(rows) == 1):
                out[:] = dataset[lo : hi + 1]
                return out
            step = dataset.chunks[0] if dataset.chunks else 64
            blocks = rows // step
            order = np.argsort(blocks, kind="stable")
            sorted_blocks = blocks[order]
            cuts = np.flatnonzero(np.diff(sorted_blocks)) + 1
            for group in np.split(order, cuts):
                b = int(blocks[group[0]])
                start, stop = b * step, min((b + 1) * step, dataset.shape[0])
                block = dataset[start:stop]
                out[group] = block[rows[group] - start]
        except (OSError, RuntimeError) as error:
            raise GridFormatError(f"cannot read {dataset.name.lstrip('/')} from {self.path}: the file is corrupt ({error})") from None
        return out

    def read_rows(self, indices: np.ndarray | Sequence[int], *, with_continuum: bool = True) -> GridBatch:
        """Labels, flux and (if present and asked for) continuum of the spectra at ``indices``."""
        self._require_open()
        idx = _as_indices(indices, len(self))
        flux = self._read_dataset_rows(self._flux, idx)
        cont = self._read_dataset_rows(self._continuum, idx) if (with_continuum and self._continuum is not None) else None
        return GridBatch(self.labels[idx], flux, cont)

    def iter_batches(
        self,
        batch_size: int,
        indices: np.ndarray | Sequence[int] | None = None,
        *,
        with_continuum: bool = True,
        shuffle: bool = False,
        seed: int = 0,
        shuffle_buffer: int | None = None,
    ) -> Iterator[GridBatch]:
        """Yield :class:`GridBatch` (labels, flux, continuum) without loading the whole grid.

        Args:
            batch_size: spectra per batch (the last batch may be shorter).
            indices: rows to visit (e.g. a training split); default all rows.
                Without ``shuffle`` they are visited in the given order.
            with_continuum: read the continuum too (None in the batch if not,
                or if the grid has none).
            shuffle: visit ``indices`` in a random order that reads each HDF5
                chunk once per pass: the chunks are taken in random order,
                ``shuffle_buffer`` spectra at a time (default
                ``4 * batch_size``) are read and permuted.  Much faster than a
                fully random order for large grids (each batch of a random
                permutation touches almost every chunk).
            seed: seed of the shuffle (``numpy.random.default_rng``).
            shuffle_buffer: spectra held in memory for shuffling.
        """
        idx = _as_indices(indices, len(self))
        _check_batch_size(batch_size)
        if shuffle:
            yield from self._iter_shuffled(idx, int(batch_size), with_continuum, seed, shuffle_buffer)
            return
        for start in range(0, idx.size, batch_size):
            yield self.read_rows(idx[start : start + batch_size], with_continuum=with_continuum)

    def _iter_shuffled(
        self, idx: np.ndarray, batch_size: int, with_continuum: bool, seed: int, shuffle_buffer: int | None
    ) -> Iterator[GridBatch]:
        rng = np.random.default_rng(seed)
        if idx.size == 0:
            return
        step = self._flux.chunks[0] if self._flux.chunks else max(1, len(self))
        buffer_rows = max(int(shuffle_buffer) if shuffle_buffer else 4 * batch_size, 1)
        blocks = idx // step
        order = np.argsort(blocks, kind="stable")
        groups = np.split(idx[order], np.flatnonzero(np.diff(blocks[order])) + 1)
        carry: GridBatch | None = None

        def emit(window: list[np.ndarray], last: bool) -> Iterator[GridBatch]:
            nonlocal carry
            rows = np.sort(np.concatenate(window))
            data = self.read_rows(rows, with_continuum=with_continuum)
            perm = rng.permutation(rows.size)
            parts = [data.labels[perm], data.flux[perm], None if data.continuum is None else data.continuum[perm]]
            if carry is not None:
                parts = [c if c is None else np.concatenate([a, c]) for a, c in zip(carry, parts)]
            n_rows = parts[0].shape[0]
            stop = n_rows if last else n_rows - n_rows % batch_size
            for start in range(0, stop, batch_size):
                yield GridBatch(*(p if p is None else p[start : min(start + batch_size, stop)] for p in parts))
            carry = None if stop == n_rows else GridBatch(*(p if p is None else p[stop:] for p in parts))

        window: list[np.ndarray] = []
        count = 0
        for g in rng.permutation(len(groups)):
            window.append(groups[g])
            count += groups[g].size
            if count >= buffer_rows:
                yield from emit(window, last=False)
                window, count = [], 0
        if window:
            yield from emit(window, last=True)
        elif carry is not None:
            yield carry

    def subset(self, indices: np.ndarray | Sequence[int]) -> SpectralGrid:
        """An in-memory :class:`SpectralGrid` of the spectra at ``indices`` (only those are read)."""
        idx = _as_indices(indices, len(self))
        batch = self.read_rows(idx)
        return SpectralGrid(
            batch.labels,
            self.wavelength,
            batch.flux,
            self.label_spec,
            continuum=batch.continuum,
            continuum_kind=self.continuum_kind or "absolute",
            metadata=self.metadata,
            design_index=self.design_index[idx],
            failures=self.failures,
        )

    def load(self) -> SpectralGrid:
        """The whole grid in memory."""
        return self.subset(np.arange(len(self)))


def _attr_str(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray) and value.shape == ():
        return _attr_str(value.item())
    return str(value)
