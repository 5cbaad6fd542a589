"""Spectra as published: 1-D FITS images with a wavelength WCS, plain text and CSV, air or vacuum,
NaN/inf pixels masked and counted, and the trimmed real files in tests/data/real.

The synthetic files come from tests/spectra_factories.py; the real ones are cuts of published
spectra (tests/data/README.md).  The full files in ../shared/real are read when present.
"""

from pathlib import Path

import numpy as np
import pytest

import spectra_factories as fac
from stellarfit.spectra import InvalidSpectrumError, ObservedSpectrum, SpectrumReadError, identify_format, read_spectrum
from stellarfit.wavelengths import air_to_vacuum

DATA = Path(__file__).parent / "data" / "real"
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "real"


def _wcs(n, crval, cdelt, crpix=1.0):
    """World coordinates of pixels 0..n-1 (FITS: pixel i+1)."""
    return crval + cdelt * (np.arange(n) + 1.0 - crpix)


# ------------------------------------------------------------------------------ FITS images
def test_image_awav_nm_with_sigma_hdu_and_zero_flux_gap(tmp_path):
    """The Gaia benchmark layout: CTYPE1 AWAV, CUNIT1 NM, SIGMA HDU, a zero-flux gap with sigma 0."""
    n = 300
    flux = 1.0 - 0.2 * np.exp(-0.5 * ((np.arange(n) - 80) / 3.0) ** 2)
    sigma = np.full(n, 0.01)
    flux[150:170] = 0.0
    sigma[150:170] = 0.0
    flux[200] = 0.0  # a lone zero with a normal sigma: kept (could be a saturated core)
    flux[250], sigma[250] = 0.0, 1.0e3  # a lone zero with an absurd sigma: a gap
    path = tmp_path / "gbs.fits"
    fac.write_generic_image(path, flux=flux, error=sigma, error_name="SIGMA",
                            header={"CTYPE1": "AWAV", "CUNIT1": "NM", "CRVAL1": 520.0, "CDELT1": 0.001, "CRPIX1": 11})
    spec = read_spectrum(path)
    air = 10.0 * _wcs(n, 520.0, 0.001, 11)  # CRPIX1 honoured: pixel 10 is at 5200 A (air)
    assert air[10] == pytest.approx(5200.0)
    np.testing.assert_allclose(spec.wavelength, air_to_vacuum(air), rtol=1e-12)
    assert spec.metadata["air_to_vacuum"] is True and spec.metadata["air_or_vacuum_source"] == "header"
    assert spec.metadata["wavelength_unit"] == "nm" and "CUNIT1" in spec.metadata["wavelength_unit_source"]
    np.testing.assert_allclose(spec.ivar[~spec.mask], 1.0e4, rtol=1e-5)  # SIGMA HDU -> ivar
    assert np.all(spec.mask[150:170]) and spec.mask[250] and spec.metadata["n_zero_flux_masked"] == 21
    assert not spec.mask[200] and spec.n_good == n - 21
    assert spec.resolution is None
    with pytest.raises(InvalidSpectrumError, match="resolution=R.*--resolution"):
        spec.require_resolution()


def test_zero_flux_run_is_masked_even_with_an_assumed_snr(tmp_path):
    """No uncertainties + snr=: the assumed sigma is not zero, yet a run of zero flux is still a gap."""
    flux = np.ones(200)
    flux[50:60] = 0.0
    path = tmp_path / "gap.fits"
    fac.write_generic_image(path, flux=flux, header={"CRVAL1": 6000.0, "CDELT1": 0.05, "AIRORVAC": "vac"})
    spec = read_spectrum(path, snr=50)
    assert np.all(spec.mask[50:60]) and spec.n_good == 190 and spec.metadata["n_zero_flux_masked"] == 10


