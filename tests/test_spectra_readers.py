"""FITS readers: auto-detection, values, vacuum wavelengths, masks, resolution, arms, and bad files.

The files are built by tests/spectra_factories.py in the real HDU layouts.
"""

import numpy as np
import pytest
from astropy.io import fits

import spectra_factories as fac
from stellarfit.spectra import (
    ObservedSpectrum,
    SpectrumList,
    SpectrumReadError,
    UnknownFormatError,
    available_formats,
    identify_format,
    read_spectra,
    read_spectrum,
    register_format,
)
from stellarfit.spectra import _registry
from stellarfit.wavelengths import air_to_vacuum

FWHM = 2.0 * np.sqrt(2.0 * np.log(2.0))


def _generic_table(path):
    fac.write_generic_table(path, wavelength=np.linspace(5000, 5100, 40), flux=np.ones(40), error=np.full(40, 0.1))


def _generic_image(path):
    fac.write_generic_image(path, flux=np.ones(40), error=np.full(40, 0.1),
                            header={"CRVAL1": 5000.0, "CDELT1": 0.5, "CRPIX1": 1})


def _text_spectrum(path):
    fac.write_text_spectrum(path, wavelength=np.linspace(5000, 5100, 40), flux=np.ones(40), error=np.full(40, 0.1))


FACTORIES = {
    "apogee-apstar": fac.write_apstar,
    "apogee-aspcapstar": fac.write_aspcapstar,
    "boss": fac.write_boss,
    "lamost-lrs": fac.write_lamost_lrs_image,
    "lamost-mrs": fac.write_lamost_mrs,
    "desi-coadd": fac.write_desi,
    "gaia-rvs": fac.write_gaia_rvs_pixels,
    "text": _text_spectrum,
    "generic": _generic_table,
}
EXTRA_LAYOUTS = {
    "boss-sdss5": ("boss", lambda p: fac.write_boss(p, upper=True)),
    "lamost-lrs-dr9": ("lamost-lrs", fac.write_lamost_lrs_table),
    "gaia-rvs-rows": ("gaia-rvs", fac.write_gaia_rvs_rows),
    "generic-image": ("generic", _generic_image),
}
ALL_LAYOUTS = {name: (name, factory) for name, factory in FACTORIES.items()} | EXTRA_LAYOUTS


def test_registry_lists_every_format_with_generic_last():
    formats = available_formats()
    assert set(FACTORIES) == set(formats)
    assert formats[-1] == "generic"


@pytest.mark.parametrize("layout", sorted(ALL_LAYOUTS))
def test_auto_detection_picks_the_right_reader(tmp_path, layout):
    expected, factory = ALL_LAYOUTS[layout]
    path = tmp_path / (f"{layout}.txt" if expected == "text" else f"{layout}.fits")
    factory(path)
    # no other survey reader claims the file (the generic fallback may also accept tables)
    matches = identify_format(path)
    assert matches[0] == expected
    assert set(matches) <= {expected, "generic"}
    for spectrum in read_spectra(path):
        assert isinstance(spectrum, ObservedSpectrum)
        assert spectrum.metadata["format"] == expected
        assert spectrum.metadata["source"] == str(path)


def test_identify_takes_an_hdulist_and_never_raises(tmp_path):
    path = tmp_path / "b.fits"
    fac.write_boss(path)
    with fits.open(path) as hdul:
        assert _registry.get_format("boss").identify(hdul)
        assert not _registry.get_format("desi-coadd").identify(hdul)
    junk = tmp_path / "junk.fits"
    junk.write_bytes(b"not a fits file" * 10)
    assert all(not _registry.get_format(name).identify(junk) for name in available_formats())
    assert identify_format(tmp_path / "missing.fits") == []


