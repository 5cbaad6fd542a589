"""MAP fits at the edges of their settings: fixed parameters (zero-width boxes), the convergence
flag, and the continuum options (a constant scale, no continuum)."""

import jax.numpy as jnp
import numpy as np
import pytest

from _toy_emulator import NATIVE, NATIVE_R, TOY_SPEC, ToyEmulator, toy_flux
from stellarfit.forward import ForwardModel, continuum_design_matrix, profile_continuum
from stellarfit.inference import FitProblem, cramer_rao_from_fisher, fit_map
from stellarfit.inference.map import CONVERGED_DECREASE, default_starts, fixed_parameters
from stellarfit.spectra import ObservedSpectrum
from stellarfit.wavelengths import log_lambda_grid

TRUTH = np.array([5600.0, 3.8, -0.7])
RESOLUTION = 22_500.0


def wavelengths():
    return log_lambda_grid(5170.0, 5330.0, RESOLUTION, 3.0)


def normalized(rv, vsini=0.0):
    wavelength = wavelengths()
    model = ForwardModel(toy_flux, NATIVE, NATIVE_R, wavelength, RESOLUTION, rv_range=(rv - 20.0, rv + 20.0))
    return wavelength, np.asarray(model(jnp.asarray(TRUTH), rv, vsini), dtype=np.float64)


def noisy(flux_model, snr, seed):
    sigma = flux_model.mean() / snr * np.ones_like(flux_model)
    flux = flux_model + np.random.default_rng(seed).normal(size=flux_model.size) * sigma
    return flux, 1.0 / sigma**2


def problem_for(wavelength, flux, ivar, *, rv, vsini_max=None, degree=2):
    model = ForwardModel(toy_flux, NATIVE, NATIVE_R, wavelength, RESOLUTION, rv_range=(rv - 20.0, rv + 20.0))
    design = continuum_design_matrix(wavelength, degree=degree) if degree is not None else np.zeros((wavelength.size, 0))
    return FitProblem(model, TOY_SPEC, flux, ivar, design, vsini_max=vsini_max)


# -- 1. a zero-width box fixes the parameter ------------------------------------------------------


@pytest.mark.slow
def test_vsini_max_zero_fixes_vsini_in_fit_map_and_crb():
    wavelength, clean = normalized(5.0)
    flux, ivar = noisy(1e3 * clean, 150.0, seed=3)
    problem = problem_for(wavelength, flux, ivar, rv=5.0, vsini_max=0.0)
    assert fixed_parameters(problem).tolist() == [False, False, False, False, True]
    result = fit_map(problem, default_starts(problem, 2, rv=5.0), adam_steps=100, polish_steps=30)
    assert result.theta[4] == 0.0  # exactly at its (zero-width) box
    assert np.all(np.isfinite(result.theta)) and result.converged
    assert np.all(result.covariance[4] == 0.0) and np.all(result.covariance[:, 4] == 0.0)
    assert result.sigma[4] == 0.0
    free = result.sigma[:4]
    assert np.all(np.isfinite(free) & (free > 0))
    assert np.all(np.abs(result.theta[:3] - TRUTH) < 5 * result.sigma[:3]), (result.theta, result.sigma)
    assert result.theta[3] == pytest.approx(5.0, abs=5 * result.sigma[3])
    # the Laplace errors of the free parameters match those of a fit with the same vsini held by a
    # tiny box: fixing a parameter removes it, it does not distort the rest
    tiny = fit_map(problem_for(wavelength, flux, ivar, rv=5.0, vsini_max=1e-4), default_starts(problem, 2, rv=5.0),
                   adam_steps=100, polish_steps=30)
    np.testing.assert_allclose(result.sigma[:4], tiny.sigma[:4], rtol=0.02)
    # Cramér-Rao: the fixed parameter (zero scale = its box width) is left out of the inversion
    fisher = np.array([[4.0, 1.0, np.nan], [1.0, 2.0, np.nan], [np.nan, np.nan, np.nan]])
    crb = cramer_rao_from_fisher(fisher, ["a", "b", "vsini"], scales=[1.0, 1.0, 0.0])
    np.testing.assert_allclose(crb.sigma[:2], np.sqrt(np.diag(np.linalg.inv(fisher[:2, :2]))))
    assert crb.sigma[2] == 0.0 and crb.unconstrained == () and np.all(np.isfinite(crb.fisher))
    with pytest.raises(ValueError, match="NaN or infinite entries for b"):
        cramer_rao_from_fisher(np.array([[1.0, 0.0], [0.0, np.nan]]), ["a", "b"])
    with pytest.raises(ValueError, match="scales must be"):
        cramer_rao_from_fisher(np.eye(2), ["a", "b"], scales=[1.0, -1.0])


