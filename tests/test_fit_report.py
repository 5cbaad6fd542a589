"""Fit files (FitResult.save / load, no pickle), the HTML fit report and `stellarfit report`."""

import base64
import io
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from stellarfit.inference import FitResult
from stellarfit.results.fitfile import FitFileError, is_fit_file, read_fit, read_fit_metadata, write_fit

NAMES = ("teff", "logg", "fe_h", "rv", "vsini")
#: the strong-line cluster of the synthetic spectrum [A]
CLUSTER = (5061.0, 5066.0)


def _synthetic_arrays(seed=0):
    """A two-arm spectrum (gap 5040-5050 A) with weak lines everywhere and a cluster of strong lines at 5061-5066 A."""
    rng = np.random.default_rng(seed)
    wavelength = np.concatenate([np.arange(5000.0, 5040.0, 0.05), np.arange(5050.0, 5100.0, 0.05)])
    centres = np.concatenate([rng.uniform(5001.0, 5099.0, 40), np.linspace(CLUSTER[0] + 0.3, CLUSTER[1] - 0.3, 8)])
    depths = np.concatenate([rng.uniform(0.02, 0.1, 40), np.full(8, 0.8)])
    lines = np.prod(1.0 - depths[None, :] * np.exp(-0.5 * ((wavelength[:, None] - centres[None, :]) / 0.08) ** 2), axis=1)
    continuum = 100.0 * (1.0 + 0.1 * (wavelength - 5050.0) / 50.0)
    model = continuum * lines
    sigma = continuum / 80.0
    flux = model + rng.normal(size=wavelength.size) * sigma
    ivar = 1.0 / sigma**2
    ivar[100:130] = 0.0  # masked pixels
    return wavelength, flux, ivar, model


def _labels(values, errors, crbs):
    return {name: {"value": v, "error": e, "lower": v - e, "upper": v + e, "map": v, "crb": c}
            for name, v, e, c in zip(NAMES, values, errors, crbs)}


def map_result():
    wavelength, flux, ivar, model = _synthetic_arrays()
    labels = _labels([5777.0, 4.44, -0.1, 12.3, 1.5], [25.0, 0.05, 0.02, 0.2, float("nan")], [20.0, 0.04, 0.02, 0.2, float("inf")])
    covariance = np.diag([25.0, 0.05, 0.02, 0.2, 1.0]) ** 2
    covariance[0, 1] = covariance[1, 0] = 0.6 * 25.0 * 0.05
    covariance[4, 4] = np.nan
    good = ivar > 0
    chi2 = float(np.sum((flux - model)[good] ** 2 * ivar[good]))
    return FitResult(method="map", labels=labels, chi2=chi2, reduced_chi2=chi2 / good.sum(), snr=80.0, n_pixels=int(good.sum()),
                     flags=16, diagnostics={"rv_search": 12.0, "n_starts": 4, "start_objectives": [901.5, 901.2, 950.0, 901.3],
                                            "converged": False, "crb_unconstrained": ["vsini"],
                                            "fisher_condition_number": 51.0, "seed": 0},
                     wavelength=wavelength, flux=flux, ivar=ivar, model_flux=model, covariance=covariance,
                     emulator="toy-payne", elapsed_s=3.5)


