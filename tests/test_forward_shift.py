"""The Doppler-shift interpolation: the quintic B-spline (default) against Keys cubic convolution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stellarfit.forward import ForwardModel, cubic_interpolate
from stellarfit.forward._broadening import (
    INTERPOLATIONS,
    spline_coefficients,
    spline_interpolate,
    spline_interpolate_between,
    spline_prefilter_kernel,
)
from stellarfit.forward._model import _SPLINE_COVERAGE_MARGIN
from stellarfit.wavelengths import FWHM_TO_SIGMA, SPEED_OF_LIGHT_KMS, log_lambda_grid

NATIVE_R = 30_000.0
NATIVE = log_lambda_grid(5000.0, 5100.0, NATIVE_R, 3.0)  # 3 pixels per FWHM, like the shipped emulators
LINES = np.array([5020.0, 5033.3, 5050.0, 5061.7, 5080.0])
DEPTHS = np.array([0.6, 0.3, 0.5, 0.2, 0.4])


def rest_flux(wavelength):
    """Gaussian lines at the native resolution (FWHM = 3 native pixels)."""
    sigma = LINES / NATIVE_R * FWHM_TO_SIGMA
    return 1.0 - np.sum(DEPTHS * np.exp(-0.5 * ((wavelength[:, None] - LINES) / sigma) ** 2), axis=1)


def band_limited(x):
    """A sum of sinusoids below half the Nyquist frequency (< 0.25 cycles per pixel)."""
    return 0.3 * np.sin(2 * np.pi * 0.05 * x + 0.3) + 0.2 * np.cos(2 * np.pi * 0.13 * x + 1.1) + 0.1 * np.sin(2 * np.pi * 0.22 * x)


def fourier_shift(values, shift):
    """Band-limited values at positions k - shift (mirror-extended, so no jump at the ends)."""
    extended = np.concatenate([values, values[::-1]])
    phase = np.exp(-2j * np.pi * np.fft.rfftfreq(extended.size) * -shift).conj()
    return np.fft.irfft(np.fft.rfft(extended) * phase, extended.size)[: values.size]


def test_interpolators_are_listed_and_a_bad_name_is_refused():
    assert INTERPOLATIONS == ("spline", "keys")
    with pytest.raises(ValueError, match="interpolation must be one of 'spline', 'keys', got 'cubic'"):
        ForwardModel(lambda labels, w: labels, NATIVE, NATIVE_R, NATIVE[100:-100], 20_000.0, interpolation="cubic")
    assert ForwardModel(lambda labels, w: labels, NATIVE, NATIVE_R, NATIVE[100:-100], 20_000.0).interpolation == "spline"


def test_prefilter_inverts_the_sampled_quintic_bspline():
    kernel = spline_prefilter_kernel()
    assert kernel.shape == (49,)
    np.testing.assert_allclose(kernel, kernel[::-1], atol=0)
    assert kernel.sum() == pytest.approx(1.0, abs=1e-12)
    identity = np.convolve(kernel, np.array([1.0, 26.0, 66.0, 26.0, 1.0]) / 120.0)
    centre = identity.size // 2
    assert identity[centre] == pytest.approx(1.0, abs=1e-8)
    assert np.abs(np.delete(identity, centre)).max() < 1e-8
    with pytest.raises(ValueError, match="half-width must be >= 2"):
        spline_prefilter_kernel(1)


def test_spline_exact_at_integer_positions_and_for_quintics():
    x = np.arange(200.0)
    with jax.enable_x64(True):
        values = jnp.asarray(band_limited(x))
        at_pixels = np.asarray(spline_interpolate(values, jnp.asarray(x[30:170] + 0.0)))
        np.testing.assert_allclose(at_pixels, band_limited(x[30:170]), atol=1e-10)
        # an integer shift of the positions is a pure shift of the samples
        shifted = np.asarray(spline_interpolate(values, jnp.asarray(x[30:170] - 3.0)))
        np.testing.assert_allclose(shifted, band_limited(x[27:167]), atol=1e-10)
        # polynomials up to degree 5 are reproduced away from the ends (edge padding breaks them there)
        poly = lambda z: 1e-8 * (z - 90.0) ** 5 - 2e-6 * (z - 80.0) ** 3 + 0.01 * z  # noqa: E731
        positions = np.linspace(60.0, 140.0, 97)
        result = np.asarray(spline_interpolate(jnp.asarray(poly(x)), jnp.asarray(positions)))
        np.testing.assert_allclose(result, poly(positions), atol=1e-9)
    # float32, as in fits: still exact at the pixels to rounding
    at_pixels32 = np.asarray(spline_interpolate(jnp.asarray(band_limited(x), jnp.float32), jnp.asarray(x[30:170], jnp.float32)))
    np.testing.assert_allclose(at_pixels32, band_limited(x[30:170]), atol=2e-6)


@pytest.mark.parametrize("shift", [0.125, 0.25, 0.375, 0.5])
def test_spline_reproduces_band_limited_signals_far_better_than_keys(shift):
    x = np.arange(300.0)
    positions = x[40:260] - shift
    with jax.enable_x64(True):
        # sinusoids below half the Nyquist frequency
        values = jnp.asarray(band_limited(x))
        truth = band_limited(positions)
        spline_error = np.abs(np.asarray(spline_interpolate(values, jnp.asarray(positions))) - truth).max()
        keys_error = np.abs(np.asarray(cubic_interpolate(values, jnp.asarray(positions))) - truth).max()
        assert spline_error < 2e-4  # 1.1e-4 at half a pixel, Keys 9e-3
        assert spline_error < keys_error / 30.0
        # a Gaussian line of FWHM 3 pixels (the emulators' sampling), against its band-limited shift
        line = 1.0 - 0.5 * np.exp(-0.5 * ((x - 150.3) / (3.0 * FWHM_TO_SIGMA)) ** 2)
        truth = fourier_shift(line, shift)[40:260]
        spline_error = np.abs(np.asarray(spline_interpolate(jnp.asarray(line), jnp.asarray(positions))) - truth).max()
        keys_error = np.abs(np.asarray(cubic_interpolate(jnp.asarray(line), jnp.asarray(positions))) - truth).max()
        assert spline_error < 1e-3  # 6e-4 at half a pixel (the line is not quite band-limited), Keys 1e-2
        assert spline_error < keys_error / 10.0


def test_spline_keeps_constants_and_blends_rows_like_the_single_row_form():
    values = jnp.full((3, 50), 0.7, jnp.float32)
    positions = jnp.linspace(-3.0, 52.0, 40)  # beyond the ends too (clamped)
    np.testing.assert_allclose(spline_interpolate(values[0], positions), 0.7, atol=1e-6)
    rng = np.random.default_rng(3)
    rows = jnp.asarray(rng.random((3, 50)))
    positions = jnp.asarray(rng.uniform(5.0, 45.0, 30))
    lower = jnp.asarray(rng.integers(0, 2, 30))
    weight = jnp.asarray(rng.random(30))
    blended = spline_interpolate_between(rows, positions, lower, weight)
    each = spline_interpolate(rows, positions)  # (3, 30): every row at every position
    expected = (1 - weight) * each[lower, jnp.arange(30)] + weight * each[lower + 1, jnp.arange(30)]
    np.testing.assert_allclose(blended, expected, atol=1e-6)
    np.testing.assert_allclose(spline_interpolate(spline_coefficients(rows), positions, prefiltered=True), each, atol=1e-6)


def _model(interpolation, observed=None, resolution=NATIVE_R, **options):
    observed = NATIVE[150:-150] if observed is None else observed
    options.setdefault("rv_range", (-20.0, 20.0))
    options.setdefault("vsini_max", 20.0)
    return ForwardModel(lambda labels, w: labels, NATIVE, NATIVE_R, observed, resolution, interpolation=interpolation, **options)


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
@pytest.mark.parametrize("resolution", ["scalar", "per_pixel"])
def test_call_equals_shift_of_broadened_spectrum(interpolation, resolution):
    """__call__ broadens and prefilters in one FFT convolution; shift_to_observed(broaden(...)) does it step by step.

    With the spline, __call__ shifts by a Fourier phase and samples at fixed positions, the step-by-step
    path interpolates at the shifted positions: the two differ by the spline's interpolation error only."""
    observed = log_lambda_grid(5010.0, 5090.0, 20_000.0, 2.5)
    r = 20_000.0 if resolution == "scalar" else np.linspace(15_000.0, 25_000.0, observed.size)
    model = _model(interpolation, observed, r)
    assert model.resolution_varies == (resolution == "per_pixel")
    flux = jnp.asarray(rest_flux(model.native_wavelength), jnp.float32)
    direct = np.asarray(jax.jit(model)(flux, 7.3, 6.0))
    stepwise = np.asarray(model.shift_to_observed(model.broaden(flux, 6.0), 7.3))
    tolerance = 2e-5 if interpolation == "spline" else 2e-6
    np.testing.assert_allclose(direct[model.covered], stepwise[model.covered], atol=tolerance)
    assert np.ptp(direct) > 0.2  # there are lines