def test_image_linear_angstrom_iraf_without_errors(tmp_path):
    """NOAO-atlas / MIKE layout: CTYPE1 'LINEAR', WAT1_001, no unit keyword, no uncertainties."""
    n = 120
    header = {"CTYPE1": "LINEAR", "CRVAL1": 5100.0, "CDELT1": 0.02, "CD1_1": 0.02, "CRPIX1": 1.0, "DC-FLAG": 0,
              "WAT0_001": "system=equispec", "WAT1_001": "wtype=linear", "ORIGIN": "NOAO-IRAF FITS Image Kernel July 2003"}
    path = tmp_path / "atlas.fits"
    fac.write_generic_image(path, flux=np.full(n, 0.9), header=header)
    with pytest.raises(SpectrumReadError, match=r"atlas.fits: generic format: no uncertainties.*snr=.*--snr"):
        read_spectrum(path)
    spec = read_spectrum(path, snr=100)
    np.testing.assert_allclose(spec.wavelength, air_to_vacuum(_wcs(n, 5100.0, 0.02)), rtol=1e-12)
    assert spec.metadata["air_or_vacuum"] == "air" and "IRAF" in spec.metadata["air_or_vacuum_source"]
    assert "inferred from the range" in spec.metadata["wavelength_unit_source"]
    assert spec.snr() == pytest.approx(100.0)
    vacuum = read_spectrum(path, snr=100, air=False)  # the explicit argument wins over the IRAF default
    np.testing.assert_allclose(vacuum.wavelength, _wcs(n, 5100.0, 0.02), rtol=1e-12)
    assert vacuum.metadata["air_or_vacuum_source"] == "user"


def test_image_without_iraf_keywords_defaults_to_vacuum(tmp_path):
    path = tmp_path / "bare.fits"
    fac.write_generic_image(path, flux=np.ones(50), error=np.full(50, 0.1), header={"CRVAL1": 5000.0, "CDELT1": 0.1})
    spec = read_spectrum(path)
    np.testing.assert_allclose(spec.wavelength, _wcs(50, 5000.0, 0.1))
    assert spec.metadata["air_or_vacuum"] == "vacuum" and spec.metadata["air_or_vacuum_source"].startswith("default")


@pytest.mark.parametrize("cunit, scale", [("nm", 10.0), ("NM", 10.0), ("Angstrom", 1.0), ("A", 1.0), ("um", 1.0e4)])
def test_image_cunit1_spellings(tmp_path, cunit, scale):
    crval = 5000.0 / scale
    path = tmp_path / "unit.fits"
    fac.write_generic_image(path, flux=np.ones(40), error=np.full(40, 0.1),
                            header={"CTYPE1": "WAVE", "CUNIT1": cunit, "CRVAL1": crval, "CDELT1": 0.1 / scale})
    spec = read_spectrum(path)
    np.testing.assert_allclose(spec.wavelength, _wcs(40, 5000.0, 0.1), rtol=1e-9)
    assert spec.metadata["air_to_vacuum"] is False  # CTYPE1 WAVE = vacuum


def test_image_ctype1_angstrom_is_a_unit(tmp_path):
    """HARPS/IRAF echelle merges write CTYPE1 = 'ANGSTROM' (a unit, not an axis type)."""
    path = tmp_path / "harps.fits"
    fac.write_generic_image(path, flux=np.full(60, 3000.0), error=np.full(60, 30.0),
                            header={"CTYPE1": "ANGSTROM", "CRVAL1": 2500.0, "CDELT1": 0.01})  # the range alone says nm
    spec = read_spectrum(path, air=False)
    np.testing.assert_allclose(spec.wavelength, _wcs(60, 2500.0, 0.01))
    assert spec.metadata["wavelength_unit_source"] == "header CTYPE1 = 'ANGSTROM'"


