"""continuum_degree="auto": the continuum's degree chosen by the evidence of its coefficients."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from _toy_emulator import NATIVE, NATIVE_R, ToyEmulator, toy_flux

from stellarfit.forward import (
    ForwardModel,
    check_continuum_degree,
    choose_continuum_degree,
    continuum_design_matrix,
    continuum_log_evidence,
)
from stellarfit.spectra import ObservedSpectrum
from stellarfit.wavelengths import log_lambda_grid

TRUTH = np.array([5600.0, 3.8, -0.7])
RESOLUTION = 7_500.0  # the reported case: a fluxed R = 7,500 spectrum
RV = 10.0


def _normalized():
    wavelength = log_lambda_grid(5150.0, 5350.0, RESOLUTION, 3.0)
    model = ForwardModel(toy_flux, NATIVE, NATIVE_R, wavelength, RESOLUTION, rv_range=(RV - 20.0, RV + 20.0))
    return wavelength, np.asarray(model(jnp.asarray(TRUTH), RV, 0.0), dtype=np.float64)


def _response(wavelength, cubic):
    """An instrument response 100 (1 + 0.1 P1 + cubic P3) in flux units, x in [-1, 1] over the pixels."""
    x = 2.0 * (wavelength - wavelength[0]) / (wavelength[-1] - wavelength[0]) - 1.0
    return 100.0 * np.polynomial.legendre.legval(x, [1.0, 0.1, 0.0, cubic])


def _observed(cubic, snr=200.0, seed=1, flat=False):
    wavelength, normalized = _normalized()
    continuum = np.full(wavelength.size, 100.0) if flat else _response(wavelength, cubic)
    sigma = continuum / snr
    flux = continuum * normalized + np.random.default_rng(seed).normal(size=wavelength.size) * sigma
    return wavelength, normalized, flux, 1.0 / sigma**2


@pytest.mark.parametrize("units", [1.0, 1e8, 1e-8])
def test_evidence_picks_a_cubic_for_a_cubic_response_and_a_low_degree_for_a_flat_one(units):
    """In any flux units (the prior's normalization, -1/2 log det S, cancels the units; a flat
    prior's evidence rewards every further coefficient by log(units * flux level) nats and picks
    degree 8 for the flat continuum in units of 1e8)."""
    wavelength, normalized, flux, ivar = _observed(cubic=0.03)
    cubic = choose_continuum_degree(normalized, flux * units, ivar / units**2, wavelength)
    assert cubic.degrees[0] >= 3, cubic.log_evidence
    assert cubic.log_evidence[0][2] < -100.0  # degree 2 is ruled out, not marginally
    wavelength, normalized, flux, ivar = _observed(cubic=0.0, flat=True)
    flat = choose_continuum_degree(normalized, flux * units, ivar / units**2, wavelength)
    assert flat.degrees[0] <= 1, flat.log_evidence
    assert flat.log_evidence[0][8] < -20.0  # each unneeded coefficient costs its Occam factor
    assert flat.prior_scale[0] == pytest.approx(100.0 * units, rel=0.05)


def test_log_evidence_is_the_gaussian_marginal_likelihood_up_to_one_constant():
    """continuum_log_evidence(d) - log N(f; 0, W^-1 + X S X^T + E E^T) is the same for every degree
    (dense brute force on 60 pixels, two arms and two error modes)."""
    rng = np.random.default_rng(3)
    n = 60
    wavelength = np.linspace(5000.0, 5100.0, n)
    arms = (np.arange(n) >= 35).astype(int)
    model = 1.0 - 0.3 * np.exp(-0.5 * ((wavelength - 5040.0) / 2.0) ** 2)
    ivar = rng.uniform(0.5, 2.0, n) * 1e-2
    flux = 10.0 * model * (1.0 + 0.2 * (wavelength - 5050.0) / 50.0) + rng.normal(size=n) / np.sqrt(ivar)
    modes = rng.normal(size=(n, 2)) * 0.5
    scale = np.array([7.0, 9.0])
    differences = []
    for degrees in ([0, 0], [1, 2], [3, 1], [4, 4]):
        design = continuum_design_matrix(wavelength, arms, degrees)
        columns = design * model[:, None]
        variance = np.repeat(scale**2, [d + 1 for d in degrees])
        covariance = np.diag(1.0 / ivar) + columns @ np.diag(variance) @ columns.T + modes @ modes.T
        _, logdet = np.linalg.slogdet(covariance)
        dense = -0.5 * flux @ np.linalg.solve(covariance, flux) - 0.5 * logdet - 0.5 * n * np.log(2 * np.pi)
        ours = continuum_log_evidence(model, flux, ivar, wavelength, arms, degrees, prior_scale=scale, error_basis=modes)
        differences.append(ours - dense)
    np.testing.assert_allclose(differences, differences[0], atol=1e-6)
    assert differences[0] == pytest.approx(0.5 * n * np.log(2 * np.pi) - 0.5 * np.sum(np.log(ivar)), abs=1e-6)


def test_per_arm_degrees_and_clear_errors():
    wavelength, normalized, flux, ivar = _observed(cubic=0.0, flat=True)
    arms = (np.arange(wavelength.size) >= wavelength.size // 2).astype(int)
    x = np.where(arms == 1, (wavelength - wavelength[arms == 1][0]) / np.ptp(wavelength[arms == 1]), 0.0)
    flux = np.where(arms == 1, flux * (1.0 + 0.2 * (2 * x - 1) ** 3), flux)  # a cubic on the second arm only
    choice = choose_continuum_degree(normalized, flux, ivar, wavelength, arms)
    assert choice.degrees[0] <= 1 and choice.degrees[1] >= 3, choice.log_evidence
    summary = choice.to_dict()
    assert summary["degree"] == list(choice.degrees) and set(summary["log_evidence"]) == {0, 1}
    assert continuum_design_matrix(wavelength, arms, list(choice.degrees)).shape[1] == sum(choice.degrees) + 2
    assert check_continuum_degree("auto") == "auto" and check_continuum_degree("3") == 3 and check_continuum_degree((1, 2)) == (1, 2)
    for bad in ("cubic", -1, 2.5, True, ()):
        with pytest.raises(ValueError, match="'auto'"):
            check_continuum_degree(bad)
    with pytest.raises(ValueError, match="one per arm"):
        continuum_design_matrix(wavelength, arms, [1, 2, 3])
    # few pixels: no more coefficients than one per PIXELS_PER_COEFFICIENT good pixels
    few = choose_continuum_degree(normalized[:70], flux[:70], ivar[:70], wavelength[:70])
    assert few.max_degrees == (2,)


def _z(result, name):
    row = result.labels[name]
    return (row["value"] - TRUTH[["teff", "logg", "fe_h"].index(name)]) / row["error"]


def _distance2(result):
    """(labels - truth)^T C^-1 (labels - truth) over teff, logg, [Fe/H] with the fit's covariance."""
    offset = np.array([result.labels[name]["value"] for name in ("teff", "logg", "fe_h")]) - TRUTH
    return float(offset @ np.linalg.solve(result.covariance[:3, :3], offset))


