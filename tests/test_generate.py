"""Tests of stellarfit.grids.generate_grid: full, interrupted/resumed, parallel and refused runs."""

from __future__ import annotations

import os

import numpy as np
import pytest

from stellarfit.grids import GenerationError, SpectralGrid, generate_grid, parts_dir_for, sample_labels
from stellarfit.labels import default_label_spec

N_STARS = 30
CHUNK = 4  # -> 8 chunks, the last one short (2 stars)
FAIL_ABOVE_TEFF = 6600.0


class ToyEngine:
    """Cheap picklable engine: Gaussian absorption lines whose depths follow the labels.

    Raises ValueError for stars hotter than ``fail_above_teff`` (to test failure
    recording) and KeyboardInterrupt on the ``interrupt_at``-th call (to simulate
    Ctrl-C); ``interrupt_at`` is not part of the configuration.
    """

    centers = np.array([5002.0, 5005.5, 5009.0, 5013.0, 5016.5])

    def __init__(self, version: str = "1.0", fail_above_teff: float = FAIL_ABOVE_TEFF, interrupt_at: int | None = None):
        self.version = version
        self.fail_above_teff = fail_above_teff
        self.interrupt_at = interrupt_at
        self.calls = 0
        self.wavelength = np.linspace(5000.0, 5020.0, 160)

    def metadata(self) -> dict:
        return {"name": "toy", "version": self.version, "fail_above_teff": self.fail_above_teff, "line_list": "5 lines"}

    def synthesize(self, labels: dict) -> tuple[np.ndarray, np.ndarray]:
        self.calls += 1
        if self.interrupt_at is not None and self.calls >= self.interrupt_at:
            raise KeyboardInterrupt
        if labels["teff"] > self.fail_above_teff:
            raise ValueError(f"teff {labels['teff']:.0f} K too hot for the toy engine")
        metal = 10.0 ** labels["fe_h"]
        depth = 0.8 * metal / (1.0 + metal) * np.array([1.0, 10 ** labels["mg_fe"], 0.5, 10 ** labels["ti_fe"], 0.7])
        depth *= 5000.0 / labels["teff"]
        sigma = 0.05 * np.sqrt(1.0 + labels["vmic"] ** 2) * (1.0 + 0.02 * labels["logg"])
        profile = np.exp(-0.5 * ((self.wavelength[:, None] - self.centers) / sigma) ** 2)
        flux = 1.0 - (np.clip(depth, 0, 0.95) * profile).max(axis=1)
        continuum = (labels["teff"] / 5000.0) ** 4 * (self.wavelength / 5000.0) ** -2 * 1e7
        return flux, continuum


class BadShapeEngine(ToyEngine):
    def synthesize(self, labels):
        flux, continuum = super().synthesize(labels)
        return flux[:-1], continuum


@pytest.fixture(scope="module")
def spec():
    return default_label_spec()


@pytest.fixture(scope="module")
def design(spec):
    return sample_labels(spec, N_STARS, "sobol", seed=11)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, design, spec):
    """An uninterrupted in-process run."""
    path = tmp_path_factory.mktemp("ref") / "grid.h5"
    result = generate_grid(ToyEngine(), design, path, label_spec=spec, workers=1, chunk_size=CHUNK, progress=False, seed=11, design="sobol", metadata={"purpose": "test"})
    return result, SpectralGrid.read(path)


def assert_same_grid(a: SpectralGrid, b: SpectralGrid) -> None:
    assert np.array_equal(a.labels, b.labels)
    assert np.array_equal(a.flux, b.flux)
    assert np.array_equal(a.continuum, b.continuum)
    assert np.array_equal(a.design_index, b.design_index)
    assert a.failures == b.failures
    assert strip_run_specific(a.metadata) == strip_run_specific(b.metadata)


def strip_run_specific(metadata: dict) -> dict:
    """Metadata without the creation time and the measured engine CPU time."""
    out = {k: v for k, v in metadata.items() if k != "created"}
    out["generation"] = {k: v for k, v in out["generation"].items() if k != "engine_cpu_seconds"}
    return out


def assert_no_star_lost_or_duplicated(grid: SpectralGrid, design: np.ndarray) -> None:
    everything = np.concatenate([grid.design_index, grid.failures.indices])
    assert np.array_equal(np.sort(everything), np.arange(len(design)))
    assert np.array_equal(grid.labels, design[grid.design_index])
    assert np.array_equal(grid.failures.labels, design[grid.failures.indices])