@pytest.mark.parametrize("header, expected", [
    ({"CTYPE1": "LOG-LINEAR", "CRVAL1": 3.7, "CDELT1": 1e-5}, lambda p: 10.0 ** (3.7 + 1e-5 * p)),
    ({"DC-FLAG": 1, "CRVAL1": 3.7, "CDELT1": 1e-5, "AIRORVAC": "vac"}, lambda p: 10.0 ** (3.7 + 1e-5 * p)),
    ({"CTYPE1": "WAVE-LOG", "CUNIT1": "nm", "CRVAL1": 500.0, "CDELT1": 0.005},
     lambda p: 5000.0 * np.exp(0.005 * p / 500.0)),
])
def test_image_log_wavelength_axes(tmp_path, header, expected):
    path = tmp_path / "log.fits"
    fac.write_generic_image(path, flux=np.ones(80), error=np.full(80, 0.1), header=header)
    spec = read_spectrum(path)
    np.testing.assert_allclose(spec.wavelength, expected(np.arange(80.0)), rtol=1e-10)
    assert np.all(np.diff(np.log(spec.wavelength)) == pytest.approx(np.log(spec.wavelength[1] / spec.wavelength[0])))


# ------------------------------------------------------------------------------ text and CSV
def test_text_with_header_comments_and_units(tmp_path):
    wavelength = np.linspace(510.0, 515.0, 51)
    flux = 1.0 - 0.3 * np.exp(-0.5 * ((wavelength - 512.0) / 0.05) ** 2)
    error = np.full(51, 0.02)
    path = tmp_path / "star.txt"
    fac.write_text_spectrum(path, wavelength=wavelength, flux=flux, error=error,
                            names=("Wavelength_nm", "Flux", "Sigma"), comments=("my star", "vacuum wavelengths"))
    assert identify_format(path) == ["text"]
    spec = read_spectrum(path)
    np.testing.assert_allclose(spec.wavelength, 10.0 * wavelength)
    np.testing.assert_allclose(spec.flux, flux)
    np.testing.assert_allclose(spec.ivar, 1.0 / 0.02**2)
    meta = spec.metadata
    assert meta["format"] == "text" and meta["wavelength_unit"] == "nm"
    assert meta["wavelength_unit_source"] == "column name 'Wavelength_nm'"
    assert meta["columns"] == {"wavelength": "Wavelength_nm", "flux": "Flux", "error": "Sigma"}
    assert meta["air_or_vacuum"] == "vacuum" and "vacuum wavelengths" in meta["air_or_vacuum_source"]
    # explicit air overrides the comment
    forced = read_spectrum(path, air=True)
    np.testing.assert_allclose(forced.wavelength, air_to_vacuum(10.0 * wavelength), rtol=1e-12)
    assert forced.metadata["air_or_vacuum_source"] == "user"


def test_text_air_tag_in_column_name_and_parenthesised_unit(tmp_path):
    path = tmp_path / "air.dat"
    fac.write_text_spectrum(path, wavelength=np.linspace(6000, 6010, 21), flux=np.ones(21), error=np.full(21, 0.1),
                            names=("lambda (A, air)", "flux", "err"), delimiter="\t")
    spec = read_spectrum(path)
    np.testing.assert_allclose(spec.wavelength, air_to_vacuum(np.linspace(6000, 6010, 21)), rtol=1e-12)
    assert spec.metadata["wavelength_unit"] == "angstrom" and spec.metadata["air_to_vacuum"] is True


