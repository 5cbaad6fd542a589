"""degrade_resolution (stellarfit.spectra): observations sharper than the emulator are degraded to
its resolution with honest noise, automatically in the fits; and the model_mismatch flag."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from _toy_emulator import (
    CENTRES,
    KIND,
    NATIVE,
    NATIVE_R,
    STRENGTH,
    TOY_SPEC,
    ToyEmulator,
    toy_flux,
)

from stellarfit.forward import ForwardModel, ObservationOutsideEmulatorError
from stellarfit.inference import fit_star, fit_stars
from stellarfit.inference._mismatch import MODEL_MISMATCH_RATIO, chi2_mismatch
from stellarfit.inference.fit import FLAGS
from stellarfit.spectra import (
    InvalidSpectrumError,
    ObservedSpectrum,
    degrade_resolution,
)
from stellarfit.wavelengths import FWHM_TO_SIGMA, SPEED_OF_LIGHT_KMS, log_lambda_grid

R_SHARP = 90_000.0


def sigma_log(resolution):
    """Gaussian LSF sigma in ln(lambda) of resolving power R."""
    return FWHM_TO_SIGMA / resolution


def gaussian_line(wavelength, centre, sigma, depth):
    x = np.log(wavelength / centre)
    return depth * np.exp(-0.5 * (x / sigma) ** 2)


# -- the operator -----------------------------------------------------------------------------------


def test_reaches_the_target_resolution_and_keeps_line_areas():
    """Gaussian lines of intrinsic width s0 observed at R_in have sigma^2 = s0^2 + s_in^2; degraded,
    they must be the lines of sigma^2 = s0^2 + s_target^2 (same area), at the output pixels."""
    wavelength = log_lambda_grid(5100.0, 5160.0, R_SHARP, 3.0)
    centres, intrinsic = np.array([5115.0, 5130.0, 5145.0]), sigma_log(200_000.0)
    depth = np.array([0.6, 0.3, 0.8])

    def spectrum_at(grid, resolution):
        total = np.hypot(intrinsic, sigma_log(resolution))
        # a line keeps its area: depth * sigma is fixed
        return 1.0 - sum(gaussian_line(grid, c, total, d * np.hypot(intrinsic, sigma_log(R_SHARP)) / total)
                         for c, d in zip(centres, depth))

    sharp = ObservedSpectrum.from_arrays(wavelength, spectrum_at(wavelength, R_SHARP), sigma=0.01, resolution=R_SHARP)
    out = degrade_resolution(sharp, 30_000.0)
    assert out.resolution == 30_000.0
    expected = spectrum_at(out.wavelength, 30_000.0)
    assert np.max(np.abs(out.flux - expected)) < 1e-4
    # a 1% error in the target R would show: the test can fail
    assert np.max(np.abs(spectrum_at(out.wavelength, 30_300.0) - expected)) > 2e-3
    record = out.metadata["degraded"]
    assert record["resolution_in"] == R_SHARP and record["resolution_out"] == 30_000.0
    assert record["n_pixels_in"] == wavelength.size and record["n_pixels_out"] == out.n_pixels
    # 3 pixels per resolution element, on the lattice ln(lambda) = k / (R * 3)
    step = 1.0 / (30_000.0 * 3.0)
    k = np.log(out.wavelength) / step
    np.testing.assert_allclose(k, np.round(k), atol=1e-6)
    assert out.n_pixels == pytest.approx(wavelength.size * 30_000.0 / R_SHARP, rel=0.02)


def test_noise_variance_and_fisher_information_are_right():
    """(a) the diagonal variance matches the variance of output pixels over many noise draws;
    (b) the error of a broad line's amplitude from the returned ivar matches its scatter.  Without
    the correlation factor (f ~ 4.4 here) (b) would be off by sqrt(f) ~ 2.1."""
    wavelength = log_lambda_grid(5100.0, 5140.0, R_SHARP, 3.0)
    sigma = np.full(wavelength.size, 0.01) * (1.0 + 0.3 * np.sin(np.arange(wavelength.size) / 200.0))
    line = gaussian_line(wavelength, 5120.0, 40.0 / SPEED_OF_LIGHT_KMS, 1.0)  # broad: 40 km/s
    template = degrade_resolution(ObservedSpectrum.from_arrays(wavelength, line, sigma=sigma, resolution=R_SHARP),
                                  30_000.0).flux
    rng = np.random.default_rng(7)
    amplitude, draws = 0.3, []
    out = None
    for _ in range(400):
        flux = 1.0 - amplitude * line + sigma * rng.standard_normal(wavelength.size)
        out = degrade_resolution(ObservedSpectrum.from_arrays(wavelength, flux, sigma=sigma, resolution=R_SHARP),
                                 30_000.0)
        draws.append(out.flux)
    draws = np.array(draws)
    factor = out.metadata["degraded"]["ivar_correlation_factor"]
    assert 3.5 < factor < 5.5  # ~ 2 sqrt(pi) s / d
    good = ~out.mask
    assert good.all()
    # (a) the diagonal variance: ivar * f is 1 / var
    diagonal = 1.0 / (out.ivar * factor)
    ratio = draws.var(axis=0)[good] / diagonal[good]
    assert np.median(ratio) == pytest.approx(1.0, abs=0.03)
    assert np.mean(ratio) == pytest.approx(1.0, abs=0.03)
    # (b) weighted least squares for the amplitude, error from the returned ivar
    weights = out.ivar * template
    estimates = ((1.0 - draws) @ weights) / (template @ weights)
    predicted = 1.0 / np.sqrt(template @ weights)
    assert np.mean(estimates) == pytest.approx(amplitude, abs=4 * predicted / np.sqrt(len(draws)) + 1e-4)
    assert np.std(estimates) / predicted == pytest.approx(1.0, abs=0.1)


def test_masked_pixels_do_not_leak_and_gaps_stay_gaps():
    wavelength = log_lambda_grid(5100.0, 5140.0, R_SHARP, 3.0)
    flux = np.ones(wavelength.size)
    gap = (wavelength > 5118.0) & (wavelength < 5121.0)
    flux[gap] = np.nan
    flux[np.flatnonzero(gap)[::7]] = 1e6  # garbage in the masked pixels
    lone = np.searchsorted(wavelength, 5130.0)
    flux[lone] = -5e5
    mask = gap.copy()
    mask[lone] = True
    spectrum = ObservedSpectrum.from_arrays(wavelength, flux, sigma=0.01, mask=mask, resolution=R_SHARP,
                                            fix_nonfinite=True)
    out = degrade_resolution(spectrum, 30_000.0)
    good = ~out.mask
    np.testing.assert_allclose(out.flux[good], 1.0, atol=1e-12)  # a flat spectrum stays flat: nothing leaks
    inside = (out.wavelength > 5118.2) & (out.wavelength < 5120.8)
    assert inside.any() and out.mask[inside].all()  # the gap stays a gap
    assert out.n_good > 0.9 * out.n_pixels
    # a lone bad pixel costs a little weight but masks nothing; the ends are cut, not masked
    assert not out.mask[np.argmin(np.abs(out.wavelength - 5130.0))]
    assert not out.mask[0] and not out.mask[-1]
    assert out.metadata["degraded"]["n_masked_out"] == int(out.mask.sum())
    # a stricter coverage masks more around the gap; a laxer one less
    assert degrade_resolution(spectrum, 30_000.0, min_coverage=0.99).mask.sum() > out.mask.sum()
    assert degrade_resolution(spectrum, 30_000.0, min_coverage=0.3).mask.sum() < out.mask.sum()


def test_arms_and_per_pixel_resolution():
    blue = log_lambda_grid(5000.0, 5050.0, R_SHARP, 3.0)
    red = log_lambda_grid(5040.0, 5100.0, 20_000.0, 3.0)
    resolution = np.concatenate([np.linspace(80_000.0, 100_000.0, blue.size), np.full(red.size, 20_000.0)])
    wavelength = np.concatenate([blue, red])
    spectrum = ObservedSpectrum.from_arrays(wavelength, np.ones(wavelength.size), sigma=0.02, resolution=resolution,
                                            arm=np.repeat([0, 1], [blue.size, red.size]), arm_names=("B", "R"))
    out = degrade_resolution(spectrum, 30_000.0)
    assert out.arm_names == ("B", "R") and out.metadata["degraded"]["arms"] == ["B"]
    r_blue, r_red = out.resolution[out.arm == 0], out.resolution[out.arm == 1]
    np.testing.assert_array_equal(r_blue, 30_000.0)
    np.testing.assert_array_equal(out.wavelength[out.arm == 1], red)  # not sharper: untouched
    np.testing.assert_array_equal(r_red, 20_000.0)
    np.testing.assert_array_equal(out.ivar[out.arm == 1], spectrum.ivar[spectrum.arm == 1])
    assert out.metadata["degraded"]["resolution_in_range"] == [80_000.0, 100_000.0]
    # keep the pixels (no resampling); or give them
    same = degrade_resolution(spectrum, 30_000.0, pixels_per_resolution=None)
    kept = same.wavelength[same.arm == 0]
    first = np.searchsorted(blue, kept[0])
    np.testing.assert_array_equal(kept, blue[first : first + kept.size])
    given = log_lambda_grid(5010.0, 5090.0, 30_000.0, 2.0)
    chosen = degrade_resolution(spectrum, 30_000.0, wavelength=given)
    assert np.all(np.isin(chosen.wavelength[chosen.arm == 0], given))
    # nothing sharper than the target: the spectrum comes back unchanged
    unchanged = degrade_resolution(spectrum, 120_000.0)
    np.testing.assert_array_equal(unchanged.wavelength, spectrum.wavelength)
    assert "degraded" not in unchanged.metadata


def test_clear_errors():
    wavelength = log_lambda_grid(5100.0, 5140.0, R_SHARP, 3.0)
    unknown = ObservedSpectrum.from_arrays(wavelength, np.ones(wavelength.size), sigma=0.01)
    with pytest.raises(InvalidSpectrumError, match="resolving power .* is unknown"):
        degrade_resolution(unknown, 30_000.0)
    spectrum = unknown.with_resolution(R_SHARP)
    with pytest.raises(InvalidSpectrumError, match="min_coverage"):
        degrade_resolution(spectrum, 30_000.0, min_coverage=0.0)
    with pytest.raises(InvalidSpectrumError, match="one value per pixel"):
        degrade_resolution(spectrum, np.full(3, 30_000.0))
    with pytest.raises(InvalidSpectrumError, match="finite and > 0"):
        degrade_resolution(spectrum, -1.0)


# -- the forward model at R = native ---------------------------------------------------------------


@pytest.mark.parametrize("excess", [0.0, 1e-9, 5e-7])
def test_forward_model_accepts_the_native_resolution(excess):
    observed = NATIVE[(NATIVE > 5100.0) & (NATIVE < 5400.0)]
    def flat(labels, w):
        return jnp.ones_like(w) * labels[0]

    model = ForwardModel(flat, NATIVE, NATIVE_R, observed, NATIVE_R * (1.0 + excess), rv_range=(-50.0, 50.0))
    assert np.asarray(model.instrument_kernel).size == 1  # identity: on the native pixels, at the native R
    per_pixel = np.full(observed.size, NATIVE_R * (1.0 + excess))
    assert ForwardModel(flat, NATIVE, NATIVE_R, observed, per_pixel).lsf_anchor_resolution is None
    with pytest.raises(ObservationOutsideEmulatorError, match="degrade_resolution"):
        ForwardModel(flat, NATIVE, NATIVE_R, observed, NATIVE_R * (1.0 + 1e-5))


# -- in the fits -------------------------------------------------------------------------------------

TRUTH = np.array([5600.0, 3.8, -0.7])


def sharp_toy(wavelength, truth, resolution):
    """The toy emulator's lines as an instrument of resolving power ``resolution`` > NATIVE_R sees
    them: each line narrower (its native width less the native LSF plus this one's) and deeper by
    the same factor (same area), so that degrading to NATIVE_R gives back the toy's own spectrum."""
    teff, logg, fe_h = truth
    t = (teff - 5500.0) / 1500.0
    depth = STRENGTH * 10.0 ** (0.4 * fe_h) * np.where(KIND == 0, 1.0 - 0.3 * t,
                                                       np.where(KIND == 1, 1.0 + 0.2 * t - 0.1 * (logg - 3.0), np.exp(-1.2 * t)))
    depth = depth / (1.0 + depth)
    native_sigma = CENTRES / NATIVE_R * FWHM_TO_SIGMA * (1.0 + 0.05 * (logg - 3.0) * (KIND == 0))
    sigma = np.sqrt(native_sigma**2 - (CENTRES * FWHM_TO_SIGMA) ** 2 * (NATIVE_R**-2 - resolution**-2))
    profile = np.exp(-0.5 * ((wavelength[:, None] - CENTRES[None, :]) / sigma[None, :]) ** 2)
    return np.prod(1.0 - (depth * native_sigma / sigma)[None, :] * profile, axis=1)


def sharp_spectrum(snr=200.0, seed=3):
    wavelength = log_lambda_grid(5170.0, 5330.0, R_SHARP, 3.0)
    continuum = 80.0 * (1.0 + 0.1 * (wavelength - 5250.0) / 80.0)
    clean = continuum * sharp_toy(wavelength, TRUTH, R_SHARP)
    sigma = np.full(wavelength.size, 80.0 / snr)
    flux = clean + np.random.default_rng(seed).normal(size=wavelength.size) * sigma
    return ObservedSpectrum.from_arrays(wavelength, flux, sigma=sigma, resolution=R_SHARP)


def test_sharp_toy_degrades_to_the_toy_itself():
    """The test spectra are right: degraded to the native R, the sharp toy is the toy's own spectrum."""
    wavelength = log_lambda_grid(5170.0, 5330.0, R_SHARP, 3.0)
    spectrum = ObservedSpectrum.from_arrays(wavelength, sharp_toy(wavelength, TRUTH, R_SHARP), sigma=0.01,
                                            resolution=R_SHARP)
    out = degrade_resolution(spectrum, NATIVE_R)
    native = np.asarray(toy_flux(jnp.asarray(TRUTH), jnp.asarray(out.wavelength)), dtype=np.float64)
    # blended lines are where "narrower and deeper" is not exact (a product of lines, convolved, is
    # not the product of the convolved lines): away from the few close pairs, the toy itself
    close = CENTRES[np.flatnonzero(np.diff(CENTRES) < 0.5)]
    isolated = np.all(np.abs(out.wavelength[:, None] - close[None, :]) > 0.8, axis=1)
    assert isolated.mean() > 0.9
    assert np.max(np.abs(out.flux - native)[isolated]) < 2e-3
    assert np.max(np.abs(out.flux - native)) < 0.02


def test_fits_prepare_sharp_spectra_on_the_emulator_pixels():
    """The one place the fits degrade (what fit_star / fit_stars call while preparing a spectrum):
    sharper spectra come out at exactly the native R on the emulator's lattice, the rest untouched."""
    from stellarfit.inference._resolution import degrade_for_emulator

    emulator = ToyEmulator()
    spectrum = sharp_spectrum()
    degraded, record = degrade_for_emulator(spectrum, emulator)
    assert degraded.resolution == NATIVE_R and record == degraded.metadata["degraded"]
    assert record["n_pixels_in"] == spectrum.n_pixels and record["n_pixels_out"] == degraded.n_pixels
    k = np.log(degraded.wavelength / NATIVE[0]) / np.log(NATIVE[1] / NATIVE[0])
    np.testing.assert_allclose(k, np.round(k), atol=1e-6)
    np.testing.assert_allclose(degraded.wavelength, NATIVE[round(k[0]) : round(k[0]) + k.size], rtol=1e-13)
    model = ForwardModel.from_emulator(emulator, degraded.wavelength, degraded.resolution, rv_range=(-50.0, 50.0))
    assert np.asarray(model.instrument_kernel).size == 1
    # per-pixel R a hair above the native one (float noise): nothing to do
    same = spectrum.with_resolution(np.full(spectrum.n_pixels, NATIVE_R * (1 + 1e-9)))
    assert degrade_for_emulator(same, emulator) == (same, None)
    broad = spectrum.with_resolution(20_000.0)
    assert degrade_for_emulator(broad, emulator) == (broad, None)


@pytest.mark.slow
def test_fit_star_degrades_a_sharp_spectrum_and_flags_it():
    spectrum = sharp_spectrum()
    emulator = ToyEmulator()
    options = {"n_starts": 2, "adam_steps": 100, "rv_range": (-100.0, 100.0), "vsini_max": 10.0}
    result = fit_star(spectrum, emulator, **options)
    assert "degraded_to_emulator_resolution" in result.flag_names
    assert "model_mismatch" not in result.flag_names
    record = result.diagnostics["degraded"]
    assert record["resolution_in"] == R_SHARP and record["resolution_out"] == NATIVE_R
    assert record["n_pixels_out"] == result.wavelength.size < spectrum.n_pixels / 2
    # the fitted pixels are the emulator's own
    step = np.log(NATIVE[1] / NATIVE[0])
    k = np.log(result.wavelength / NATIVE[0]) / step
    np.testing.assert_allclose(k, np.round(k), atol=1e-6)
    for name, value in zip(TOY_SPEC.names, TRUTH):
        row = result.labels[name]
        assert abs(row["value"] - value) < 5 * row["error"], (name, row)
    assert abs(result.labels["rv"]["value"]) < 5 * result.labels["rv"]["error"]
    # a describing model: chi2 ~ N / f, so its ratio to the expectation is ~1
    factor = record["ivar_correlation_factor"]
    assert result.reduced_chi2 == pytest.approx(1.0 / factor, rel=0.25)
    assert result.diagnostics["chi2_ratio"] == pytest.approx(1.0, abs=0.2)
    json.dumps(result.to_dict())
    with pytest.raises(ObservationOutsideEmulatorError, match="sharper than the emulator"):
        fit_star(spectrum, emulator, degrade=False, **options)


@pytest.mark.slow
def test_model_mismatch_flag_in_fit_stars():
    """A star with lines the model does not have is flagged model_mismatch; an honest one is not."""
    wavelength = log_lambda_grid(5170.0, 5330.0, 22_500.0, 3.0)
    model = ForwardModel(toy_flux, NATIVE, NATIVE_R, wavelength, 22_500.0, rv_range=(-20.0, 20.0))
    clean = 50.0 * np.asarray(model(jnp.asarray(TRUTH), 0.0, 0.0), dtype=np.float64)
    rng = np.random.default_rng(11)
    foreign = np.prod([1.0 - gaussian_line(wavelength, c, sigma_log(22_500.0), 0.3)
                       for c in rng.uniform(5180.0, 5320.0, 30)], axis=0)
    sigma = np.full(wavelength.size, 50.0 / 150.0)
    spectra = [ObservedSpectrum.from_arrays(wavelength, flux + rng.normal(size=wavelength.size) * sigma, sigma=sigma,
                                            resolution=22_500.0) for flux in (clean, clean * foreign)]
    honest, mismatched = fit_stars(spectra, ToyEmulator(), n_starts=2, adam_steps=100, rv_range=(-50.0, 50.0),
                                   vsini_max=10.0)
    assert "model_mismatch" not in honest.flag_names and honest.diagnostics["chi2_ratio"] < 1.2
    assert "degraded_to_emulator_resolution" not in honest.flag_names and "degraded" not in honest.diagnostics
    assert "model_mismatch" in mismatched.flag_names
    assert mismatched.diagnostics["chi2_ratio"] > mismatched.diagnostics["chi2_ratio_threshold"] >= MODEL_MISMATCH_RATIO
    assert mismatched.flags & FLAGS["model_mismatch"]


def test_chi2_mismatch_statistic():
    n = 10_000
    ivar = np.full(n, 4.0)
    # no degradation, no emulator error: the reduced chi2 itself
    verdict = chi2_mismatch(1.05 * (n - 8), n - 8, ivar, ivar)
    assert verdict["chi2_ratio"] == pytest.approx(1.05) and not verdict["model_mismatch"]  # significant, harmless
    assert chi2_mismatch(1.6 * (n - 8), n - 8, ivar, ivar)["model_mismatch"]
    # degraded (f = 4): a describing model has reduced chi2 1/4
    verdict = chi2_mismatch(0.25 * (n - 8), n - 8, ivar, ivar, correlation_factor=4.0)
    assert verdict["reduced_chi2_expected"] == pytest.approx(0.25) and verdict["chi2_ratio"] == pytest.approx(1.0)
    assert chi2_mismatch(0.5 * (n - 8), n - 8, ivar, ivar, correlation_factor=4.0)["model_mismatch"]
    # the emulator's error dominating the weights: the expectation goes back towards 1
    fit_ivar = np.full(n, 0.4)
    assert chi2_mismatch(0.9 * n, n, fit_ivar, ivar, correlation_factor=4.0)["reduced_chi2_expected"] == pytest.approx(0.925)
    # a few pixels: 1.6 is not significant
    assert not chi2_mismatch(1.6 * 20, 20, ivar[:25], ivar[:25])["model_mismatch"]


# -- the command line -------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_fit_degrades_and_says_so(tmp_path, monkeypatch, capsys):
    from stellarfit.cli import main as cli

    path = tmp_path / "sharp.fits"
    sharp_spectrum().write(path)
    monkeypatch.setattr(cli, "_load_emulator_option", lambda name: ToyEmulator())
    assert cli.main(["fit", str(path), "--emulator", "toy", "--starts", "2", "--json"]) == 0
    captured = capsys.readouterr()
    assert f"degraded R={R_SHARP:.0f} -> {NATIVE_R:.0f} (emulator's native resolution)" in captured.err
    document = json.loads(captured.out)
    assert "degraded_to_emulator_resolution" in document["flag_names"]
    assert document["diagnostics"]["degraded"]["resolution_out"] == NATIVE_R
    assert cli.main(["fit", str(path), "--emulator", "toy", "--no-degrade", "--json"]) == 2
    assert "sharper than the emulator" in capsys.readouterr().err


def test_cli_batch_passes_no_degrade(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from stellarfit.cli import main as cli
    from stellarfit.inference import batch

    seen = []

    def fake_fit_batch_files(inputs, emulator, out, *, fit_options, **options):
        seen.append(dict(fit_options))
        return SimpleNamespace(to_dict=dict, out=out, n_ok=0, n_failed=0, n_fitted=0, n_skipped=0, n_files=0,
                               elapsed_s=0.0)

    monkeypatch.setattr(batch, "fit_batch_files", fake_fit_batch_files)
    monkeypatch.setattr(cli, "_load_emulator_option", lambda name: ToyEmulator())
    out = str(tmp_path / "catalog.csv")
    assert cli.main(["batch", "star.fits", "--out", out, "--json"]) == 0
    assert cli.main(["batch", "star.fits", "--out", out, "--no-degrade", "--json"]) == 0
    assert "degrade" not in seen[0] and seen[1]["degrade"] is False