def nuts_result(n_chains=4, n_draws=200, seed=1):
    """A NUTS-like result with synthetic correlated draws, two divergent draws and per-draw stats."""
    from stellarfit.inference.nuts import sampling_diagnostics, summarize_samples

    rng = np.random.default_rng(seed)
    result = map_result()
    mean = np.array([5777.0, 4.44, -0.1, 12.3, 2.0])
    scale = np.array([30.0, 0.06, 0.03, 0.2, 0.8])
    correlation = np.eye(5)
    correlation[0, 1] = correlation[1, 0] = 0.7
    draws = rng.multivariate_normal(np.zeros(5), correlation, size=(n_chains, n_draws)) * scale + mean
    draws[..., 4] = np.abs(draws[..., 4])
    diverging = np.zeros((n_chains, n_draws), dtype=bool)
    diverging[1, 17] = diverging[3, n_draws - 9] = True
    n_steps = rng.integers(3, 16, size=(n_chains, n_draws)).astype(np.int32)
    stats = {"diverging": diverging, "n_steps": n_steps, "tree_depth": np.ceil(np.log2(n_steps + 1.0)).astype(np.int64),
             "acceptance_rate": rng.uniform(0.6, 1.0, size=(n_chains, n_draws)).astype(np.float32),
             "lp": rng.normal(-10.0, 1.0, size=(n_chains, n_draws)).astype(np.float32)}
    diagnostics = dict(result.diagnostics)
    diagnostics.update(sampling_diagnostics(draws, list(NAMES)), divergences=2, tree_depth_hits=0, max_tree_depth=8,
                       step_size=[0.31, 0.28, 0.3, 0.33], gradient_evaluations=int(n_steps.sum()), gradient_evaluations_warmup=9000,
                       mean_acceptance=0.85, target_accept=0.8, backend="numpyro", num_warmup=200, num_samples=n_draws,
                       num_chains=n_chains, mass_matrix="laplace", sampler_elapsed_s=12.0)
    labels = {name: dict(row) for name, row in result.labels.items()}
    for name, row in summarize_samples(draws, list(NAMES)).items():
        labels[name].update(value=row["value"], error=row["error"], lower=row["lower"], upper=row["upper"])
    result.method = "nuts"
    result.labels = labels
    result.diagnostics = diagnostics
    result.samples = draws
    result.sample_stats = stats
    result.covariance = np.cov(draws.reshape(-1, 5), rowvar=False)
    result.flags = 0
    return result


def _assert_same(loaded, original):
    assert loaded.method == original.method and loaded.emulator == original.emulator
    assert list(loaded.labels) == list(original.labels)
    for name, row in original.labels.items():
        for key, value in row.items():
            np.testing.assert_equal(loaded.labels[name][key], value)  # NaN == NaN, inf == inf
    for key in ("chi2", "reduced_chi2", "snr", "n_pixels", "flags", "elapsed_s"):
        assert getattr(loaded, key) == getattr(original, key), key
    for key in ("wavelength", "flux", "ivar", "model_flux", "covariance"):
        np.testing.assert_array_equal(getattr(loaded, key), getattr(original, key))
    assert json.dumps(loaded.to_dict(), sort_keys=True) == json.dumps(original.to_dict(), sort_keys=True)


def test_fit_file_round_trip_map(tmp_path):
    from astropy.io import fits

    original = map_result()
    path = tmp_path / "fit.fits"
    original.save(path, metadata={"source": "star.fits"})
    loaded = FitResult.load(path)
    _assert_same(loaded, original)
    assert loaded.diagnostics == original.diagnostics
    assert loaded.samples is None and loaded.sample_stats is None
    assert read_fit_metadata(path) == {"source": "star.fits"}
    assert is_fit_file(path)
    with fits.open(path) as hdus:  # the documented layout, readable by any FITS reader
        assert [hdu.name for hdu in hdus] == ["PRIMARY", "RESULT", "SPECTRUM", "COVARIANCE"]
        assert hdus[0].header["SFKIND"] == "FITRESULT" and hdus[0].header["METHOD"] == "map"
        assert json.loads(hdus["RESULT"].data.tobytes())["names"] == list(NAMES)
    with pytest.raises(FileExistsError, match="overwrite"):
        write_fit(original, path, overwrite=False)


def test_fit_file_round_trip_nuts(tmp_path):
    original = nuts_result()
    path = tmp_path / "nuts.fits"
    write_fit(original, path)
    loaded = read_fit(path)
    _assert_same(loaded, original)
    np.testing.assert_array_equal(loaded.samples, original.samples)
    assert set(loaded.sample_stats) == set(original.sample_stats)
    for key, value in original.sample_stats.items():
        np.testing.assert_array_equal(loaded.sample_stats[key], value)
        assert loaded.sample_stats[key].dtype == value.dtype, key
    assert loaded.diagnostics["r_hat"] == original.diagnostics["r_hat"]
    assert loaded.diagnostics["step_size"] == original.diagnostics["step_size"]
    tree = loaded.to_arviz()
    assert tree.posterior["teff"].shape == (4, 200)
    assert int(tree.sample_stats["diverging"].sum()) == 2