@pytest.mark.slow
def test_fit_star_with_vsini_max_zero_reports_zero_error():
    from stellarfit.inference import fit_star

    wavelength, clean = normalized(-40.0)
    flux, ivar = noisy(50.0 * clean, 200.0, seed=4)
    spectrum = ObservedSpectrum.from_arrays(wavelength, flux, ivar=ivar, resolution=RESOLUTION)
    emulator = ToyEmulator()
    emulator.metadata = {**ToyEmulator.metadata, "label_error_floor": {"vsini": 0.4, "rv": 0.01}}  # held fixed: no floor
    result = fit_star(spectrum, emulator, n_starts=2, adam_steps=100, rv_range=(-100.0, 100.0), vsini_max=0.0)
    row = result.labels["vsini"]
    assert row["value"] == 0.0 and row["error"] == 0.0 and row["crb"] == 0.0
    assert result.labels["rv"]["error"] == pytest.approx(np.hypot(result.labels["rv"]["error_statistical"], 0.01))
    assert row["lower"] == row["upper"] == 0.0
    for name, value in zip(TOY_SPEC.names, TRUTH):
        assert np.isfinite(result.labels[name]["crb"]) and result.labels[name]["crb"] > 0
        assert abs(result.labels[name]["value"] - value) < 5 * result.labels[name]["error"], (name, result.labels[name])
    assert result.labels["rv"]["value"] == pytest.approx(-40.0, abs=0.5)
    assert "vsini" not in result.diagnostics["crb_unconstrained"]
    assert result.flag_names == []