def test_spline_narrows_coverage_by_its_margin_and_keeps_flat_spectra_flat():
    spline, keys = _model("spline", NATIVE), _model("keys", NATIVE)
    assert keys.covered.sum() - spline.covered.sum() == 2 * _SPLINE_COVERAGE_MARGIN
    flat = jax.jit(spline)(jnp.ones(spline.n_native), 15.0, 10.0)
    np.testing.assert_allclose(flat, 1.0, atol=1e-6)


def _fit_rv(model, data, rv_start, mask, steps=6):
    """Gauss-Newton on the RV alone (float64): argmin sum (model - data)^2 over ``mask``."""
    flux = jnp.asarray(rest_flux(model.native_wavelength))
    residual = jax.jit(lambda rv: jnp.where(mask, model(flux, rv, 0.0) - data, 0.0))
    slope = jax.jit(jax.jacfwd(residual))
    rv = rv_start
    for _ in range(steps):
        r, j = residual(rv), slope(rv)
        rv = rv - float(jnp.sum(j * r) / jnp.sum(j * j))
    return rv


@pytest.mark.parametrize("shift", [0.25, -0.375])
def test_rv_of_a_band_limited_shift_is_unbiased_with_the_spline(shift):
    """Noise-free lines at 3 pixels per FWHM, shifted exactly (in Fourier space) by a fraction of a pixel:
    the spline recovers the RV to < 1 m/s, Keys is off by tens of m/s (the bias it replaced)."""
    with jax.enable_x64(True):
        biases = {}
        for interpolation in INTERPOLATIONS:
            model = _model(interpolation)
            broadened = np.asarray(model.broaden(jnp.asarray(rest_flux(model.native_wavelength)), 0.0))
            position = (np.log(model.observed_wavelength) - np.log(model.native_wavelength[0])) / model.log_step
            index = np.round(position).astype(int)  # the observed pixels are native pixels
            assert np.allclose(position, index, atol=1e-6)
            data = jnp.asarray(fourier_shift(broadened, shift)[index])
            mask = jnp.asarray(model.covered & (index > 60) & (index < broadened.size - 60))
            rv_true = SPEED_OF_LIGHT_KMS * np.tanh(shift * model.log_step)
            biases[interpolation] = 1e3 * (_fit_rv(model, data, rv_true + 0.3, mask) - rv_true)
        assert abs(biases["spline"]) < 1.5  # 0.6 and 0.4 m/s
        assert abs(biases["keys"]) > 20.0  # 46 and 28 m/s
        assert np.sign(biases["keys"]) == np.sign(shift)  # the Keys bias follows the sub-pixel phase