def test_fit_file_clear_errors(tmp_path):
    from astropy.io import fits

    from stellarfit.spectra import ObservedSpectrum

    with pytest.raises(FileNotFoundError, match="no such fit file"):
        read_fit(tmp_path / "missing.fits")
    junk = tmp_path / "junk.fits"
    junk.write_bytes(b"this is not a FITS file\n" * 10)
    with pytest.raises(FitFileError, match="not a readable FITS file"):
        read_fit(junk)
    assert not is_fit_file(junk)
    wavelength, flux, ivar, _ = _synthetic_arrays()
    spectrum = tmp_path / "spectrum.fits"
    ObservedSpectrum.from_arrays(wavelength, flux, ivar=ivar, resolution=20_000.0).write(spectrum)
    with pytest.raises(FitFileError, match="not a stellarfit fit file"):
        read_fit(spectrum)
    good = tmp_path / "good.fits"
    nuts_result(n_draws=50).save(good)
    truncated = tmp_path / "truncated.fits"
    truncated.write_bytes(good.read_bytes()[: 2880 * 3])
    with pytest.raises(FitFileError, match="damaged|missing|corrupt"):
        read_fit(truncated)
    newer = tmp_path / "newer.fits"
    with fits.open(good) as hdus:
        hdus[0].header["SFSCHEMA"] = 99
        hdus.writeto(newer)
    with pytest.raises(FitFileError, match="newer than this stellarfit reads"):
        read_fit(newer)
    edited = tmp_path / "edited.fits"
    with fits.open(good) as hdus:
        hdus["SAMPLES"].header["NDRAWS"] = 49
        hdus.writeto(edited)
    with pytest.raises(FitFileError, match="SAMPLES has 200 rows"):
        read_fit(edited)


def _images(document):
    """{alt: decoded PNG array} of the embedded images; each must decode as a PNG."""
    from matplotlib.image import imread

    images = {}
    for alt, data in re.findall(r'<img id="img-\w+" alt="([^"]+)" src="data:image/png;base64,([^"]+)"', document):
        raw = base64.b64decode(data, validate=True)
        assert raw.startswith(b"\x89PNG\r\n\x1a\n")
        images[alt] = imread(io.BytesIO(raw), format="png")
    return images


def test_map_report_sections_and_images(tmp_path):
    from stellarfit.reports.fit_report import fit_report

    report = fit_report(map_result(), tmp_path / "map.html", source="star.fits", images_dir=tmp_path / "png")
    document = (tmp_path / "map.html").read_text()
    assert report["sections"] == ["summary", "spectrum", "zoom", "correlation", "diagnostics"]
    for section in report["sections"]:
        assert f'<section id="{section}">' in document
    assert 'id="corner"' not in document and 'id="trace"' not in document
    images = _images(document)
    assert set(images) == {"spectrum, model and residuals", "zoom on a strong-line region", "correlation matrix"}
    for image in images.values():
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300
        assert image[..., :3].std() > 0.05  # something was drawn
    # the summary: values, flags by name, the unconstrained parameter, chi2 and S/N
    assert "16 (not_converged)" in document and "did not meet its convergence criterion" in document
    assert "<td>vsini</td><td>1.5</td><td>nan</td>" in document and "inf" in document
    assert "toy-payne" in document and "star.fits" in document and "3 within 1 of the best objective" in document
    # the zoom panel sits on the strong-line cluster, not on the weak lines elsewhere
    lo, hi = report["zoom"]
    assert lo <= 0.5 * sum(CLUSTER) <= hi and hi - lo < 20.0
    assert sorted(report["image_files"]) == ["correlation", "spectrum", "zoom"]
    assert all(Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for path in report["image_files"].values())