@pytest.fixture(scope="module")
def cubic_fits():
    """The reported failure in miniature: a fluxed R = 7,500 spectrum, S/N 200, whose response has a
    cubic term (6% of the flux level), fitted with the old fixed degree 2 and with "auto"."""
    from stellarfit.inference import fit_star

    wavelength, _, flux, ivar = _observed(cubic=0.06)
    spectrum = ObservedSpectrum.from_arrays(wavelength, flux, ivar=ivar, resolution=RESOLUTION)
    emulator = ToyEmulator()
    # Levenberg-Marquardt from a start off the truth (no multi-start search: the bias is the optimum's)
    start = {"teff": 5500.0, "logg": 3.6, "fe_h": -0.8, "rv": RV + 1.0, "vsini": 3.0}
    options = {"rv_range": (-100.0, 100.0), "vsini_max": 20.0, "init": start}
    return fit_star(spectrum, emulator, continuum_degree=2, **options), fit_star(spectrum, emulator, **options)


def test_auto_recovers_labels_a_fixed_degree_2_gets_wrong(cubic_fits):
    fixed, auto = cubic_fits
    assert fixed.diagnostics["continuum"] == {"degree": 2, "chosen_by": "fixed"}
    assert fixed.reduced_chi2 > 2.0
    assert max(abs(_z(fixed, name)) for name in ("teff", "logg", "fe_h")) > 4.0, fixed.labels
    assert _distance2(fixed) > 25.0
    info = auto.diagnostics["continuum"]
    assert info["chosen_by"] == "evidence" and info["degree"] >= 3 and info["start_degree"] == 2 and info["refits"] >= 1
    assert info["settled"] and info["log_evidence"][info["degree"]] == 0.0 and info["log_evidence"][2] < -100.0
    assert info["path"][0] == 2 and info["path"][-1] == info["degree"] and len(info["path"]) == info["refits"] + 1
    assert auto.reduced_chi2 < 1.2
    for name in ("teff", "logg", "fe_h"):
        assert abs(_z(auto, name)) < 3.0, (name, auto.labels[name])
    document = json.loads(json.dumps(auto.to_dict()))
    assert document["diagnostics"]["continuum"]["degree"] == info["degree"]