def test_text_without_header_by_position(tmp_path):
    wavelength = np.linspace(5000.0, 5020.0, 41)
    three = tmp_path / "three.txt"
    fac.write_text_spectrum(three, wavelength=wavelength, flux=np.full(41, 2.0), error=np.full(41, 0.5), header=False)
    spec = read_spectrum(three)
    np.testing.assert_allclose(spec.wavelength, wavelength)
    np.testing.assert_allclose(spec.ivar, 4.0)
    assert spec.metadata["columns"] == {"wavelength": "col1", "flux": "col2", "error": "col3"}
    two = tmp_path / "two.txt"
    fac.write_text_spectrum(two, wavelength=wavelength, flux=np.full(41, 2.0), header=False,
                            comments=("Column 1. Wavelength (nm)", "Column 2. Watts m-2 nm-1"))
    with pytest.raises(SpectrumReadError, match=r"two.txt: text format: no uncertainties.*--snr"):
        read_spectrum(two)
    spec = read_spectrum(two, snr=20)
    np.testing.assert_allclose(spec.ivar, (20 / 2.0) ** 2)
    assert spec.metadata["air_or_vacuum"] == "vacuum" and spec.metadata["air_or_vacuum_source"].startswith("default")
    # a last comment line naming the columns is a header; two ordinary words are not
    named = tmp_path / "named.txt"
    fac.write_text_spectrum(named, wavelength=wavelength, flux=np.full(41, 2.0), header=False,
                            comments=("sun spectrum", "lam_nm flux"))
    assert read_spectrum(named, snr=10).metadata["wavelength_unit_source"] == "column name 'lam_nm'"
    words = tmp_path / "words.txt"
    fac.write_text_spectrum(words, wavelength=wavelength, flux=np.full(41, 2.0), header=False, comments=("sun spectrum",))
    assert read_spectrum(words, snr=10).metadata["columns"] == {"wavelength": "col1", "flux": "col2"}


def test_csv_with_extra_columns_and_empty_fields(tmp_path):
    n = 30
    wavelength = np.linspace(5100.0, 5103.0, n)
    flux = np.ones(n)
    flux[4] = np.nan  # written as 'nan'
    path = tmp_path / "table.csv"
    fac.write_text_spectrum(path, wavelength=wavelength, flux=flux, error=np.full(n, 0.05), delimiter=",",
                            names=("wave", "flux", "flux_error"),
                            extra={"source_id": np.full(n, 2131314401800665344), "ra": np.full(n, 286.8)})
    text = path.read_text().splitlines()
    text[10] = ",".join(text[10].split(",")[:3] + ["", ""])  # empty flux and flux_error, as Gaia CSVs have
    path.write_text("\n".join(text) + "\n")
    spec = read_spectrum(path)
    assert spec.metadata["format"] == "text"  # 5100 A: not a Gaia RVS range
    assert spec.metadata["columns"] == {"wavelength": "wave", "flux": "flux", "error": "flux_error"}
    assert spec.mask[4] and spec.mask[9] and spec.n_good == n - 2
    assert spec.metadata["n_nonfinite_masked"] == 2


def test_text_errors_name_the_fix(tmp_path):
    ragged = tmp_path / "ragged.txt"
    ragged.write_text("5000 1 0.1\n5001 1\n")
    with pytest.raises(SpectrumReadError, match=r"ragged.txt: text format: line 2 has 2 fields"):
        read_spectrum(ragged)
    unnamed = tmp_path / "unnamed.csv"
    unnamed.write_text("alpha,beta,gamma\n5000,1,0.1\n5001,1,0.1\n")
    with pytest.raises(SpectrumReadError, match=r"no wavelength column.*columns="):
        read_spectrum(unnamed)
    spec = read_spectrum(unnamed, format="text", columns={"wavelength": "alpha", "flux": 1, "error": "gamma"})
    assert spec.n_pixels == 2 and spec.ivar[0] == pytest.approx(100.0)


def test_text_spectrum_is_not_a_batch_list_file(tmp_path):
    from stellarfit.inference.batch import expand_inputs

    spectrum = tmp_path / "sun.txt"
    fac.write_text_spectrum(spectrum, wavelength=np.linspace(5000, 5010, 11), flux=np.ones(11), header=False)
    listing = tmp_path / "list.txt"
    listing.write_text("# stars\nsun.txt\n")
    assert expand_inputs([spectrum]) == [spectrum]
    assert expand_inputs([listing]) == [spectrum]