# ------------------------------------------------------------------------------ APOGEE
def test_apstar_values_wavelengths_masks(tmp_path):
    path = tmp_path / "apStar-dr17-2M12345678+1234567.fits"
    truth = fac.write_apstar(path)
    spec = read_spectrum(path)
    # log-linear WCS: 10**(4.179 + 6e-6 i), i.e. 15100.8 ... 16999.8 A
    assert spec.n_pixels == 8575
    assert spec.wavelength[0] == pytest.approx(15100.8, abs=0.05)
    assert spec.wavelength[-1] == pytest.approx(16999.8, abs=0.05)
    np.testing.assert_allclose(spec.wavelength, truth["wavelength"], rtol=1e-12)
    np.testing.assert_array_equal(spec.flux, truth["flux"][0].astype(np.float64))
    np.testing.assert_allclose(spec.ivar, 0.25)
    # BADPIX and SIG_SKYLINE masked, PERSIST_HIGH kept by default
    assert spec.mask[10] and spec.mask[20] and not spec.mask[30]
    assert spec.n_good == 8575 - 2
    assert spec.resolution == 22500.0
    assert spec.metadata["object_id"] == "2M12345678+1234567"
    assert spec.metadata["air_to_vacuum"] is False
    visit = read_spectrum(path, row=2)
    np.testing.assert_array_equal(visit.flux, truth["flux"][2].astype(np.float64))
    strict = read_spectrum(path, bad_bits=[9])
    assert strict.mask[30] and not strict.mask[20]
    assert read_spectrum(path, resolution=20000).resolution == 20000.0


def test_apstar_single_visit_1d(tmp_path):
    path = tmp_path / "apStar-1visit.fits"
    truth = fac.write_apstar(path, n_rows=1)
    spec = read_spectrum(path)
    np.testing.assert_array_equal(spec.flux, truth["flux"].astype(np.float64))
    with pytest.raises(SpectrumReadError, match="row=1 requested"):
        read_spectrum(path, row=1)


def test_aspcapstar_masks_gaps(tmp_path):
    path = tmp_path / "aspcapStar.fits"
    truth = fac.write_aspcapstar(path)
    spec = read_spectrum(path)
    assert spec.metadata["format"] == "apogee-aspcapstar"
    np.testing.assert_allclose(spec.wavelength, truth["wavelength"], rtol=1e-12)
    assert np.all(spec.mask[truth["gap"]]) and not np.any(spec.mask[~truth["gap"]])
    np.testing.assert_allclose(spec.ivar[~truth["gap"]], 1.0 / np.float32(0.01) ** 2, rtol=1e-6)


# ------------------------------------------------------------------------------ BOSS
@pytest.mark.parametrize("upper", [False, True])
def test_boss_wdisp_gives_resolution(tmp_path, upper):
    path = tmp_path / "spec-3606-55182-0537.fits"
    truth = fac.write_boss(path, upper=upper, wdisp=1.1)
    spec = read_spectrum(path)
    np.testing.assert_allclose(spec.wavelength, truth["wavelength"], rtol=1e-12)
    np.testing.assert_array_equal(spec.flux, truth["flux"].astype(np.float64))
    # wdisp = 1.1 pixels of dloglam = 1e-4: R = 1 / (2.3548 * 1.1e-4 * ln 10) = 1676.6
    assert spec.resolution.shape == (spec.n_pixels,)
    np.testing.assert_allclose(spec.resolution, 1676.6, rtol=2e-4)
    np.testing.assert_allclose(spec.lsf_sigma, spec.wavelength * np.log(10) * 1.1e-4, rtol=1e-3)
    assert spec.mask[50] and spec.mask[70] and not spec.mask[60]  # and_mask, ivar 0, or_mask only
    assert read_spectrum(path, use_or_mask=True).mask[60]
    assert spec.metadata["flux_unit"] == "1E-17 erg/cm^2/s/Ang"
    assert spec.metadata["object_id"] == ("27021597917837494" if upper else "3606-55182-0537")


def test_boss_wdisp_scales_inversely(tmp_path):
    a = tmp_path / "a.fits"
    b = tmp_path / "b.fits"
    fac.write_boss(a, wdisp=1.0)
    fac.write_boss(b, wdisp=2.0)
    ratio = read_spectrum(a).resolution / read_spectrum(b).resolution
    np.testing.assert_allclose(ratio, 2.0, rtol=1e-6)


