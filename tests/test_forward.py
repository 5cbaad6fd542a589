"""The observation model: Doppler shift, rotation, LSF, resampling, continuum."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stellarfit.forward import (
    ForwardModel,
    ObservationOutsideEmulatorError,
    continuum_design_matrix,
    cubic_interpolate,
    doppler_factor,
    profile_continuum,
    rotation_kernel,
    rotation_kernel_variance,
    rotation_transfer,
)
from stellarfit.wavelengths import FWHM_TO_SIGMA, SPEED_OF_LIGHT_KMS, log_lambda_grid

NATIVE_R = 30_000.0
NATIVE = log_lambda_grid(5000.0, 5500.0, NATIVE_R, 3.0)
LINES = np.array([5100.0, 5200.0, 5300.0])


def flux_fn(labels, wavelength):
    """Toy emulator: Gaussian lines at the native resolution, depth set by labels[0]."""
    sigma = LINES / NATIVE_R * FWHM_TO_SIGMA
    profile = jnp.exp(-0.5 * ((wavelength[:, None] - LINES[None, :]) / sigma[None, :]) ** 2)
    return 1.0 - labels[0] * jnp.sum(profile, axis=1)


def observed_grid(resolution=22_500.0, lo=5080.0, hi=5320.0):
    return log_lambda_grid(lo, hi, resolution, 3.0)


def line_moments(wavelength, flux, centre, half_window=3.0):
    pick = np.abs(wavelength - centre) < half_window
    depth = 1.0 - np.asarray(flux)[pick]
    mean = np.sum(wavelength[pick] * depth) / depth.sum()
    sigma = np.sqrt(np.sum((wavelength[pick] - mean) ** 2 * depth) / depth.sum())
    return mean, sigma


@pytest.mark.parametrize("rv", [-300.0, 0.0, 300.0])
def test_doppler_shift_moves_lines(rv):
    observed = observed_grid()
    model = ForwardModel(flux_fn, NATIVE, NATIVE_R, observed, 22_500.0, rv_range=(-400.0, 400.0))
    flux = jax.jit(model)(jnp.array([0.5]), rv, 0.0)
    expected = 5200.0 * float(doppler_factor(rv))
    mean, _ = line_moments(observed, flux, expected)
    assert mean == pytest.approx(expected, abs=0.002)  # 0.1 km/s


def test_differential_lsf_gives_observed_resolution():
    observed = observed_grid(resolution=10_000.0)
    model = ForwardModel(flux_fn, NATIVE, NATIVE_R, observed, 10_000.0, rv_range=(-10.0, 10.0))
    flux = jax.jit(model)(jnp.array([0.3]), 0.0, 0.0)
    _, sigma = line_moments(observed, flux, 5200.0, half_window=2.5)
    expected = 5200.0 / 10_000.0 * FWHM_TO_SIGMA
    # the observed-pixel top-hat adds (pixel^2 / 12) in quadrature
    pixel = 5200.0 / 30_000.0
    assert sigma == pytest.approx(np.sqrt(expected**2 + pixel**2 / 12), rel=0.03)


def test_rotation_transfer_is_the_fourier_transform_of_the_profile():
    """The closed form against a quadrature of Gray's profile (u = sin(phi) removes its sqrt edges)."""
    epsilon = 0.6
    phi = np.linspace(-np.pi / 2, np.pi / 2, 20_001)
    u = np.sin(phi)
    profile = (2 * (1 - epsilon) * np.sqrt(1 - u**2) + 0.5 * np.pi * epsilon * (1 - u**2)) / (np.pi * (1 - epsilon / 3))
    vsini = 7.0
    frequency = np.array([0.0, 1e-4, 0.01, 0.05, 0.068, 0.1, 0.15, 0.4, 2.0])  # cycles per km/s: both series and asymptotes
    expected = [np.trapezoid(profile * np.cos(2 * np.pi * f * vsini * u) * np.cos(phi), phi) for f in frequency]
    assert np.allclose(rotation_transfer(vsini, frequency, epsilon), expected, atol=2e-6)
    # its curvature at zero frequency is the profile's variance
    small = 1e-3
    curvature = (1.0 - float(rotation_transfer(vsini, small, epsilon))) / (2 * np.pi**2 * small**2)
    assert curvature == pytest.approx(rotation_kernel_variance(vsini, epsilon), rel=1e-3)