def test_nuts_report_corner_trace_and_diagnostics(tmp_path):
    from stellarfit.reports.fit_report import corner_parameters, fit_report

    result = nuts_result()
    report = fit_report(result, tmp_path / "nuts.html", title="NUTS <test>")
    document = (tmp_path / "nuts.html").read_text()
    assert report["sections"] == ["summary", "spectrum", "zoom", "corner", "trace", "diagnostics"]
    assert "<title>NUTS &lt;test&gt;</title>" in document
    images = _images(document)
    assert {"corner plot", "trace and rank plots", "sampler statistics"} <= set(images)
    assert report["corner_parameters"] == list(NAMES)  # 5 <= 8: all of them
    assert len(report["trace_parameters"]) == 4
    # sampler diagnostics: R-hat and ESS per parameter, divergences, step sizes
    rhat = result.diagnostics["r_hat"]["teff"]
    assert f"{rhat:.4g}" in document
    assert "2 (0.25%)" in document and "0.31, 0.28, 0.3, 0.33" in document
    # a corner plot of fewer parameters: those least constrained relative to their CRB
    result.labels["fe_h"]["crb"] = 0.001  # posterior std 0.03 = 30 x CRB
    assert corner_parameters(result, max_parameters=2) == ["fe_h", "vsini"]  # vsini: CRB infinite comes first
    chosen = fit_report(result, tmp_path / "two.html", corner=["teff", "logg"], trace=["rv"])
    assert chosen["corner_parameters"] == ["teff", "logg"] and chosen["trace_parameters"] == ["rv"]
    with pytest.raises(ValueError, match="unknown parameters"):
        fit_report(result, tmp_path / "bad.html", corner=["nope"])
    with pytest.raises(ValueError, match="holds no pixel"):
        fit_report(result, tmp_path / "bad.html", zoom=(6000.0, 6001.0))


def test_report_without_matplotlib_says_how_to_install(tmp_path, monkeypatch):
    from stellarfit.reports.fit_report import fit_report

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    with pytest.raises(ImportError, match=r"stellarfit\[plots\]"):
        fit_report(map_result(), tmp_path / "r.html")