@pytest.mark.parametrize("resolution", ["scalar", "per_pixel"])
def test_spline_model_gradients_match_finite_differences(resolution):
    observed = log_lambda_grid(5010.0, 5090.0, 20_000.0, 2.5)
    r = 20_000.0 if resolution == "scalar" else np.linspace(15_000.0, 25_000.0, observed.size)
    model = _model("spline", observed, r)
    flux = jnp.asarray(rest_flux(model.native_wavelength))
    with jax.enable_x64(True):
        flux64 = jnp.asarray(rest_flux(model.native_wavelength))
        target = model(flux64, 3.0, 5.0) + 0.01 * jnp.sin(jnp.arange(observed.size))

        def chi2(rv, vsini):
            return jnp.sum((model(flux64, rv, vsini) - target) ** 2)

        grad = jax.jit(jax.grad(chi2, argnums=(0, 1)))
        for rv in (1.37, 2.9, 4.21):  # different sub-pixel phases
            g_rv, g_vsini = (float(v) for v in grad(rv, 6.0))
            h = 1e-4
            assert g_rv == pytest.approx(float(chi2(rv + h, 6.0) - chi2(rv - h, 6.0)) / (2 * h), rel=1e-5)
            assert g_vsini == pytest.approx(float(chi2(rv, 6.0 + h) - chi2(rv, 6.0 - h)) / (2 * h), rel=1e-5)
        # per-pixel derivative in rv (what the Fisher matrix uses) by jacfwd and by reverse mode
        jac = np.asarray(jax.jacfwd(lambda rv: model(flux64, rv, 6.0))(2.2))
        numeric = (np.asarray(model(flux64, 2.2 + 1e-4, 6.0)) - np.asarray(model(flux64, 2.2 - 1e-4, 6.0))) / 2e-4
        np.testing.assert_allclose(jac, numeric, atol=1e-8 * np.abs(numeric).max() + 1e-9)
        reverse = np.asarray(jax.jacrev(lambda rv: model(flux64, rv, 6.0))(2.2))
        np.testing.assert_allclose(reverse, jac, rtol=1e-10, atol=1e-12)
    # float32 and vmap over RVs, as in fits and the RV scan
    batch = jax.jit(jax.vmap(lambda rv: model(flux, rv, 6.0)))(jnp.array([-5.0, 0.0, 5.0], jnp.float32))
    assert batch.shape == (3, observed.size) and batch.dtype == jnp.float32
    np.testing.assert_allclose(batch[1], model(flux, 0.0, 6.0), atol=1e-6)
    assert np.all(np.isfinite(np.asarray(jax.grad(lambda rv: jnp.sum(model(flux, rv, 6.0)))(0.3))))


