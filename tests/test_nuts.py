"""NUTS sampling (NumPyro and BlackJAX) on a small analytic toy, and fit_star(method="nuts") end to end."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from _toy_emulator import NATIVE, NATIVE_R, TOY_SPEC
from stellarfit.forward import ForwardModel, continuum_design_matrix
from stellarfit.inference import FitProblem
from stellarfit.inference.map import laplace_covariance
from stellarfit.inference.nuts import (
    laplace_inverse_mass_matrix,
    sample_blackjax,
    sample_numpyro,
    sampling_diagnostics,
    summarize_samples,
    unconstrained_laplace,
)
from stellarfit.wavelengths import FWHM_TO_SIGMA, log_lambda_grid

TRUTH = np.array([5600.0, 3.8, -0.7, 12.0, 6.0])  # teff, logg, fe_h, rv, vsini
CENTRES = np.array([5243.0, 5245.5, 5247.2, 5249.9, 5252.3, 5254.0, 5256.6, 5258.1])
KIND = np.array([0, 1, 2, 0, 1, 2, 0, 1])
STRENGTH = np.array([0.5, 0.4, 0.6, 0.3, 0.7, 0.4, 0.6, 0.5])


def small_flux(labels, wavelength):
    """Eight Gaussian lines; depths follow teff, logg and fe_h differently by line kind."""
    t = (labels[0] - 5500.0) / 1500.0
    g = labels[1] - 3.0
    depth = STRENGTH * 10.0 ** (0.4 * labels[2]) * jnp.where(KIND == 0, 1.0 - 0.3 * t, jnp.where(KIND == 1, 1.0 + 0.2 * t - 0.15 * g, jnp.exp(-1.2 * t)))
    depth = depth / (1.0 + depth)
    sigma = CENTRES / NATIVE_R * FWHM_TO_SIGMA * (1.0 + 0.1 * g * (KIND == 0))
    profile = jnp.exp(-0.5 * ((wavelength[:, None] - CENTRES[None, :]) / sigma[None, :]) ** 2)
    return jnp.prod(1.0 - depth[None, :] * profile, axis=1)


def make_problem(snr, seed=0, truth=TRUTH, model=None):
    wavelength = log_lambda_grid(5242.0, 5259.0, 22_500.0, 2.0)
    if model is None:
        model = ForwardModel(small_flux, NATIVE, NATIVE_R, wavelength, 22_500.0, rv_range=(-8.0, 32.0), vsini_max=40.0)
    continuum = 1e3 * (1.0 + 0.05 * (wavelength - 5250.0) / 10.0)
    flux = continuum * np.asarray(model(jnp.asarray(truth[:3]), truth[3], truth[4]), dtype=np.float64)
    flux = flux + np.random.default_rng(seed).normal(size=flux.size) * continuum / snr
    design = continuum_design_matrix(wavelength, degree=1)
    args = (model, TOY_SPEC, flux, (snr / continuum) ** 2, design)
    return FitProblem(*args), FitProblem(*args, continuum="marginalize")


class Laplace:
    """Laplace approximation at the truth (stands in for a MAP fit, which test_map covers)."""

    def __init__(self, problem):
        self.theta = TRUTH.copy()
        self.covariance = laplace_covariance(problem, self.theta)
        self.sigma = np.sqrt(np.diag(self.covariance))


@pytest.fixture(scope="module")
def runs():
    profiled, marginalized = make_problem(snr=400.0)
    best = Laplace(profiled)
    options = dict(num_warmup=150, num_samples=250, num_chains=2, seed=3)
    numpyro_run = sample_numpyro(marginalized, best.theta, best.covariance, **options)
    blackjax_run = sample_blackjax(marginalized, best.theta, best.covariance, **options)
    return best, numpyro_run, blackjax_run


def test_numpyro_and_blackjax_agree(runs):
    from arviz_stats.base import array_stats

    _, a, b = runs
    assert a.samples.shape == b.samples.shape == (2, 250, 5)
    mcse_a = array_stats.mcse(a.samples, chain_axis=0, draw_axis=1, method="mean")
    mcse_b = array_stats.mcse(b.samples, chain_axis=0, draw_axis=1, method="mean")
    mean_a, mean_b = a.samples.mean(axis=(0, 1)), b.samples.mean(axis=(0, 1))
    assert np.all(np.abs(mean_a - mean_b) < 4.0 * np.hypot(mcse_a, mcse_b)), (mean_a, mean_b, mcse_a, mcse_b)
    std_a, std_b = a.samples.reshape(-1, 5).std(axis=0), b.samples.reshape(-1, 5).std(axis=0)
    # 20%: at the Monte Carlo limit of these short chains (measured 2026-11-28: 19% apart on teff, 3-9%
    # on the others, while 4 MCSE of the difference of two standard deviations is 21-25%); the tight
    # check of both samplers' widths is against an exact posterior (test_nuts_exact.py)
    np.testing.assert_allclose(std_a, std_b, rtol=0.2)


def test_posterior_width_matches_laplace_at_high_snr(runs):
    """At S/N 400 the posterior is close to the Laplace approximation: each sampler's widths are within
    4 Monte Carlo standard errors (of a standard deviation, from its draws) plus 3% of it (was: 20%;
    that bound is 16-20% with these short chains; measured 2026-11-28: NumPyro 0.5-4% off, BlackJAX
    4-13%, i.e. within 3 MCSE)."""
    from arviz_stats.base import array_stats

    best, a, b = runs
    for run in (a, b):
        std = run.samples.reshape(-1, 5).std(axis=0)
        mcse_sd = array_stats.mcse(run.samples, chain_axis=0, draw_axis=1, method="sd")
        summary = summarize_samples(run.samples, run.names)
        for i, name in enumerate(("teff", "logg", "fe_h", "rv")):
            assert abs(std[i] - best.sigma[i]) < 4.0 * mcse_sd[i] + 0.03 * best.sigma[i], \
                (run.diagnostics["backend"], name, std[i] / best.sigma[i], mcse_sd[i] / best.sigma[i])
            assert abs(summary[name]["value"] - TRUTH[i]) < 4.0 * summary[name]["error"], (name, summary[name])
            # the reported error (half the 16-84% range) is the draws' standard deviation for a near-Gaussian
            assert summary[name]["error"] == pytest.approx(std[i], rel=0.08)


def test_diagnostics_present_and_sane(runs):
    _, a, b = runs
    for run in (a, b):
        d = run.diagnostics
        assert set(d["r_hat"]) == set(run.names) == set(d["ess_bulk"]) == set(d["ess_tail"])
        assert max(d["r_hat"].values()) < 1.1, d["r_hat"]
        assert min(d["ess_bulk"].values()) > 50 and min(d["ess_tail"].values()) > 30
        assert d["divergences"] <= 2 and d["tree_depth_hits"] == 0
        assert len(d["step_size"]) == 2 and all(0.01 < s < 3.0 for s in d["step_size"])
        # whitened by the Laplace approximation in z, this near-Gaussian posterior costs ~13 gradients per
        # effective sample (it cost 17-21 before the whitening, and hundreds on payne-default)
        assert d["gradient_evaluations_per_ess"] < 40, d["gradient_evaluations_per_ess"]
        assert d["laplace_converged"] and 1 <= d["laplace_newton_iterations"] <= 12
        assert d["chain_method"] == ("sequential" if jax.default_backend() == "cpu" else "vectorized")
        # NUTS takes >= 1 leapfrog step per draw and at most 2^depth - 1
        assert 500 <= d["gradient_evaluations"] <= 500 * (2 ** d["max_tree_depth"] - 1)
        assert d["gradient_evaluations_warmup"] >= 300
        assert d["gradient_evaluations_per_ess"] == pytest.approx(
            (d["gradient_evaluations"] + d["gradient_evaluations_warmup"]) / min(d["ess_bulk"].values()))
        assert run.sample_stats["diverging"].shape == (2, 250)
        assert np.all(np.isfinite(run.sample_stats["lp"]))


def test_unconstrained_laplace_matches_mapped_laplace_inside_the_box(runs):
    """Away from the box edges the Laplace approximation of the density in z (mode found by Newton, the
    continuum marginalized, the sigmoid's Jacobian included) has the widths of the physical Laplace
    covariance mapped through d theta / d z."""
    best, a, _ = runs
    profiled, marginalized = make_problem(snr=400.0)
    laplace = unconstrained_laplace(marginalized, best.theta)  # from the truth, ~2 sigma off the mode
    mapped = laplace_inverse_mass_matrix(profiled, best.theta, best.covariance)
    assert laplace.converged and np.all(np.isfinite(laplace.mode))
    sigma = np.sqrt(np.diag(laplace.covariance))
    np.testing.assert_allclose(sigma, np.sqrt(np.diag(mapped)), rtol=0.15)
    # this posterior is near Gaussian: its mean in z lies within half a Laplace sigma of the mode
    z_samples = np.asarray(jax.vmap(marginalized.to_unconstrained)(jnp.asarray(a.samples.reshape(-1, 5), jnp.float32)))
    assert np.all(np.abs(laplace.mode - z_samples.mean(axis=0)) < 0.5 * sigma), (laplace.mode, z_samples.mean(axis=0), sigma)


def test_sampling_at_a_box_edge_vsini_zero():
    """vsini = 0, the edge of its box: theta = vsini_max sigmoid(z) puts the posterior in a one-sided
    exponential tail in z.  The physical Laplace covariance mapped to z at the MAP diverges there (it is
    replaced by unit variance), while the Laplace approximation of the density in z sits about one
    posterior width inside the box with a width of order 1 in z -- and NUTS whitened by it samples the
    tail without divergences and with short trajectories."""
    truth = TRUTH.copy()
    truth[4] = 0.0
    profiled, marginalized = make_problem(snr=100.0, seed=5, truth=truth)
    laplace = unconstrained_laplace(marginalized, truth)
    assert np.all(np.isfinite(laplace.mode)) and np.all(np.isfinite(laplace.covariance))
    assert np.all(np.linalg.eigvalsh(laplace.covariance) > 0)
    vsini_mode = float(marginalized.to_theta(jnp.asarray(laplace.mode, jnp.float32))[4])
    assert 0.05 < vsini_mode < 10.0, vsini_mode
    sigma_z = float(np.sqrt(laplace.covariance[4, 4]))
    assert 0.2 < sigma_z < 2.0, sigma_z
    # the mapped physical covariance has no usable vsini entry at the edge
    mapped = laplace_inverse_mass_matrix(profiled, truth, laplace_covariance(profiled, truth))
    assert mapped[4, 4] == pytest.approx(1.0) or mapped[4, 4] > 100.0 * sigma_z**2
    run = sample_numpyro(marginalized, truth, None, num_warmup=150, num_samples=150, num_chains=2, seed=1)
    d = run.diagnostics
    # at most 1% of the draws divergent (fit_star's sampler_warning threshold): with seeds 1-5 this toy
    # gives 0 or 1 of 300 on one CPU, and which of the two depends on the CPU's last-bit arithmetic
    # (seed 1 gave 0 on the machines of 2026-11-26 and 1 on a fresh one of 2026-11-27)
    assert d["divergences"] <= 0.01 * 2 * 150 and max(d["r_hat"].values()) < 1.1, d["divergences"]
    assert np.mean(run.sample_stats["n_steps"]) < 16, np.mean(run.sample_stats["n_steps"])
    vsini = run.samples[..., 4]
    assert vsini.min() >= 0.0 and np.percentile(vsini, 50) < 10.0
    z_vsini = np.log(vsini / (40.0 - vsini))
    assert 0.5 * sigma_z < z_vsini.std() < 2.5 * sigma_z, (z_vsini.std(), sigma_z)


@pytest.mark.parametrize("transform", ["probit", pytest.param("probit-labels", marks=pytest.mark.slow)])
def test_transforms_of_z_sample_the_same_posterior(transform):
    """The map from z to the boxes changes the coordinates NUTS moves in, not the posterior in theta:
    on the vsini = 0 toy (vsini piled against its edge) the logistic and the probit maps give the same
    means (within 4 Monte-Carlo standard errors) and widths (within 25%)."""
    from arviz_stats.base import array_stats

    truth = TRUTH.copy()
    truth[4] = 0.0
    _, marginalized = make_problem(snr=100.0, seed=5, truth=truth)
    options = dict(num_warmup=150, num_samples=250, num_chains=2, seed=2)
    runs = [sample_numpyro(marginalized.with_transform(name), truth, None, **options) for name in ("logit", transform)]
    a, b = (run.samples for run in runs)
    mcse = [array_stats.mcse(x, chain_axis=0, draw_axis=1, method="mean") for x in (a, b)]
    assert np.all(np.abs(a.mean(axis=(0, 1)) - b.mean(axis=(0, 1))) < 4.0 * np.hypot(*mcse)), (a.mean(axis=(0, 1)), b.mean(axis=(0, 1)))
    np.testing.assert_allclose(a.reshape(-1, 5).std(axis=0), b.reshape(-1, 5).std(axis=0), rtol=0.25)
    assert b[..., 4].min() >= 0.0
    for run in runs:
        assert max(run.diagnostics["r_hat"].values()) < 1.1


def test_laplace_mass_matrix_is_inverse_fisher_in_z(runs):
    best, _, _ = runs
    profiled, _ = make_problem(snr=400.0)
    matrix = laplace_inverse_mass_matrix(profiled, best.theta, best.covariance)
    assert np.allclose(matrix, matrix.T) and np.all(np.linalg.eigvalsh(matrix) > 0)
    # mapping back with J = d theta / d z recovers the physical covariance (finite part)
    import jax

    z = profiled.to_unconstrained(jnp.asarray(best.theta, jnp.float32))
    jacobian = np.asarray(jax.jacfwd(profiled.to_theta)(z), dtype=np.float64)
    back = jacobian @ matrix @ jacobian.T
    np.testing.assert_allclose(np.sqrt(np.diag(back))[:4], best.sigma[:4], rtol=1e-3)


def test_sampling_diagnostics_flags_stuck_chains():
    rng = np.random.default_rng(0)
    mixed = rng.normal(size=(2, 200, 1))
    stuck = mixed + np.array([0.0, 3.0])[:, None, None]
    assert sampling_diagnostics(mixed, ["x"])["r_hat"]["x"] < 1.05
    assert sampling_diagnostics(stuck, ["x"])["r_hat"]["x"] > 1.5


@pytest.mark.parametrize(
    "options, match",
    [
        (dict(num_chains=0), "num_chains must be an integer >= 1"),
        (dict(num_samples=1), "num_samples must be an integer >= 2"),
        (dict(num_warmup=2.5), "num_warmup must be an integer"),
        (dict(max_tree_depth=0), "max_tree_depth"),
        (dict(target_accept=1.0), "target_accept"),
        (dict(mass_matrix="full"), "mass_matrix must be one of"),
    ],
)
def test_bad_settings_raise_clear_errors(options, match):
    _, marginalized = make_problem(snr=50.0)
    theta = TRUTH.copy()
    for sampler in (sample_numpyro, sample_blackjax):
        with pytest.raises(ValueError, match=match):
            sampler(marginalized, theta, None, **options)
    with pytest.raises(ValueError, match="chain_method"):
        sample_numpyro(marginalized, theta, chain_method="threads")
    with pytest.raises(ValueError, match="'parallel' is NumPyro's only"):
        sample_blackjax(marginalized, theta, chain_method="parallel")
    with pytest.raises(ValueError, match="theta_map must have shape"):
        sample_blackjax(marginalized, theta[:3])


# -- fit_star end to end on a tiny trained Payne emulator ----------------------------
@pytest.fixture(scope="module")
def emulator():
    from stellarfit.emulators import PayneEmulator, TrainConfig, train_emulator
    from stellarfit.emulators.toy import make_toy_grid

    wavelength = log_lambda_grid(5000.0, 5100.0, 30_000.0, 3.0)
    train = make_toy_grid(256, wavelength.size, seed=1, window=(wavelength[0], wavelength[-1]))
    emu = PayneEmulator.create(train.label_spec, train.wavelength, resolution=30_000.0, seed=0)
    return train_emulator(emu, train, None, TrainConfig(n_steps=300, batch_size=64, learning_rate=3e-3)).emulator


@pytest.mark.slow
def test_fit_star_nuts_recovers_truth_within_95_percent(emulator):
    from stellarfit.inference import fit_star, forward_model_for
    from stellarfit.spectra import ObservedSpectrum

    truth, rv = np.array([0.4, 0.2, -0.3]), 35.0
    wavelength = log_lambda_grid(5008.0, 5090.0, 20_000.0, 3.0)
    model = forward_model_for(emulator, wavelength, 20_000.0, rv_range=(rv - 1, rv + 1))
    continuum = 50.0 * (1 + 0.05 * (wavelength - 5050.0) / 40.0)
    flux = continuum * np.asarray(model(np.asarray(truth, np.float32), rv, 0.0), dtype=np.float64)
    flux = flux + np.random.default_rng(4).normal(size=wavelength.size) * continuum / 100.0
    spectrum = ObservedSpectrum.from_arrays(wavelength, flux, sigma=continuum / 100.0, resolution=20_000.0)
    result = fit_star(spectrum, emulator, method="nuts", n_starts=4, adam_steps=200, rv_range=(-200.0, 200.0),
                      vsini_max=30.0, num_warmup=300, num_samples=300, num_chains=2, seed=1)
    # The toy's temp and metal are strongly and non-linearly correlated (line depths go as
    # (1 + slope * temp) * 10**(0.3 * metal)): ~0.1 effective samples per draw in temp. With 150 + 150
    # draws R-hat of temp came out 1.09-1.11 for seeds 1-3; with 300 + 300, 1.02-1.06 for seeds 1-4.
    assert result.samples.shape == (2, 300, 5)
    flat = result.samples.reshape(-1, 5)
    for i, (name, value) in enumerate(zip(emulator.label_names, truth)):
        low, high = np.percentile(flat[:, i], [2.5, 97.5])
        assert low < value < high, (name, low, high)
        row = result.labels[name]
        assert row["lower"] < row["value"] < row["upper"] and row["error"] > 0 and np.isfinite(row["map"])
    low, high = np.percentile(flat[:, 3], [2.5, 97.5])
    assert low < rv < high
    d = result.diagnostics
    assert max(d["r_hat"].values()) < 1.1 and d["gradient_evaluations_per_effective_sample"] > 0
    tree = result.to_arviz()
    assert tree.posterior["temp"].shape == (2, 300)
    assert "diverging" in tree.sample_stats
    json_document = result.to_dict()
    assert json_document["method"] == "nuts" and "r_hat" in json_document["diagnostics"]


def test_fit_star_rejects_bad_sampler_settings_before_fitting():
    from stellarfit.inference import fit_star

    # settings are checked before the spectrum or the emulator is touched
    with pytest.raises(ValueError, match="num_chains must be an integer >= 1"):
        fit_star(None, None, method="nuts", num_chains=0)
    with pytest.raises(ValueError, match="mass_matrix"):
        fit_star(None, None, method="blackjax", mass_matrix="unit")
    with pytest.raises(ValueError, match="chain_method must be one of"):
        fit_star(None, None, method="nuts", chain_method="threads")
    with pytest.raises(ValueError, match="z_transform must be one of"):
        fit_star(None, None, method="nuts", z_transform="tanh")
    with pytest.raises(ValueError, match="not available"):
        fit_star(None, None, method="hmc")


def test_fit_result_to_arviz():
    from stellarfit.inference import FitResult

    rng = np.random.default_rng(1)
    labels = {name: {"value": 0.0, "error": 1.0, "lower": -1.0, "upper": 1.0, "map": 0.0, "crb": 1.0} for name in ("a", "rv", "vsini")}
    common = dict(labels=labels, chi2=1.0, reduced_chi2=1.0, snr=10.0, n_pixels=3, flags=0, diagnostics={},
                  wavelength=np.ones(3), flux=np.ones(3), ivar=np.ones(3), model_flux=np.ones(3), covariance=np.eye(3))
    with pytest.raises(ValueError, match="no posterior samples"):
        FitResult(method="map", **common).to_arviz()
    samples = rng.normal(size=(2, 7, 3))
    tree = FitResult(method="nuts", samples=samples, sample_stats={"diverging": np.zeros((2, 7), bool)}, **common).to_arviz()
    np.testing.assert_array_equal(tree.posterior["rv"].values, samples[:, :, 1])
    assert tree.sample_stats["diverging"].shape == (2, 7)


@pytest.mark.slow
def test_blackjax_compiles_once_per_forward_model():
    from stellarfit.inference import nuts as nuts_module

    wavelength = log_lambda_grid(5242.0, 5259.0, 22_500.0, 2.0)
    model = ForwardModel(small_flux, NATIVE, NATIVE_R, wavelength, 22_500.0, rv_range=(-8.0, 32.0), vsini_max=40.0)
    continuum = 1e3 * np.ones(wavelength.size)
    design = continuum_design_matrix(wavelength, degree=1)
    clean = continuum * np.asarray(model(jnp.asarray(TRUTH[:3]), TRUTH[3], TRUTH[4]), dtype=np.float64)
    options = dict(num_warmup=20, num_samples=10, num_chains=2, seed=0)
    sizes = []
    for seed in (1, 2):
        flux = clean + np.random.default_rng(seed).normal(size=clean.size) * continuum / 200.0
        problem = FitProblem(model, TOY_SPEC, flux, (200.0 / continuum) ** 2, design, continuum="marginalize")
        result = sample_blackjax(problem, TRUTH, laplace_covariance(problem.with_continuum("profile"), TRUTH),
                                 chain_method="vectorized", **options)
        assert result.samples.shape == (2, 10, 5) and np.all(np.isfinite(result.samples))
        sizes.append(nuts_module._blackjax_chains._cache_size())
    assert sizes[1] == sizes[0] >= 1


@pytest.mark.slow  # ~25 s; the MAP's counterpart (test_fit_star.py) runs by default, this one in .ci/run's slow step
def test_numpyro_fit_star_second_spectrum_compiles_nothing(emulator):
    """fit_star(method="nuts") on a second spectrum on the same pixels (other flux, noise and RV box) reuses
    every compiled program: the jitted NumPyro sampler's cache does not grow and XLA compiles nothing."""
    import jax

    from stellarfit.inference import fit_star, forward_model_for
    from stellarfit.inference import map as map_module
    from stellarfit.inference import nuts as nuts_module
    from stellarfit.spectra import ObservedSpectrum

    wavelength = log_lambda_grid(5008.0, 5090.0, 20_000.0, 3.0)
    continuum = 50.0 * (1 + 0.05 * (wavelength - 5050.0) / 40.0)

    def observe(truth, rv, snr, seed):
        model = forward_model_for(emulator, wavelength, 20_000.0, rv_range=(rv - 1, rv + 1))
        flux = continuum * np.asarray(model(np.asarray(truth, np.float32), rv, 0.0), dtype=np.float64)
        flux = flux + np.random.default_rng(seed).normal(size=wavelength.size) * continuum / snr
        return ObservedSpectrum.from_arrays(wavelength, flux, sigma=continuum / snr, resolution=20_000.0)

    first, second = observe([0.3, -0.1, 0.2], 40.0, 150.0, 1), observe([0.6, 0.3, -0.1], -90.0, 60.0, 2)
    options = dict(method="nuts", n_starts=2, adam_steps=60, rv_range=(-300.0, 300.0), vsini_max=20.0,
                   num_warmup=20, num_samples=10, num_chains=2, seed=0, chain_method="sequential")
    fit_star(first, emulator, **options)
    jitted = (nuts_module._numpyro_chains, map_module._optimize_starts, map_module._hessian_scaled, map_module._rv_chi2_scan)
    sizes = [f._cache_size() for f in jitted]
    compiles = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        result = fit_star(second, emulator, **options)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert sizes[0] >= 1
    assert [f._cache_size() for f in jitted] == sizes
    assert compiles == []
    assert result.samples.shape == (2, 10, 5) and np.all(np.isfinite(result.samples))
    assert result.labels["rv"]["value"] == pytest.approx(-90.0, abs=3.0)
    assert result.diagnostics["backend"] == "numpyro" and len(result.diagnostics["step_size"]) == 2
    assert result.sample_stats["n_steps"].shape == (2, 10) and result.diagnostics["gradient_evaluations_warmup"] >= 20


@pytest.mark.slow
@pytest.mark.parametrize("method", ["nuts", "blackjax"])
def test_chains_in_pinned_worker_processes_match_sequential(emulator, method):
    """chain_method="processes" deals the chains out to worker processes pinned one per core; each chain
    runs the same program with the same key and start as in "sequential", so the draws agree."""
    from stellarfit import _workers
    from stellarfit.inference import fit_star
    from stellarfit.inference._processes import usable
    from stellarfit.inference.fit import _prepare
    from stellarfit.spectra import ObservedSpectrum

    wavelength = log_lambda_grid(5008.0, 5090.0, 20_000.0, 3.0)
    continuum = 50.0 * (1 + 0.05 * (wavelength - 5050.0) / 40.0)
    from stellarfit.inference import forward_model_for

    model = forward_model_for(emulator, wavelength, 20_000.0, rv_range=(20.0, 30.0))
    flux = continuum * np.asarray(model(np.asarray([0.2, 0.1, -0.2], np.float32), 25.0, 0.0), dtype=np.float64)
    flux = flux + np.random.default_rng(7).normal(size=wavelength.size) * continuum / 80.0
    spectrum = ObservedSpectrum.from_arrays(wavelength, flux, sigma=continuum / 80.0, resolution=20_000.0)
    options = dict(method=method, n_starts=2, adam_steps=60, rv_range=(-300.0, 300.0), vsini_max=20.0,
                   num_warmup=150, num_samples=100, num_chains=3, seed=2)
    problem = _prepare(spectrum, emulator, priors=None, rv_range=(-300.0, 300.0), rv_window=50.0, vsini_max=20.0,
                       continuum_degree=2).problem
    if usable(problem, 3) is not None:  # one core, or not Linux: a clear error, and "auto" runs sequentially
        with pytest.raises(ValueError, match="chain_method='processes' cannot run here"):
            fit_star(spectrum, emulator, chain_method="processes", **options)
        assert fit_star(spectrum, emulator, **options).diagnostics["chain_method"] == "sequential"
        return
    sequential = fit_star(spectrum, emulator, chain_method="sequential", **options)
    automatic = fit_star(spectrum, emulator, **options)  # "auto" picks the worker processes here
    assert automatic.diagnostics["chain_method"] == "processes"
    cores = _workers.get_pool(2).cores  # the pool "auto" used: two workers, each pinned to one of our cores
    assert len(cores) == 2 and set(cores) <= set(_workers.usable_cores())
    assert automatic.samples.shape == sequential.samples.shape == (3, 100, 5)
    # the same program from the same key and start; XLA's arithmetic in a process pinned to one core can
    # differ from a two-core process in the last bit (the rotation's transcendental functions), and NUTS
    # amplifies that into other, equally valid chains (of this short, slowly mixing toy run): the same
    # MAP and posteriors that agree within their width
    assert automatic.labels["temp"]["map"] == sequential.labels["temp"]["map"]
    for result in (automatic, sequential):
        assert result.diagnostics["divergences"] <= 3
    for i, name in enumerate(emulator.label_names):
        a, b = automatic.samples[..., i].ravel(), sequential.samples[..., i].ravel()
        spread = np.sqrt(0.5 * (a.var() + b.var()))
        assert abs(np.median(a) - np.median(b)) < spread, (name, np.median(a), np.median(b), spread)


def test_processes_chain_method_needs_a_problem_built_from_an_emulator(runs):
    best, _, _ = runs
    _, marginalized = make_problem(snr=400.0)  # ForwardModel(flux_fn, ...): no emulator to send to a worker
    with pytest.raises(ValueError, match="cannot run here: .*(not built from an emulator|one core|cannot pin)"):
        sample_numpyro(marginalized, best.theta, best.covariance, num_warmup=5, num_samples=5, num_chains=2,
                       chain_method="processes")
    with pytest.raises(ValueError, match="custom model or log density"):
        sample_blackjax(marginalized, best.theta, best.covariance, num_warmup=5, num_samples=5, num_chains=2,
                        chain_method="processes", logdensity_fn=marginalized.log_density_unconstrained)


@pytest.mark.slow
def test_numpyro_user_model_with_problem_argument_compiles_once():
    """A user model taking the problem (an extra factor and an extra latent site) compiles once for two
    spectra and its factor moves the posterior; a closure model (the documented wrapper) still works."""
    import numpyro
    import numpyro.distributions as dist

    from stellarfit.inference import nuts as nuts_module
    from stellarfit.inference.nuts import numpyro_fit_model, numpyro_model

    def tight_teff(problem):
        theta = numpyro_fit_model(problem)
        numpyro.sample("nuisance", dist.Normal(0.0, 1.0))
        numpyro.factor("teff_prior", -0.5 * ((theta[0] - 5500.0) / 5.0) ** 2)

    wavelength = log_lambda_grid(5242.0, 5259.0, 22_500.0, 2.0)
    model = ForwardModel(small_flux, NATIVE, NATIVE_R, wavelength, 22_500.0, rv_range=(-8.0, 32.0), vsini_max=40.0)
    continuum = 1e3 * np.ones(wavelength.size)
    design = continuum_design_matrix(wavelength, degree=1)
    clean = continuum * np.asarray(model(jnp.asarray(TRUTH[:3]), TRUTH[3], TRUTH[4]), dtype=np.float64)
    options = dict(num_warmup=60, num_samples=60, num_chains=2, seed=0)
    sizes = []
    for seed, rv_range in ((1, (-8.0, 32.0)), (2, (0.0, 25.0))):
        flux = clean + np.random.default_rng(seed).normal(size=clean.size) * continuum / 400.0
        marginalized = FitProblem(model, TOY_SPEC, flux, (400.0 / continuum) ** 2, design, continuum="marginalize",
                                  rv_range=rv_range)
        run = sample_numpyro(marginalized, TRUTH, None, model=tight_teff, **options)
        sizes.append(nuts_module._numpyro_chains._cache_size())
        # the 5 K prior pulls teff from the data's 5600 K to within a few sigma of 5500 K
        assert abs(np.median(run.samples[..., 0]) - 5500.0) < 25.0
    assert sizes[1] == sizes[0]

    _, marginalized = make_problem(snr=400.0)
    base = numpyro_model(marginalized)

    def closure():
        theta = base()
        numpyro.factor("teff_prior", -0.5 * ((theta[0] - 5500.0) / 5.0) ** 2)

    run = sample_numpyro(marginalized, TRUTH, None, model=closure, **options)
    assert abs(np.median(run.samples[..., 0]) - 5500.0) < 25.0
    with pytest.raises(TypeError, match="only argument"):
        sample_numpyro(marginalized, TRUTH, None, model=lambda a, b: None, **options)
    with pytest.raises(ValueError, match="must sample the site 'z'"):
        sample_numpyro(marginalized, TRUTH, None, model=lambda problem: numpyro_fit_model(problem, site="w"), **options)


@pytest.mark.slow  # ~50 s: run by .ci/run's slow step
def test_numpyro_batch_matches_one_star_at_a_time():
    """sample_numpyro_batch vmaps the per-star NUTS over stars (each with its own whitening and
    adaptation): every star's posterior equals sample_numpyro's within Monte-Carlo error (the draws
    themselves part ways during warm-up: batched arithmetic rounds differently)."""
    from stellarfit.inference import sample_numpyro_batch

    problems, maps = [], []
    model = make_problem(snr=150.0)[0].forward_model  # one forward model: the stars share their pixels
    truths = (TRUTH, TRUTH + np.array([150.0, -0.2, 0.1, -3.0, 2.0]))
    for seed, truth in zip((11, 12), truths):
        profiled, marginalized = make_problem(snr=150.0, seed=seed, truth=truth, model=model)
        problems.append(marginalized)
        maps.append(Laplace(profiled))
        maps[-1].theta = truth.copy()
    options = dict(num_warmup=100, num_samples=200, num_chains=2, seed=4)
    batch = sample_numpyro_batch(problems, [m.theta for m in maps], [m.covariance for m in maps], **options)
    assert len(batch) == 2
    for problem, best, batched, truth in zip(problems, maps, batch, truths):
        single = sample_numpyro(problem, best.theta, best.covariance, chain_method="vectorized", **options)
        assert batched.samples.shape == single.samples.shape == (2, 200, 5)
        d = batched.diagnostics
        assert d["chain_method"] == "batched" and d["divergences"] == 0 and max(d["r_hat"].values()) < 1.1
        assert d["gradient_evaluations"] > 0 and d["min_ess_bulk"] > 50
        a, b = batched.samples.reshape(-1, 5), single.samples.reshape(-1, 5)
        sd = b.std(axis=0)
        assert np.all(np.abs(np.median(a, axis=0) - np.median(b, axis=0)) < 0.5 * sd), (np.median(a, 0), np.median(b, 0), sd)
        assert np.all((a.std(axis=0) > 0.7 * sd) & (a.std(axis=0) < 1.4 * sd)), (a.std(axis=0), sd)
        assert np.all(np.abs(np.median(a, axis=0) - truth) < 4.0 * sd)  # each star sampled around its own truth
    with pytest.raises(ValueError, match="problems"):
        sample_numpyro_batch(problems, [maps[0].theta], None, **options)


@pytest.mark.slow  # Stan's windows ("laplace-windows", "dense", "diagonal"): not the default schedule
def test_adaptation_windows_follow_stan_and_reach_both_samplers(monkeypatch):
    from blackjax.adaptation.staged_adaptation import build_schedule
    from numpyro.infer import hmc_util

    from stellarfit.inference import nuts as nuts_module
    from stellarfit.inference.sampling import schedule

    for n in (10, 19, 20, 100, 149, 150, 151, 300, 500, 1000):
        stan = nuts_module.adaptation_windows(n, "laplace-windows")
        assert stan == [tuple(w) for w in hmc_util.build_adaptation_schedule(n)]
        assert np.array_equal(np.asarray(nuts_module._blackjax_schedule("dense")(n)), np.asarray(build_schedule(n)))
        single = nuts_module.adaptation_windows(n, "laplace")
        assert [i for a, b in single for i in range(a, b + 1)] == list(range(n))
        assert single[0] == stan[0] and single[-1] == stan[-1] and len(single) == min(3, len(stan))
    assert nuts_module.adaptation_windows(500, "laplace") == [(0, 74), (75, 449), (450, 499)]
    assert nuts_module.adaptation_windows(500, "laplace-fixed") == [(0, 499)]  # step size only: no slow window
    assert len(nuts_module.adaptation_windows(500, "laplace-windows")) == 6

    # both samplers build their warm-up from it (a num_warmup no other test uses, so the programs are traced afresh)
    original, numpyro_original, calls = nuts_module.adaptation_windows, hmc_util.build_adaptation_schedule, []
    monkeypatch.setattr(schedule, "adaptation_windows", lambda n, m="laplace": calls.append((n, m)) or original(n, m))
    profiled, marginalized = make_problem(snr=200.0, seed=5)
    covariance = laplace_covariance(profiled, TRUTH)
    for sampler, mass_matrix in ((sample_numpyro, "laplace"), (sample_blackjax, "laplace-windows"),
                                 (sample_numpyro, "laplace-fixed")):
        calls.clear()
        result = sampler(marginalized, TRUTH, covariance, num_warmup=41, num_samples=5, num_chains=1, mass_matrix=mass_matrix,
                         chain_method="sequential")
        assert np.all(np.isfinite(result.samples))
        assert (41, mass_matrix) in calls, (sampler.__name__, calls)
    assert hmc_util.build_adaptation_schedule is numpyro_original


def test_pooled_phases_and_metric():
    """mass_matrix="laplace-pooled": the warm-up's three phases, and one metric from the positions of all chains."""
    from stellarfit.inference.nuts import pooled_inverse_mass, pooled_phases

    assert pooled_phases(500) == (75, 125, 300)
    assert pooled_phases(1000) == (75, 125, 800)
    assert pooled_phases(150) == (22, 67, 61)
    assert pooled_phases(19) == (19, 0, 0)  # too short to pool: the Laplace metric throughout
    for n in range(1, 400):
        phases = pooled_phases(n)
        assert sum(phases) == n and min(phases) >= 0 and (phases[1] == 0 or min(phases) >= 3), (n, phases)

    rng = np.random.default_rng(0)
    covariance = np.array([[4.0, 1.5, 0.0], [1.5, 1.0, -0.3], [0.0, -0.3, 0.25]]) * 1e-3
    offsets = np.array([[0.0, 0.0, 0.0], [1.0, -2.0, 0.5], [-3.0, 0.0, 1.0], [0.5, 0.5, 0.5]])  # chains apart
    draws = offsets[:, None, :] + rng.multivariate_normal(np.zeros(3), covariance, size=(4, 2_000))
    estimate = pooled_inverse_mass(draws, 1e-3)
    np.testing.assert_allclose(estimate, covariance, atol=0.1 * 1e-3)  # the offsets between chains are not spread
    few = draws[:, :3]  # 12 draws: shrunk toward 1e-3 I with weight 5 / (12 + 5)
    centred = (few - few.mean(axis=1, keepdims=True)).reshape(-1, 3)
    expected = (12 * centred.T @ centred / 8 + 5e-3 * np.eye(3)) / 17
    np.testing.assert_allclose(pooled_inverse_mass(few, 1e-3), expected, rtol=1e-12)
    broken = draws.copy()
    broken[2, 5, 1] = np.nan  # a chain gone bad is left out
    np.testing.assert_allclose(pooled_inverse_mass(broken, 1e-3), pooled_inverse_mass(draws[[0, 1, 3]], 1e-3))
    np.testing.assert_array_equal(pooled_inverse_mass(np.full((2, 5, 3), np.nan), 1e-3), 1e-3 * np.eye(3))


def test_first_phase_depth_caps_only_the_pooled_schedule(monkeypatch):
    from stellarfit.inference.sampling import schedule
    from stellarfit.inference.nuts import first_phase_depth

    monkeypatch.setattr(schedule, "_FIRST_PHASE_DEPTH", 5)
    assert first_phase_depth(500, "laplace-pooled", 8) == 5
    assert first_phase_depth(500, "laplace-pooled", 3) == 3  # never above max_tree_depth
    assert first_phase_depth(19, "laplace-pooled", 8) is None  # too short to pool: no first phase
    assert first_phase_depth(500, "laplace-fixed", 8) is None and first_phase_depth(500, "laplace", 8) is None
    monkeypatch.setattr(schedule, "_FIRST_PHASE_DEPTH", None)
    assert first_phase_depth(500, "laplace-pooled", 8) == 8


@pytest.mark.parametrize("sampler", [sample_numpyro, pytest.param(sample_blackjax, marks=pytest.mark.slow)])
def test_pooled_schedule_estimates_one_metric_from_all_chains(sampler, monkeypatch):
    """The default schedule runs the chains to the end of the collecting phase, estimates one dense metric
    from all their positions and continues every chain from where it stopped with that metric.  The first
    phase's trajectories are capped at 2^cap - 1 leapfrog steps (here cap 1: single steps), the rest of
    the warm-up and the draws run to max_tree_depth."""
    from stellarfit.inference import nuts as nuts_module
    from stellarfit.inference.sampling import schedule

    monkeypatch.setattr(schedule, "_FIRST_PHASE_DEPTH", 1)
    seen = []
    original = nuts_module.pooled_inverse_mass
    monkeypatch.setattr(schedule, "pooled_inverse_mass", lambda w, v: seen.append((np.array(w), original(w, v))) or seen[-1][1])
    profiled, marginalized = make_problem(snr=200.0, seed=6)
    covariance = laplace_covariance(profiled, TRUTH)
    result = sampler(marginalized, TRUTH, covariance, num_warmup=60, num_samples=40, num_chains=3, seed=1,
                     chain_method="sequential")
    assert result.diagnostics["mass_matrix"] == "laplace-pooled"
    assert len(seen) == 1
    positions, metric = seen[0]
    assert positions.shape == (3, 27, 5)  # pooled_phases(60) == (9, 27, 24): 27 positions of each of 3 chains
    assert np.all(np.linalg.eigvalsh(metric) > 0)
    # in the whitened coordinates the Laplace covariance is 1e-3 I: the pooled estimate is of that order
    assert 1e-4 < np.trace(metric) / 5 < 1e-2, np.diag(metric)
    assert result.samples.shape == (3, 40, 5) and np.all(np.isfinite(result.samples))
    # every warm-up iteration of both phases is counted (at least one leapfrog step each), and kept per iteration
    assert result.diagnostics["gradient_evaluations_warmup"] >= 3 * 60
    assert result.warmup_n_steps.shape == (3, 60) and np.all(result.warmup_n_steps >= 1)
    assert int(result.warmup_n_steps.sum()) == result.diagnostics["gradient_evaluations_warmup"]
    assert result.diagnostics["first_phase_max_tree_depth"] == 1 and result.diagnostics["max_tree_depth"] == 8
    assert np.all(result.warmup_n_steps[:, :36] == 1)  # the first phase: 9 + 27 iterations
    assert result.warmup_n_steps[:, 36:].max() > 1 and result.sample_stats["n_steps"].max() > 1
    # the same posterior as each chain adapting its own metric, within Monte-Carlo error
    own = sampler(marginalized, TRUTH, covariance, num_warmup=60, num_samples=40, num_chains=3, seed=1,
                  chain_method="sequential", mass_matrix="laplace")
    assert own.diagnostics["first_phase_max_tree_depth"] is None
    assert own.warmup_n_steps[:, :36].max() > 1  # uncapped, those iterations take more than one step
    sd = own.samples.reshape(-1, 5).std(axis=0)
    assert np.all(np.abs(np.median(result.samples.reshape(-1, 5), axis=0) - np.median(own.samples.reshape(-1, 5), axis=0))
                  < 0.6 * sd)