# ------------------------------------------------------------------------------ LAMOST
def test_lamost_lrs_image_layout(tmp_path):
    path = tmp_path / "spec-55859-F5902_sp01-001.fits"
    truth = fac.write_lamost_lrs_image(path)
    spec = read_spectrum(path)
    assert spec.metadata["layout"].startswith("image")
    np.testing.assert_allclose(spec.wavelength, truth["wavelength"])
    np.testing.assert_array_equal(spec.flux, truth["flux"].astype(np.float64))
    np.testing.assert_allclose(spec.ivar, truth["ivar"])
    assert spec.mask[5] and not spec.mask[6]  # andmask bad, ormask alone not
    assert spec.resolution == 1800.0 and spec.metadata["object_id"] == "101001"


def test_lamost_lrs_image_identified_without_telescop_keyword(tmp_path):
    path = tmp_path / "lamost.fits"
    fac.write_lamost_lrs_image(path)
    with fits.open(path) as hdul:
        del hdul[0].header["TELESCOP"]
        hdul.writeto(tmp_path / "lamost_bare.fits")
    assert identify_format(tmp_path / "lamost_bare.fits") == ["lamost-lrs"]  # from the wavelength row


def test_read_from_an_open_hdulist(tmp_path):
    path = tmp_path / "spec.fits"
    truth = fac.write_boss(path)
    with fits.open(path) as hdul:
        spec = read_spectrum(hdul)
        np.testing.assert_array_equal(spec.flux, truth["flux"].astype(np.float64))
        assert not hdul._file.closed  # the caller's HDUList is left open


def test_lamost_lrs_header_saying_air_is_honoured(tmp_path):
    path = tmp_path / "lamost_air.fits"
    truth = fac.write_lamost_lrs_image(path, vacuum=False)
    spec = read_spectrum(path)
    np.testing.assert_allclose(spec.wavelength, air_to_vacuum(truth["wavelength"]), rtol=1e-12)
    assert spec.metadata["air_to_vacuum"] is True
    assert np.all(spec.wavelength > truth["wavelength"] + 1.0)


def test_lamost_lrs_table_layout(tmp_path):
    path = tmp_path / "lamost_dr9.fits"
    truth = fac.write_lamost_lrs_table(path)
    spec = read_spectrum(path)
    assert spec.metadata["layout"].startswith("table")
    np.testing.assert_allclose(spec.wavelength, truth["wavelength"])
    np.testing.assert_array_equal(spec.flux, truth["flux"].astype(np.float64))
    assert spec.mask[100] and spec.n_good == spec.n_pixels - 1


def test_lamost_mrs_two_arms(tmp_path):
    path = tmp_path / "med-58625-TD045606N223435B01_sp01-001.fits"
    truth = fac.write_lamost_mrs(path)
    spec = read_spectrum(path)
    n_b, n_r = truth["B"]["wavelength"].size, truth["R"]["wavelength"].size
    assert spec.arm_names == ("B", "R") and spec.n_pixels == n_b + n_r
    assert spec.arm.tolist() == [0] * n_b + [1] * n_r
    blue, red = spec.arms()
    np.testing.assert_allclose(blue.wavelength, truth["B"]["wavelength"])
    np.testing.assert_array_equal(red.flux, truth["R"]["flux"].astype(np.float64))
    assert blue.mask[7] and red.mask[7]
    assert spec.resolution == 7500.0
    only_red = read_spectrum(path, arms=["R"])
    assert only_red.arm_names == ("R",) and only_red.n_pixels == n_r


