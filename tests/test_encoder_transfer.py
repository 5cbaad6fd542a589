"""Adapting an encoder to other labelled spectra: the grid source, the modes (what each trains), the
exact start of adapters and LoRA, the file round trip, the label check and the MLP baseline."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from flax import nnx

from stellarfit.emulators._params import flatten_params
from stellarfit.encoders import (
    AdaptSettings,
    Encoder,
    EncoderConfig,
    GridSpectra,
    MLPSettings,
    SimulationSettings,
    TrainingSimulator,
    adapt_encoder,
    load_encoder,
    predict,
    train_spectrum_mlp,
)
from stellarfit.grids import SpectralGrid
from stellarfit.labels import Label, LabelSpec, default_label_spec

TINY = EncoderConfig(patch_size=8, dim=16, heads=2, blocks=1, cross_blocks=1)
# R ~2,000 on a 120 A window: ~100 pixels, one token bucket (one compiled program)
SIMULATION = SimulationSettings(resolution_range=(2000.0, 2200.0), pixels_per_fwhm_range=(2.0, 2.5), snr_range=(50.0, 100.0),
                                rv_range=(-50.0, 50.0), token_buckets=(16,), crop_probability=0.0, gap_rate=0.0)
N_STARS = 24


def _grid(spec: LabelSpec, n: int = N_STARS, *, seed: int = 0, uniform: bool = True, resolution: float | None = 30000.0) -> SpectralGrid:
    """A toy grid: Gaussian lines whose depths follow the labels, on pixels uniform in ln(lambda) at R 30,000."""
    rng = np.random.default_rng(seed)
    labels = spec.from_unit_cube(rng.uniform(size=(n, len(spec))))
    wavelength = 5000.0 * np.exp(np.arange(2100) / 90000.0)
    if not uniform:
        wavelength = np.linspace(wavelength[0], wavelength[-1], wavelength.size)
    centres = np.linspace(5005.0, 5115.0, 40)
    scaled = spec.scale(labels)
    depth = 0.3 + 0.25 * np.tanh(scaled @ rng.normal(size=(len(spec), centres.size)))
    profile = np.exp(-0.5 * ((wavelength[None, :] - centres[:, None]) / 0.08) ** 2)
    flux = 1.0 - depth @ profile
    engine = {"resolution": resolution} if resolution is not None else {}
    return SpectralGrid(labels, wavelength, flux, spec, metadata={"engine": engine})


@pytest.fixture(scope="module")
def grid_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("grid") / "toy.h5"
    _grid(default_label_spec()).write(path)
    return path


@pytest.fixture(scope="module")
def source(grid_file):
    return GridSpectra.from_grid(grid_file)


@pytest.fixture(scope="module")
def base():
    return Encoder(TINY, default_label_spec(), None, rv_range=(-100.0, 100.0), seed=0)


@pytest.fixture(scope="module")
def batch(source):
    return TrainingSimulator(source, TINY, SIMULATION).sample(np.random.default_rng(5), 6, masks=False)


def _flat(encoder: Encoder) -> dict:
    return {k: np.asarray(v) for k, v in flatten_params(nnx.to_pure_dict(encoder.params)).items()}


def _changed(before: dict, after: dict) -> set[str]:
    return {k for k in before if k in after and not np.array_equal(before[k], after[k])}


def test_grid_source_draws_the_grid_labels(grid_file, source):
    grid = SpectralGrid.read(grid_file)
    assert len(source) == N_STARS and source.native_resolution == 30000.0
    simulator = TrainingSimulator(source, TINY, SIMULATION)
    drawn = simulator.sample(np.random.default_rng(1), 10)
    rows = [int(np.flatnonzero(np.all(grid.labels == row, axis=1))[0]) for row in drawn.labels]
    assert len(set(rows)) == 10  # grid rows, without replacement within a batch
    chosen = simulator.sample_pixels(np.random.default_rng(2), 3, rows=np.array([4, 0, 7]))
    np.testing.assert_array_equal(chosen.labels, grid.labels[[4, 0, 7]])
    # the same star observed twice gets other noise, RV and continuum
    again = simulator.sample_pixels(np.random.default_rng(3), 3, rows=np.array([4, 0, 7]))
    n = min(again.n_pixels, chosen.n_pixels)
    assert not np.allclose(again.flux[:, :n], chosen.flux[:, :n]) and not np.allclose(again.rv, chosen.rv)
    subset = source.subset(np.array([2, 5]))
    np.testing.assert_array_equal(subset.labels, grid.labels[[2, 5]])
    assert subset.rows.tolist() == [2, 5]


def test_pixel_batch_spectra_keep_pixels_and_truth(source):
    pixels = TrainingSimulator(source, TINY, SIMULATION).sample_pixels(np.random.default_rng(4), 2, rows=np.array([1, 2]))
    spectra = pixels.spectra()
    assert len(spectra) == 2 and spectra[0].wavelength.size == pixels.n_pixels
    np.testing.assert_allclose(spectra[1].flux, pixels.flux[1, : pixels.n_pixels])
    assert spectra[0].metadata["labels"] == pixels.labels[0].tolist() and spectra[1].metadata["rv"] == pixels.rv[1]


def test_grid_sources_that_cannot_be_used_say_why(tmp_path, base):
    with pytest.raises(ValueError, match="uniform in ln"):
        GridSpectra.from_grid(_grid(default_label_spec(), 4, uniform=False))
    with pytest.raises(ValueError, match="resolution="):
        GridSpectra.from_grid(_grid(default_label_spec(), 4, resolution=None))
    other = LabelSpec([Label("teff", "K", 4000.0, 7000.0), Label("logg", "dex", 1.0, 5.0)])
    path = tmp_path / "other.h5"
    _grid(other, 4).write(path)
    with pytest.raises(ValueError, match=r"encoder's labels.*missing \['vmic'"):
        adapt_encoder(base, str(path), AdaptSettings(mode="head", steps=1, progress=False), simulation=SIMULATION)
    with pytest.raises(ValueError, match="RV scale"):
        adapt_encoder(base, GridSpectra.from_grid(_grid(default_label_spec(), 4)), AdaptSettings(mode="head", steps=1, progress=False),
                      simulation=SimulationSettings(rv_range=(-300.0, 300.0)))
    with pytest.raises(ValueError, match="mode must be one of"):
        AdaptSettings(mode="prompt")


@pytest.mark.parametrize("mode", ["head", "adapters", "lora", "full"])
def test_each_mode_trains_what_it_says(mode, base, source, batch):
    settings = AdaptSettings(mode=mode, steps=3, batch_size=8, learning_rate=1e-2, adapter_width=4, lora_rank=2, progress=False)
    adapted, history = adapt_encoder(base, source, settings, simulation=SIMULATION)
    assert len(history) == 3 and all(np.isfinite(h["loss"]) for h in history)
    before, after = _flat(base), _flat(adapted)
    changed = _changed(before, after)
    head = {k for k in before if k.split("/")[0] in ("norm_out", "head_kernel", "head_bias")}
    if mode == "head":
        assert changed and changed <= head
    elif mode == "adapters":
        assert changed <= head and set(after) - set(before) and all("/adapter/" in k for k in set(after) - set(before))
        assert adapted.config.adapter_width == 4
    elif mode == "lora":  # merged into the kernels: same architecture, low-rank kernel changes
        assert set(after) == set(before) and adapted.config == base.config
        kernels = {k for k in changed if k.endswith("/kernel") and ("attention" in k or "mlp" in k)}
        assert kernels and changed - head - kernels <= {k for k in changed if k.startswith("embed_")}
        name = sorted(k for k in kernels if k.endswith("mlp/inner/kernel"))[0]
        assert np.linalg.matrix_rank(after[name] - before[name], tol=1e-6) <= 2 < min(before[name].shape)
        assert not any("/norm_" in k for k in changed)  # the blocks' layer norms stay frozen
    else:
        assert len(changed - head) > 10
    mean, _ = adapted.apply(batch.features, batch.encoding, batch.token_mask)
    base_mean, _ = base.apply(batch.features, batch.encoding, batch.token_mask)
    assert np.max(np.abs(np.asarray(mean) - np.asarray(base_mean))) > 1e-4
    assert adapted.resolution_range == SIMULATION.resolution_range and adapted.metadata["adaptation"]["mode"] == mode


@pytest.mark.parametrize("mode", ["adapters", "lora"])
def test_adapters_and_lora_start_as_the_base_encoder(mode, base, source, batch):
    start, _ = adapt_encoder(base, source, AdaptSettings(mode=mode, steps=0, adapter_width=4, progress=False), simulation=SIMULATION)
    assert (start.config.adapter_width > 0) == (mode == "adapters")
    arrays = (batch.features, batch.encoding, batch.token_mask)
    with jax.disable_jit():  # eager: bit for bit
        ours = nnx.merge(start.graphdef, start.params)(*arrays)
        theirs = nnx.merge(base.graphdef, base.params)(*arrays)
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(start.apply(*arrays), base.apply(*arrays)):  # jitted: XLA may fuse the zero terms differently
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)


def test_scratch_is_a_fresh_network(base, source):
    scratch, _ = adapt_encoder(base, source, AdaptSettings(mode="scratch", steps=1, seed=7, progress=False), simulation=SIMULATION)
    assert scratch.config == base.config and scratch.metadata["adapted_from"] is None
    kernels = {k for k in _flat(base) if k.endswith("kernel") or k == "queries"}
    assert _changed(_flat(base), _flat(scratch)) >= kernels  # another random start, not the base's arrays


def test_an_adapted_encoder_saves_and_loads(tmp_path, base, source, batch):
    adapted, _ = adapt_encoder(base, source, AdaptSettings(mode="adapters", steps=2, adapter_width=4, progress=False),
                               simulation=SIMULATION)
    adapted.save(tmp_path / "adapted")
    loaded = load_encoder(tmp_path / "adapted")
    assert loaded.config.adapter_width == 4 and loaded.metadata["source"]["kind"] == "grid"
    spectra = TrainingSimulator(GridSpectra.from_grid(_grid(default_label_spec(), 3, seed=9)), TINY, SIMULATION).sample_pixels(
        np.random.default_rng(0), 3, masks=False).spectra()
    assert predict(loaded, spectra) == predict(adapted, spectra)
    # a file written before adapters existed (no adapter_width in its config) still loads
    base.save(tmp_path / "old")
    meta_path = tmp_path / "old" / "encoder.json"
    meta = json.loads(meta_path.read_text())
    del meta["config"]["adapter_width"]
    meta_path.write_text(json.dumps(meta))
    old = load_encoder(tmp_path / "old")
    assert old.config.adapter_width == 0 and predict(old, spectra) == predict(base, spectra)


def test_mlp_baseline_trains_and_reads_spectra(source):
    model, history = train_spectrum_mlp(source, MLPSettings(hidden=(32,), steps=30, batch_size=8, learning_rate=3e-3, progress=False),
                                        simulation=SIMULATION)
    assert np.mean([h["loss"] for h in history[-5:]]) < np.mean([h["loss"] for h in history[:5]])
    pixels = TrainingSimulator(source, TINY, SIMULATION).sample_pixels(np.random.default_rng(1), 4, masks=False)
    spectra = pixels.spectra()
    result = model.predict(spectra, pixels.rv)
    assert len(result) == 4 and set(result[0]) == set(default_label_spec().names)
    assert all(np.isfinite(v) and e > 0 for row in result for v, e in row.values())
    # the input does not depend on the flux units (a running pseudo-continuum divides them out)
    n = pixels.n_pixels
    grid = [np.log(spectra[0].wavelength)]
    x = model.inputs(grid, [pixels.flux[0, :n]], [pixels.sigma[0, :n]], [pixels.good[0, :n]], pixels.rv[:1])
    y = model.inputs(grid, [1e3 * pixels.flux[0, :n]], [1e3 * pixels.sigma[0, :n]], [pixels.good[0, :n]], pixels.rv[:1])
    np.testing.assert_allclose(x, y, atol=1e-5)
    assert np.std(x[0, : model.log_wavelength.size]) > 1e-3


def test_cli_refuses_a_grid_with_other_labels_and_an_existing_output(tmp_path, base, capsys):
    from stellarfit.cli.main import main

    base.save(tmp_path / "base")
    other = LabelSpec([Label("teff", "K", 4000.0, 7000.0), Label("logg", "dex", 1.0, 5.0)])
    _grid(other, 4).write(tmp_path / "other.h5")
    argv = ["encoder-adapt", "--encoder", str(tmp_path / "base"), "--grid", str(tmp_path / "other.h5"), "--steps", "1",
            "--out", str(tmp_path / "adapted"), "--no-progress"]
    assert main(argv) == 2
    assert "encoder's labels" in capsys.readouterr().err and not (tmp_path / "adapted").exists()
    assert main([*argv[:-3], "--out", str(tmp_path / "base"), "--no-progress"]) == 2
    assert "--overwrite" in capsys.readouterr().err
