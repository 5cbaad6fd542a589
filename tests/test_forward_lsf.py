"""A wavelength-dependent (per-pixel) instrumental LSF in the forward model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf, ndtr

from _toy_emulator import ToyEmulator
from stellarfit.forward import ForwardModel, ObservationOutsideEmulatorError, simulate_observation
from stellarfit.wavelengths import FWHM_TO_SIGMA, SPEED_OF_LIGHT_KMS, log_lambda_grid

NATIVE_R = 30_000.0
NATIVE = log_lambda_grid(5000.0, 5500.0, NATIVE_R, 6.0)  # finely sampled: the reference isolates the LSF
_RNG = np.random.default_rng(1)
LINES = np.sort(_RNG.uniform(5060.0, 5440.0, 60))
DEPTHS = _RNG.uniform(0.2, 0.9, 60)
WIDTHS = LINES / NATIVE_R * FWHM_TO_SIGMA * _RNG.uniform(1.0, 1.5, 60)  # at (or just above) the native LSF


def line_flux_numpy(wavelength):
    return 1.0 - np.sum(DEPTHS * np.exp(-0.5 * ((wavelength[:, None] - LINES) / WIDTHS) ** 2), axis=1)


def line_flux_pixel_averaged(wavelength):
    """The line list averaged over native pixels centred on ``wavelength`` (what an emulator's pixel holds)."""
    half = 0.5 * wavelength[:, None] * np.log(NATIVE[1] / NATIVE[0])
    scale = np.sqrt(2.0) * WIDTHS
    mean = WIDTHS * np.sqrt(np.pi / 2) / (2 * half) * (erf((wavelength[:, None] + half - LINES) / scale)
                                                       - erf((wavelength[:, None] - half - LINES) / scale))
    return 1.0 - np.sum(DEPTHS * mean, axis=1)


class LineEmulator:
    """Toy emulator: the line list above averaged over the pixels of NATIVE, all depths scaled by
    labels[0].  The profiles are computed in float64 (in float32, lambda - lambda_line is off by ~3e-4 A,
    1e-3 of the line depth)."""

    wavelength = NATIVE
    native_resolution = NATIVE_R

    def flux_fn(self, wavelength):
        absorption = jnp.asarray(1.0 - line_flux_pixel_averaged(np.asarray(wavelength, np.float64)))
        return lambda labels: 1.0 - labels[0] * absorption


def line_model(observed, resolution, **options):
    return ForwardModel.from_emulator(LineEmulator(), observed, resolution, **options)


def brute_force_observation(observed, resolution, rv, oversample=10):
    """Each observed pixel: the analytic native spectrum on a fine ln(lambda) grid times that pixel's own
    differential Gaussian LSF integrated over the pixel (a box of the observed log step), summed directly."""
    pixel = np.median(np.diff(np.log(observed)))
    step = np.log(NATIVE[1] / NATIVE[0]) / oversample
    fine = np.arange(np.log(5000.0), np.log(5500.0), step)
    flux = line_flux_numpy(np.exp(fine))
    beta = rv / SPEED_OF_LIGHT_KMS
    centre = np.log(observed) - 0.5 * (np.log1p(beta) - np.log1p(-beta))  # float64 (jax's float32 is 0.01 pixel off)
    out = np.empty(observed.size)
    for j in range(observed.size):
        sigma = FWHM_TO_SIGMA * np.sqrt(1.0 / resolution[j] ** 2 - 1.0 / NATIVE_R**2)  # in ln(lambda)
        half = 7.0 * sigma + pixel
        pick = slice(int(np.searchsorted(fine, centre[j] - half)), int(np.searchsorted(fine, centre[j] + half)))
        offset = fine[pick] - centre[j]
        kernel = ndtr((offset + 0.5 * pixel) / sigma) - ndtr((offset - 0.5 * pixel) / sigma)
        out[j] = np.sum(flux[pick] * kernel) / np.sum(kernel)
    return out


def one_arm():
    observed = log_lambda_grid(5080.0, 5420.0, 20_000.0, 3.0)
    return observed, np.linspace(20_000.0, 10_000.0, observed.size)


def two_overlapping_arms():
    """Arms overlapping in 5230-5270 A with different R there (like the DESI arms)."""
    step = 1.0 / 60_000.0
    blue = np.exp(np.arange(np.log(5080.0), np.log(5270.0), step))
    red = np.exp(np.arange(np.log(5230.0), np.log(5420.0), step))
    resolution = np.concatenate([np.linspace(10_000.0, 12_000.0, blue.size), np.linspace(16_000.0, 20_000.0, red.size)])
    return np.concatenate([blue, red]), resolution


@pytest.mark.parametrize("layout", [one_arm, two_overlapping_arms])
def test_varying_lsf_matches_brute_force_convolution(layout):
    observed, resolution = layout()
    rv = 37.0
    reference = brute_force_observation(observed, resolution, rv)
    model = line_model(observed, resolution, rv_range=(-100.0, 100.0))
    assert model.resolution_varies and np.ptp(model.lsf_anchor_resolution) > 9_000
    flux = np.asarray(jax.jit(model)(jnp.array([1.0]), rv, 0.0))
    error = np.abs(flux - reference)[model.covered]
    assert model.covered.mean() > 0.9
    assert error.max() < 5e-4  # measured 2.7e-4 (one arm), 2.5e-4 (two arms); float32 floor ~2e-5
    # one LSF at the median R (the old approximation) is far off: the test can tell
    median = line_model(observed, float(np.median(resolution)), rv_range=(-100.0, 100.0))
    assert np.abs(np.asarray(jax.jit(median)(jnp.array([1.0]), rv, 0.0)) - reference)[model.covered].max() > 0.05


def test_anchor_spacing_sets_accuracy():
    observed, resolution = one_arm()
    reference = brute_force_observation(observed, resolution, 0.0)
    errors = {}
    for step in (0.05, 0.4):
        model = line_model(observed, resolution, rv_range=(-10.0, 10.0), lsf_anchor_step=step)
        flux = np.asarray(jax.jit(model)(jnp.array([1.0]), 0.0, 0.0))
        errors[step] = np.abs(flux - reference)[model.covered].max()
        variance = (1.0 / model.lsf_anchor_resolution) ** 2
        assert np.all(variance[1:] / variance[:-1] <= 1.0 + step + 1e-9)
    assert errors[0.05] < 2e-4 < errors[0.4] < 1e-2
    assert errors[0.4] / errors[0.05] > 10  # linear interpolation in sigma^2: error ~ step^2 (64 here)


def test_constant_per_pixel_resolution_is_the_scalar_model():
    observed = log_lambda_grid(5080.0, 5420.0, 22_500.0, 3.0)
    scalar = line_model(observed, 22_500.0, rv_range=(-50.0, 50.0))
    labels = jnp.array([0.8])
    expected = np.asarray(jax.jit(scalar)(labels, 12.0, 4.0))
    constant = line_model(observed, np.full(observed.size, 22_500.0), rv_range=(-50.0, 50.0))
    assert not constant.resolution_varies and constant.observed_resolution == 22_500.0
    np.testing.assert_array_equal(np.asarray(jax.jit(constant)(labels, 12.0, 4.0)), expected)
    # within the tolerance (max/min <= 1.02): one LSF at the median R
    wobble = 22_500.0 * (1.0 + 0.009 * np.sin(np.arange(observed.size) / 50.0))
    nearly = line_model(observed, wobble, rv_range=(-50.0, 50.0))
    assert not nearly.resolution_varies
    # the anchor path, forced on a tiny variation, reproduces the scalar model: anchors at this spectrum's
    # own min and max R ("span") to float32 accuracy; the default ladder's two rungs around 22,500 (10% apart
    # in variance) within the error of its linear blend (the brute-force bound of the tests above)
    tiny = 22_500.0 * (1.0 + 1e-4 * np.sin(np.arange(observed.size) / 50.0))
    forced = line_model(observed, tiny, rv_range=(-50.0, 50.0), lsf_tolerance=0.0, lsf_anchors="span")
    assert forced.resolution_varies and forced.instrument_kernel.shape[0] == 2
    np.testing.assert_allclose(np.asarray(jax.jit(forced)(labels, 12.0, 4.0)), expected, atol=1e-4)
    ladder = line_model(observed, tiny, rv_range=(-50.0, 50.0), lsf_tolerance=0.0)
    assert ladder.resolution_varies and ladder.instrument_kernel.shape[0] == 2 and ladder.lsf_rungs is not None
    assert ladder.lsf_anchor_resolution.max() > 22_500.0 * (1 + 1e-4) and ladder.lsf_anchor_resolution.min() < 22_500.0 * (1 - 1e-4)
    np.testing.assert_allclose(np.asarray(jax.jit(ladder)(labels, 12.0, 4.0)), expected, atol=5e-4)


def test_ladder_models_on_the_same_pixels_share_programs():
    """Two spectra on the same pixels whose R(lambda) differ a little need the same ladder rungs: the second
    model's ``shared`` is the first, FitProblems of both have one tree structure (one compiled fit, and they
    stack into one batch), and each is evaluated with its own per-pixel LSF, which matches its own model."""
    from stellarfit.inference import FitProblem
    from stellarfit.inference.fit import forward_model_for
    from stellarfit.inference.map import estimate_rv
    from stellarfit import Label, LabelSpec
    from stellarfit.forward import continuum_design_matrix

    observed, resolution = one_arm()
    other = resolution * (1.0 + 0.01 * np.sin(np.arange(observed.size) / 80.0))
    emulator = LineEmulator()
    first = forward_model_for(emulator, observed, resolution, rv_range=(-100.0, 100.0))
    second = forward_model_for(emulator, observed, other, rv_range=(-100.0, 100.0))
    assert first.lsf_rungs == second.lsf_rungs and first.shared is first and second.shared is first
    assert not np.array_equal(np.asarray(second.lsf_data()[1]), np.asarray(first.lsf_data()[1]))
    spec = LabelSpec([Label("depth", "", 0.0, 2.0)])
    design = continuum_design_matrix(observed, np.zeros(observed.size, int), 1)
    flux, ivar = np.ones(observed.size), np.full(observed.size, 1e4)
    problems = [FitProblem(model, spec, flux, ivar, design) for model in (first, second)]
    assert jax.tree_util.tree_structure(problems[0]) == jax.tree_util.tree_structure(problems[1])
    labels = jnp.array([1.0])
    for problem, model in zip(problems, (first, second)):
        theta = jnp.concatenate([labels, jnp.array([37.0, 3.0])])
        np.testing.assert_array_equal(np.asarray(jax.jit(lambda p, t: p.model_normalized(t))(problem, theta)),
                                      np.asarray(jax.jit(model)(labels, 37.0, 3.0)))
    # the RV search runs the shared program with each spectrum's own LSF part
    truth = np.asarray(jax.jit(second)(labels, 20.0, 0.0))
    rv, _, _ = estimate_rv(second, np.asarray(labels), truth, ivar, design)
    assert abs(rv - 20.0) < 0.5
    # a spectrum whose R needs other rungs gets its own model
    sharper = forward_model_for(emulator, observed, resolution * 1.3, rv_range=(-100.0, 100.0))
    assert sharper.lsf_rungs != first.lsf_rungs and sharper.shared is sharper


def test_gradients_through_varying_lsf():
    observed, resolution = one_arm()
    model = line_model(observed, resolution, rv_range=(-100.0, 100.0))
    target = np.asarray(jax.jit(model)(jnp.array([0.4]), 12.0, 8.0))

    @jax.jit
    def chi2(params):
        return jnp.sum((model(params[:1], params[1], params[2]) - target) ** 2)

    params = jnp.array([0.42, 10.0, 9.0])
    gradient = np.asarray(jax.jit(jax.grad(chi2))(params))
    assert np.all(np.isfinite(gradient)) and np.all(np.abs(gradient) > 0)
    for i, h in enumerate((1e-2, 0.1, 0.1)):
        step = np.zeros(3)
        step[i] = h
        numeric = (chi2(params + step) - chi2(params - step)) / (2 * h)
        assert gradient[i] == pytest.approx(float(numeric), rel=0.05, abs=1e-6)
    # vmap over stars gives the per-star models
    batch = jnp.array([[0.3], [0.6]])
    stacked = jax.jit(jax.vmap(lambda labels: model(labels, 5.0, 3.0)))(batch)
    np.testing.assert_allclose(stacked[1], jax.jit(model)(batch[1], 5.0, 3.0), atol=1e-6)


def test_sharper_than_emulator_per_pixel_names_the_wavelength():
    observed = log_lambda_grid(5080.0, 5420.0, 20_000.0, 3.0)
    resolution = np.linspace(20_000.0, 40_000.0, observed.size)  # too sharp above ~5250 A
    with pytest.raises(ObservationOutsideEmulatorError, match="sharper than the emulator") as caught:
        line_model(observed, resolution)
    message = str(caught.value)
    assert f"at {observed[-1]:.2f} A (R=40000" in message  # the sharpest pixel
    assert "native R=30000" in message and "select" in message
    # one pixel over the native R is enough, although the median is far below it
    spike = np.full(observed.size, 15_000.0)
    spike[400] = 31_000.0
    with pytest.raises(ObservationOutsideEmulatorError, match=f"at {observed[400]:.2f} A"):
        line_model(observed, spike)
    # pixels the emulator cannot reach at any RV (beyond 5500 A here) are never modelled: their R does not matter
    beyond = log_lambda_grid(5300.0, 5700.0, 20_000.0, 3.0)
    sharp_beyond = np.where(beyond > 5600.0, 50_000.0, 18_000.0)
    model = line_model(beyond, sharp_beyond, rv_range=(-100.0, 100.0))
    assert not model.covered[beyond > 5600.0].any()
    with pytest.raises(ValueError, match="one R per pixel"):
        line_model(observed, resolution[:-3])
    bad = resolution.copy()
    bad[7] = np.nan
    with pytest.raises(ValueError, match="finite and positive in every pixel"):
        line_model(observed, bad)


def test_simulate_observation_with_per_pixel_resolution():
    observed, resolution = two_overlapping_arms()
    arm = (np.arange(observed.size) > np.flatnonzero(np.diff(observed) < 0)[0]).astype(int)
    native_flux = line_flux_pixel_averaged(NATIVE)
    clean = simulate_observation(NATIVE, native_flux, NATIVE_R, observed, resolution, rv=-20.0, snr=None, arm=arm)
    assert clean.n_arms == 2 and np.array_equal(clean.resolution, resolution)
    reference = brute_force_observation(observed, resolution, -20.0)
    covered = clean.ivar > 0
    assert np.abs(clean.flux - reference)[covered].max() < 5e-4


def two_arm_observation():
    """Toy-emulator pixels in two arms, R 11,000-13,000 (blue) and 18,000-22,000 (red)."""
    blue = log_lambda_grid(5150.0, 5250.0, 20_000.0, 3.0)
    red = log_lambda_grid(5260.0, 5360.0, 20_000.0, 3.0)
    resolution = np.concatenate([np.linspace(11_000.0, 13_000.0, blue.size), np.linspace(18_000.0, 22_000.0, red.size)])
    return np.concatenate([blue, red]), np.repeat([0, 1], [blue.size, red.size]), resolution


def test_forward_models_cached_per_resolution_array_and_rv_scan():
    from stellarfit.forward import continuum_design_matrix
    from stellarfit.inference import estimate_rv, forward_model_for

    emulator = ToyEmulator()
    wavelength, arm, resolution = two_arm_observation()
    model = forward_model_for(emulator, wavelength, resolution, rv_range=(-300.0, 300.0))
    assert model.resolution_varies
    # equal values in new arrays hit the cache; other values (or a scalar) make a new model
    assert forward_model_for(emulator, wavelength.copy(), resolution.copy(), rv_range=(-300.0, 300.0)) is model
    changed = resolution.copy()
    changed[-1] *= 1.01
    assert forward_model_for(emulator, wavelength, changed, rv_range=(-300.0, 300.0)) is not model
    assert forward_model_for(emulator, wavelength, 15_000.0, rv_range=(-300.0, 300.0)) is not model
    # the RV scan (broaden once, shift per RV) works on the (K, n_native) anchor spectra
    truth = np.array([5600.0, 3.8, -0.7])
    flux = 100.0 * np.asarray(model(jnp.asarray(truth, jnp.float32), -123.0, 0.0), dtype=np.float64)
    ivar = np.full(wavelength.size, 1e-2)
    rv, _, _ = estimate_rv(model, truth, flux, ivar, continuum_design_matrix(wavelength, arm, 1))
    assert rv == pytest.approx(-123.0, abs=0.5)


@pytest.mark.slow  # ~60-100 s on a loaded 2-core CPU: fit_star compiles its MAP pieces for the new model
def test_fit_star_recovers_labels_with_per_pixel_resolution():
    from stellarfit.inference import fit_star, forward_model_for
    from stellarfit.spectra import ObservedSpectrum

    emulator = ToyEmulator()
    wavelength, arm, resolution = two_arm_observation()
    truth, rv = np.array([5600.0, 3.8, -0.7]), 42.0
    model = forward_model_for(emulator, wavelength, resolution, rv_range=(rv - 1.0, rv + 1.0))
    assert model.resolution_varies
    continuum = 1e4 * (1.0 + 0.1 * (wavelength - 5250.0) / 200.0)
    flux = continuum * np.asarray(model(jnp.asarray(truth, jnp.float32), rv, 0.0), dtype=np.float64)
    spectrum = ObservedSpectrum.from_arrays(wavelength, flux, sigma=continuum / 200.0, resolution=resolution, arm=arm)
    # the per-pixel LSF matters here: one LSF at the median R leaves a large chi2 at the truth
    median = forward_model_for(emulator, wavelength, float(np.median(resolution)), rv_range=(rv - 1.0, rv + 1.0))
    mismatch = np.asarray(median(jnp.asarray(truth, jnp.float32), rv, 0.0)) * continuum - flux
    assert np.sum(mismatch**2 / (continuum / 200.0) ** 2) > wavelength.size

    result = fit_star(spectrum, emulator, n_starts=4, adam_steps=100, rv_range=(-200.0, 200.0), vsini_max=30.0)
    for name, value, tolerance in zip(("teff", "logg", "fe_h"), truth, (5.0, 0.02, 0.005)):
        assert result.labels[name]["value"] == pytest.approx(value, abs=tolerance), (name, result.labels[name])
    assert result.labels["rv"]["value"] == pytest.approx(rv, abs=0.05)
    assert result.reduced_chi2 < 0.05


@pytest.mark.parametrize("half", [5, 40])  # direct summation and FFT
def test_convolve_same_many_matches_one_kernel_at_a_time(half):
    from stellarfit.forward import convolve_same, convolve_same_many, gaussian_kernel

    rng = np.random.default_rng(3)
    flux = jnp.asarray(1.0 - 0.5 * rng.random(700), jnp.float32)
    kernels = np.zeros((3, 2 * half + 1))
    for row, sigma in zip(kernels, (0.3 * half, 0.1 * half, 0.0)):
        kernel = gaussian_kernel(sigma, half_width=half) if sigma > 0 else np.ones(1)
        start = half - kernel.size // 2
        row[start : start + kernel.size] = kernel
    out = np.asarray(convolve_same_many(flux, jnp.asarray(kernels, jnp.float32)))
    assert out.shape == (3, 700)
    for row, kernel in zip(out, kernels):
        np.testing.assert_allclose(row, convolve_same(flux, jnp.asarray(kernel, jnp.float32)), atol=2e-6)
    np.testing.assert_allclose(out[2], flux, atol=2e-6)
