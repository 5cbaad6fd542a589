"""ObservedSpectrum: validation messages, unit handling, air->vacuum, selections, arms, S/N."""

import dataclasses

import numpy as np
import pytest

from stellarfit.spectra import InvalidSpectrumError, ObservedSpectrum


def _simple(n=50, **kwargs):
    wavelength = np.linspace(5000.0, 5100.0, n)
    flux = np.full(n, 10.0)
    defaults = dict(sigma=0.5)
    defaults.update(kwargs)
    return ObservedSpectrum.from_arrays(wavelength, flux, **defaults)


def test_from_arrays_sigma_to_ivar_and_defaults():
    spec = _simple()
    assert spec.wavelength.dtype == np.float64 and spec.flux.dtype == np.float64
    np.testing.assert_allclose(spec.ivar, 4.0)
    assert spec.n_good == 50 and spec.n_arms == 1 and spec.arm_names == ("0",)
    assert spec.resolution is None
    assert spec.metadata["air_to_vacuum"] is False


def test_sigma_zero_or_nan_means_no_information():
    sigma = np.full(10, 0.1)
    sigma[2] = 0.0
    sigma[3] = np.nan
    spec = ObservedSpectrum.from_arrays(np.linspace(5000, 5010, 10), np.ones(10), sigma=sigma)
    assert spec.ivar[2] == 0 and spec.ivar[3] == 0
    assert spec.mask[2] and spec.mask[3] and spec.n_good == 8


def test_negative_sigma_is_an_error():
    with pytest.raises(InvalidSpectrumError, match="negative"):
        ObservedSpectrum.from_arrays(np.linspace(5000, 5010, 10), np.ones(10), sigma=-np.ones(10))


def test_need_exactly_one_of_ivar_and_sigma():
    with pytest.raises(InvalidSpectrumError, match="neither"):
        ObservedSpectrum.from_arrays(np.linspace(5000, 5010, 10), np.ones(10))
    with pytest.raises(InvalidSpectrumError, match="both"):
        ObservedSpectrum.from_arrays(np.linspace(5000, 5010, 10), np.ones(10), ivar=np.ones(10), sigma=np.ones(10))


@pytest.mark.parametrize(
    "unit, values, expected",
    [
        ("nm", np.array([500.0, 501.0, 502.0]), np.array([5000.0, 5010.0, 5020.0])),
        ("micron", np.array([1.5, 1.6, 1.7]), np.array([15000.0, 16000.0, 17000.0])),
        ("loglam", np.array([3.7, 3.7001, 3.7002]), 10.0 ** np.array([3.7, 3.7001, 3.7002])),
        ("Angstrom", np.array([5000.0, 5001.0, 5002.0]), np.array([5000.0, 5001.0, 5002.0])),
    ],
)
def test_wavelength_units(unit, values, expected):
    spec = ObservedSpectrum.from_arrays(values, np.ones(3), ivar=np.ones(3), wavelength_unit=unit)
    np.testing.assert_allclose(spec.wavelength, expected, rtol=1e-12)


@pytest.mark.parametrize(
    "values, hint",
    [
        (np.linspace(500.0, 510.0, 20), "wavelength_unit='nm'"),
        (np.linspace(3.7, 3.71, 20), "wavelength_unit='loglam'"),
        (np.linspace(1.51, 1.69, 20), "wavelength_unit='micron'"),
    ],
)
def test_wavelength_unit_heuristics_give_helpful_errors(values, hint):
    with pytest.raises(InvalidSpectrumError, match=hint.replace("(", r"\(")):
        ObservedSpectrum.from_arrays(values, np.ones(values.size), ivar=np.ones(values.size))


def test_uv_spectrum_above_1200_angstrom_is_accepted():
    spec = ObservedSpectrum.from_arrays(np.linspace(1150.0, 1450.0, 30), np.ones(30), ivar=np.ones(30))
    assert spec.wavelength_range == (1150.0, 1450.0)


def test_unknown_unit_is_rejected():
    with pytest.raises(InvalidSpectrumError, match="wavelength_unit"):
        ObservedSpectrum.from_arrays(np.linspace(5000, 5010, 5), np.ones(5), ivar=np.ones(5), wavelength_unit="furlong")


def test_shape_errors():
    wavelength = np.linspace(5000, 5010, 10)
    with pytest.raises(InvalidSpectrumError, match="flux has 9 values but wavelength has 10"):
        ObservedSpectrum(wavelength, np.ones(9), np.ones(10))
    with pytest.raises(InvalidSpectrumError, match="must be 1-D"):
        ObservedSpectrum(wavelength, np.ones((2, 10)), np.ones(10))
    with pytest.raises(InvalidSpectrumError, match="at least 2 pixels"):
        ObservedSpectrum(np.array([5000.0]), np.ones(1), np.ones(1))


