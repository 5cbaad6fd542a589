"""Where the encoder's training spectra come from, before they are observed: an emulator
(:class:`EmulatorSpectra`: labels drawn uniformly in its box, any number) or a fixed set of
labelled spectra (:class:`GridSpectra`: the rows of a grid made by ``stellarfit grid``, e.g.
Turbospectrum spectra, or any (labels, flux) arrays).

Both give :class:`stellarfit.encoders.TrainingSimulator` the same thing: (labels, native
continuum-normalized flux) on a pixel grid uniform in ln(lambda) at a known resolving power,
which it then observes (LSF, rotation, pixels, RV, continuum, noise, masks).  A grid row is
observed afresh every time it is drawn, so each labelled star gets new noise, RV, vsini,
continuum and masks every epoch.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from stellarfit.labels import LabelSpec

__all__ = ["EmulatorSpectra", "GridSpectra", "as_spectra_source"]


def _uniform_log_step(wavelength: np.ndarray, what: str) -> float:
    """The ln(lambda) step of ``wavelength`` (float64); an error if it is not uniform in ln(lambda)."""
    log_wavelength = np.log(np.asarray(wavelength, np.float64))
    steps = np.diff(log_wavelength)
    if steps.size < 1 or np.any(steps <= 0):
        raise ValueError(f"{what}: the wavelengths must increase strictly (at least 2 pixels)")
    step = float((log_wavelength[-1] - log_wavelength[0]) / steps.size)
    if np.max(np.abs(steps - step)) > 1e-3 * step:
        raise ValueError(f"{what}: the pixels are not uniform in ln(lambda) (steps {steps.min():.3g}-{steps.max():.3g}); "
                         "resample the spectra onto a log-lambda grid first (grids made by `stellarfit grid` are)")
    return step


class EmulatorSpectra:
    """Spectra of an emulator: labels uniform in its box (relative abundance bounds respected).

    Args:
        emulator: any stellarfit emulator with a native resolution (e.g. ``load_emulator("payne-default")``).
    """

    def __init__(self, emulator):
        if emulator.native_resolution is None:
            raise ValueError("the emulator does not record its native resolution; it cannot simulate observations")
        self.emulator = emulator
        self.label_spec: LabelSpec = emulator.label_spec
        #: (n_pixels,) float64 native wavelengths [A, vacuum], uniform in ln(lambda)
        self.wavelength = np.asarray(emulator.wavelength, np.float64)
        self.native_resolution = float(emulator.native_resolution)
        self.name = str(emulator.metadata.get("name", repr(emulator)[:80]))
        self._flux = jax.jit(jax.vmap(emulator.flux_fn()))

    def draw(self, rng: np.random.Generator, n: int, rows: np.ndarray | None = None):
        """(labels (n, L) float64, native flux (n, n_pixels) float32 jnp) of ``n`` new stars."""
        if rows is not None:
            raise ValueError("an emulator source has no rows to choose; draw labels at random (rows=None)")
        labels = self.label_spec.from_unit_cube(rng.uniform(size=(n, len(self.label_spec))))
        return labels, self._flux(jnp.asarray(labels, jnp.float32))

    def describe(self) -> dict:
        return {"kind": "emulator", "name": self.name}


class GridSpectra:
    """A fixed set of labelled spectra: labels (N, L) and continuum-normalized flux (N, n_pixels) on
    a wavelength grid uniform in ln(lambda) at resolving power ``resolution``.

    Args:
        labels: (N, L) physical labels in ``label_spec`` order.
        flux: (N, n_pixels) continuum-normalized flux.
        wavelength: (n_pixels,) [A, vacuum], uniform in ln(lambda).
        label_spec: the labels.
        resolution: the spectra's resolving power (Gaussian LSF); observations are made at lower R.
        name: a name for the records (e.g. the grid file).
        rows: the rows of the original set these are (recorded; default 0..N-1).
    """

    def __init__(self, labels: np.ndarray, flux: np.ndarray, wavelength: np.ndarray, label_spec: LabelSpec, *,
                 resolution: float, name: str = "arrays", rows: np.ndarray | None = None):
        self.labels = np.asarray(labels, np.float64)
        self.flux = np.asarray(flux, np.float32)
        self.wavelength = np.asarray(wavelength, np.float64)
        self.label_spec = label_spec
        self.native_resolution = float(resolution)
        self.name = name
        self.rows = np.arange(len(self.labels)) if rows is None else np.asarray(rows, np.int64)
        if self.labels.ndim != 2 or self.labels.shape[1] != len(label_spec):
            raise ValueError(f"labels must be (N, {len(label_spec)}) in the label spec's order, got {self.labels.shape}")
        if self.flux.shape != (len(self.labels), self.wavelength.size):
            raise ValueError(f"flux has shape {self.flux.shape}; expected (N, n_pixels) = ({len(self.labels)}, {self.wavelength.size})")
        if len(self.labels) < 1:
            raise ValueError("no spectra: give at least one labelled spectrum")
        if not np.all(np.isfinite(self.flux)):
            raise ValueError(f"{name}: the flux has non-finite values; drop those spectra first")
        _uniform_log_step(self.wavelength, name)

    @classmethod
    def from_grid(cls, grid, rows: np.ndarray | None = None, *, resolution: float | None = None) -> GridSpectra:
        """The spectra of a grid (a path to a file made by ``stellarfit grid``, or a SpectralGrid(File)).

        Args:
            grid: the grid file or object.
            rows: which of its spectra (default all).
            resolution: the grid's resolving power (default the one it records, ``metadata["engine"]["resolution"]``).
        """
        from stellarfit.grids import SpectralGrid

        name = os.fspath(grid) if isinstance(grid, (str, os.PathLike)) else "grid"
        if isinstance(grid, (str, os.PathLike)):
            grid = SpectralGrid.read(grid)
        if resolution is None:
            engine = grid.metadata.get("engine")
            resolution = engine.get("resolution") if isinstance(engine, dict) else None
        if resolution is None:
            raise ValueError(f"{name} does not record its resolving power (metadata engine.resolution); pass resolution=")
        index = np.arange(len(grid)) if rows is None else np.asarray(rows, np.int64)
        batch = grid.read_rows(index, with_continuum=False) if hasattr(grid, "read_rows") else None
        flux = batch.flux if batch is not None else grid.flux[index]
        return cls(grid.labels[index], flux, grid.wavelength, grid.label_spec, resolution=float(resolution), name=name, rows=index)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, rows) -> GridSpectra:
        """The spectra at positions ``rows`` of this set (an index array or boolean mask)."""
        rows = np.arange(len(self))[rows]
        return GridSpectra(self.labels[rows], self.flux[rows], self.wavelength, self.label_spec,
                           resolution=self.native_resolution, name=self.name, rows=self.rows[rows])

    def draw(self, rng: np.random.Generator, n: int, rows: np.ndarray | None = None):
        """(labels (n, L) float64, native flux (n, n_pixels) float32 jnp): ``n`` spectra at random
        (without replacement when ``n`` <= N), or those at positions ``rows``."""
        if rows is None:
            rows = rng.choice(len(self), size=n, replace=n > len(self))
        rows = np.asarray(rows, np.int64)
        return self.labels[rows], jnp.asarray(self.flux[rows])

    def describe(self) -> dict:
        return {"kind": "grid", "name": self.name, "n_spectra": len(self), "resolution": self.native_resolution,
                "rows": self.rows.tolist() if len(self) <= 2000 else f"{len(self)} rows"}


def as_spectra_source(source):
    """An emulator -> :class:`EmulatorSpectra`; a source (anything with ``draw``) as it is."""
    return source if hasattr(source, "draw") else EmulatorSpectra(source)
