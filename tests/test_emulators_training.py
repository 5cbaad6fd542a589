"""Training on a toy analytic grid: the validation loss falls; checkpoint/resume; early stopping; evaluation."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest

from stellarfit.emulators import (
    PayneEmulator,
    TrainConfig,
    TrainingData,
    TransformerPayneEmulator,
    evaluate_emulator,
    load_emulator,
    train_emulator,
)
from stellarfit.emulators._params import flatten_params
from stellarfit.emulators.toy import make_toy_grid

TRAIN = make_toy_grid(192, 96, seed=1)
VAL = make_toy_grid(24, 96, seed=2)


def _mean_spectrum_mae() -> float:
    """MAE of the trivial predictor 'the mean training spectrum' on the validation set."""
    return float(np.mean(np.abs(VAL.flux - TRAIN.flux.mean(axis=0))))


def _payne(seed: int = 0) -> PayneEmulator:
    return PayneEmulator.create(TRAIN.label_spec, TRAIN.wavelength, {"hidden": [32, 32]}, with_continuum=True, seed=seed)


PAYNE_CFG = dict(batch_size=32, learning_rate=3e-3, warmup_steps=20, eval_every=50, progress=False)


@pytest.fixture(scope="module")
def trained_payne():
    return train_emulator(_payne(), TRAIN, VAL, TrainConfig(n_steps=400, **PAYNE_CFG))


def test_payne_validation_loss_falls(trained_payne):
    result = trained_payne
    maes = [h["val_mae"] for h in result.history]
    baseline = _mean_spectrum_mae()
    assert result.history[0]["step"] == 0  # before any update
    assert maes[-1] < 0.3 * maes[0]
    assert result.best_val_mae < 0.3 * baseline  # far better than the mean spectrum
    metrics = result.emulator.metadata["metrics"]
    # the recorded validation MAE is the returned emulator's, recomputed here from the validation data
    recomputed = float(np.mean(np.abs(result.emulator.predict(VAL.labels).astype(np.float64) - VAL.flux)))
    assert metrics["val_mae"] == pytest.approx(recomputed, rel=1e-5)
    assert metrics["val_continuum_mae"] < 0.05  # log10 continuum spans ~0.7 dex
    assert result.emulator.metadata["training_grid_hash"] == TRAIN.hash()
    assert result.emulator.config["continuum_offset"] == pytest.approx(float(TRAIN.log10_continuum.mean()), rel=1e-6)


def test_transformer_payne_validation_loss_falls():
    emu = TransformerPayneEmulator.create(TRAIN.label_spec, TRAIN.wavelength, {"dim": 32, "n_layers": 2, "n_tokens": 4, "head_dim": 16}, seed=0)
    config = TrainConfig(n_steps=300, batch_size=16, n_wavelengths=48, learning_rate=1e-2, warmup_steps=20, eval_every=100, loss="mse", progress=False)
    result = train_emulator(emu, TRAIN, VAL, config)
    maes = [h["val_mae"] for h in result.history]
    assert [h["step"] for h in result.history] == [0, 100, 200, 300]
    assert maes[-1] < 0.4 * maes[0]
    assert maes[1] > maes[-1]
    assert result.best_val_mae < 0.4 * _mean_spectrum_mae()


def test_evaluation_matches_predictions(trained_payne):
    emu = trained_payne.emulator
    ev = evaluate_emulator(emu, VAL, n_worst=5)
    residual = emu.predict(VAL.labels).astype(np.float64) - VAL.flux
    assert ev.mae == pytest.approx(np.mean(np.abs(residual)), rel=1e-6)
    assert ev.mse == pytest.approx(np.mean(residual**2), rel=1e-6)
    assert ev.mae == pytest.approx(trained_payne.best_val_mae, rel=1e-5)
    np.testing.assert_allclose(ev.mae_per_pixel, np.abs(residual).mean(axis=0), rtol=1e-6)
    worst = [w["mae"] for w in ev.worst_pixels]
    assert worst == sorted(worst, reverse=True) and worst[0] == pytest.approx(ev.mae_per_pixel.max())
    centres, mae, counts = ev.residuals_vs_label("metal", n_bins=4)
    assert counts.sum() == VAL.n_spectra and centres.shape == mae.shape == (4,)
    doc = ev.to_dict()
    assert {"mae", "mse", "n_spectra", "n_pixels"} <= set(doc) and doc["n_pixels"] == 96
    json.dumps(doc)  # JSON-able
    assert ev.continuum_mae is not None


def test_checkpoint_resume_continues_the_same_run(tmp_path):
    config = TrainConfig(n_steps=40, checkpoint_every=10, **{**PAYNE_CFG, "eval_every": 10})
    straight = train_emulator(_payne(), TRAIN, VAL, config, checkpoint_dir=tmp_path / "a")
    first = train_emulator(_payne(), TRAIN, VAL, config, checkpoint_dir=tmp_path / "b", stop_at_step=20)
    assert first.final_step == 20 and first.resumed_from is None
    state = json.loads((tmp_path / "b" / "train_state.json").read_text())
    assert state["step"] == 20
    resumed = train_emulator(_payne(seed=5), TRAIN, VAL, config, checkpoint_dir=tmp_path / "b")
    assert resumed.resumed_from == 20 and resumed.final_step == 40
    assert [h["step"] for h in resumed.history] == [0, 10, 20, 30, 40]
    a, b = flatten_params(straight.emulator.params), flatten_params(resumed.emulator.params)
    for name in a:
        np.testing.assert_allclose(np.asarray(a[name]), np.asarray(b[name]), rtol=0, atol=1e-6, err_msg=name)
    # the best parameters are also written as a loadable emulator
    best = load_emulator(os.fspath(tmp_path / "b" / "best"))
    assert best.n_parameters == resumed.emulator.n_parameters
    # a checkpoint from another grid is refused
    other = make_toy_grid(192, 96, seed=9)
    with pytest.raises(ValueError, match="different grid"):
        train_emulator(_payne(), other, VAL, config, checkpoint_dir=tmp_path / "b")


def test_early_stopping_returns_the_best():
    config = TrainConfig(n_steps=500, patience=2, min_delta=0.5, **{**PAYNE_CFG, "eval_every": 10})
    result = train_emulator(_payne(), TRAIN, VAL, config)
    assert result.stopped_early and result.final_step < 500
    assert result.best_val_mae == pytest.approx(min(h["val_mae"] for h in result.history), rel=1e-6)
    assert result.best_step == min(result.history, key=lambda h: h["val_mae"])["step"]


def test_input_checks():
    emu = _payne()
    with pytest.raises(ValueError, match="native grid"):
        train_emulator(emu, make_toy_grid(8, 50, seed=3), None, TrainConfig(n_steps=1, progress=False))
    no_cont = make_toy_grid(8, 96, seed=3, with_continuum=False)
    with pytest.raises(ValueError, match="no log10_continuum"):
        train_emulator(emu, no_cont, None, TrainConfig(n_steps=1, progress=False))
    with pytest.raises(ValueError, match="loss must be"):
        TrainConfig(loss="huber")
    with pytest.raises(ValueError, match="flux must have shape"):
        TrainingData(TRAIN.labels, TRAIN.flux[:5], TRAIN.wavelength)
    bad = TRAIN.flux.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        TrainingData(TRAIN.labels, bad, TRAIN.wavelength)


def test_training_data_from_grid_like_object():
    grid = SimpleNamespace(labels=TRAIN.labels, flux=TRAIN.flux, wavelength=TRAIN.wavelength, continuum=10.0**TRAIN.log10_continuum,
                           continuum_is_log10=False, label_spec=TRAIN.label_spec)
    data = TrainingData.from_grid(grid, indices=np.arange(10))
    assert data.n_spectra == 10
    np.testing.assert_allclose(data.log10_continuum, TRAIN.log10_continuum[:10], rtol=1e-6)
    same = TRAIN.subset(np.arange(10))
    assert same.hash() == TrainingData(same.labels.copy(), same.flux.copy(), same.wavelength.copy(), same.log10_continuum.copy()).hash()
    changed = same.flux.copy()
    changed[3, 7] += 1e-6
    assert TrainingData(same.labels, changed, same.wavelength, same.log10_continuum).hash() != same.hash()


def test_training_data_from_spectral_grid(tmp_path):
    grids = pytest.importorskip("stellarfit.grids")
    grid = grids.SpectralGrid(TRAIN.labels, TRAIN.wavelength, TRAIN.flux, TRAIN.label_spec,
                              continuum=10.0**TRAIN.log10_continuum, continuum_kind="absolute")
    train_idx, val_idx, _ = grid.split((0.5, 0.25, 0.25), seed=0)
    data = TrainingData.from_grid(grid, train_idx)
    np.testing.assert_array_equal(data.labels, TRAIN.labels[train_idx])
    np.testing.assert_allclose(data.log10_continuum, TRAIN.log10_continuum[train_idx], atol=2e-6)
    path = tmp_path / "grid.h5"
    grid.write(path)
    from_file = TrainingData.from_grid(str(path), val_idx)
    np.testing.assert_array_equal(from_file.flux, TRAIN.flux[val_idx])
    assert from_file.label_spec == TRAIN.label_spec
