"""Correlated emulator-error modes: estimation, the joint continuum + mode solve, save/load and fits."""

import jax.numpy as jnp
import numpy as np
import pytest

from stellarfit.emulators import PayneEmulator, TrainConfig, TrainingData, estimate_error_modes, train_emulator
from stellarfit.emulators.toy import make_toy_grid
from stellarfit.inference import fit_star, forward_model_for
from stellarfit.inference.likelihood import profile_with_modes
from stellarfit.spectra import ObservedSpectrum
from stellarfit.wavelengths import log_lambda_grid


@pytest.fixture(scope="module")
def emulator():
    wavelength = log_lambda_grid(5000.0, 5100.0, 30_000.0, 3.0)
    train = make_toy_grid(256, wavelength.size, seed=1, window=(wavelength[0], wavelength[-1]))
    emu = PayneEmulator.create(train.label_spec, train.wavelength, resolution=30_000.0, seed=0)
    return train_emulator(emu, train, None, TrainConfig(n_steps=300, batch_size=64, learning_rate=3e-3)).emulator


def test_profile_with_modes_equals_generalized_least_squares():
    rng = np.random.default_rng(0)
    n, k, n_modes = 200, 3, 4
    x = np.linspace(-1, 1, n)
    design = np.stack([x**j for j in range(k)], axis=1)
    model = 1.0 - 0.3 * np.exp(-0.5 * ((x - 0.2) / 0.05) ** 2)
    ivar = rng.uniform(0.5, 2.0, n) * 1e4
    basis = rng.normal(size=(n, n_modes)) * 0.01
    flux = (design @ [1.0, 0.1, -0.05]) * model + basis @ rng.normal(size=n_modes) + rng.normal(size=n) / np.sqrt(ivar)
    columns = design * model[:, None]
    covariance = np.diag(1.0 / ivar) + basis @ basis.T
    inverse = np.linalg.inv(covariance)
    c_gls = np.linalg.solve(columns.T @ inverse @ columns, columns.T @ inverse @ flux)
    residual = flux - columns @ c_gls
    chi2_gls = residual @ inverse @ residual
    c, continuum, chi2, _, amplitudes = profile_with_modes(*(jnp.asarray(a, jnp.float32) for a in (model, flux, ivar, design, basis)))
    np.testing.assert_allclose(np.asarray(c), c_gls, rtol=2e-3, atol=2e-4)
    np.testing.assert_allclose(float(chi2), chi2_gls, rtol=2e-3)
    np.testing.assert_allclose(np.asarray(continuum), design @ c_gls, rtol=1e-3)
    # without modes the chi2 is larger: the modes explain part of the residual
    plain = np.sum(ivar * (flux - columns @ np.linalg.lstsq(columns * np.sqrt(ivar)[:, None], flux * np.sqrt(ivar), rcond=None)[0]) ** 2)
    assert chi2_gls < plain and np.all(np.isfinite(np.asarray(amplitudes)))


def test_estimate_error_modes_finds_the_correlated_part(emulator):
    rng = np.random.default_rng(3)
    n = 300
    grid = make_toy_grid(n, emulator.n_pixels, seed=9, window=(emulator.wavelength[0], emulator.wavelength[-1]))
    clean = emulator.predict(grid.labels, check_bounds=False).astype(np.float64)
    pixel = np.arange(emulator.n_pixels)
    patterns = np.stack([np.sin(2 * np.pi * pixel / 97.0), np.cos(2 * np.pi * pixel / 41.0)]) * np.array([[0.02], [0.01]])
    noise = 0.001
    residual = rng.normal(size=(n, 2)) @ patterns + rng.normal(size=(n, emulator.n_pixels)) * noise
    data = TrainingData(labels=grid.labels, flux=(clean - residual).astype(np.float32), wavelength=emulator.wavelength,
                        label_spec=emulator.label_spec)
    modes, rest = estimate_error_modes(emulator, data, n_modes=2)
    assert modes.shape == (2, emulator.n_pixels) and rest.shape == (emulator.n_pixels,)
    # the modes span the two patterns and carry their variance; what is left is the white noise
    projection = patterns @ np.linalg.pinv(modes.astype(np.float64)) @ modes
    assert np.linalg.norm(projection - patterns) < 0.05 * np.linalg.norm(patterns)
    np.testing.assert_allclose(np.sum(modes.astype(np.float64) ** 2), np.sum(patterns**2) + 2 * noise**2, rtol=0.2)
    assert 0.7 * noise < np.median(rest) < 1.3 * noise
    with pytest.raises(ValueError, match="n_modes"):
        estimate_error_modes(emulator, data, n_modes=0)
    with pytest.raises(ValueError, match="native wavelengths"):
        estimate_error_modes(emulator, TrainingData(labels=grid.labels, flux=data.flux[:, :-1],
                                                    wavelength=emulator.wavelength[:-1], label_spec=emulator.label_spec))