@pytest.mark.parametrize("shift", [0.3, -0.45, 7.25, -40.5])
def test_call_shifts_by_a_fourier_phase_exactly_on_native_pixels(shift):
    """With one LSF, __call__ delays the broadened spectrum by a phase in its FFT convolution and reads
    the observed pixels at fixed positions: on native pixels that is the band-limited shift itself,
    for sub-pixel and many-pixel shifts alike (the moving-position spline errs ~1e-3 here)."""
    with jax.enable_x64(True):
        model = _model("spline", NATIVE[150:-150], 20_000.0, rv_range=(-200.0, 200.0))
        assert not model.resolution_varies
        flux = jnp.asarray(rest_flux(model.native_wavelength))
        broadened = np.asarray(model.broaden(flux, 0.0))
        rv = SPEED_OF_LIGHT_KMS * np.tanh(shift * model.log_step)
        index = np.round((np.log(model.observed_wavelength) - np.log(model.native_wavelength[0])) / model.log_step).astype(int)
        truth = fourier_shift(broadened, shift)[index]
        keep = model.covered & (index > 80) & (index < broadened.size - 80)
        direct = np.asarray(jax.jit(model)(flux, rv, 0.0))
        moving = np.asarray(model.shift_to_observed(model.broaden(flux, 0.0), rv))
        assert np.abs(direct - truth)[keep].max() < 2e-6
        if shift % 1:
            assert np.abs(moving - truth)[keep].max() > 1e-5  # the comparison can tell the two apart


def test_fixed_sampling_gradient_in_rv_matches_finite_differences():
    with jax.enable_x64(True):
        model = _model("spline", log_lambda_grid(5010.0, 5090.0, 20_000.0, 2.5), 20_000.0)
        flux = jnp.asarray(rest_flux(model.native_wavelength))
        weights = jnp.asarray(np.random.default_rng(3).normal(size=model.observed_wavelength.size))
        chi = jax.jit(lambda rv, vsini: jnp.sum(weights * model(flux, rv, vsini) ** 2))
        for rv in (-3.1, 0.0, 4.99):  # 4.99 km/s: close to a half-pixel boundary of the phase split (1.67 km/s)
            gradient = jax.grad(chi, argnums=(0, 1))(rv, 4.0)
            step = 1e-4
            numeric = ((chi(rv + step, 4.0) - chi(rv - step, 4.0)) / (2 * step),
                       (chi(rv, 4.0 + step) - chi(rv, 4.0 - step)) / (2 * step))
            np.testing.assert_allclose(gradient, numeric, rtol=1e-5, atol=1e-8)
