"""Tests of stellarfit.grids: SpectralGrid HDF5 I/O, streaming, splits, sampling designs."""

from __future__ import annotations

import json
import os
import warnings

import h5py
import numpy as np
import pytest
from scipy.stats import qmc

from stellarfit.grids import (
    FORMAT_NAME,
    GridFailures,
    GridFormatError,
    SpectralGrid,
    SpectralGridFile,
    check_writable,
    sample_labels,
    sample_unit_cube,
    split_indices,
)
from stellarfit.grids import _grid
from stellarfit.labels import ALPHA_ELEMENT_LABELS, OTHER_ELEMENT_LABELS, default_label_spec

N_SPECTRA = 150  # > 2 HDF5 chunks of 64 rows, so chunk-crossing reads are exercised
N_PIXELS = 96


@pytest.fixture(scope="module")
def spec():
    return default_label_spec()


def make_grid(spec, n=N_SPECTRA, *, continuum="absolute", failures=True) -> SpectralGrid:
    rng = np.random.default_rng(42)
    labels = sample_labels(spec, n, "lhs", seed=3)
    wavelength = np.geomspace(5000.0, 5010.0, N_PIXELS)
    flux = rng.uniform(0.2, 1.0, (n, N_PIXELS)).astype(np.float32)
    cont = None
    if continuum == "absolute":
        cont = rng.uniform(1e6, 1e7, (n, N_PIXELS)).astype(np.float32)
    elif continuum == "log10":
        cont = rng.uniform(6.0, 7.0, (n, N_PIXELS)).astype(np.float32)
    fails = None
    if failures:
        fails = GridFailures(np.array([n, n + 3]), sample_labels(spec, 2, "uniform", seed=9), ("ValueError: too hot", "RuntimeError: no convergence"))
    metadata = {"engine": {"name": "toy", "version": "1.2", "line_list": "none"}, "seed": 3, "design": "lhs", "resolution": 30000, "nested": {"a": [1, 2.5, None]}}
    return SpectralGrid(
        labels,
        wavelength,
        flux,
        spec,
        continuum=cont,
        continuum_kind=continuum if continuum else "absolute",
        metadata=metadata,
        design_index=np.arange(n) * 2,
        failures=fails,
    )


def assert_grids_equal(a: SpectralGrid, b: SpectralGrid) -> None:
    assert np.array_equal(a.labels, b.labels)
    assert np.array_equal(a.wavelength, b.wavelength)
    assert np.array_equal(a.flux, b.flux)
    assert a.flux.dtype == b.flux.dtype == np.float32
    if a.continuum is None:
        assert b.continuum is None
    else:
        assert np.array_equal(a.continuum, b.continuum)
    assert a.continuum_kind == b.continuum_kind
    assert a.metadata == b.metadata
    assert a.label_spec == b.label_spec
    assert np.array_equal(a.design_index, b.design_index)
    assert a.failures == b.failures


# ---------------------------------------------------------------------------
# HDF5 round trip and layout
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("continuum", ["absolute", "log10", None])
def test_round_trip_is_exact(tmp_path, spec, continuum):
    grid = make_grid(spec, continuum=continuum)
    path = tmp_path / "grid.h5"
    grid.write(path)
    back = SpectralGrid.read(path)
    assert_grids_equal(grid, back)
    assert back.metadata["engine"]["version"] == "1.2"
    assert back.metadata["schema_version"] == 1 and "created" in back.metadata
    assert back.continuum_is_log10 == (continuum == "log10") and back.has_continuum == (continuum is not None)
    assert len(back.failures) == 2 and back.failures.messages[1] == "RuntimeError: no convergence"
    assert sorted(os.listdir(tmp_path)) == ["grid.h5"]  # no temp files left
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0o600


def test_file_layout_chunked_compressed(tmp_path, spec):
    grid = make_grid(spec)
    grid.write(tmp_path / "lzf.h5")
    grid.write(tmp_path / "gzip.h5", compression="gzip")
    with h5py.File(tmp_path / "lzf.h5", "r") as f:
        assert f.attrs["format"] == FORMAT_NAME
        assert json.loads(f.attrs["label_spec"])[0]["name"] == "teff"
        flux = f["flux"]
        assert flux.chunks[1] == N_PIXELS and 1 <= flux.chunks[0] <= 64
        assert flux.compression == "lzf" and f["continuum"].compression == "lzf"
        assert f["labels"].dtype == np.float64 and f["wavelength"].dtype == np.float64
        assert list(f["failures/indices"][...]) == [N_SPECTRA, N_SPECTRA + 3]
    with h5py.File(tmp_path / "gzip.h5", "r") as f:
        assert f["flux"].compression == "gzip" and f["flux"].compression_opts == 1
    assert np.array_equal(SpectralGrid.read(tmp_path / "gzip.h5").flux, grid.flux)