def test_full_run(reference, design, spec):
    result, grid = reference
    hot = design[:, 0] > FAIL_ABOVE_TEFF
    assert 0 < hot.sum() < N_STARS  # the design exercises both paths
    assert result.complete and result.n_chunks == 8 and result.chunks_computed == 8 and result.chunks_reused == 0
    assert result.n_spectra == len(grid) == N_STARS - hot.sum() and result.n_failed == hot.sum()
    assert not result.parts_dir.exists()  # parts removed after the final file was written
    assert_no_star_lost_or_duplicated(grid, design)
    assert np.array_equal(grid.failures.indices, np.flatnonzero(hot))
    assert all(m.startswith("ValueError: teff") and "too hot" in m for m in grid.failures.messages)
    # every stored spectrum is the engine's spectrum of its own labels
    engine = ToyEngine()
    for row in (0, len(grid) // 2, len(grid) - 1):
        flux, cont = engine.synthesize(dict(zip(spec.names, grid.labels[row])))
        assert np.array_equal(grid.flux[row], flux.astype(np.float32))
        assert np.array_equal(grid.continuum[row], cont.astype(np.float32))
    assert np.array_equal(grid.wavelength, engine.wavelength)
    assert grid.continuum_kind == "absolute" and np.all(np.isfinite(grid.flux))
    meta = grid.metadata
    assert meta["engine"] == engine.metadata() and meta["seed"] == 11 and meta["design"] == "sobol" and meta["purpose"] == "test"
    assert meta["generation"]["n_failed"] == hot.sum() and meta["generation"]["chunk_size"] == CHUNK
    assert grid.label_spec == spec


def test_resume_after_max_chunks(tmp_path, reference, design, spec):
    out = tmp_path / "grid.h5"
    kwargs = dict(label_spec=spec, workers=1, chunk_size=CHUNK, progress=False, seed=11, design="sobol", metadata={"purpose": "test"})
    first = generate_grid(ToyEngine(), design, out, max_chunks=3, **kwargs)
    assert not first.complete and not out.exists() and first.chunks_computed == 3
    parts = parts_dir_for(out)
    assert sorted(p.name for p in parts.glob("chunk_*.npz")) == ["chunk_00000.npz", "chunk_00001.npz", "chunk_00002.npz"]
    assert (parts / "manifest.json").exists() and np.array_equal(np.load(parts / "labels.npy"), design)
    engine = ToyEngine()
    second = generate_grid(engine, design, out, **kwargs)
    assert second.complete and second.chunks_reused == 3 and second.chunks_computed == 5
    assert engine.calls == N_STARS - 3 * CHUNK  # finished chunks were not recomputed
    grid = SpectralGrid.read(out)
    assert_same_grid(grid, reference[1])
    assert_no_star_lost_or_duplicated(grid, design)
    assert not parts.exists()


def test_resume_after_keyboard_interrupt(tmp_path, reference, design, spec, capsys):
    out = tmp_path / "grid.h5"
    kwargs = dict(label_spec=spec, workers=1, chunk_size=CHUNK, progress=False, seed=11, design="sobol", metadata={"purpose": "test"})
    with pytest.raises(KeyboardInterrupt):
        generate_grid(ToyEngine(interrupt_at=3 * CHUNK + 2), design, out, **kwargs)  # Ctrl-C inside chunk 3
    parts = parts_dir_for(out)
    err = capsys.readouterr().err
    assert "Interrupted" in err and "3 of 8 chunks (or more) are saved" in err and str(parts) in err and "to resume" in err
    assert len(list(parts.glob("chunk_*.npz"))) == 3 and not out.exists()
    assert not list(parts.glob(".*"))  # no half-written chunk
    result = generate_grid(ToyEngine(), design, out, **kwargs)
    assert result.complete and result.chunks_reused == 3 and result.chunks_computed == 5
    grid = SpectralGrid.read(out)
    assert_same_grid(grid, reference[1])
    assert_no_star_lost_or_duplicated(grid, design)


def test_corrupt_chunk_is_recomputed(tmp_path, reference, design, spec):
    out = tmp_path / "grid.h5"
    kwargs = dict(label_spec=spec, workers=1, chunk_size=CHUNK, progress=False, seed=11, design="sobol", metadata={"purpose": "test"})
    generate_grid(ToyEngine(), design, out, max_chunks=2, **kwargs)
    (parts_dir_for(out) / "chunk_00001.npz").write_bytes(b"garbage")
    (parts_dir_for(out) / ".chunk_00002.npz.abc.tmp").write_bytes(b"half")  # left by a kill mid-write
    result = generate_grid(ToyEngine(), design, out, **kwargs)
    assert result.chunks_reused == 1 and result.chunks_computed == 7
    assert_same_grid(SpectralGrid.read(out), reference[1])


def test_changed_inputs_refused(tmp_path, design, spec):
    out = tmp_path / "grid.h5"
    kwargs = dict(label_spec=spec, workers=1, progress=False)
    generate_grid(ToyEngine(), design, out, chunk_size=CHUNK, max_chunks=1, **kwargs)
    with pytest.raises(GenerationError, match=r"cannot resume.*engine configuration differs.*version.*rm -r"):
        generate_grid(ToyEngine(version="2.0"), design, out, chunk_size=CHUNK, **kwargs)
    other = sample_labels(spec, N_STARS, "sobol", seed=12)
    with pytest.raises(GenerationError, match="label design differs"):
        generate_grid(ToyEngine(), other, out, chunk_size=CHUNK, **kwargs)
    with pytest.raises(GenerationError, match="label design has shape"):
        generate_grid(ToyEngine(), design[:-1], out, chunk_size=CHUNK, **kwargs)
    with pytest.raises(GenerationError, match="pass chunk_size=4"):
        generate_grid(ToyEngine(), design, out, chunk_size=5, **kwargs)
    assert len(list(parts_dir_for(out).glob("chunk_*.npz"))) == 1  # nothing mixed in
    # leaving chunk_size unset adopts the earlier run's
    result = generate_grid(ToyEngine(), design, out, **kwargs)
    assert result.complete and result.chunks_reused == 1 and result.n_chunks == 8


def test_two_workers_equal_one(tmp_path, reference, design, spec):
    out = tmp_path / "grid.h5"
    engine = ToyEngine()
    result = generate_grid(
        engine, design, out, label_spec=spec, workers=2, chunk_size=CHUNK, progress=True, seed=11, design="sobol", metadata={"purpose": "test"}
    )
    assert result.complete and result.chunks_computed == 8
    assert engine.calls == 0  # the work was done in the worker processes
    assert_same_grid(SpectralGrid.read(out), reference[1])


def test_output_checks_before_any_work(tmp_path, design, spec):
    engine = ToyEngine()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        generate_grid(engine, design, tmp_path / "missing" / "grid.h5", label_spec=spec, workers=1, progress=False)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(NotADirectoryError):
        generate_grid(engine, design, blocker / "grid.h5", label_spec=spec, workers=1, progress=False)
    existing = tmp_path / "exists.h5"
    existing.write_text("x")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        generate_grid(engine, design, existing, label_spec=spec, workers=1, progress=False)
    outside = design.copy()
    outside[4, 0] = 9000.0
    with pytest.raises(ValueError, match="teff=9000"):
        generate_grid(engine, outside, tmp_path / "g.h5", label_spec=spec, workers=1, progress=False)
    with pytest.raises(ValueError, match="reserved|set by generate_grid"):
        generate_grid(engine, design, tmp_path / "g.h5", label_spec=spec, workers=1, progress=False, metadata={"seed": 1})
    assert engine.calls == 0
    assert sorted(os.listdir(tmp_path)) == ["exists.h5", "file"]  # no parts dir was created
    result = generate_grid(engine, design[:5], existing, label_spec=spec, workers=1, progress=False, overwrite=True)
    assert result.complete and len(SpectralGrid.read(existing)) == result.n_spectra


def test_engine_errors_are_recorded(tmp_path, design, spec):
    out = tmp_path / "grid.h5"
    result = generate_grid(BadShapeEngine(), design[:6], out, label_spec=spec, workers=1, progress=False, chunk_size=3)
    assert result.complete and result.n_spectra == 0 and result.n_failed == 6
    grid = SpectralGrid.read(out)
    assert len(grid) == 0 and len(grid.failures) == 6
    assert all("shape (159,)" in m or "too hot" in m for m in grid.failures.messages)
    assert any("shape (159,)" in m for m in grid.failures.messages)