def test_nonfinite_wavelength_is_an_error():
    wavelength = np.linspace(5000, 5010, 10)
    wavelength[4] = np.nan
    with pytest.raises(InvalidSpectrumError, match="non-finite value.*pixel 4"):
        ObservedSpectrum(wavelength, np.ones(10), np.ones(10))


def test_non_increasing_wavelength_names_the_pixel():
    wavelength = np.linspace(5000, 5010, 10)
    wavelength[6] = wavelength[5]
    with pytest.raises(InvalidSpectrumError, match="pixel 6.*sort"):
        ObservedSpectrum(wavelength, np.ones(10), np.ones(10))


def test_overlapping_arms_are_fine_but_arm_ids_must_be_contiguous():
    wavelength = np.concatenate([np.linspace(5000, 5100, 10), np.linspace(5090, 5200, 10)])
    arm = np.repeat([0, 1], 10)
    spec = ObservedSpectrum(wavelength, np.ones(20), np.ones(20), arm=arm, arm_names=("B", "R"))
    assert spec.n_arms == 2
    with pytest.raises(InvalidSpectrumError, match="increase strictly"):
        ObservedSpectrum(wavelength, np.ones(20), np.ones(20))  # same data without arm ids
    with pytest.raises(InvalidSpectrumError, match="contiguous"):
        ObservedSpectrum(wavelength, np.ones(20), np.ones(20), arm=np.tile([0, 1], 10))
    with pytest.raises(InvalidSpectrumError, match="arm_names has 3 names"):
        ObservedSpectrum(wavelength, np.ones(20), np.ones(20), arm=arm, arm_names=("B", "R", "Z"))


def test_nan_flux_rules():
    wavelength = np.linspace(5000, 5010, 10)
    flux = np.ones(10)
    flux[3] = np.nan
    with pytest.raises(InvalidSpectrumError, match="fix_nonfinite=True"):
        ObservedSpectrum(wavelength, flux, np.ones(10))
    # allowed where masked or ivar == 0; stored as a finite 0 so that 0 * flux stays 0
    mask = np.zeros(10, bool)
    mask[3] = True
    spec = ObservedSpectrum(wavelength, flux, np.ones(10), mask=mask)
    assert np.all(np.isfinite(spec.flux)) and spec.mask[3]
    ivar = np.ones(10)
    ivar[3] = 0.0
    spec = ObservedSpectrum(wavelength, flux, ivar)
    assert spec.mask[3] and np.isfinite(np.sum(spec.weights * spec.flux))
    # from_arrays can mask them
    spec = ObservedSpectrum.from_arrays(wavelength, flux, ivar=np.ones(10), fix_nonfinite=True)
    assert spec.mask[3] and spec.ivar[3] == 0 and spec.n_good == 9
    assert spec.metadata["n_nonfinite_masked"] == 1


def test_nan_ivar_unmasked_is_an_error_and_fixable():
    ivar = np.ones(10)
    ivar[2] = np.inf
    with pytest.raises(InvalidSpectrumError, match="ivar has 1 non-finite"):
        ObservedSpectrum(np.linspace(5000, 5010, 10), np.ones(10), ivar)
    spec = ObservedSpectrum.from_arrays(np.linspace(5000, 5010, 10), np.ones(10), ivar=ivar, fix_nonfinite=True)
    assert spec.mask[2] and spec.ivar[2] == 0


def test_negative_ivar_all_masked_and_zero_ivar_errors():
    wavelength = np.linspace(5000, 5010, 10)
    ivar = np.ones(10)
    ivar[7] = -1.0
    with pytest.raises(InvalidSpectrumError, match="negative value.*pixel 7"):
        ObservedSpectrum(wavelength, np.ones(10), ivar)
    with pytest.raises(InvalidSpectrumError, match="no usable pixel"):
        ObservedSpectrum(wavelength, np.ones(10), np.zeros(10))
    with pytest.raises(InvalidSpectrumError, match="no usable pixel"):
        ObservedSpectrum(wavelength, np.ones(10), np.ones(10), mask=np.ones(10, bool))


def test_zero_ivar_pixels_are_masked_and_weights_zero():
    ivar = np.full(10, 4.0)
    ivar[[1, 8]] = 0
    mask = np.zeros(10, bool)
    mask[5] = True
    spec = ObservedSpectrum(np.linspace(5000, 5010, 10), np.ones(10), ivar, mask=mask)
    assert spec.mask.tolist() == [i in (1, 5, 8) for i in range(10)]
    assert spec.weights[5] == 0 and spec.ivar[5] == 4.0 and spec.n_good == 7
    assert np.isinf(spec.sigma[1]) and spec.sigma[0] == 0.5


def test_float_mask_is_rejected():
    with pytest.raises(InvalidSpectrumError, match="mask must be boolean"):
        ObservedSpectrum(np.linspace(5000, 5010, 10), np.ones(10), np.ones(10), mask=np.zeros(10))


