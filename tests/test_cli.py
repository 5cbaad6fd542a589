"""The stellarfit command line: exit codes, JSON output and clear errors."""

import json

import numpy as np
import subprocess
import sys

import pytest

from stellarfit.cli.main import main


def run_cli(*args):
    """Run the CLI in a subprocess exactly as a user would."""
    return subprocess.run([sys.executable, "-m", "stellarfit.cli.main", *args], capture_output=True, text=True)


def test_help_lists_commands():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("synth", "grid", "engines"):
        assert command in result.stdout


def test_bad_usage_exits_2():
    result = run_cli("synth", "--teff", "5000")
    assert result.returncode == 2
    assert "--logg" in result.stderr


def test_engines_list_json(capsys):
    assert main(["engines", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    names = {row["name"]: row for row in rows}
    assert names["turbospectrum"]["physics"] == "realistic"
    assert set(names["turbospectrum"]) >= {"ready", "status", "description"}


def test_synth_without_turbospectrum_says_how_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STELLARFIT_TURBOSPECTRUM", str(tmp_path / "missing"))
    code = main(["synth", "--teff", "5777", "--logg", "4.44", "--fe-h", "0", "--out", str(tmp_path / "sun.fits")])
    assert code == 2
    assert "stellarfit engines install turbospectrum" in capsys.readouterr().err
    assert not (tmp_path / "sun.fits").exists()


def test_synth_out_of_range_label_and_unwritable_output(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STELLARFIT_TURBOSPECTRUM", str(tmp_path / "missing"))
    code = main(["synth", "--teff", "9500", "--logg", "4.44", "--fe-h", "0", "--out", str(tmp_path / "x.fits")])
    assert code == 2 and "teff" in capsys.readouterr().err
    code = main(["synth", "--teff", "5777", "--logg", "4.44", "--fe-h", "0", "--out", str(tmp_path / "no" / "dir" / "x.fits")])
    assert code == 2 and "does not exist" in capsys.readouterr().err


def test_grid_bad_input(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STELLARFIT_TURBOSPECTRUM", str(tmp_path / "missing"))
    assert main(["grid", "--n", "0", "--out", str(tmp_path / "g.h5")]) == 2
    assert "--n must be positive" in capsys.readouterr().err
    assert main(["grid", "--n", "4", "--out", str(tmp_path / "g.h5")]) == 2
    assert "engines install turbospectrum" in capsys.readouterr().err
    assert main(["grid", "--n", "4", "--window", "7000", "7100", "--out", str(tmp_path / "g.h5")]) == 2
    assert "beyond every shipped Gaia-ESO subset" in capsys.readouterr().err


def test_engines_install_unknown_engine(capsys):
    assert main(["engines", "install", "jax"]) == 2
    assert "ships with stellarfit" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.turbospectrum
def test_synth_end_to_end(tmp_path, turbospectrum):
    from astropy.io import fits

    out = tmp_path / "sun.fits"
    result = run_cli("synth", "--teff", "5777", "--logg", "4.44", "--fe-h", "0", "--window", "5000", "5020",
                     "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["n_pixels"] > 300 and 0.1 < summary["min_flux"] < 0.9
    with fits.open(out) as hdus:
        table = hdus["SPECTRUM"].data
        assert hdus["SPECTRUM"].header["AIRORVAC"] == "vac"
        assert list(table.columns.names) == ["WAVELENGTH", "FLUX", "CONTINUUM"]
        assert table["WAVELENGTH"][0] == pytest.approx(5000.0)


@pytest.mark.slow
@pytest.mark.turbospectrum
def test_grid_end_to_end_and_resume(tmp_path, turbospectrum):
    """A run stopped after one chunk is finished by rerunning the same command."""
    from stellarfit.grids import SpectralGrid, generate_grid, sample_labels
    from stellarfit.labels import default_label_spec
    from stellarfit.synth.turbospectrum import TurbospectrumEngine

    out = tmp_path / "tiny.h5"
    spec = default_label_spec()
    labels = sample_labels(spec, 4, method="sobol", seed=3)
    engine = TurbospectrumEngine(window=(5000.0, 5010.0))
    first = generate_grid(engine, labels, out, workers=1, chunk_size=2, progress=False, seed=3, design="sobol", max_chunks=1)
    assert not first.complete and not out.exists()
    result = run_cli("grid", "--n", "4", "--seed", "3", "--window", "5000", "5010", "--workers", "2",
                     "--chunk-size", "2", "--no-progress", "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["complete"] and summary["chunks_reused"] == 1 and summary["chunks_computed"] == 1
    grid = SpectralGrid.read(out)
    assert len(grid) + summary["n_failed"] == 4
    assert grid.metadata["engine"]["engine"] == "turbospectrum"
    assert grid.metadata["seed"] == 3
    assert float(grid.flux.min()) < 0.9 and float(grid.flux.max()) <= 1.0 + 1e-4
    # the first two spectra equal a direct synthesis
    direct, _ = engine.synthesize(spec.to_dict(labels[0]))
    np.testing.assert_allclose(grid.flux[0], direct, atol=1e-6)