def test_rotation_kernel_width_and_limits():
    step = SPEED_OF_LIGHT_KMS / 90_000.0
    kernel = np.asarray(rotation_kernel(50.0, step, 30))
    assert kernel.sum() == pytest.approx(1.0, abs=1e-6)
    offsets = np.arange(-30, 31) * step
    variance = np.sum(kernel * offsets**2)
    assert variance == pytest.approx(rotation_kernel_variance(50.0), rel=0.01)
    # band-limited: it rings a little beyond the profile's edges, nothing more
    assert np.max(np.abs(kernel[np.abs(offsets) > 50.0 + step])) < 5e-3 * kernel.max()
    tiny = np.asarray(rotation_kernel(0.0, step, 30))
    assert tiny[30] == pytest.approx(1.0, abs=1e-6)
    assert np.max(np.abs(np.delete(tiny, 30))) < 1e-6
    # smooth, finite gradient in vsini, also near zero
    for vsini in (0.5, 5.0, 80.0):
        gradient = jax.grad(lambda v: rotation_kernel(v, step, 30)[30])(vsini)
        assert np.isfinite(gradient)


def test_rotation_is_smooth_in_vsini_below_and_across_pixel_scales():
    """A sub-pixel vsini broadens (quadratically, as a physical line does), and the model's second
    derivative in vsini has no jumps where the profile's edge crosses a pixel boundary.

    The pixel-integrated kernel used before left vsini < half a pixel (1.7 km/s here) without any
    effect and had a singular curvature at each boundary crossing (vsini = 1.7, 5.0 ... km/s)."""
    observed = observed_grid()
    model = ForwardModel(flux_fn, NATIVE, NATIVE_R, observed, 22_500.0, rv_range=(-10.0, 10.0), vsini_max=20.0)
    half_pixel = 0.5 * model.velocity_step
    flux = jax.jit(model)
    labels = jnp.array([0.5])
    base = np.asarray(flux(labels, 0.0, 0.0), dtype=np.float64)
    changes = [np.sum((np.asarray(flux(labels, 0.0, v), dtype=np.float64) - base) ** 2) ** 0.5 for v in (0.3, 0.6)]
    assert changes[0] > 1e-5
    assert changes[1] / changes[0] == pytest.approx(4.0, rel=0.05)  # quadratic in vsini
    assert 1.0 < half_pixel < 2.0
    reference = np.asarray(flux(labels, 0.0, 4.0), dtype=np.float64)
    gradient = jax.jit(jax.grad(lambda v: jnp.sum((model(labels, 0.0, v) - reference) ** 2) * 1e4))
    vsinis = np.linspace(0.5, 7.0, 131)  # crosses 1.5 and 2.5 pixel half-widths
    second = np.gradient(np.array([float(gradient(v)) for v in vsinis]), vsinis)
    jumps = np.abs(np.diff(second))
    assert np.all(np.isfinite(second))
    assert jumps.max() < 5.0 * np.median(jumps) + 1e-3 * np.abs(second).max()


def test_rotation_equals_a_direct_convolution_with_the_profile():
    """ForwardModel.rotate against Gray's profile convolved directly on a 40x finer log-lambda grid.

    The lines are 3 native pixels wide (sigma), so the native sampling holds them without aliasing
    and the product in Fourier space must equal the convolution.  The pixel-integrated kernel used
    before added a pixel top-hat's variance (0.9 km^2/s^2 on these 3.3 km/s pixels), which misses
    this tolerance at every vsini here."""
    observed = observed_grid()
    model = ForwardModel(flux_fn, NATIVE, NATIVE_R, observed, 22_500.0, rv_range=(-10.0, 10.0), vsini_max=20.0)
    native = NATIVE[model.native_slice]
    sigma_kms = 3.0 * model.velocity_step

    def lines(wavelength):
        velocity = (np.log(wavelength)[:, None] - np.log(LINES)[None, :]) * SPEED_OF_LIGHT_KMS
        return 1.0 - 0.5 * np.sum(np.exp(-0.5 * (velocity / sigma_kms) ** 2), axis=1)

    oversample = 40
    log_native = np.log(native)
    fine = log_native[0] + np.arange((native.size - 1) * oversample + 1) * (np.diff(log_native).mean() / oversample)
    fine_flux = lines(np.exp(fine))
    rest = fine_flux[::oversample]
    fine_step = model.velocity_step / oversample
    epsilon = model.limb_darkening
    interior = slice(100, native.size - 100)
    for vsini in (2.0, 4.0, 8.0):
        n = int(np.ceil(vsini / fine_step))
        x = np.clip(1.0 - (np.arange(-n, n + 1) * fine_step / vsini) ** 2, 0.0, None)
        profile = 2.0 * (1.0 - epsilon) * np.sqrt(x) + 0.5 * np.pi * epsilon * x
        reference = np.convolve(fine_flux, profile / profile.sum(), mode="same")[::oversample]
        rotated = np.asarray(model.rotate(jnp.asarray(rest, jnp.float32), vsini), dtype=np.float64)
        effect = np.max(np.abs(reference - rest)[interior])
        assert effect > 5e-4
        assert np.max(np.abs(rotated - reference)[interior]) < 0.01 * effect, vsini