def test_resolution_validation_and_lsf_sigma():
    wavelength = np.linspace(5000, 5010, 10)
    with pytest.raises(InvalidSpectrumError, match="must be > 0"):
        ObservedSpectrum(wavelength, np.ones(10), np.ones(10), resolution=-5.0)
    with pytest.raises(InvalidSpectrumError, match="resolution has 3 values"):
        ObservedSpectrum(wavelength, np.ones(10), np.ones(10), resolution=np.ones(3) * 1e4)
    with pytest.raises(InvalidSpectrumError, match="plausible resolving power"):
        ObservedSpectrum(wavelength, np.ones(10), np.ones(10), resolution=0.2)
    # R derived from a per-pixel Gaussian sigma: R = lambda / (2 sqrt(2 ln 2) sigma)
    sigma = np.full(10, 0.1)
    spec = ObservedSpectrum(wavelength, np.ones(10), np.ones(10), lsf_sigma=sigma)
    np.testing.assert_allclose(spec.resolution, wavelength / (2.354820045 * 0.1), rtol=1e-8)
    scalar = ObservedSpectrum(wavelength, np.ones(10), np.ones(10), resolution=20000)
    np.testing.assert_allclose(scalar.lsf_sigma_per_pixel(), wavelength / 20000 / 2.354820045, rtol=1e-8)
    assert scalar.resolution_per_pixel().shape == (10,)


def test_require_resolution_says_how_to_fix():
    spec = _simple()
    with pytest.raises(InvalidSpectrumError, match="resolution="):
        spec.require_resolution()
    assert spec.with_resolution(7500).require_resolution() == 7500.0


def test_air_to_vacuum_halpha():
    # H-alpha: 6562.80 A in air is 6564.61 A in vacuum (standard line lists)
    wavelength = np.array([6560.0, 6562.80, 6565.0])
    spec = ObservedSpectrum.from_arrays(wavelength, np.ones(3), ivar=np.ones(3), air=True)
    assert spec.wavelength[1] == pytest.approx(6564.61, abs=0.01)
    assert spec.metadata["air_to_vacuum"] is True


def test_frozen_read_only_and_not_aliased():
    wavelength = np.linspace(5000, 5010, 10)
    flux = np.ones(10)
    spec = ObservedSpectrum(wavelength, flux, np.ones(10))
    flux[0] = 99.0
    assert spec.flux[0] == 1.0
    with pytest.raises(ValueError):
        spec.flux[0] = 5.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.flux = np.zeros(10)


def test_select_and_arms():
    wavelength = np.concatenate([np.linspace(4000, 5000, 11), np.linspace(6000, 7000, 11), np.linspace(8000, 9000, 11)])
    flux = np.arange(33, dtype=float)
    resolution = np.linspace(2000, 5000, 33)
    spec = ObservedSpectrum(wavelength, flux, np.ones(33), arm=np.repeat([0, 1, 2], 11), arm_names=("B", "R", "Z"),
                            resolution=resolution, metadata={"source": "x.fits"})
    red = spec.select(5900, 7000)
    assert red.n_pixels == 11 and red.arm_names == ("R",) and np.all(red.arm == 0)
    np.testing.assert_array_equal(red.flux, flux[11:22])
    np.testing.assert_array_equal(red.resolution, resolution[11:22])
    two = spec.select(6500, 8500)
    assert two.arm_names == ("R", "Z") and two.arm.tolist() == [0] * 6 + [1] * 6
    with pytest.raises(InvalidSpectrumError, match="covers 4000.00-9000.00"):
        spec.select(10000, 11000)
    parts = spec.arms()
    assert [p.arm_names for p in parts] == [("B",), ("R",), ("Z",)]
    assert [p.metadata["arm_name"] for p in parts] == ["B", "R", "Z"]
    np.testing.assert_array_equal(parts[2].wavelength, wavelength[22:])


def test_snr_uses_good_pixels_only():
    flux = np.full(20, 10.0)
    sigma = np.full(20, 0.5)
    mask = np.zeros(20, bool)
    flux[:5] = 1e6  # masked outliers must not count
    mask[:5] = True
    spec = ObservedSpectrum.from_arrays(np.linspace(5000, 5010, 20), flux, sigma=sigma, mask=mask)
    assert spec.snr() == pytest.approx(20.0)
    assert spec.n_good == 15


def test_to_table_columns():
    spec = _simple(resolution=np.linspace(20000, 22000, 50), metadata={"object_id": "star 1"})
    table = spec.to_table()
    assert table.colnames == ["WAVELENGTH", "FLUX", "IVAR", "MASK", "RESOLUTION"]
    assert table.meta["AIRORVAC"] == "vac" and table.meta["OBJECT"] == "star 1"