def test_cli_report_from_saved_fit_and_bad_files(tmp_path, capsys):
    from stellarfit.cli.main import main

    path = tmp_path / "nuts.fits"
    nuts_result(n_draws=60).save(path, metadata={"source": "star-42.fits"})
    assert main(["report", str(path), "--out", str(tmp_path / "r.html"), "--corner", "teff", "logg", "fe_h", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["sections"] == ["summary", "spectrum", "zoom", "corner", "trace", "diagnostics"]
    assert document["corner_parameters"] == ["teff", "logg", "fe_h"]
    assert "star-42.fits" in (tmp_path / "r.html").read_text()
    assert main(["report", str(path)]) == 0  # default output: next to the fit file
    assert (tmp_path / "nuts.html").exists()
    capsys.readouterr()
    corrupt = tmp_path / "corrupt.fits"
    corrupt.write_bytes(b"SIMPLE  =                    T" + b" " * 50)
    assert main(["report", str(corrupt), "--out", str(tmp_path / "c.html")]) == 2
    assert "cannot read the fit" in capsys.readouterr().err
    assert not (tmp_path / "c.html").exists()
    assert main(["report", str(tmp_path / "missing.fits")]) == 2
    assert "no such fit file" in capsys.readouterr().err
    assert main(["report", str(path), "--corner", "nope"]) == 2
    assert "unknown parameters" in capsys.readouterr().err
    assert main(["report", str(path), "--out", str(path)]) == 2
    assert "would overwrite the fit file" in capsys.readouterr().err
    assert main(["fit", "star.fits", "--report", str(tmp_path / "no" / "dir" / "r.html")]) == 2  # checked before the fit
    assert "does not exist" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_emulator():
    from stellarfit.emulators import PayneEmulator, TrainConfig, train_emulator
    from stellarfit.emulators.toy import make_toy_grid
    from stellarfit.wavelengths import log_lambda_grid

    wavelength = log_lambda_grid(5000.0, 5100.0, 30_000.0, 3.0)
    train = make_toy_grid(256, wavelength.size, seed=1, window=(wavelength[0], wavelength[-1]))
    emulator = PayneEmulator.create(train.label_spec, train.wavelength, resolution=30_000.0, seed=0)
    return train_emulator(emulator, train, None, TrainConfig(n_steps=150, batch_size=64, learning_rate=3e-3)).emulator


@pytest.mark.slow
def test_cli_fit_save_and_report_with_a_real_map_fit(tiny_emulator, tmp_path, capsys):
    """`stellarfit fit --save --report` on a real fit_star MAP fit; the saved file rebuilds the same report."""
    from stellarfit.cli.main import main
    from stellarfit.inference import forward_model_for
    from stellarfit.spectra import ObservedSpectrum
    from stellarfit.wavelengths import log_lambda_grid

    wavelength = log_lambda_grid(5008.0, 5090.0, 20_000.0, 3.0)
    model = forward_model_for(tiny_emulator, wavelength, 20_000.0, rv_range=(29.0, 31.0))
    normalized = np.asarray(model(np.asarray([0.4, 0.2, -0.3], np.float32), 30.0, 0.0), dtype=np.float64)
    continuum = 50.0 * (1 + 0.05 * (wavelength - 5050.0) / 40.0)
    flux = continuum * normalized + np.random.default_rng(0).normal(size=wavelength.size) * continuum / 100.0
    ObservedSpectrum.from_arrays(wavelength, flux, sigma=continuum / 100.0, resolution=20_000.0).write(tmp_path / "star.fits")
    tiny_emulator.save(str(tmp_path / "emu"))
    code = main(["fit", str(tmp_path / "star.fits"), "--emulator", str(tmp_path / "emu"), "--starts", "2", "--json",
                 "--save", str(tmp_path / "fit.fits"), "--report", str(tmp_path / "fit.html")])
    assert code == 0
    document = json.loads(capsys.readouterr().out)
    assert document["saved"] == str(tmp_path / "fit.fits") and document["report"] == str(tmp_path / "fit.html")
    loaded = FitResult.load(tmp_path / "fit.fits")
    assert loaded.method == "map" and loaded.names == ["temp", "metal", "shift", "rv", "vsini"]
    assert loaded.labels["rv"]["value"] == pytest.approx(document["rv"]["value"])
    assert loaded.chi2 == document["chi2"] and loaded.model_flux.shape == wavelength.shape
    assert read_fit_metadata(tmp_path / "fit.fits")["source"] == str(tmp_path / "star.fits")
    html_direct = (tmp_path / "fit.html").read_text()
    assert main(["report", str(tmp_path / "fit.fits"), "--out", str(tmp_path / "again.html")]) == 0
    html_again = (tmp_path / "again.html").read_text()
    assert 'id="correlation"' in html_direct and "temp" in html_direct
    # the report from the saved file shows the same table as the one written by the fit
    table = re.compile(r"<table>.*?</table>", re.S)
    assert table.findall(html_again)[0] == table.findall(html_direct)[0]
    assert len(_images(html_again)) == 3


@pytest.mark.slow
def test_cli_fit_nuts_settings_reach_the_sampler(tiny_emulator, tmp_path, capsys):
    """`stellarfit fit --method nuts` passes --chains/--warmup/--samples/--target-accept/--chain-method through."""
    from stellarfit import _workers
    from stellarfit.cli.main import main
    from stellarfit.spectra import ObservedSpectrum
    from stellarfit.wavelengths import log_lambda_grid

    wavelength = log_lambda_grid(5008.0, 5090.0, 20_000.0, 3.0)
    flux = 1.0 + 0.01 * np.random.default_rng(3).normal(size=wavelength.size)
    ObservedSpectrum.from_arrays(wavelength, flux, sigma=np.full(wavelength.size, 0.01),
                                 resolution=20_000.0).write(tmp_path / "star.fits")
    tiny_emulator.save(str(tmp_path / "emu"))
    chain_method = "processes" if _workers.can_pin() and len(_workers.usable_cores()) >= 2 else "sequential"
    code = main(["fit", str(tmp_path / "star.fits"), "--emulator", str(tmp_path / "emu"), "--method", "nuts",
                 "--starts", "2", "--chains", "2", "--warmup", "30", "--samples", "20", "--target-accept", "0.7",
                 "--chain-method", chain_method, "--z-transform", "probit", "--json"])
    assert code == 0
    diagnostics = json.loads(capsys.readouterr().out)["diagnostics"]
    assert diagnostics["target_accept"] == 0.7 and diagnostics["chain_method"] == chain_method
    assert diagnostics["posterior"]["z_transform"] == "probit"
    assert (diagnostics["num_chains"], diagnostics["num_warmup"], diagnostics["num_samples"]) == (2, 30, 20)
    with pytest.raises(SystemExit) as exit_info:  # argparse: an unknown choice is a usage error
        main(["fit", str(tmp_path / "star.fits"), "--emulator", str(tmp_path / "emu"), "--method", "nuts",
              "--chain-method", "threads"])
    assert exit_info.value.code == 2
    capsys.readouterr()
    assert main(["fit", str(tmp_path / "star.fits"), "--emulator", str(tmp_path / "emu"), "--z-transform", "probit"]) == 2
    assert "--z-transform applies to --method nuts or blackjax" in capsys.readouterr().err
