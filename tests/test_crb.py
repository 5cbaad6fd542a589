"""Cramér-Rao bounds for planned observations: scaling with S/N and R, nuisance parameters, the CLI and the HTML report."""

import base64
import csv
import json
import re

import numpy as np
import pytest

from stellarfit.inference import cramer_rao_from_fisher, fisher_matrix
from stellarfit.inference.crb import cramer_rao, planned_wavelength
from stellarfit.wavelengths import log_lambda_grid

LABELS = {"temp": 0.5, "metal": 0.1, "shift": 0.2}


@pytest.fixture(scope="module")
def emulator():
    from stellarfit.emulators import PayneEmulator, TrainConfig, train_emulator
    from stellarfit.emulators.toy import make_toy_grid

    wavelength = log_lambda_grid(5000.0, 5100.0, 30_000.0, 3.0)
    train = make_toy_grid(256, wavelength.size, seed=1, window=(wavelength[0], wavelength[-1]))
    emu = PayneEmulator.create(train.label_spec, train.wavelength, resolution=30_000.0, seed=0)
    config = TrainConfig(n_steps=300, batch_size=64, learning_rate=3e-3, progress=False)
    return train_emulator(emu, train, None, config).emulator


@pytest.fixture(scope="module")
def base(emulator):
    return cramer_rao(emulator, LABELS, snr=100.0, resolution=20_000.0)


def test_bounds_scale_as_one_over_snr(emulator, base):
    other = cramer_rao(emulator, LABELS, snr=400.0, resolution=20_000.0)
    assert base.names == other.names == ("temp", "metal", "shift", "rv", "continuum_0", "continuum_1", "continuum_2")
    assert np.all(np.isfinite(base.sigma)) and np.all(base.sigma > 0)
    np.testing.assert_allclose(other.sigma * 4.0, base.sigma, rtol=1e-9)
    np.testing.assert_allclose(other.correlation, base.correlation, atol=1e-9)


def test_pixels_outside_the_emulator_add_no_information(emulator, base):
    """A planned spectrum wider than the emulator: the pixels it does not model are left out (its
    edge value there once counted as information and tightened the bounds)."""
    wide = log_lambda_grid(4900.0, 5200.0, 20_000.0, 3.0)
    result = cramer_rao(emulator, LABELS, wavelength=wide, snr=100.0, resolution=20_000.0)
    assert wide[0] < result.wavelength[0] and result.wavelength[-1] < wide[-1]
    assert 5000.0 < result.wavelength[0] < 5002.0 and 5098.0 < result.wavelength[-1] < 5100.0
    inside = cramer_rao(emulator, LABELS, wavelength=result.wavelength, snr=100.0, resolution=20_000.0)
    np.testing.assert_allclose(result.sigma, inside.sigma, rtol=1e-9)
    assert result.derivatives.shape[0] == result.model_flux.size == result.wavelength.size
    with pytest.raises(ValueError, match="coverage"):
        cramer_rao(emulator, LABELS, wavelength=log_lambda_grid(5400.0, 5500.0, 20_000.0, 3.0), resolution=20_000.0)


def test_fisher_matches_fisher_matrix_and_marginalization_widens(emulator, base):
    from stellarfit.forward import continuum_design_matrix
    from stellarfit.inference import forward_model_for

    import jax.numpy as jnp

    model = forward_model_for(emulator, base.wavelength, 20_000.0, rv_range=(-5.0, 5.0), vsini_max=10.0)
    design = jnp.asarray(continuum_design_matrix(base.wavelength, None, 2), jnp.float32)

    def full(p):
        return (design @ p[4:]) * model(p[:3], p[3], 0.0)

    fisher = fisher_matrix(full, base.theta, np.full(base.wavelength.size, 100.0**2))
    np.testing.assert_allclose(base.fisher.fisher, fisher, rtol=1e-5, atol=1e-8 * np.abs(fisher).max())
    # d f / d continuum_0 is the normalized model itself (P_0 = 1)
    np.testing.assert_allclose(base.derivatives[:, base.names.index("continuum_0")], base.model_flux, rtol=1e-5)
    assert base.model_flux.min() < 0.9  # a line spectrum
    # fixing RV and the continuum (labels-only Fisher) gives tighter, i.e. optimistic, bounds
    fixed = cramer_rao_from_fisher(base.fisher.fisher[:3, :3], base.names[:3])
    assert np.all(fixed.sigma <= base.sigma[:3] * (1 + 1e-9))
    assert np.any(fixed.sigma < 0.95 * base.sigma[:3])