def test_write_replaces_atomically_and_keeps_old_file_on_failure(tmp_path, spec, monkeypatch):
    path = tmp_path / "grid.h5"
    old = make_grid(spec, n=10)
    old.write(path)
    new = make_grid(spec, n=20)

    def broken(self, *args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(_grid._GridWriter, "write_rows", broken)
    with pytest.raises(OSError, match="disk full"):
        new.write(path)
    monkeypatch.undo()
    assert len(SpectralGrid.read(path)) == 10  # the old grid survived intact
    assert sorted(os.listdir(tmp_path)) == ["grid.h5"]
    new.write(path)
    assert len(SpectralGrid.read(path)) == 20


def test_validation_errors(spec):
    grid = make_grid(spec, n=5, failures=False)
    with pytest.raises(ValueError, match="flux has shape"):
        SpectralGrid(grid.labels, grid.wavelength, grid.flux[:, :-1], spec)
    bad = grid.labels.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="finite.*logg"):
        SpectralGrid(bad, grid.wavelength, grid.flux, spec)
    w = grid.wavelength.copy()
    w[10] = w[9]
    with pytest.raises(ValueError, match="strictly increasing"):
        SpectralGrid(grid.labels, w, grid.flux, spec)
    with pytest.raises(ValueError, match="columns"):
        SpectralGrid(grid.labels[:, :4], grid.wavelength, grid.flux, spec)
    f = grid.flux.copy()
    f[3, 0] = np.inf
    with pytest.raises(ValueError, match="spectrum 3"):
        SpectralGrid(grid.labels, grid.wavelength, f, spec)
    with pytest.raises(ValueError, match="continuum has shape"):
        SpectralGrid(grid.labels, grid.wavelength, grid.flux, spec, continuum=grid.flux[:2])
    with pytest.raises(ValueError, match="JSON"):
        SpectralGrid(grid.labels, grid.wavelength, grid.flux, spec, metadata={"x": object()})


def test_len_names_describe(spec):
    grid = make_grid(spec, n=12)
    assert len(grid) == 12 and grid.n_pixels == N_PIXELS
    assert grid.label_names == spec.names
    text = grid.describe()
    assert "spectra: 12" in text and "mg_fe" in text and "toy 1.2" in text and "failed: 2" in text
    log_cont = make_grid(spec, n=4).log10_continuum()
    assert np.allclose(log_cont, np.log10(make_grid(spec, n=4).continuum))


# ---------------------------------------------------------------------------
# streaming
# ---------------------------------------------------------------------------
def test_streaming_batches_equal_in_memory(tmp_path, spec):
    grid = make_grid(spec)
    path = grid.write(tmp_path / "grid.h5")
    with SpectralGrid.open(path) as f:
        assert isinstance(f, SpectralGridFile)
        assert len(f) == N_SPECTRA and f.label_names == spec.names and f.has_continuum
        batches = list(f.iter_batches(32))
        assert [len(b.labels) for b in batches] == [32, 32, 32, 32, 22]
        assert np.array_equal(np.concatenate([b.flux for b in batches]), grid.flux)
        assert np.array_equal(np.concatenate([b.continuum for b in batches]), grid.continuum)
        assert np.array_equal(np.concatenate([b.labels for b in batches]), grid.labels)
        # shuffled indices with repeats, crossing HDF5 chunk boundaries: order is kept
        idx = np.concatenate([np.random.default_rng(1).permutation(N_SPECTRA)[:70], [5, 5, 149, 0]])
        for (labels, flux, cont), start in zip(f.iter_batches(25, idx), range(0, idx.size, 25)):
            rows = idx[start : start + 25]
            assert np.array_equal(labels, grid.labels[rows])
            assert np.array_equal(flux, grid.flux[rows])
            assert np.array_equal(cont, grid.continuum[rows])
        no_cont = next(f.iter_batches(10, with_continuum=False))
        assert no_cont.continuum is None
        sub = f.subset(idx[:30])
        assert "spectra: 150" in f.describe() and str(path) in f.describe()
    assert_grids_equal(sub, grid.subset(idx[:30]))
    mem = list(grid.iter_batches(32, idx))
    assert np.array_equal(np.concatenate([b.flux for b in mem]), grid.flux[idx])
    with pytest.raises(ValueError, match="closed"):
        f.read_rows([0])