def test_rotation_makes_lines_broader_and_shallower_conserving_ew():
    observed = observed_grid()
    model = ForwardModel(flux_fn, NATIVE, NATIVE_R, observed, 22_500.0, rv_range=(-10.0, 10.0))
    jitted = jax.jit(model)
    slow = np.asarray(jitted(jnp.array([0.5]), 0.0, 1.0))
    fast = np.asarray(jitted(jnp.array([0.5]), 0.0, 40.0))
    assert fast.min() > slow.min() + 0.05
    ew = lambda f: np.sum(1 - f)  # noqa: E731
    assert ew(fast) == pytest.approx(ew(slow), rel=0.01)


def test_gradients_wrt_labels_rv_vsini():
    observed = observed_grid()
    model = ForwardModel(flux_fn, NATIVE, NATIVE_R, observed, 22_500.0)
    target = np.asarray(jax.jit(model)(jnp.array([0.4]), 12.0, 8.0))

    @jax.jit
    def chi2(params):
        return jnp.sum((model(params[:1], params[1], params[2]) - target) ** 2)

    params = jnp.array([0.42, 10.0, 9.0])
    gradient = np.asarray(jax.jit(jax.grad(chi2))(params))
    assert np.all(np.isfinite(gradient))
    for i, h in enumerate((1e-2, 0.1, 0.1)):
        step = np.zeros(3)
        step[i] = h
        numeric = (chi2(params + step) - chi2(params - step)) / (2 * h)
        assert gradient[i] == pytest.approx(float(numeric), rel=0.05, abs=1e-6)


def test_cubic_interpolation_exact_for_quadratics():
    values = jnp.asarray((np.arange(20.0) - 3.0) ** 2 + 2.0 * np.arange(20.0))
    positions = jnp.array([1.25, 7.5, 12.9, 17.01])
    expected = (np.asarray(positions) - 3.0) ** 2 + 2.0 * np.asarray(positions)
    np.testing.assert_allclose(cubic_interpolate(values, positions), expected, rtol=1e-5)


def test_flat_spectrum_stays_flat_at_edges():
    observed = log_lambda_grid(5003.0, 5497.0, 20_000.0, 3.0)
    model = ForwardModel(lambda labels, w: jnp.ones_like(w), NATIVE, NATIVE_R, observed, 20_000.0, rv_range=(-50.0, 50.0))
    np.testing.assert_allclose(jax.jit(model)(jnp.array([0.0]), 40.0, 100.0), 1.0, atol=1e-6)
    assert model.covered.sum() < observed.size  # edges not covered for all rvs are flagged


def test_clear_errors():
    observed = observed_grid()
    with pytest.raises(ObservationOutsideEmulatorError, match="sharper than the emulator"):
        ForwardModel(flux_fn, NATIVE, NATIVE_R, observed, 50_000.0)
    with pytest.raises(ObservationOutsideEmulatorError, match="resolving power is unknown"):
        ForwardModel(flux_fn, NATIVE, NATIVE_R, observed, None)
    with pytest.raises(ObservationOutsideEmulatorError, match="no observed pixel"):
        ForwardModel(flux_fn, NATIVE, NATIVE_R, log_lambda_grid(6000.0, 6100.0, 20_000.0), 20_000.0)
    with pytest.raises(ValueError, match="uniform in ln"):
        ForwardModel(flux_fn, np.linspace(5000.0, 5500.0, 1000) ** 1.5 / 5000.0**0.5, NATIVE_R, observed, 20_000.0)


def test_native_slice_covers_only_what_is_needed():
    observed = observed_grid(lo=5200.0, hi=5250.0)
    model = ForwardModel(flux_fn, NATIVE, NATIVE_R, observed, 22_500.0, rv_range=(-100.0, 100.0), vsini_max=100.0)
    assert model.native_wavelength[0] < 5200.0 / float(doppler_factor(100.0))
    assert model.native_wavelength[-1] > 5250.0 / float(doppler_factor(-100.0))
    assert model.n_native < NATIVE.size / 4


