"""Spectrum encoders: wavelength encoding, masks, a tiny training run, checkpoints, predict and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flax import nnx

import stellarfit as sf
from stellarfit.encoders import (
    Encoder,
    EncoderConfig,
    EncoderFileError,
    SimulationSettings,
    SpectrumEncoder,
    TrainingSettings,
    TrainingSimulator,
    UnusableSpectrumError,
    gaussian_nll,
    load_encoder,
    patch_features,
    predict,
    predict_tokens,
    train_encoder,
    wavelength_encoding,
)

TINY = EncoderConfig(patch_size=16, dim=32, heads=2, blocks=1, cross_blocks=1)
# low resolution and one token bucket (one compiled program, ~40 tokens per spectrum); an easier
# domain than the default (RV within +-50 km/s, S/N >= 50) so that 200 steps suffice
TINY_SIMULATION = SimulationSettings(resolution_range=(2000.0, 2500.0), pixels_per_fwhm_range=(2.0, 2.5), token_buckets=(40,),
                                     rv_range=(-50.0, 50.0), snr_range=(50.0, 200.0))


@pytest.fixture(scope="module")
def emulator():
    return sf.load_emulator("payne-default")


@pytest.fixture(scope="module")
def trained(emulator):
    settings = TrainingSettings(steps=200, batch_size=16, learning_rate=2e-3, warmup_steps=20, validate_every=0,
                                validation_batches=2, progress=False)
    return train_encoder(emulator, settings, config=TINY, simulation=TINY_SIMULATION)


def test_wavelength_encoding_is_computed_in_float64():
    wavelength = np.array([5000.123456789, 5250.987654321, 5499.5])
    encoding = wavelength_encoding(np.log(wavelength), 16, 1e-4, 4.0)
    assert encoding.shape == (3, 16) and encoding.dtype == np.float32
    periods = np.geomspace(1e-4, 4.0, 8)
    reference = np.sin(2 * np.pi * np.log(wavelength)[:, None] / periods)
    np.testing.assert_allclose(encoding[:, :8], reference, atol=2e-6)
    # ln(lambda) rounded to float32 moves the finest sine by up to ~0.03, far beyond the tolerance above
    rounded = np.sin(2 * np.pi * np.log(wavelength).astype(np.float32).astype(np.float64)[:, None] / periods)
    assert np.max(np.abs(rounded[:, 0] - reference[:, 0])) > 1e-3


def test_patch_features_masks_and_flux_units():
    rng = np.random.default_rng(0)
    flux = 1.0 + 0.1 * rng.normal(size=(2, 64))
    sigma = np.full((2, 64), 0.01)
    good = np.ones((2, 64), bool)
    good[0, 16:32] = False  # a whole token masked
    good[1, 3] = False
    features, token_mask = patch_features(flux, sigma, good, np.full((2, 4), 1e-5), 16)
    assert features.shape == (2, 4, 3 * 16 + 2) and token_mask.shape == (2, 4)
    assert token_mask.tolist() == [[True, False, True, True], [True, True, True, True]]
    assert np.all(np.asarray(features)[0, 1, :-2] == 0.0) and np.all(np.asarray(features)[1, 0, 9:12] == 0.0)
    scaled, _ = patch_features(1e4 * flux, 1e4 * sigma, good, np.full((2, 4), 1e-5), 16)
    np.testing.assert_allclose(scaled, features, atol=1e-5)


def test_masked_tokens_do_not_change_the_output():
    model = SpectrumEncoder(TINY, 5, nnx.Rngs(1))
    rng = np.random.default_rng(2)
    features = rng.normal(size=(3, 12, 50)).astype(np.float32)
    encoding = rng.normal(size=(3, 12, 32)).astype(np.float32)
    mask = np.ones((3, 12), bool)
    mask[:, 8:] = False
    mask[1, 2] = False
    forward = nnx.jit(lambda model, features, encoding, mask: model(features, encoding, mask))
    mean, log_variance = forward(model, features, encoding, mask)
    assert mean.shape == (3, 5) and log_variance.shape == (3, 5) and np.all(np.isfinite(log_variance))
    changed_features, changed_encoding = features.copy(), encoding.copy()
    changed_features[~mask] = 100.0 * rng.normal(size=changed_features[~mask].shape)
    changed_encoding[~mask] = rng.normal(size=changed_encoding[~mask].shape)
    mean2, log_variance2 = forward(model, changed_features, changed_encoding, mask)
    np.testing.assert_allclose(mean2, mean, atol=1e-5)
    np.testing.assert_allclose(log_variance2, log_variance, atol=1e-5)
    # the same change to tokens that are not masked does change it (the check above can fail)
    unmasked, _ = forward(model, changed_features, changed_encoding, np.ones((3, 12), bool))
    assert np.max(np.abs(np.asarray(unmasked) - np.asarray(mean))) > 1e-3


def test_training_lowers_the_loss_and_beats_the_box_centre(emulator, trained):
    encoder, history = trained
    assert len(history) == 200 and all(np.isfinite(h["loss"]) for h in history)
    simulator = TrainingSimulator(emulator, TINY, TINY_SIMULATION)
    batch = simulator.sample(np.random.default_rng(99), 64, resolution=2250.0, snr=100.0, masks=False)
    untrained = Encoder(TINY, emulator.label_spec, seed=0)  # the network training started from
    losses = [float(gaussian_nll(*e.apply(batch.features, batch.encoding, batch.token_mask), batch.targets)) for e in (untrained, encoder)]
    print("held-out loss before/after", losses)
    assert losses[1] < losses[0] - 0.05
    values, errors = predict_tokens(encoder, batch.features, batch.encoding, batch.token_mask)
    assert values.shape == errors.shape == (64, len(emulator.label_spec) + 1) and np.all(errors > 0)
    centre = 0.5 * (emulator.label_spec.lower + emulator.label_spec.upper)
    for name in ("teff", "fe_h"):
        i = emulator.label_spec.index(name)
        rms = np.sqrt(np.mean((values[:, i] - batch.labels[:, i]) ** 2))
        rms_centre = np.sqrt(np.mean((centre[i] - batch.labels[:, i]) ** 2))
        print(name, rms, rms_centre)
        assert rms < 0.85 * rms_centre, (name, rms, rms_centre)


def test_checkpoint_round_trip(trained, tmp_path):
    encoder, _ = trained
    encoder.save(tmp_path / "enc")
    loaded = load_encoder(tmp_path / "enc")
    assert loaded.config == encoder.config and loaded.label_spec == encoder.label_spec and loaded.rv_range == encoder.rv_range
    rng = np.random.default_rng(3)
    arrays = (rng.normal(size=(2, 40, 50)).astype(np.float32), rng.normal(size=(2, 40, 32)).astype(np.float32), np.ones((2, 40), bool))
    for a, b in zip(encoder.apply(*arrays), loaded.apply(*arrays)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(FileExistsError):
        encoder.save(tmp_path / "enc")
    (tmp_path / "enc" / "encoder.json").write_text("{not json")
    with pytest.raises(EncoderFileError, match="not valid JSON"):
        load_encoder(tmp_path / "enc")
    with pytest.raises(FileNotFoundError, match="not an encoder directory"):
        load_encoder(tmp_path)


def _observed(emulator, labels, seed, resolution=2250.0):
    """A noisy spectrum at R ``resolution`` (Gaussian smoothing in numpy: cheap, no forward-model compilation)."""
    native = emulator.predict(labels[None])[0]
    sigma_pixels = np.sqrt(1 / resolution**2 - 1 / emulator.native_resolution**2) / (2.3548 * np.log(emulator.wavelength[1] / emulator.wavelength[0]))
    taps = np.arange(-int(5 * sigma_pixels), int(5 * sigma_pixels) + 1)
    kernel = np.exp(-0.5 * (taps / sigma_pixels) ** 2)
    smooth = np.convolve(native, kernel / kernel.sum(), mode="same")
    wavelength = np.exp(np.arange(np.log(5020.0), np.log(5480.0), 1.0 / (2.25 * resolution)))
    flux = 1e3 * (np.interp(wavelength, emulator.wavelength, smooth) + 0.01 * np.random.default_rng(seed).normal(size=wavelength.size))
    return sf.ObservedSpectrum.from_arrays(wavelength, flux, ivar=np.full(wavelength.size, 1e-2), resolution=resolution)


def test_predict_one_and_many(emulator, trained):
    encoder, _ = trained
    labels = TrainingSimulator(emulator, TINY, TINY_SIMULATION).draw_labels(np.random.default_rng(5), 3)
    spectra = [_observed(emulator, row, i) for i, row in enumerate(labels)]
    many = predict(encoder, spectra)
    one = predict(encoder, spectra[1])
    assert len(many) == 3 and set(one) == set(encoder.output_names)
    for name in encoder.output_names:
        assert np.isclose(one[name][0], many[1][name][0], rtol=1e-5, atol=1e-4) and one[name][1] > 0
    far = sf.ObservedSpectrum.from_arrays(np.linspace(6000, 6100, 200), np.ones(200), ivar=np.ones(200), resolution=2000.0)
    with pytest.raises(UnusableSpectrumError, match="window"):
        predict(encoder, far)


def test_cli_predict_two_files_one_bad(emulator, trained, tmp_path, capsys):
    from astropy.table import Table

    from stellarfit.cli.main import main

    encoder, _ = trained
    encoder.save(tmp_path / "enc")
    good = tmp_path / "good.fits"
    _observed(emulator, 0.5 * (emulator.label_spec.lower + emulator.label_spec.upper), 1).write(good)
    bad = tmp_path / "bad.fits"
    bad.write_text("this is not a FITS file")
    catalog = tmp_path / "catalog.fits"
    code = main(["predict", str(good), str(bad), "--encoder", str(tmp_path / "enc"), "--json", "--out", str(catalog)])
    captured = capsys.readouterr()
    assert code == 0
    rows = json.loads(captured.out)
    assert [row["status"] for row in rows] == ["ok", "failed"]
    assert set(rows[0]["labels"]) == set(encoder.output_names) and rows[0]["labels"]["teff"]["error"] > 0
    assert "bad.fits" in rows[1]["error"] and "bad.fits" in captured.err
    table = Table.read(catalog)
    assert len(table) == 2 and {"teff", "e_teff", "fe_h", "e_fe_h", "rv", "e_rv"} <= set(table.colnames)
    teff = np.ma.filled(np.ma.asarray(table["teff"], dtype=float), np.nan)
    assert np.isfinite(teff[0]) and np.isnan(teff[1])
    assert main(["predict", str(bad), "--encoder", str(tmp_path / "enc")]) == 1
    assert main(["predict", str(good), "--encoder", str(tmp_path / "missing")]) == 2


def test_shipped_encoder_by_name_reads_a_solar_spectrum(emulator, tmp_path, capsys):
    from stellarfit.encoders import DEFAULT_ENCODER, encoder_for

    shipped = load_encoder(DEFAULT_ENCODER)
    assert encoder_for(emulator) is not None and encoder_for(emulator).label_spec == emulator.label_spec
    assert shipped.label_spec == emulator.label_spec and shipped.output_names[-1] == "rv"
    sun = np.array([5772.0, 4.44, 1.0, 0.0] + [0.0] * (len(emulator.label_names) - 4))
    result = predict(shipped, _observed(emulator, sun, 0, resolution=5000.0))
    # the trained encoder's Teff and [Fe/H] on a simulated solar spectrum: within 3 of its errors (~400 K, ~0.3 dex)
    for name, truth in (("teff", 5772.0), ("fe_h", 0.0)):
        value, error = result[name]
        assert abs(value - truth) < 3 * error and error < {"teff": 800.0, "fe_h": 0.6}[name]
    # `stellarfit predict` without --encoder uses it
    from stellarfit.cli.main import main

    path = tmp_path / "sun.fits"
    _observed(emulator, sun, 0, resolution=5000.0).write(path)
    assert main(["predict", str(path), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert row["labels"]["teff"]["value"] == pytest.approx(result["teff"][0], rel=1e-3)


def test_predict_reads_files_without_uncertainties_at_a_given_snr(emulator, tmp_path, capsys):
    from stellarfit.cli.main import main

    sun = np.array([5772.0, 4.44, 1.0, 0.0] + [0.0] * (len(emulator.label_names) - 4))
    spectrum = _observed(emulator, sun, 0, resolution=5000.0)
    path = tmp_path / "sun.csv"
    np.savetxt(path, np.column_stack([spectrum.wavelength, spectrum.flux]), delimiter=",", header="wavelength,flux",
               comments="")
    assert main(["predict", str(path), "--resolution", "5000", "--json"]) == 1  # no uncertainties: refused, said why
    assert "no uncertainties" in json.dumps(json.loads(capsys.readouterr().out))
    assert main(["predict", str(path), "--resolution", "5000", "--snr", "100", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert row["status"] == "ok" and abs(row["labels"]["teff"]["value"] - 5772.0) < 3 * row["labels"]["teff"]["error"]


@pytest.mark.slow
def test_fit_star_starts_from_the_shipped_encoder(emulator, trained):
    from stellarfit.inference._encoder_start import EncoderStart, encoder_starts

    truth = np.array([6100.0, 4.1, 1.2, -0.4] + [0.0] * (len(emulator.label_names) - 4))
    spectrum = _observed(emulator, truth, 3)
    fit = sf.fit_star(spectrum, emulator, "map", init="encoder")
    info = fit.diagnostics["init"]
    assert info["source"] == "encoder payne-default-sim" and set(info["predicted"]) >= {"teff", "fe_h", "rv"}
    assert info["values"]["teff"] == pytest.approx(np.clip(info["predicted"]["teff"][0], 4060.0, 6940.0))
    assert abs(fit.labels["teff"]["value"] - 6100.0) < 5 * fit.labels["teff"]["error"] + 100.0
    # a spectrum the encoder cannot read falls back to the multi-start search, and says so; starts lie inside the box
    tiny, _ = trained
    far = sf.ObservedSpectrum.from_arrays(np.linspace(6000, 6100, 200), np.ones(200), ivar=np.ones(200), resolution=2000.0)
    (values, fallback), (start, _) = encoder_starts(EncoderStart(tiny, "tiny"), [far, spectrum], emulator.label_spec)
    assert values is None and fallback["source"] == "multi-start" and "cannot read" in fallback["fallback"]
    lower, upper = emulator.label_spec.lower, emulator.label_spec.upper
    assert all(lower[k] < start[name] < upper[k] for k, name in enumerate(emulator.label_names))


@pytest.mark.slow
def test_encoder_start_reaches_the_multi_start_map(emulator, trained):
    truth = np.array([6100.0, 4.1, 1.2, -0.4] + [0.0] * (len(emulator.label_names) - 4))
    spectrum = _observed(emulator, truth, 3)
    fit = sf.fit_star(spectrum, emulator, "map", init="encoder")
    search = sf.fit_star(spectrum, emulator, "map", init=None)  # 8 Sobol starts
    assert fit.reduced_chi2 <= search.reduced_chi2 + 1e-3
    assert abs(fit.labels["teff"]["value"] - search.labels["teff"]["value"]) < 0.3 * search.labels["teff"]["error"]
    # an Encoder object works as init too, and fit_stars predicts every spectrum's start in one batch
    tiny, _ = trained
    fits = sf.fit_stars([spectrum, _observed(emulator, truth, 4)], emulator, init=tiny, progress=False)
    assert all(f.diagnostics["init"]["source"].startswith("encoder") for f in fits)
    assert all(abs(f.labels["teff"]["value"] - 6100.0) < 5 * f.labels["teff"]["error"] + 100.0 for f in fits)


def test_init_encoder_needs_an_encoder_for_the_emulator():
    from stellarfit.emulators import PayneEmulator
    from stellarfit.emulators.toy import toy_label_spec

    wavelength = np.linspace(5000.0, 5050.0, 300)
    toy = PayneEmulator.create(toy_label_spec(), wavelength, resolution=30_000.0, seed=0)
    spectrum = sf.ObservedSpectrum.from_arrays(toy.wavelength, np.ones(toy.wavelength.size), ivar=np.ones(toy.wavelength.size))
    with pytest.raises(ValueError, match="no shipped encoder"):
        sf.fit_star(spectrum, toy, "map", init="encoder")