# ------------------------------------------------------------------------------ NaN / inf
def test_from_arrays_masks_and_counts_nonfinite_by_default():
    wavelength = np.linspace(5000, 5010, 10)
    flux = np.ones(10)
    flux[1] = np.nan
    sigma = np.full(10, 0.1)
    sigma[2] = np.inf
    sigma[3] = np.nan
    mask = np.zeros(10, bool)
    mask[1] = True  # already masked by the file: not counted again
    spec = ObservedSpectrum.from_arrays(wavelength, flux, sigma=sigma, mask=mask)
    assert spec.metadata["n_nonfinite_masked"] == 2
    assert list(np.flatnonzero(spec.mask)) == [1, 2, 3] and np.all(np.isfinite(spec.flux))
    clean = ObservedSpectrum.from_arrays(wavelength, np.ones(10), sigma=0.1)
    assert clean.metadata["n_nonfinite_masked"] == 0
    with pytest.raises(InvalidSpectrumError, match="flux has 1 non-finite"):
        ObservedSpectrum.from_arrays(wavelength, np.where(np.arange(10) == 4, np.nan, 1.0), sigma=0.1, fix_nonfinite=False)


def test_all_nan_is_a_clear_error(tmp_path):
    with pytest.raises(InvalidSpectrumError, match=r"no usable pixel: 10 of 10 pixels have NaN/inf"):
        ObservedSpectrum.from_arrays(np.linspace(5000, 5010, 10), np.full(10, np.nan), sigma=0.1)
    path = tmp_path / "allnan.fits"
    fac.write_generic_image(path, flux=np.full(30, np.nan), error=np.full(30, 0.1), header={"CRVAL1": 5000.0, "CDELT1": 0.1})
    with pytest.raises(SpectrumReadError, match=r"allnan.fits: generic format: no usable pixel: 30 of 30"):
        read_spectrum(path)


# ------------------------------------------------------------------------------ CLI flags
def test_cli_air_and_vacuum_flags_reach_the_reader(tmp_path, monkeypatch, capsys):
    import stellarfit.spectra
    from stellarfit.cli.main import build_parser, main
    from stellarfit.inference import batch

    seen = []

    def capture(path, format=None, **options):  # noqa: A002
        seen.append(options)
        raise ValueError("stop here")

    monkeypatch.setattr(stellarfit.spectra, "read_spectrum", capture)
    path = tmp_path / "s.fits"
    for flags, expected in ((["--air"], True), (["--vacuum"], False), ([], None)):
        assert main(["fit", str(path), *flags]) == 2
        assert seen[-1].get("air") is expected
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["fit", str(path), "--air", "--vacuum"])
    assert info.value.code == 2 and "not allowed with" in capsys.readouterr().err

    given = []

    def capture_batch(inputs, emulator, out, **kwargs):
        given.append(kwargs["air"])
        raise ValueError("stop here")

    monkeypatch.setattr(batch, "fit_batch_files", capture_batch)
    for flags, expected in ((["--vacuum"], False), (["--air"], True), ([], None)):
        assert main(["batch", str(path), "--out", str(tmp_path / "c.fits"), "--emulator", "payne-default", *flags]) == 2
        assert given[-1] is expected


# ------------------------------------------------------------------------------ real files (trimmed copies)
def test_real_mike_trim():
    """HD 140283, Magellan/MIKE: IRAF image, bare CRVAL1/CDELT1 in Angstrom (WAT1_001 units), air, no errors."""
    path = DATA / "HD140283_MIKE_trim.fits"
    spec = read_spectrum(path, snr=80)
    from astropy.io import fits

    header = fits.getheader(path)
    air = _wcs(400, header["CRVAL1"], header["CDELT1"], header["CRPIX1"])
    assert air[0] == pytest.approx(5167.0, abs=0.05)
    np.testing.assert_allclose(spec.wavelength, air_to_vacuum(air), rtol=1e-12)
    assert spec.metadata["air_or_vacuum"] == "air" and "IRAF" in spec.metadata["air_or_vacuum_source"]
    assert spec.metadata["wavelength_unit_source"].startswith("header WAT1_001")
    assert spec.metadata["object_id"] == "HD140283" and spec.n_good == 400


