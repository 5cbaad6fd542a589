import numpy as np
import pytest

from stellarfit.wavelengths import (
    air_to_vacuum,
    convolve_gaussian_log_lambda,
    convolve_to_resolution,
    log_lambda_grid,
    resample_flux_conserving,
    vacuum_to_air,
)


def test_air_vacuum_known_values():
    # H-alpha: 6562.80 A in air is 6564.61 A in vacuum; Na D2 5889.951 air -> 5891.583 vacuum;
    # Mg b 5183.604 air -> 5185.048 vacuum (NIST ASD values)
    np.testing.assert_allclose(air_to_vacuum(np.array([6562.80, 5889.951, 5183.604])),
                               [6564.61, 5891.583, 5185.048], atol=0.006)
    wavelengths = np.linspace(3000.0, 20000.0, 500)
    np.testing.assert_allclose(air_to_vacuum(vacuum_to_air(wavelengths)), wavelengths, atol=2e-5)
    # below 2000 A nothing changes
    assert air_to_vacuum(np.array([1500.0]))[0] == 1500.0


def test_log_lambda_grid_default_model():
    grid = log_lambda_grid(5000.0, 5500.0, 30_000.0, 3.0)
    assert grid.size == 8578
    assert grid[0] == 5000.0 and grid[-1] <= 5500.0
    step = np.diff(np.log(grid))
    np.testing.assert_allclose(step, 1.0 / 90_000.0, rtol=1e-9)
    with pytest.raises(ValueError):
        log_lambda_grid(5500.0, 5000.0, 30_000.0)


def test_gaussian_convolution_width_and_conservation():
    n = 2001
    flux = np.zeros(n)
    flux[1000] = 1.0
    convolved = convolve_gaussian_log_lambda(flux, 7.0)
    x = np.arange(n) - 1000
    assert convolved.sum() == pytest.approx(1.0, abs=1e-10)
    assert np.sqrt(np.sum(convolved * x**2)) == pytest.approx(7.0, rel=1e-3)
    flat = convolve_gaussian_log_lambda(np.full(500, 3.0), 20.0)
    np.testing.assert_allclose(flat, 3.0, rtol=1e-12)


def test_convolve_to_resolution_gives_the_right_line_width():
    # an unresolved absorption line convolved to R=10,000 must get FWHM = lambda/R
    wavelength = np.linspace(4990.0, 5010.0, 40001)
    flux = 1.0 - 0.9 * np.exp(-0.5 * ((wavelength - 5000.0) / 0.002) ** 2)
    grid, convolved = convolve_to_resolution(wavelength, flux, 10_000.0)
    depth = 1.0 - convolved
    half = depth >= depth.max() / 2
    fwhm = grid[half][-1] - grid[half][0]
    assert fwhm == pytest.approx(0.5, rel=0.02)
    # equivalent width conserved
    ew_in = np.trapezoid(1 - flux, wavelength)
    ew_out = np.trapezoid(depth, grid)
    assert ew_out == pytest.approx(ew_in, rel=1e-3)


def test_differential_broadening_equals_direct():
    wavelength = np.linspace(4990.0, 5010.0, 20001)
    flux = 1.0 - 0.5 * np.exp(-0.5 * ((wavelength - 5000.0) / 0.01) ** 2)
    grid1, at_50k = convolve_to_resolution(wavelength, flux, 50_000.0)
    grid2, via = convolve_to_resolution(grid1, at_50k, 20_000.0, input_resolution=50_000.0)
    grid3, direct = convolve_to_resolution(wavelength, flux, 20_000.0)
    np.testing.assert_allclose(np.interp(grid3[100:-100], grid2, via), direct[100:-100], atol=2e-4)
    with pytest.raises(ValueError, match="higher"):
        convolve_to_resolution(wavelength, flux, 60_000.0, input_resolution=50_000.0)


def test_resample_flux_conserving():
    rng = np.random.default_rng(3)
    fine = np.linspace(5000.0, 5010.0, 10001)
    flux = 1.0 + 0.3 * np.sin(fine * 7.0) + 0.01 * rng.normal(size=fine.size)
    coarse = np.linspace(5001.0, 5009.0, 161)
    out = resample_flux_conserving(fine, flux, coarse)
    width = coarse[1] - coarse[0]
    lo, hi = coarse[0] - width / 2, coarse[-1] + width / 2
    inside = (fine >= lo) & (fine <= hi)
    integral_in = np.trapezoid(np.interp(np.linspace(lo, hi, 200001), fine, flux), np.linspace(lo, hi, 200001))
    assert np.sum(out * width) == pytest.approx(integral_in, rel=1e-6)
    assert inside.sum() > 0
    # a linear function is reproduced exactly at pixel centres
    linear = 2.0 + 0.1 * (fine - 5000.0)
    np.testing.assert_allclose(resample_flux_conserving(fine, linear, coarse), 2.0 + 0.1 * (coarse - 5000.0), atol=1e-9)
    with pytest.raises(ValueError, match="covers only"):
        resample_flux_conserving(fine, flux, np.linspace(4990.0, 5005.0, 10))