@pytest.mark.parametrize("buffer", [None, 1, 500])
def test_shuffled_streaming_visits_each_row_once(tmp_path, spec, buffer):
    grid = make_grid(spec)
    path = grid.write(tmp_path / "grid.h5")
    subset = np.arange(3, N_SPECTRA, 2)  # 74 rows over three HDF5 chunks
    row_of = {tuple(row): i for i, row in enumerate(grid.labels)}
    with SpectralGrid.open(path) as f:
        batches = list(f.iter_batches(16, subset, shuffle=True, seed=4, shuffle_buffer=buffer))
        again = list(f.iter_batches(16, subset, shuffle=True, seed=4, shuffle_buffer=buffer))
        other = list(f.iter_batches(16, subset, shuffle=True, seed=5, shuffle_buffer=buffer))
    assert [len(b.labels) for b in batches] == [16, 16, 16, 16, 10]
    rows = np.array([row_of[tuple(r)] for b in batches for r in b.labels])
    assert np.array_equal(np.sort(rows), subset)  # every row exactly once
    assert not np.array_equal(rows, subset)  # and not in file order
    flux = np.concatenate([b.flux for b in batches])
    assert np.array_equal(flux, grid.flux[rows]) and np.array_equal(np.concatenate([b.continuum for b in batches]), grid.continuum[rows])
    assert np.array_equal(np.concatenate([b.labels for b in again]), grid.labels[rows])  # deterministic by seed
    assert not np.array_equal(np.concatenate([b.labels for b in other]), grid.labels[rows])
    mem = np.concatenate([b.labels for b in grid.iter_batches(16, subset, shuffle=True, seed=4)])
    assert sorted(row_of[tuple(r)] for r in mem) == list(subset)


def test_subset_and_indices_errors(spec):
    grid = make_grid(spec, n=20)
    sub = grid.subset(np.array([3, 1]))
    assert np.array_equal(sub.flux, grid.flux[[3, 1]]) and list(sub.design_index) == [6, 2]
    mask = np.zeros(20, bool)
    mask[[0, 7]] = True
    assert np.array_equal(grid.subset(mask).labels, grid.labels[[0, 7]])
    with pytest.raises(IndexError, match="out of range"):
        grid.subset([25])
    with pytest.raises(ValueError, match="batch_size"):
        next(grid.iter_batches(0))


# ---------------------------------------------------------------------------
# splits
# ---------------------------------------------------------------------------
def test_split_disjoint_complete_deterministic(spec):
    grid = make_grid(spec)
    train, val, test = grid.split((0.8, 0.1, 0.1), seed=0)
    assert (len(train), len(val), len(test)) == (120, 15, 15)
    union = np.concatenate([train, val, test])
    assert np.array_equal(np.sort(union), np.arange(N_SPECTRA))  # disjoint and complete
    again = grid.split((0.8, 0.1, 0.1), seed=0)
    assert all(np.array_equal(a, b) for a, b in zip((train, val, test), again))
    other = grid.split((0.8, 0.1, 0.1), seed=1)
    assert not np.array_equal(other[1], val)
    # uneven n: largest remainders get the extra rows, still complete
    parts = split_indices(7, (0.5, 0.25, 0.25), seed=2)
    assert [len(p) for p in parts] == [3, 2, 2]  # floors (3, 1, 1), remainders .5 .75 .75
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(7))
    with pytest.raises(ValueError, match="sum to 1"):
        split_indices(10, (0.5, 0.2))
    with pytest.raises(ValueError, match="non-negative"):
        split_indices(10, (1.2, -0.2))


# ---------------------------------------------------------------------------
# unreadable / foreign files
# ---------------------------------------------------------------------------
def test_non_hdf5_file(tmp_path):
    path = tmp_path / "notes.h5"
    path.write_text("this is not a grid\n" * 20)
    with pytest.raises(GridFormatError, match="not an HDF5 file") as info:
        SpectralGrid.read(path)
    assert str(path) in str(info.value)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SpectralGrid.read(tmp_path / "missing.h5")


def test_truncated_file(tmp_path, spec):
    path = make_grid(spec).write(tmp_path / "grid.h5")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(GridFormatError, match="corrupt|truncated") as info:
        SpectralGrid.read(path)
    assert str(path) in str(info.value)