# ------------------------------------------------------------------------------ DESI
def test_desi_spectra_arms_and_resolution(tmp_path):
    path = tmp_path / "coadd-main-bright-10016.fits"
    truth = fac.write_desi(path, n_spec=3, sigma_pixels=(1.0, 1.2, 1.5))
    spectra = read_spectrum(path)
    assert isinstance(spectra, SpectrumList) and len(spectra) == 3 and spectra.skipped == []
    sizes = [truth["arms"][a]["wavelength"].size for a in "BRZ"]
    for row, spec in enumerate(spectra):
        assert spec.arm_names == ("B", "R", "Z")
        assert spec.arm.tolist() == [0] * sizes[0] + [1] * sizes[1] + [2] * sizes[2]
        assert spec.metadata["targetid"] == int(truth["targetid"][row])
        assert spec.metadata["fibermap"]["OBJTYPE"] == "TGT"
        for i, arm in enumerate(spec.arms()):
            t = truth["arms"]["BRZ"[i]]
            np.testing.assert_array_equal(arm.wavelength, t["wavelength"])
            np.testing.assert_array_equal(arm.flux, t["flux"][row].astype(np.float64))
            assert arm.mask[3] and arm.n_good == arm.n_pixels - 1
            # Gaussian kernel of sigma s pixels on a 0.8 A grid: R = lambda / (2.3548 * s * 0.8)
            expected = t["wavelength"] / (FWHM * t["sigma_pixels"] * t["step"])
            np.testing.assert_allclose(arm.resolution, expected, rtol=2e-3)
    # the arms overlap in wavelength: kept separate, not merged
    b, r = spectra[0].arms()[:2]
    assert b.wavelength[-1] > r.wavelength[0]


def test_desi_selection_and_dead_fibre(tmp_path):
    path = tmp_path / "coadd.fits"
    truth = fac.write_desi(path, n_spec=3, dead_row=1)
    with pytest.raises(SpectrumReadError, match=r"coadd.fits.*row 1.*no usable pixel"):
        read_spectrum(path)
    spectra = read_spectrum(path, errors="skip")
    assert [s.metadata["row"] for s in spectra] == [0, 2]
    assert spectra.skipped[0]["row"] == 1 and "no usable pixel" in spectra.skipped[0]["reason"]
    picked = read_spectrum(path, targetids=[int(truth["targetid"][2])])
    assert len(picked) == 1 and picked[0].metadata["row"] == 2
    blue_only = read_spectrum(path, rows=[0], arms=["B"])
    assert blue_only[0].arm_names == ("B",)


# ------------------------------------------------------------------------------ Gaia RVS
def test_gaia_rvs_pixel_table(tmp_path):
    path = tmp_path / "RVS-Gaia DR3 4295806720.fits"
    truth = fac.write_gaia_rvs_pixels(path)
    spec = read_spectrum(path)
    np.testing.assert_allclose(spec.wavelength, truth["wavelength_nm"] * 10.0)
    assert spec.wavelength_range == pytest.approx((8460.0, 8700.0))
    assert np.all(spec.mask[: truth["n_nan"]]) and spec.n_good == 2401 - truth["n_nan"]
    assert np.all(np.isfinite(spec.flux))
    assert spec.resolution == 11500.0 and spec.metadata["object_id"] == "4295806720"
    # NaN flux with NaN error carries no information: fine even without fix_nonfinite
    assert read_spectrum(path, fix_nonfinite=False).n_good == 2401 - truth["n_nan"]


def test_gaia_rvs_nan_flux_with_finite_error(tmp_path):
    path = tmp_path / "gaia.fits"
    fac.write_gaia_rvs_pixels(path, n_nan=0)
    with fits.open(path) as hdul:
        hdul[1].data["flux"][100] = np.nan
        hdul.writeto(tmp_path / "gaia_nan.fits")
    assert read_spectrum(tmp_path / "gaia_nan.fits").mask[100]  # masked by default for Gaia
    with pytest.raises(SpectrumReadError, match=r"gaia_nan.fits: gaia-rvs format: source_id 4295806720: flux has 1 non-finite"):
        read_spectrum(tmp_path / "gaia_nan.fits", fix_nonfinite=False)


def test_gaia_rvs_rows_without_wavelength(tmp_path):
    path = tmp_path / "RvsMeanSpectrum.fits"
    truth = fac.write_gaia_rvs_rows(path)
    spectra = read_spectrum(path)
    assert isinstance(spectra, SpectrumList) and len(spectra) == 2
    assert [s.metadata["object_id"] for s in spectra] == ["1000", "2000"]
    np.testing.assert_allclose(spectra[1].wavelength, 8460.0 + 0.1 * np.arange(2401))
    np.testing.assert_array_equal(spectra[1].flux, truth["flux"][1].astype(np.float64))
    np.testing.assert_allclose(spectra[0].ivar, 1.0 / np.float32(0.05) ** 2, rtol=1e-6)
    one = read_spectrum(path, source_ids=[2000])
    assert isinstance(one, SpectrumList) and one[0].metadata["object_id"] == "2000"