def test_real_harps_ganymede_trim():
    """HARPS solar spectrum via Ganymede: CTYPE1 'ANGSTROM', not normalized, air."""
    from astropy.io import fits

    path = DATA / "Sun_HARPS_Ganymede_raw_trim.fits"
    spec = read_spectrum(path, snr=200)
    header = fits.getheader(path)
    air = _wcs(400, header["CRVAL1"], header["CDELT1"], header["CRPIX1"])
    assert air[0] == pytest.approx(5167.0, abs=0.01) and header["CRVAL1"] == pytest.approx(3783.14390541065)
    np.testing.assert_allclose(spec.wavelength, air_to_vacuum(air), rtol=1e-12)
    assert spec.metadata["wavelength_unit_source"] == "header CTYPE1 = 'ANGSTROM'"
    assert spec.metadata["air_to_vacuum"] is True
    assert spec.metadata["flux_unit"] == "Relative Flux"  # BUNIT: not normalized (the continuum is fitted)


def test_real_gaia_rvs_csv_trim():
    """Gaia DR3 RVS CSV (gaiaspec): claimed by the gaia-rvs reader, nm vacuum, empty fields masked."""
    path = DATA / "GaiaRVS_KOI-001_trim.csv"
    assert identify_format(path) == ["gaia-rvs", "text"]
    spec = read_spectrum(path)
    assert spec.metadata["format"] == "gaia-rvs" and spec.metadata["source"] == str(path)
    assert spec.metadata["object_id"] == "2131314401800665344"
    assert spec.wavelength_range == pytest.approx((8660.0, 8700.0))
    assert spec.resolution == 11500.0 and spec.metadata["air_to_vacuum"] is False
    assert spec.metadata["n_nonfinite_masked"] == 4 and np.all(spec.mask[-4:]) and spec.n_good == 397
    as_text = read_spectrum(path, format="text")
    np.testing.assert_array_equal(as_text.wavelength, spec.wavelength)
    assert as_text.metadata["columns"]["error"] == "flux_error" and as_text.resolution is None


# ------------------------------------------------------------------------------ real files (full, when present)
REAL = {
    # name: (kwargs, vacuum range [A] to 0.1 A, air?, masked air ranges [A])
    "Sun_HARPS_GBS.fits": ({}, (4801.34, 6801.87), True, [(5305.0, 5337.5)]),
    "Procyon_UVES_GBS.fits": ({}, (4801.34, 6801.87), True, [(5771.0, 5840.0)]),
    "Arcturus_NOAO_atlas.fits": ({"snr": 100}, (3727.76, 9302.56), True, []),
    "HD140283_MIKE.fits": ({"snr": 100}, (3352.55, 9406.96), True, []),
    "Sun_HARPS_Ganymede_raw.fits": ({"snr": 100}, (3784.22, 6915.23), True, []),
    "Sun_SAO2010_irradiance.txt": ({"snr": 100}, (2000.7, 10009.9), False, []),
    "GaiaRVS_KOI-001.csv": ({}, (8460.0, 8700.0), False, []),
}


@pytest.mark.parametrize("name", sorted(REAL))
def test_shared_real_files_read_as_published(name):
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"{path} is not here (the development data of ../shared/real)")
    options, (low, high), air, gaps = REAL[name]
    spec = read_spectrum(path, **options)
    assert spec.wavelength_range == pytest.approx((low, high), abs=0.1)
    assert spec.metadata["air_to_vacuum"] is air
    assert spec.n_good > 0.9 * spec.n_pixels
    for lo, hi in gaps:
        inside = (spec.wavelength > air_to_vacuum(lo)) & (spec.wavelength < air_to_vacuum(hi))
        assert inside.sum() > 1000 and np.all(spec.mask[inside]), name