def test_continuum_profiling_recovers_polynomial():
    wavelength = np.concatenate([np.linspace(5000, 5100, 300), np.linspace(5200, 5300, 300)])
    arms = np.repeat([0, 1], 300)
    design = continuum_design_matrix(wavelength, arms, degree=2)
    assert design.shape == (600, 6)
    rng = np.random.default_rng(4)
    model = 1.0 - 0.5 * rng.random(600)
    truth = np.array([2.0, 0.1, -0.05, 3.0, -0.2, 0.01])
    flux = design @ truth * model
    coefficients, continuum, chi2, _ = profile_continuum(jnp.asarray(model), jnp.asarray(flux), jnp.ones(600), jnp.asarray(design))
    np.testing.assert_allclose(coefficients, truth, rtol=1e-4, atol=1e-5)
    assert float(chi2) < 1e-6
    # masked pixels (ivar = 0) do not pull the fit
    bad = flux.copy()
    bad[:50] = 100.0
    ivar = np.ones(600)
    ivar[:50] = 0.0
    coefficients, _, _, _ = profile_continuum(jnp.asarray(model), jnp.asarray(bad), jnp.asarray(ivar), jnp.asarray(design))
    np.testing.assert_allclose(coefficients, truth, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("resolution, sampling", [
    (15_000.0, 6.0),   # observed pixels = native ones
    (15_000.0, 2.5),   # 2.4 native pixels wide
    (20_000.0, 3.0),   # 1.5: the discrete top-hat was 1e-2 of the continuum off here
    (30_000.0, 3.0),   # the native R and pixels: only the Doppler shift acts
])
def test_simulate_observation_matches_a_line_observed_by_hand_and_noise_level(resolution, sampling):
    """A Gaussian line (in velocity) observed by hand: the native fluxes are its averages over the native
    pixels (as grids are made), the instrument's differential LSF adds in quadrature to its width (area
    kept), the Doppler shift moves it by ln D(rv), and each observed pixel averages it over its width
    (an erf difference) -- no stellarfit code in the expectation."""
    from scipy.special import erf

    from stellarfit.forward import simulate_observation
    from stellarfit.wavelengths import FWHM_TO_SIGMA, SPEED_OF_LIGHT_KMS as c, log_lambda_grid

    def averaged(u, width, sigma):  # the line's profile (peak 1 at sigma_line) broadened to sigma, averaged over pixels
        return sigma_line * np.sqrt(np.pi / 2) / width * (erf((u + width / 2) / (np.sqrt(2) * sigma))
                                                          - erf((u - width / 2) / (np.sqrt(2) * sigma)))

    native = log_lambda_grid(5000.0, 5100.0, 30_000.0, 3.0)
    depth, sigma_line = 0.6, 4.75  # [km/s]
    line = 1.0 - depth * averaged(c * np.log(native / 5050.0), c * np.log(native[1] / native[0]), sigma_line)
    observed = log_lambda_grid(5010.0, 5090.0, resolution, sampling)
    rv = 25.0
    clean = simulate_observation(native, line, 30_000.0, observed, resolution, rv=rv, snr=None, continuum=2.0)
    sigma = np.sqrt(sigma_line**2 + (c * FWHM_TO_SIGMA) ** 2 * (1 / resolution**2 - 1 / 30_000.0**2))
    pixel = c * np.log(observed[1] / observed[0])
    u = c * (np.log(observed / 5050.0) - 0.5 * np.log((1 + rv / c) / (1 - rv / c)))
    expected = 2.0 * (1.0 - depth * averaged(u, pixel, sigma))
    assert expected.min() < 1.6  # the line is there
    # measured 4e-6 (15,000), 2e-5 (20,000), 4.4e-4 (30,000: the spline shifting a line of native width)
    np.testing.assert_allclose(clean.flux, expected, atol=1e-4 if resolution < 30_000 else 1e-3)
    # the line moved by the Doppler shift: minimum near 5050 * (1 + 25/c)
    assert abs(observed[np.argmin(clean.flux)] - 5050.0 * (1 + rv / c)) < 0.05
    # rotation spreads the line and keeps its equivalent width
    rotating = simulate_observation(native, line, 30_000.0, observed, resolution, rv=rv, vsini=20.0, snr=None, continuum=2.0)
    assert rotating.flux.min() > clean.flux.min() + 0.1
    assert np.sum(2.0 - rotating.flux) == pytest.approx(np.sum(2.0 - clean.flux), rel=2e-3)
    noisy = simulate_observation(native, line, 30_000.0, observed, 15_000.0, snr=50.0, continuum=3.0, rng=1)
    residual = noisy.flux - simulate_observation(native, line, 30_000.0, observed, 15_000.0, snr=None, continuum=3.0).flux
    assert np.std(residual * np.sqrt(noisy.ivar)) == pytest.approx(1.0, rel=0.1)
    assert np.std(residual) == pytest.approx(3.0 / 50.0, rel=0.1)
    with pytest.raises(ValueError, match="snr must be positive"):
        simulate_observation(native, line, 30_000.0, observed, 15_000.0, snr=0.0)


@pytest.mark.parametrize("n_coefficients", [0, 1, 3, 5, 6])
def test_continuum_chi2_derivatives_match_differentiating_through_the_solve(n_coefficients):
    """continuum_chi2 takes its derivatives from the envelope theorem; they must equal autodiff through
    profile_continuum's solve, first and second order, in every argument, and under vmap.  Up to 4
    coefficients the products over pixels are written out (_SMALL_DESIGN), above (5, 6) as matrix
    products: both are checked, and the values against NumPy's least squares."""
    from stellarfit.forward import continuum_chi2

    with jax.enable_x64(True):
        rng = np.random.default_rng(7)
        n = 300
        wavelength = np.linspace(5000.0, 5100.0, n)
        arms = (np.arange(n) >= n // 2).astype(int) if n_coefficients == 6 else None
        design = (np.zeros((n, 0)) if n_coefficients == 0
                  else continuum_design_matrix(wavelength, arms, n_coefficients // (2 if arms is not None else 1) - 1))
        assert design.shape[1] == n_coefficients
        model = 1.0 - 0.3 * np.exp(-0.5 * ((wavelength - 5050.0) / 2.0) ** 2)
        flux = model * (1.1 + 0.02 * (wavelength - 5050.0) / 50.0) + 0.01 * rng.normal(size=n)
        ivar = rng.uniform(5e3, 2e4, n)
        arrays = tuple(jnp.asarray(v) for v in (model, flux, ivar, design))

        def through_solve(*args):
            _, _, chi2, logdet = profile_continuum(*args)
            return chi2 + 0.7 * logdet

        def envelope(*args):
            chi2, logdet = continuum_chi2(*args)
            return chi2 + 0.7 * logdet

        np.testing.assert_allclose(envelope(*arrays), through_solve(*arrays), rtol=1e-12)
        if n_coefficients:  # independently: weighted least squares and the normal matrix's log determinant
            basis = design * model[:, None]
            root = np.sqrt(ivar)
            best = np.linalg.lstsq(basis * root[:, None], flux * root, rcond=None)[0]
            chi2 = np.sum(ivar * (flux - basis @ best) ** 2)
            logdet = np.linalg.slogdet(basis.T @ (basis * ivar[:, None]))[1]
            coefficients, _, got_chi2, got_logdet = profile_continuum(*arrays)
            np.testing.assert_allclose(coefficients, best, rtol=1e-8, atol=1e-10)
            np.testing.assert_allclose([got_chi2, got_logdet], [chi2, logdet], rtol=1e-9)
        for got, expected in zip(jax.grad(envelope, argnums=(0, 1, 2, 3))(*arrays),
                                 jax.grad(through_solve, argnums=(0, 1, 2, 3))(*arrays)):
            assert got.shape == expected.shape
            if expected.size == 0:  # no continuum: no design columns
                continue
            scale = max(float(jnp.max(jnp.abs(expected))), 1e-12)
            np.testing.assert_allclose(got, expected, atol=1e-7 * scale)
        hessian = jax.hessian(envelope)(*arrays)
        expected = jax.hessian(through_solve)(*arrays)
        np.testing.assert_allclose(hessian, expected, atol=1e-6 * float(jnp.max(jnp.abs(expected))))
        tangent = jnp.asarray(rng.normal(size=n))
        np.testing.assert_allclose(jax.jvp(lambda m: envelope(m, *arrays[1:]), (arrays[0],), (tangent,))[1],
                                   jax.jvp(lambda m: through_solve(m, *arrays[1:]), (arrays[0],), (tangent,))[1], rtol=1e-6)
        batch = jnp.stack([arrays[0], arrays[0] * 0.98])
        expected = jax.vmap(jax.grad(through_solve), in_axes=(0, None, None, None))(batch, *arrays[1:])
        np.testing.assert_allclose(jax.vmap(jax.grad(envelope), in_axes=(0, None, None, None))(batch, *arrays[1:]),
                                   expected, atol=1e-7 * float(jnp.max(jnp.abs(expected))))
