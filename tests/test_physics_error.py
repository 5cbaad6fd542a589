"""The physics error: validation, the shipped one, the checkpoint round trip, and what it does to a fit."""

import jax.numpy as jnp
import numpy as np
import pytest

from _toy_emulator import NATIVE, NATIVE_R, ToyEmulator, toy_flux
from stellarfit.emulators import load_emulator, read_emulator
from stellarfit.emulators.physics_error import PhysicsError, load_physics_error
from stellarfit.forward import ForwardModel
from stellarfit.inference import fit_star
from stellarfit.spectra import ObservedSpectrum
from stellarfit.wavelengths import log_lambda_grid

TRUTH = np.array([5600.0, 3.8, -0.7])
RESOLUTION = 22_500.0
#: lines the toy physics lacks but the "real" star has (a missing-line list)
MISSING = np.linspace(5190.0, 5310.0, 25)
MISSING_DEPTH = 0.25


def test_physics_error_validates_and_interpolates():
    with pytest.raises(ValueError, match="1-D of one length"):
        PhysicsError(np.arange(3.0), np.ones(4))
    with pytest.raises(ValueError, match="finite and >= 0"):
        PhysicsError(np.arange(3.0), np.array([0.1, -0.1, 0.2]))
    physics = PhysicsError(np.array([5000.0, 5100.0]), np.array([0.0, 0.1]), stars=("Sun",))
    assert physics.at(np.array([5050.0]))[0] == pytest.approx(0.05)
    assert physics.at(np.array([4999.0, 5100.5])).tolist() == [0.0, 0.0]  # 0 outside what was measured
    assert physics.describe()["stars"] == ["Sun"]


def test_load_physics_error_names_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="calibrate_physics_error"):
        load_physics_error(tmp_path / "nope.npz")
    np.savez(tmp_path / "bad.npz", wavelength=np.arange(3.0))
    with pytest.raises(ValueError, match="missing arrays"):
        load_physics_error(tmp_path / "bad.npz")


def test_shipped_emulators_carry_it_and_checkpoints_keep_it(tmp_path):
    emulator = load_emulator("payne-default")
    physics = emulator.physics_error
    assert physics is not None and {"Sun", "Arcturus", "Procyon"} <= set(physics.stars)
    assert physics.wavelength[0] <= 5000.5 and physics.wavelength[-1] >= 5499.5
    # measured, not a constant: pixels the physics gets wrong weigh much more than the rest
    assert np.percentile(physics.sigma, 95) > 3 * np.percentile(physics.sigma, 25)
    emulator.save(tmp_path / "copy")
    again = read_emulator(tmp_path / "copy")
    assert again.physics_error is not None and np.array_equal(again.physics_error.sigma, physics.sigma)
    assert again.physics_error.stars == physics.stars
    assert emulator.with_physics_error(None).physics_error is None
    none = emulator.with_physics_error(None)
    none.save(tmp_path / "none")
    assert read_emulator(tmp_path / "none").physics_error is None


class _ToyWithPhysics(ToyEmulator):
    def __init__(self, physics):
        self.physics_error = physics


def _star_with_missing_lines(seed=3, snr=200.0):
    """A toy star with lines its model lacks, and a physics error that says where they are."""
    wavelength = log_lambda_grid(5170.0, 5330.0, RESOLUTION, 3.0)
    model = ForwardModel(toy_flux, NATIVE, NATIVE_R, wavelength, RESOLUTION, rv_range=(-20.0, 20.0))
    clean = np.asarray(model(jnp.asarray(TRUTH), 0.0, 0.0), dtype=np.float64)
    sigma_line = MISSING[:, None] / RESOLUTION / 2.3548
    extra = MISSING_DEPTH * np.exp(-0.5 * ((wavelength[None, :] - MISSING[:, None]) / sigma_line) ** 2)
    observed = clean * np.prod(1.0 - extra, axis=0)
    rng = np.random.default_rng(seed)
    flux = observed + rng.normal(0.0, 1.0 / snr, observed.size)
    spectrum = ObservedSpectrum.from_arrays(wavelength, flux, sigma=np.full(flux.size, 1.0 / snr), resolution=RESOLUTION)
    native_sigma = 1.3 * MISSING[:, None] / NATIVE_R / 2.3548
    profile = np.exp(-0.5 * ((NATIVE[None, :] - MISSING[:, None]) / (2 * native_sigma)) ** 2).max(axis=0)
    return spectrum, PhysicsError(NATIVE, MISSING_DEPTH * profile, stars=("toy",))


@pytest.mark.slow  # ~2 min on 2 cores; runs in CI's slow step
def test_the_physics_error_takes_missing_lines_out_of_the_labels():
    spectrum, physics = _star_with_missing_lines()
    options = dict(n_starts=2, adam_steps=100, rv_range=(-50.0, 50.0))
    plain = fit_star(spectrum, ToyEmulator(), **options)
    weighted = fit_star(spectrum, _ToyWithPhysics(physics), physics_error=True, **options)
    ignored = fit_star(spectrum, _ToyWithPhysics(physics), **options)  # off unless asked for
    assert plain.diagnostics["physics_error"] is None and ignored.diagnostics["physics_error"] is None
    assert weighted.diagnostics["physics_error"]["stars"] == ["toy"]
    assert ignored.labels["fe_h"]["value"] == pytest.approx(plain.labels["fe_h"]["value"], abs=1e-4)
    bias_plain = abs(plain.labels["fe_h"]["value"] - TRUTH[2])
    bias_weighted = abs(weighted.labels["fe_h"]["value"] - TRUTH[2])
    # the missing lines pull [Fe/H] many of its errors away; weighted by the physics error they do not
    assert bias_plain > 5 * plain.labels["fe_h"]["error"]
    assert bias_weighted < 3 * weighted.labels["fe_h"]["error"] and bias_weighted < 0.5 * bias_plain
    assert weighted.reduced_chi2 < plain.reduced_chi2


def test_payne_astro_carries_the_physics_error_of_its_own_line_list():
    astro = load_emulator("payne-astro")
    default = load_emulator("payne-default")
    assert astro.physics_error is not None and set(astro.physics_error.stars) == {"Sun", "Arcturus"}
    assert astro.physics_error.source.endswith("physics_error_astro_5000_5500.npz")
    # a different measurement from the Gaia-ESO one payne-default carries (Procyon is held out of it)
    assert "Procyon" in default.physics_error.stars
    assert not np.array_equal(astro.physics_error.sigma, default.physics_error.sigma)
    # the calibrated log gf values fit the Sun better: where both measured it, the astro error is smaller
    at = astro.wavelength
    assert np.median(astro.physics_error.at(at)) < np.median(default.physics_error.at(at))
    # the network learned other physics than payne-default (fine-tuned on the astrophysical-log-gf grid)
    labels = np.array([5772.0, 4.44, 1.0, 0.0] + [0.0] * (len(astro.label_names) - 4))
    difference = np.abs(np.asarray(astro.predict(labels)) - np.asarray(default.predict(labels)))
    assert difference.max() > 0.02