@pytest.mark.slow
def test_error_modes_round_trip_and_marginalized_in_fits(emulator, tmp_path):
    from stellarfit.emulators import load_emulator

    wavelength = log_lambda_grid(5008.0, 5090.0, 20_000.0, 3.0)
    truth = np.array([0.4, 0.2, -0.3], np.float32)
    model = forward_model_for(emulator, wavelength, 20_000.0, rv_range=(-1.0, 1.0))
    normalized = np.asarray(model(truth, 0.0, 0.0), np.float64)
    # the emulator is "wrong" by a smooth pattern the observation does not have
    period = 15.0
    error_native = 0.02 * np.sin(2 * np.pi * (emulator.wavelength - 5000.0) / period)
    error_observed = 0.02 * np.sin(2 * np.pi * (wavelength - 5000.0) / period)
    continuum = 50.0 * (1 + 0.05 * (wavelength - 5050.0) / 40.0)
    snr = 300.0
    noise = np.random.default_rng(11).normal(size=wavelength.size) * continuum / snr
    spectrum = ObservedSpectrum.from_arrays(wavelength, continuum * (normalized - error_observed) + noise,
                                            sigma=continuum / snr, resolution=20_000.0)
    reference_spectrum = ObservedSpectrum.from_arrays(wavelength, continuum * normalized + noise,
                                                      sigma=continuum / snr, resolution=20_000.0)

    with pytest.raises(ValueError, match="error_modes"):
        emulator.with_error_modes(np.zeros((2, 5)))
    moded = emulator.with_error_modes(error_native[None, :])
    assert moded.error_modes.shape == (1, emulator.n_pixels) and emulator.error_modes is None
    moded.save(str(tmp_path / "emu"))
    loaded = load_emulator(str(tmp_path / "emu"))
    np.testing.assert_array_equal(loaded.error_modes, moded.error_modes)
    np.testing.assert_array_equal(loaded.predict(truth[None]), emulator.predict(truth[None]))

    options = dict(n_starts=8, adam_steps=250, rv_range=(-50.0, 50.0), vsini_max=20.0)
    reference = fit_star(reference_spectrum, emulator, **options)  # same noise, no emulator error
    plain = fit_star(spectrum, loaded, emulator_error=False, **options)
    marginal = fit_star(spectrum, loaded, **options)
    # the pattern (0.02, 6x the noise) is absorbed by its mode: chi2 near the number of pixels ...
    assert plain.reduced_chi2 > 3.0
    assert marginal.reduced_chi2 < 1.5
    # ... and the labels come back to those of the same noise without the pattern
    for name in emulator.label_names:
        sigma = reference.labels[name]["error"]
        assert abs(marginal.labels[name]["value"] - reference.labels[name]["value"]) < sigma, name
    shift_plain = sum(abs(plain.labels[n]["value"] - reference.labels[n]["value"]) / reference.labels[n]["error"]
                      for n in emulator.label_names)
    shift_marginal = sum(abs(marginal.labels[n]["value"] - reference.labels[n]["value"]) / reference.labels[n]["error"]
                         for n in emulator.label_names)
    assert shift_marginal < 0.5 * shift_plain