def test_bounds_shrink_with_resolution_and_vsini_is_free_when_large(emulator, base):
    low = cramer_rao(emulator, LABELS, snr=100.0, resolution=5_000.0)
    assert np.all(low.sigma[:4] > 1.5 * base.sigma[:4]), (low.as_dict(), base.as_dict())
    rotating = cramer_rao(emulator, LABELS, snr=100.0, resolution=20_000.0, vsini=12.0)
    assert "vsini" in rotating.names and np.isfinite(rotating.nuisance()["vsini"])
    assert "vsini" not in base.names


def test_planned_wavelength_and_errors(emulator):
    wavelength = planned_wavelength(emulator, 10_000.0)
    step = np.diff(np.log(wavelength))
    np.testing.assert_allclose(step, 1.0 / (3.0 * 10_000.0), rtol=1e-6)
    assert emulator.wavelength[0] < wavelength[0] and wavelength[-1] < emulator.wavelength[-1]
    window = planned_wavelength(emulator, 10_000.0, window=(5040.0, 5060.0))
    assert window[0] >= 5040.0 and window[-1] <= 5060.0
    with pytest.raises(ValueError, match="outside the usable emulator range"):
        planned_wavelength(emulator, 10_000.0, window=(6000.0, 6100.0))
    with pytest.raises(ValueError, match="outside the emulator's box"):
        cramer_rao(emulator, {"temp": 3.0}, snr=50.0)
    with pytest.raises(KeyError, match="unknown label"):
        cramer_rao(emulator, {"teff": 5000.0}, snr=50.0)
    with pytest.raises(ValueError, match="snr"):
        cramer_rao(emulator, LABELS, snr=0.0)


def test_cli_crb_json_and_html_report(emulator, tmp_path, capsys):
    from stellarfit.cli.main import main

    emulator.save(str(tmp_path / "emu"))
    report = tmp_path / "report.html"
    arguments = ["crb", "--emulator", str(tmp_path / "emu"), "--label", "temp=0.5", "--label", "metal=0.1", "--label", "shift=0.2",
                 "--snr", "100", "--resolution", "10000"]
    assert main(arguments + ["--json", "--out", str(report)]) == 0
    document = json.loads(capsys.readouterr().out)
    assert set(document["crb"]) == {"temp", "metal", "shift"}
    assert all(value > 0 for value in document["crb"].values())
    assert {"nuisance", "labels", "snr", "resolution", "correlation", "report", "table"} <= set(document)
    text = report.read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(images) == 4
    assert all(base64.b64decode(image)[:8] == b"\x89PNG\r\n\x1a\n" for image in images)
    with open(tmp_path / "report.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["parameter"] for row in rows] == ["temp", "metal", "shift", "rv"]
    temp = rows[0]
    assert float(temp["sigma"]) == pytest.approx(document["crb"]["temp"], rel=1e-5)
    assert float(temp["sigma_snr_50"]) == pytest.approx(2 * float(temp["sigma_snr_100"]), rel=1e-5)
    resolutions = sorted((float(k.split("_")[-1]), float(v)) for k, v in temp.items() if k.startswith("sigma_R_"))
    assert len(resolutions) >= 3 and all(a[1] > b[1] for a, b in zip(resolutions, resolutions[1:]))
    # human-readable output, and bad usage
    assert main(arguments[:-4]) == 0
    assert "temp" in capsys.readouterr().out
    assert main(arguments + ["--teff", "5000"]) == 2
    assert "unknown label" in capsys.readouterr().err
    assert main(arguments + ["--label", "shift"]) == 2
    assert "NAME=VALUE" in capsys.readouterr().err


def test_catalog_report_compares_fit_errors_with_bounds(tmp_path, capsys):
    from stellarfit.cli.main import main
    from stellarfit.results import write_catalog

    rng = np.random.default_rng(3)
    rows = []
    for i in range(12):
        crb = float(rng.uniform(0.01, 0.1))
        rows.append({"source": "f.fits", "index": i, "status": "ok", "temp": 0.5, "e_temp": 2.0 * crb, "temp_crb": crb,
                     "rv": 1.0, "e_rv": 0.3, "rv_crb": 0.3})
    rows.append({"source": "g.fits", "index": -1, "status": "failed", "error": "truncated"})
    write_catalog(rows, tmp_path / "cat.fits")
    out = tmp_path / "errors.html"
    assert main(["crb", "--catalog", str(tmp_path / "cat.fits"), "--out", str(out), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["ratios"]["temp"]["n"] == 12
    assert document["ratios"]["temp"]["median"] == pytest.approx(2.0)
    assert document["ratios"]["rv"]["median"] == pytest.approx(1.0)
    assert len(re.findall(r'src="data:image/png;base64,', out.read_text())) == 2
    assert (tmp_path / "errors.csv").read_text().splitlines()[0] == "parameter,n,median_ratio,p16_ratio,p84_ratio"
    assert main(["crb", "--catalog", str(tmp_path / "cat.fits")]) == 2
    assert "needs --out" in capsys.readouterr().err