# ------------------------------------------------------------------------------ generic
def test_generic_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    wavelength = np.concatenate([np.linspace(4000, 5000, 30), np.linspace(4990, 6000, 20)])
    flux = 1.0 + 0.1 * rng.standard_normal(50)
    ivar = rng.uniform(10, 20, 50)
    ivar[4] = 0.0
    mask = np.zeros(50, bool)
    mask[9] = True
    spec = ObservedSpectrum(wavelength, flux, ivar, mask=mask, lsf_sigma=np.linspace(0.1, 0.2, 50),
                            arm=np.repeat([0, 1], [30, 20]), arm_names=("blue", "red"),
                            metadata={"object_id": "HD 1234", "flux_unit": "normalized"})
    path = tmp_path / "out.fits"
    spec.write(path)
    back = read_spectrum(path)
    assert back.metadata["format"] == "generic"
    for name in ("wavelength", "flux", "ivar", "mask", "arm", "lsf_sigma", "resolution"):
        np.testing.assert_array_equal(getattr(back, name), getattr(spec, name), err_msg=name)
    assert back.arm_names == ("blue", "red")
    assert back.metadata["object_id"] == "HD 1234" and back.metadata["flux_unit"] == "normalized"
    assert back.metadata["air_to_vacuum"] is False  # written as vacuum, not converted again
    scalar = ObservedSpectrum(wavelength[:30], flux[:30], ivar[:30], resolution=12345.0)
    scalar.write(tmp_path / "scalar.fits")
    assert read_spectrum(tmp_path / "scalar.fits").resolution == 12345.0
    with pytest.raises(OSError):
        scalar.write(tmp_path / "scalar.fits")  # no silent overwrite


def test_generic_table_units_air_and_header_resolution(tmp_path):
    path = tmp_path / "nm_air.fits"
    wavelength_nm = 655.28 + 0.1 * np.arange(31)  # includes 656.28 nm (H-alpha in air)
    fac.write_generic_table(path, wavelength=wavelength_nm, flux=np.ones(31), error=np.full(31, 0.02),
                            names=("LAMBDA", "Flux", "flux_error"), wave_unit="nm",
                            header={"AIRORVAC": "air", "RESOLUTN": 48000.0})
    spec = read_spectrum(path)
    np.testing.assert_allclose(spec.wavelength, air_to_vacuum(wavelength_nm * 10.0), rtol=1e-12)
    halpha = np.argmin(np.abs(wavelength_nm - 656.28))
    assert spec.wavelength[halpha] == pytest.approx(6564.61, abs=0.01)
    assert spec.resolution == 48000.0 and spec.metadata["resolution_source"] == "header"
    np.testing.assert_allclose(spec.ivar, 2500.0)
    # the header can be overridden
    override = read_spectrum(path, air=False)
    np.testing.assert_allclose(override.wavelength, wavelength_nm * 10.0)


def test_generic_table_default_is_vacuum_and_loglam_column(tmp_path):
    path = tmp_path / "loglam.fits"
    loglam = 3.7 + 1e-4 * np.arange(20)
    fac.write_generic_table(path, wavelength=loglam, flux=np.ones(20), ivar=np.full(20, 3.0), names=("LOGLAM", "FLUX", "-"))
    spec = read_spectrum(path)
    np.testing.assert_allclose(spec.wavelength, 10.0**loglam, rtol=1e-12)
    assert spec.metadata["air_to_vacuum"] is False and "default" in spec.metadata["air_or_vacuum_source"]
    assert spec.resolution is None


