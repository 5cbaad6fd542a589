"""The errors fit_star reports, pinned to a reference computed here, not by stellarfit.

On a toy emulator linear in its labels (tests/_linear_toy.py) with Gaussian noise, the Laplace
covariance of the MAP is the inverse Fisher matrix (J^T W J)^-1, the Cramér-Rao bound, where J is
the derivative of the observed flux in the labels, rv and the continuum coefficients (nuisances,
marginalized).  The test writes J out with numpy from the toy's analytic lines.  Then, over many
noise draws, (fit - truth) / error must scatter as a unit normal.  Truth checks of the form
``|fit - truth| < 4 error`` cannot see errors that are too large; these tests can (scaling the
reported errors by 1.3 fails both).
"""

import time

import numpy as np

from _linear_toy import LinearToyEmulator, NATIVE, observed_jacobian, observed_normalized
from stellarfit.inference import fit_star, fit_stars, forward_model_for
from stellarfit.spectra import ObservedSpectrum

R_OBS = 20_000.0
TRUTH = np.array([0.55, 0.35, 0.6])
RV = 7.3
DEGREE = 2
PURE = dict(emulator_error=False, physics_error=False, error_floor=False)  # noise alone: the comparison is pure


def _pixels(lo=5010.0, hi=5090.0):
    """Observed pixels: a stretch of the native ones."""
    return NATIVE[(NATIVE >= lo) & (NATIVE <= hi)]


def _continuum(wavelength):
    x = 2.0 * (wavelength - wavelength[0]) / (wavelength[-1] - wavelength[0]) - 1.0
    return 100.0 * (1.0 + 0.03 * x - 0.01 * x**2)


def _observe(wavelength, snr, rng):
    continuum = _continuum(wavelength)
    clean = continuum * observed_normalized(TRUTH, RV, wavelength, R_OBS)
    sigma = continuum / snr
    return ObservedSpectrum.from_arrays(wavelength, clean + rng.normal(size=wavelength.size) * sigma, sigma=sigma,
                                        resolution=R_OBS)


def test_the_hand_written_toy_is_stellarfits_forward_model():
    """The reference below is only as good as the toy written out by hand: it matches the forward
    model (LSF, pixel top-hat, Doppler shift, resampling) to 1e-5 of the continuum (measured 2e-7)."""
    wavelength = _pixels()
    model = forward_model_for(LinearToyEmulator(), wavelength, R_OBS, rv_range=(-50.0, 50.0), vsini_max=0.0)
    for theta, rv in ((TRUTH, RV), (np.array([0.9, 0.1, 0.3]), -31.0)):
        code = np.asarray(model(np.asarray(theta, np.float32), rv, 0.0), np.float64)
        hand = observed_normalized(theta, rv, wavelength, R_OBS)
        assert hand.min() < 0.8  # lines, not a flat spectrum
        np.testing.assert_allclose(code, hand, atol=1e-5)


def test_fit_star_errors_equal_the_cramer_rao_bound_of_the_linear_toy():
    start = time.perf_counter()
    wavelength = _pixels()
    spectrum = _observe(wavelength, snr=150.0, rng=np.random.default_rng(11))
    result = fit_star(spectrum, LinearToyEmulator(), rv_range=(-50.0, 50.0), vsini_max=0.0, continuum_degree=DEGREE,
                      n_starts=4, adam_steps=100, init=None, **PURE)
    values = np.array([result.labels[name]["value"] for name in ("a", "b", "c", "rv")])
    errors = np.array([result.labels[name]["error"] for name in ("a", "b", "c", "rv")])
    # the reference: (J^T W J)^-1 at the MAP, the continuum coefficients marginalized
    jacobian = observed_jacobian(values[:3], values[3], wavelength, R_OBS, _continuum(wavelength), DEGREE)
    ivar = np.asarray(spectrum.ivar, np.float64)
    bound = np.sqrt(np.diag(np.linalg.inv(jacobian.T @ (jacobian * ivar[:, None]))))[:4]
    np.testing.assert_allclose(errors, bound, rtol=0.02)  # measured within 0.2%
    crb = np.array([result.labels[name]["crb"] for name in ("a", "b", "c", "rv")])
    np.testing.assert_allclose(crb, bound, rtol=0.02)
    # the MAP is where it should be: within 4 of these (pinned) errors of the truth
    assert np.all(np.abs(values - np.append(TRUTH, RV)) < 4 * bound), (values, bound)
    assert bound[0] < 0.05 * (1.0 - 0.0)  # well inside the box: the Laplace approximation applies
    print(f"errors / bound = {errors / bound} ({time.perf_counter() - start:.1f} s)")


def test_pulls_over_many_noise_draws_are_unit_normal():
    """200 noise draws of a small toy spectrum, fitted in one batch: (fit - truth) / error has an RMS
    of 1 within its Monte Carlo scatter (1 / sqrt(2 n) ~ 5% per label, ~3% pooled over the labels)."""
    start = time.perf_counter()
    wavelength = _pixels(5010.0, 5050.0)
    rng = np.random.default_rng(2026)
    n = 200
    spectra = [_observe(wavelength, snr=100.0, rng=rng) for _ in range(n)]
    results = fit_stars(spectra, LinearToyEmulator(), batch_size=n, rv_range=(-50.0, 50.0), vsini_max=0.0,
                        continuum_degree=DEGREE, n_starts=2, adam_steps=60, init=None, **PURE)
    names = ("a", "b", "c", "rv")
    truth = np.append(TRUTH, RV)
    pulls = np.array([[(r.labels[name]["value"] - t) / r.labels[name]["error"] for name, t in zip(names, truth)]
                      for r in results])
    assert np.all(np.isfinite(pulls))
    rms = np.sqrt(np.mean(pulls**2, axis=0))
    print(f"pull RMS {dict(zip(names, rms.round(3)))}, pooled {np.sqrt(np.mean(pulls[:, :3] ** 2)):.3f} "
          f"({time.perf_counter() - start:.1f} s)")
    assert np.all((rms > 0.8) & (rms < 1.25)), rms
    assert 0.88 < np.sqrt(np.mean(pulls[:, :3] ** 2)) < 1.12
    assert np.all(np.abs(pulls.mean(axis=0)) < 4 / np.sqrt(n))  # unbiased