@pytest.mark.slow
def test_fit_stars_chooses_per_spectrum_and_batches_the_repolishes(cubic_fits):
    """fit_stars: a cubic response and a flat continuum in one batch get their own degrees (and the
    cubic one the labels of fit_star's "auto")."""
    from stellarfit.inference import fit_stars

    _, auto = cubic_fits
    spectra = []
    for cubic, flat, seed in ((0.06, False, 1), (0.0, True, 2), (0.06, False, 1)):
        wavelength, _, flux, ivar = _observed(cubic=cubic, flat=flat, seed=seed)
        spectra.append(ObservedSpectrum.from_arrays(wavelength, flux, ivar=ivar, resolution=RESOLUTION))
    start = {"teff": 5500.0, "logg": 3.6, "fe_h": -0.8, "rv": RV + 1.0, "vsini": 3.0}
    results = fit_stars(spectra, ToyEmulator(), rv_range=(-100.0, 100.0), vsini_max=20.0, init=[start] * 3, batch_size=3)
    degrees = [result.diagnostics["continuum"]["degree"] for result in results]
    assert degrees[0] == degrees[2] == auto.diagnostics["continuum"]["degree"] and degrees[1] <= 1, degrees
    for name in ("teff", "logg", "fe_h"):
        assert results[0].labels[name]["value"] == pytest.approx(auto.labels[name]["value"], abs=0.5 * auto.labels[name]["error"])
        assert abs(_z(results[0], name)) < 3.0, (name, results[0].labels[name])
        assert abs(_z(results[1], name)) < 3.0, (name, results[1].labels[name])


class _Stub:
    diagnostics: dict = {}
    flag_names: list = []

    def to_dict(self):
        return {"stub": True}

    def summary(self):
        return "stub"


@pytest.mark.parametrize("flag, expected", [([], "auto"), (["--continuum-degree", "3"], 3),
                                            (["--continuum-degree", "auto"], "auto")])
def test_cli_continuum_degree_reaches_fit_star_and_batch(monkeypatch, tmp_path, capsys, flag, expected):
    from stellarfit import inference
    from stellarfit.cli import main as cli
    from stellarfit.inference import batch

    seen = {}

    def fake_fit_star(spectrum, emulator, **options):
        seen["fit"] = options["continuum_degree"]
        return _Stub()

    def fake_fit_batch_files(inputs, emulator, out, *, fit_options, **options):
        seen["batch"] = fit_options["continuum_degree"]
        return _Stub()

    monkeypatch.setattr(cli, "_load_emulator_option", lambda *args, **kwargs: ToyEmulator())
    monkeypatch.setattr(inference, "fit_star", fake_fit_star)
    monkeypatch.setattr(batch, "fit_batch_files", fake_fit_batch_files)
    assert cli.main(["fit", "example", "--json", *flag]) == 0
    assert json.loads(capsys.readouterr().out) == {"stub": True}
    assert cli.main(["batch", "example", "--out", str(tmp_path / "c.csv"), "--json", *flag]) == 0
    assert seen == {"fit": expected, "batch": expected}


def test_cli_rejects_a_bad_continuum_degree(capsys):
    from stellarfit.cli.main import main

    for command in (["fit", "example"], ["batch", "example", "--out", "c.csv"]):
        with pytest.raises(SystemExit) as exit_info:
            main([*command, "--continuum-degree", "cubic"])
        assert exit_info.value.code == 2
        assert "expected auto or an integer >= 0" in capsys.readouterr().err