def test_generic_image_linear_and_log_wcs(tmp_path):
    linear = tmp_path / "linear.fits"
    fac.write_generic_image(linear, flux=np.ones(100), error=np.full(100, 0.1),
                            header={"CRVAL1": 6000.0, "CDELT1": 0.25, "CRPIX1": 11, "R": 20000.0})
    spec = read_spectrum(linear)
    # pixel i (0-based) is at CRVAL1 + CDELT1 * (i + 1 - CRPIX1)
    assert spec.wavelength[10] == pytest.approx(6000.0) and spec.wavelength[0] == pytest.approx(5997.5)
    assert spec.resolution == 20000.0
    log = tmp_path / "log.fits"
    fac.write_generic_image(log, flux=np.ones(100), ivar=np.full(100, 100.0),
                            header={"CRVAL1": 3.6, "CD1_1": 2e-5, "DC-FLAG": 1})
    spec = read_spectrum(log)
    np.testing.assert_allclose(spec.wavelength, 10.0 ** (3.6 + 2e-5 * np.arange(100)), rtol=1e-12)
    air = tmp_path / "awav.fits"
    fac.write_generic_image(air, flux=np.ones(100), error=np.full(100, 0.1),
                            header={"CRVAL1": 6000.0, "CDELT1": 0.25, "CTYPE1": "AWAV"})
    np.testing.assert_allclose(read_spectrum(air).wavelength, air_to_vacuum(6000.0 + 0.25 * np.arange(100)))


def test_generic_without_uncertainties_needs_snr(tmp_path):
    path = tmp_path / "noerr.fits"
    fac.write_generic_image(path, flux=np.full(50, 4.0), header={"CRVAL1": 5000.0, "CDELT1": 1.0})
    with pytest.raises(SpectrumReadError, match=r"noerr.fits.*no uncertainties.*snr="):
        read_spectrum(path)
    spec = read_spectrum(path, snr=40)
    np.testing.assert_allclose(spec.ivar, 100.0)
    assert spec.snr() == pytest.approx(40.0)


def test_generic_nan_flux(tmp_path):
    flux = np.ones(30)
    flux[5] = np.nan
    path = tmp_path / "nan.fits"
    fac.write_generic_table(path, wavelength=np.linspace(5000, 5030, 30), flux=flux, error=np.full(30, 0.1))
    # masked and counted by default (NaN pixels are normal input) ...
    spec = read_spectrum(path)
    assert spec.mask[5] and spec.n_good == 29 and spec.ivar[5] == 0
    assert spec.metadata["n_nonfinite_masked"] == 1
    # ... refused on request
    with pytest.raises(SpectrumReadError, match=r"nan.fits: generic format: flux has 1 non-finite.*fix_nonfinite=True"):
        read_spectrum(path, fix_nonfinite=False)
    # NaN flux in a pixel the file already masks is fine
    masked = tmp_path / "nan_masked.fits"
    mask = np.zeros(30, int)
    mask[5] = 1
    fac.write_generic_table(masked, wavelength=np.linspace(5000, 5030, 30), flux=flux, error=np.full(30, 0.1), mask=mask)
    assert read_spectrum(masked).mask[5]


def test_generic_nm_without_unit_is_inferred_and_said(tmp_path):
    path = tmp_path / "nm.fits"
    fac.write_generic_table(path, wavelength=np.linspace(500, 510, 20), flux=np.ones(20), error=np.full(20, 0.1))
    spec = read_spectrum(path)  # no TUNIT: 500-510 can only be nm
    assert spec.wavelength[0] == pytest.approx(5000.0)
    assert spec.metadata["wavelength_unit"] == "nm" and "inferred" in spec.metadata["wavelength_unit_source"]
    assert read_spectrum(path, wavelength_unit="nm").metadata["wavelength_unit_source"] == "user"
    # a unit that contradicts the values still gets the hint
    with pytest.raises(SpectrumReadError, match=r"nm.fits.*nanometres.*wavelength_unit='nm'"):
        read_spectrum(path, wavelength_unit="angstrom")


# ------------------------------------------------------------------------------ bad files
def test_missing_hdu(tmp_path):
    path = tmp_path / "apstar_short.fits"
    fac.write_apstar(path)
    with fits.open(path) as hdul:
        fits.HDUList(hdul[:2]).writeto(tmp_path / "short.fits")
    with pytest.raises(SpectrumReadError, match=r"short.fits: apogee-apstar format: missing HDU 2"):
        read_spectrum(tmp_path / "short.fits", format="apogee-apstar")
    desi = tmp_path / "desi_noivar.fits"
    fac.write_desi(desi, drop="R_IVAR")
    with pytest.raises(SpectrumReadError, match=r"desi_noivar.fits: desi-coadd format: missing HDU 'R_IVAR'"):
        read_spectrum(desi)