def test_corrupted_flux_chunk(tmp_path, spec):
    path = make_grid(spec, failures=False).write(tmp_path / "grid.h5")
    with h5py.File(path, "r") as f:
        offset = f["flux"].id.get_chunk_info(1).byte_offset
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(b"\xff" * 4096)
    with SpectralGrid.open(path) as f:  # the header is fine ...
        with pytest.raises(GridFormatError, match="corrupt"):  # ... the flux is not
            list(f.iter_batches(64))


def test_foreign_hdf5_files(tmp_path, spec):
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f.create_dataset("flux", data=np.ones((3, 4)))
    with pytest.raises(GridFormatError, match="not a stellarfit grid.*format"):
        SpectralGrid.read(foreign)
    path = make_grid(spec).write(tmp_path / "grid.h5")
    with h5py.File(path, "a") as f:
        del f["flux"]
    with pytest.raises(GridFormatError, match=r"missing dataset\(s\) \['flux'\]"):
        SpectralGrid.read(path)
    newer = make_grid(spec).write(tmp_path / "newer.h5")
    with h5py.File(newer, "a") as f:
        f.attrs["schema_version"] = 99
    with pytest.raises(GridFormatError, match="upgrade stellarfit"):
        SpectralGrid.read(newer)


def test_unwritable_output(tmp_path, spec):
    grid = make_grid(spec, n=4)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        grid.write(tmp_path / "no" / "such" / "dir" / "grid.h5")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(NotADirectoryError, match="not a directory"):
        grid.write(blocker / "grid.h5")
    with pytest.raises(IsADirectoryError, match="is a directory"):
        check_writable(tmp_path)
    assert check_writable(tmp_path / "ok.h5") == (tmp_path / "ok.h5").absolute()
    assert sorted(os.listdir(tmp_path)) == ["a_file"]


# ---------------------------------------------------------------------------
# sampling designs
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["sobol", "lhs", "uniform"])
def test_sampling_inside_bounds_and_relative_constraints(spec, method):
    labels = sample_labels(spec, 300, method, seed=5)
    assert labels.shape == (300, len(spec)) and labels.dtype == np.float64
    assert spec.violations(labels) == []
    alpha = labels[:, spec.index("alpha_fe")]
    for name in ALPHA_ELEMENT_LABELS:
        offset = labels[:, spec.index(name)] - alpha
        assert np.all(np.abs(offset) <= 0.4 + 1e-12)
        assert offset.min() < -0.3 and offset.max() > 0.3  # the band is used, not collapsed
    for name in OTHER_ELEMENT_LABELS:
        assert np.all(np.abs(labels[:, spec.index(name)]) <= 0.4 + 1e-12)
    # reproducible by seed, different for another seed
    assert np.array_equal(labels, sample_labels(spec, 300, method, seed=5))
    assert not np.allclose(labels, sample_labels(spec, 300, method, seed=6))


def _empty_strata(unit: np.ndarray) -> int:
    n = unit.shape[0]
    return sum(n - np.unique(np.floor(unit[:, j] * n).astype(int)).size for j in range(unit.shape[1]))


def test_space_filling_better_than_random(spec):
    n = 64
    sobol = sample_unit_cube(len(spec), n, "sobol", seed=0)
    lhs = sample_unit_cube(len(spec), n, "lhs", seed=0)
    uniform = sample_unit_cube(len(spec), n, "uniform", seed=0)
    # every 1-D marginal has exactly one point per 1/n stratum (LHS by construction,
    # Sobol' because its 1-D projections are (0, m, 1)-nets); random points do not.
    assert _empty_strata(lhs) == 0
    assert _empty_strata(sobol) == 0
    assert _empty_strata(uniform) > 100
    assert qmc.discrepancy(sobol) < 0.5 * qmc.discrepancy(uniform)
    # through the label mapping: LHS stratifies teff and the Mg offset from alpha
    labels = sample_labels(spec, n, "lhs", seed=0)
    teff_unit = (labels[:, 0] - 4000.0) / 3000.0
    mg_unit = (labels[:, spec.index("mg_fe")] - labels[:, spec.index("alpha_fe")] + 0.4) / 0.8
    assert _empty_strata(np.stack([teff_unit, mg_unit], axis=1)) == 0


def test_sobol_any_n_without_warning(spec):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        labels = sample_labels(spec, 37, "sobol", seed=1)
    assert labels.shape == (37, len(spec))
    # the first 37 points of the 64-point design of the same seed
    assert np.array_equal(labels, sample_labels(spec, 64, "sobol", seed=1)[:37])
    with pytest.raises(ValueError, match="unknown sampling method"):
        sample_labels(spec, 10, "halton")
    with pytest.raises(ValueError, match="positive integer"):
        sample_labels(spec, 0)