def test_covariance_is_proper():
    from stellarfit.inference.map import covariance_is_proper

    widths = np.ones(3)
    good = np.array([[4.0, 1.0, 0.0], [1.0, 2.0, 0.3], [0.0, 0.3, 1.0]])
    assert covariance_is_proper(good, widths)
    indefinite = np.array([[1.0, 2.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # positive diagonal, eigenvalue -1
    assert not covariance_is_proper(indefinite, widths)
    negative = good.copy()
    negative[2, 2] = -0.5
    assert not covariance_is_proper(negative, widths)
    # an unconstrained parameter (NaN row) or a fixed one (zero width, zero row) leaves the rest to judge
    unconstrained = good.copy()
    unconstrained[2, :] = unconstrained[:, 2] = np.nan
    assert covariance_is_proper(unconstrained, widths)
    fixed = good.copy()
    fixed[2, :] = fixed[:, 2] = 0.0
    assert covariance_is_proper(fixed, np.array([1.0, 1.0, 0.0]))
    assert not covariance_is_proper(None, widths)


@pytest.mark.slow
def test_indefinite_hessian_at_the_map_falls_back_to_gauss_newton(monkeypatch):
    """A MAP pressed against a box is no stationary point and its Hessian can be indefinite: the
    negative variances of its inverse once read as errors of exactly 0.  fit_star then takes
    the Gauss-Newton covariance J^T W J, which is positive definite."""
    from stellarfit.inference import fit_star
    from stellarfit.inference import map as map_module

    wavelength, clean = normalized(10.0)
    flux, ivar = noisy(50.0 * clean, 200.0, seed=5)
    spectrum = ObservedSpectrum.from_arrays(wavelength, flux, ivar=ivar, resolution=RESOLUTION)
    options = dict(n_starts=2, adam_steps=100, rv_range=(-100.0, 100.0), vsini_max=20.0)
    honest = fit_star(spectrum, ToyEmulator(), **options)
    assert honest.diagnostics["laplace"] == "hessian"
    laplace = map_module.laplace_covariance

    def indefinite(problem, theta):
        covariance = laplace(problem, theta)
        sigma = np.sqrt(np.diag(covariance))
        covariance[0, 1] = covariance[1, 0] = 2.0 * sigma[0] * sigma[1]  # |correlation| 2: not a covariance
        return covariance

    monkeypatch.setattr(map_module, "laplace_covariance", indefinite)
    result = fit_star(spectrum, ToyEmulator(), **options)
    assert result.diagnostics["laplace"] == "gauss-newton-indefinite-hessian"
    for name in TOY_SPEC.names + ("rv", "vsini"):
        row, reference = result.labels[name], honest.labels[name]
        assert row["value"] == pytest.approx(reference["value"], rel=1e-6, abs=1e-6)
        # at a good MAP Gauss-Newton is the Hessian less the residual-weighted curvature: close
        assert row["error"] > 0 and row["error"] == pytest.approx(reference["error"], rel=0.15), (name, row, reference)



def test_gauss_newton_from_the_crb_jacobian_equals_the_profiled_residuals_route():
    """fit_star's Gauss-Newton covariance comes from the Jacobian the Cramér-Rao bounds use (theta
    and the continuum coefficients, the continuum then marginalized); map.gauss_newton_covariance
    differentiates the residuals with the continuum profiled.  For a continuum linear in its
    coefficients the two are the same matrix, priors included."""
    from stellarfit.inference import GaussianPrior
    from stellarfit.inference.fit import _continuum_and_model, _full_model_jacobian, _gauss_newton_from_jacobian
    from stellarfit.inference.map import gauss_newton_covariance

    wavelength, clean = normalized(12.0, vsini=5.0)
    continuum = 1e3 * (1.0 + 0.1 * (wavelength - 5250.0) / 80.0)
    flux, ivar = noisy(continuum * clean, 80.0, seed=11)
    model = ForwardModel(toy_flux, NATIVE, NATIVE_R, wavelength, RESOLUTION, rv_range=(-8.0, 32.0))
    design = continuum_design_matrix(wavelength, degree=2)
    problem = FitProblem(model, TOY_SPEC, flux, ivar, design, vsini_max=30.0,
                         priors={TOY_SPEC.names[1]: GaussianPrior(3.7, 0.05)})
    theta = np.array([*TRUTH + [30.0, -0.05, 0.1], 12.3, 5.5])  # near the truth, not at the optimum
    theta_jax = jnp.asarray(theta, jnp.float32)
    coefficients, _ = _continuum_and_model(problem, theta_jax)
    jacobian = np.asarray(_full_model_jacobian(problem, jnp.concatenate([theta_jax, coefficients])), dtype=np.float64)
    names = list(problem.names) + [f"continuum_{i}" for i in range(design.shape[1])]
    prior_sigma = problem.prior_sigmas() + [None] * design.shape[1]
    scales = np.concatenate([problem.box_widths(), np.maximum(np.abs(np.asarray(coefficients, np.float64)), 1e-30)])
    from_jacobian = _gauss_newton_from_jacobian(problem, jacobian, names, prior_sigma, scales)
    from_residuals = gauss_newton_covariance(problem, theta)
    sigma = np.sqrt(np.diag(from_residuals))
    assert np.all(np.isfinite(sigma) & (sigma > 0))
    np.testing.assert_allclose(np.sqrt(np.diag(from_jacobian)), sigma, rtol=2e-3)
    np.testing.assert_allclose(from_jacobian / np.outer(sigma, sigma), from_residuals / np.outer(sigma, sigma), atol=2e-3)
    # the prior is in both: logg's error is below its prior width and far below the free fit's
    assert sigma[1] < 0.05


# -- 2. the convergence flag ---------------------------------------------------------------------


@pytest.mark.slow
def test_converged_fit_not_flagged_and_stopped_fit_flagged():
    wavelength, clean = normalized(10.0, vsini=6.0)
    continuum = 1e4 * (1.0 + 0.1 * (wavelength - 5250.0) / 200.0)
    flux, ivar = noisy(continuum * clean, 100.0, seed=5)
    problem = problem_for(wavelength, flux, ivar, rv=10.0)
    starts = default_starts(problem, 4, rv=10.0)
    converged = fit_map(problem, starts)  # the defaults
    assert converged.converged
    assert converged.convergence_tolerance == pytest.approx(CONVERGED_DECREASE)  # not raised by float32 rounding here
    assert converged.remaining_decrease < CONVERGED_DECREASE
    assert np.all(np.abs(converged.theta[:3] - TRUTH) < 5 * converged.sigma[:3])
    # far too few steps: Adam barely moves and one damped LM step cannot reach the optimum
    stopped = fit_map(problem, starts, adam_steps=2, polish_steps=1)
    assert not stopped.converged
    assert stopped.remaining_decrease > 100 * CONVERGED_DECREASE
    assert -stopped.log_posterior > -converged.log_posterior + 1.0
    # no polishing at all: the test does not rely on the LM history alone
    assert not fit_map(problem, starts, adam_steps=2, polish_steps=0).converged
    with pytest.raises(ValueError, match="polish_steps must be an integer >= 0"):
        fit_map(problem, starts, polish_steps=-1)


# -- 3. the continuum: a constant scale, or none ----------------------------------------------------


@pytest.mark.slow
def test_constant_scale_and_no_continuum():
    wavelength, clean = normalized(0.0)
    flux, ivar = noisy(clean, 200.0, seed=6)  # an already normalized spectrum
    # profile_continuum without design columns compares the model with the flux as it is
    model = jnp.asarray(clean, jnp.float32)
    coefficients, continuum, chi2, logdet = profile_continuum(model, jnp.asarray(flux), jnp.asarray(ivar),
                                                              jnp.zeros((flux.size, 0)))
    assert coefficients.shape == (0,) and float(logdet) == 0.0
    np.testing.assert_array_equal(np.asarray(continuum), 1.0)
    assert float(chi2) == pytest.approx(np.sum(ivar * (flux - clean) ** 2), rel=1e-5)
    # degree 0: a constant scale, recovered
    scaled = problem_for(wavelength, 3.5 * flux, ivar / 3.5**2, rv=0.0, degree=0)
    scale = np.asarray(scaled.continuum_fit(jnp.asarray(np.r_[TRUTH, 0.0, 0.0], jnp.float32))[0])
    assert scale.shape == (1,) and scale[0] == pytest.approx(3.5, rel=1e-3)
    # no continuum: the MAP fit of the normalized spectrum recovers the labels, with errors no
    # larger than those with a profiled constant (one nuisance parameter fewer)
    fixed = problem_for(wavelength, flux, ivar, rv=0.0, degree=None)
    constant = problem_for(wavelength, flux, ivar, rv=0.0, degree=0)
    starts = default_starts(fixed, 2)
    none_fit = fit_map(fixed, starts, adam_steps=100, polish_steps=30)
    constant_fit = fit_map(constant, starts, adam_steps=100, polish_steps=30)
    assert none_fit.converged and constant_fit.converged
    assert np.all(np.abs(none_fit.theta[:3] - TRUTH) < 5 * none_fit.sigma[:3]), (none_fit.theta, none_fit.sigma)
    assert np.all(none_fit.sigma[:3] <= constant_fit.sigma[:3] * 1.001)
    np.testing.assert_allclose(np.asarray(fixed.model_flux(jnp.asarray(none_fit.theta, jnp.float32))),
                               np.asarray(fixed.model_normalized(jnp.asarray(none_fit.theta, jnp.float32))))
    with pytest.raises(ValueError, match="integer >= 0"):
        continuum_design_matrix(wavelength, degree=None)
    with pytest.raises(ValueError, match="integer >= 0"):
        continuum_design_matrix(wavelength, degree=1.5)


def test_vsini_consistent_with_zero_is_held_for_the_other_errors():
    """When vsini's standard deviation exceeds vsini, the other parameters' covariance is conditional
    on vsini (the inverse of their Hessian block); otherwise the covariance is untouched."""
    from stellarfit.inference.fit import _hold_vsini_near_zero

    rng = np.random.default_rng(3)
    root = rng.normal(size=(4, 4))
    hessian = root @ root.T + 4 * np.eye(4)
    covariance = np.linalg.inv(hessian)
    sd = np.sqrt(covariance[3, 3])
    held = _hold_vsini_near_zero(covariance, np.array([1.0, 2.0, 3.0, 0.2 * sd]), 3)
    np.testing.assert_allclose(held[:3, :3], np.linalg.inv(hessian[:3, :3]), rtol=1e-10)
    assert held[3, 3] == covariance[3, 3]
    assert np.all(held[3, :3] == 0) and np.all(held[:3, 3] == 0)
    assert np.all(np.diag(held)[:3] < np.diag(covariance)[:3])
    far = _hold_vsini_near_zero(covariance, np.array([1.0, 2.0, 3.0, 5.0 * sd]), 3)
    np.testing.assert_array_equal(far, covariance)
    assert _hold_vsini_near_zero(covariance, np.zeros(4), None) is covariance