def test_wrong_shapes(tmp_path):
    desi = tmp_path / "desi_shape.fits"
    fac.write_desi(desi, bad_shape="Z")
    with pytest.raises(SpectrumReadError, match=r"desi_shape.fits.*Z_FLUX has shape \(3, 2876\), expected \(3, 2881\)"):
        read_spectrum(desi)
    path = tmp_path / "apstar.fits"
    fac.write_apstar(path, n_pixels=500)
    with fits.open(path) as hdul:
        hdul[2].data = hdul[2].data[:, :400]
        hdul.writeto(tmp_path / "apstar_bad.fits")
    with pytest.raises(SpectrumReadError, match="must have one shape"):
        read_spectrum(tmp_path / "apstar_bad.fits", format="apogee-apstar")


def test_all_zero_ivar(tmp_path):
    path = tmp_path / "spec-zero.fits"
    fac.write_boss(path, ivar_value=0.0)
    with pytest.raises(SpectrumReadError, match=r"spec-zero.fits: boss format: no usable pixel"):
        read_spectrum(path)


def test_empty_table(tmp_path):
    path = tmp_path / "spec-empty.fits"
    fac.write_boss(path, n_rows=0)
    with pytest.raises(SpectrumReadError, match=r"spec-empty.fits: boss format: .*empty table"):
        read_spectrum(path)


@pytest.mark.parametrize("layout", ["apogee-apstar", "boss", "desi-coadd", "generic"])
def test_truncated_file(tmp_path, layout):
    path = tmp_path / f"{layout}.fits"
    FACTORIES[layout](path)
    fac.truncate(path)
    with pytest.raises(SpectrumReadError, match=rf"{layout}.fits: the file is truncated or corrupt"):
        read_spectrum(path)


def test_not_fits_empty_and_missing(tmp_path):
    text = tmp_path / "notes.fits"
    text.write_text("wavelength flux\n5000 1.0\n")
    with pytest.raises(SpectrumReadError, match=r"notes.fits: not a FITS file"):
        read_spectrum(text)
    empty = tmp_path / "empty.fits"
    empty.write_bytes(b"")
    with pytest.raises(SpectrumReadError, match=r"empty.fits: the file is empty"):
        read_spectrum(empty)
    with pytest.raises(FileNotFoundError, match="nowhere.fits: no such file"):
        read_spectrum(tmp_path / "nowhere.fits")


def test_unsupported_fits_lists_formats(tmp_path):
    path = tmp_path / "image.fits"
    fits.PrimaryHDU(np.zeros((20, 20), np.float32)).writeto(path)
    with pytest.raises(UnknownFormatError) as info:
        read_spectrum(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "image (20, 20)" in message
    for name in available_formats():
        assert name in message


def test_format_override_and_bad_options(tmp_path):
    path = tmp_path / "spec.fits"
    fac.write_boss(path)
    with pytest.raises(ValueError, match="unknown spectrum format 'sdss'.*boss"):
        read_spectrum(path, format="sdss")
    with pytest.raises(TypeError, match="'boss' reader does not take option.*'row'"):
        read_spectrum(path, row=3)
    # a forced wrong format fails with a message about that format's layout
    with pytest.raises(SpectrumReadError, match=r"spec.fits: desi-coadd format: missing HDU 'FIBERMAP'"):
        read_spectrum(path, format="desi-coadd")


def test_register_custom_format_goes_before_generic(tmp_path):
    path = tmp_path / "custom.fits"
    _generic_table(path)

    def identify(source):
        return True

    def read(source, *, resolution=None):
        spec = _registry.get_format("generic").read(source)
        return spec.replace(metadata=dict(spec.metadata, format="custom"))

    register_format("custom-test", identify, read, "test format")
    try:
        assert available_formats()[-2:] == ["custom-test", "generic"]
        assert read_spectrum(path).metadata["format"] == "custom"
        with pytest.raises(ValueError, match="already registered"):
            register_format("custom-test", identify, read)
    finally:
        _registry._REGISTRY.pop("custom-test")
    assert read_spectrum(path).metadata["format"] == "generic"
