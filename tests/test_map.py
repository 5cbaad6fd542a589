"""RV search and MAP fits on a toy emulator with known truth."""

import jax.numpy as jnp
import numpy as np
import pytest

from _toy_emulator import NATIVE, NATIVE_R, TOY_SPEC, toy_flux
from stellarfit.forward import ForwardModel, continuum_design_matrix
from stellarfit.inference import FitProblem, GaussianPrior, cramer_rao_from_fisher, estimate_rv, fisher_matrix, fit_map
from stellarfit.inference.map import default_starts
from stellarfit.wavelengths import log_lambda_grid

TRUTH = np.array([5600.0, 3.8, -0.7])


def observe(rv, vsini=0.0, snr=None, seed=0, resolution=22_500.0, rv_range=None):
    wavelength = log_lambda_grid(5150.0, 5350.0, resolution, 3.0)
    model = ForwardModel(toy_flux, NATIVE, NATIVE_R, wavelength, resolution, rv_range=rv_range or (rv - 20, rv + 20))
    normalized = np.asarray(model(jnp.asarray(TRUTH), rv, vsini), dtype=np.float64)
    continuum = 1e4 * (1.0 + 0.1 * (wavelength - 5250.0) / 200.0)
    flux = continuum * normalized
    if snr is None:
        ivar = np.full(flux.size, (snr or 200.0) ** 2) / continuum**2
    else:
        rng = np.random.default_rng(seed)
        sigma = continuum / snr
        flux = flux + rng.normal(size=flux.size) * sigma
        ivar = 1.0 / sigma**2
    return wavelength, flux, ivar


@pytest.mark.parametrize("rv", [-300.0, 300.0])
def test_rv_found_anywhere_in_1000_kms(rv):
    wavelength, flux, ivar = observe(rv)
    wide = ForwardModel(toy_flux, NATIVE, NATIVE_R, wavelength, 22_500.0, rv_range=(-1000.0, 1000.0))
    design = continuum_design_matrix(wavelength, degree=2)
    estimate, grid, chi2 = estimate_rv(wide, np.array([5500.0, 3.0, -1.0]), flux, ivar, design)
    assert estimate == pytest.approx(rv, abs=2.0)


@pytest.mark.slow
def test_map_recovers_labels_noiseless():
    wavelength, flux, ivar = observe(45.0, vsini=12.0)
    model = ForwardModel(toy_flux, NATIVE, NATIVE_R, wavelength, 22_500.0, rv_range=(25.0, 65.0))
    problem = FitProblem(model, TOY_SPEC, flux, ivar, continuum_design_matrix(wavelength, degree=2))
    result = fit_map(problem, default_starts(problem, 4, rv=40.0), adam_steps=150, polish_steps=40)
    assert np.all(np.abs(result.theta[:3] - TRUTH) < [15.0, 0.05, 0.02]), result.theta
    assert result.theta[3] == pytest.approx(45.0, abs=0.2)
    assert result.theta[4] == pytest.approx(12.0, abs=1.0)
    assert result.chi2 / result.n_good < 0.01


@pytest.mark.slow
def test_laplace_covariance_matches_crb_at_high_snr():
    wavelength, flux, ivar = observe(10.0, snr=300.0, seed=1)
    model = ForwardModel(toy_flux, NATIVE, NATIVE_R, wavelength, 22_500.0, rv_range=(-10.0, 30.0))
    problem = FitProblem(model, TOY_SPEC, flux, ivar, continuum_design_matrix(wavelength, degree=2))
    result = fit_map(problem, default_starts(problem, 2, rv=10.0, vsini=3.0), adam_steps=150, polish_steps=40)
    # Fisher at the truth with the continuum coefficients as nuisance parameters
    design = jnp.asarray(continuum_design_matrix(wavelength, degree=2))
    theta_truth = np.concatenate([TRUTH, [10.0, 3.0]])
    coefficients = np.asarray(problem.continuum_fit(jnp.asarray(theta_truth, jnp.float32))[0], dtype=np.float64)

    def full_model(parameters):
        return (design @ parameters[5:]) * problem.model_normalized(parameters[:5])

    fisher = fisher_matrix(full_model, np.concatenate([theta_truth, coefficients]), np.asarray(problem.ivar, np.float64))
    crb = cramer_rao_from_fisher(fisher, list(problem.names) + ["c0", "c1", "c2"])
    for i in range(3):  # labels
        assert result.sigma[i] == pytest.approx(crb.sigma[i], rel=0.25)
        assert abs(result.theta[i] - TRUTH[i]) < 5 * crb.sigma[i]


@pytest.mark.slow
def test_gaussian_prior_pulls_and_bad_priors():
    wavelength, flux, ivar = observe(0.0, snr=20.0, seed=2)
    model = ForwardModel(toy_flux, NATIVE, NATIVE_R, wavelength, 22_500.0, rv_range=(-20.0, 20.0))
    design = continuum_design_matrix(wavelength, degree=2)
    free_problem = FitProblem(model, TOY_SPEC, flux, ivar, design)
    free = fit_map(free_problem, default_starts(free_problem, 1), adam_steps=150, polish_steps=40)
    tight = FitProblem(model, TOY_SPEC, flux, ivar, design, priors={"logg": GaussianPrior(4.5, 0.01)})
    pulled = fit_map(tight, default_starts(tight, 1), adam_steps=150, polish_steps=40)
    assert abs(pulled.theta[1] - 4.5) < 0.03
    assert abs(pulled.theta[1] - 4.5) < abs(free.theta[1] - 4.5)
    with pytest.raises(KeyError, match="unknown parameter"):
        FitProblem(model, TOY_SPEC, flux, ivar, design, priors={"lgg": GaussianPrior(4.5, 0.1)})
    with pytest.raises(ValueError, match="sigma > 0"):
        GaussianPrior(4.5, 0.0)
    with pytest.raises(ValueError, match="no usable pixel"):
        FitProblem(model, TOY_SPEC, flux, np.zeros_like(ivar), design)



def test_secant_update_matches_the_step_and_keeps_the_rest():
    """The BFGS correction of polish_map's kept curvature: afterwards it maps the step to the
    gradient's change along it (the secant equation), stays symmetric and positive definite, acts
    as before on every direction orthogonal to both C s and the change, and is left alone where
    the step showed no positive curvature."""
    from stellarfit.inference.map import _secant_update

    rng = np.random.default_rng(3)
    a = rng.normal(size=(5, 5))
    curvature = a @ a.T + 5 * np.eye(5)
    truth = curvature + np.diag([0.0, 0.0, 0.0, 0.0, 40.0])  # the kept curvature misjudges one direction
    step = rng.normal(size=5)
    change = truth @ step
    updated = np.asarray(_secant_update(jnp.asarray(curvature), jnp.asarray(step), jnp.asarray(change)))
    np.testing.assert_allclose(updated @ step, change, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(updated, updated.T, atol=1e-6)
    assert np.all(np.linalg.eigvalsh(updated) > 0)
    assert not np.allclose(updated, curvature, atol=1e-2)
    untouched = np.linalg.svd(np.stack([curvature @ step, change]))[2][2:]  # orthogonal to C s and the change
    for v in untouched:
        np.testing.assert_allclose(updated @ v, curvature @ v, rtol=1e-4, atol=1e-4)
    # negative curvature along the step: no update
    kept = np.asarray(_secant_update(jnp.asarray(curvature), jnp.asarray(step), jnp.asarray(-change)))
    np.testing.assert_allclose(kept, curvature, rtol=1e-6)  # (float32 of the same matrix)


def test_box_step_stays_in_the_cube_and_lands_on_the_faces_it_crosses():
    """The bounded Levenberg-Marquardt step of the polish in unit coordinates (polish_map's
    space="unit"): on a separable quadratic whose minimum lies outside the cube in one coordinate
    the step puts that coordinate on the face and the others at their minimum; a coordinate on a
    face whose gradient points out stays there; with coupling that makes the face-landing step
    worse than a shortened one, the step's promised decrease is still positive."""
    from stellarfit.inference.map import _box_step, _model_decrease

    hessian = jnp.diag(jnp.array([4.0, 1.0, 9.0]))
    x = jnp.array([0.5, 0.5, 0.5])
    target = jnp.array([0.6, 1.7, 0.2])  # the second coordinate's minimum lies beyond its upper face
    gradient = hessian @ (x - target)
    step = np.asarray(_box_step(x, gradient, hessian, 1e-8, 1e-4))
    np.testing.assert_allclose(np.asarray(x) + step, [0.6, 1.0, 0.2], atol=1e-5)
    # on the upper face, pressed outwards: held; the others still move to their minimum
    x = jnp.array([0.5, 1.0, 0.5])
    step = np.asarray(_box_step(x, hessian @ (x - target), hessian, 1e-8, 1e-4))
    assert step[1] == 0.0
    np.testing.assert_allclose(np.asarray(x)[[0, 2]] + step[[0, 2]], [0.6, 0.2], atol=1e-5)
    # strong coupling: many random quadratics; every step stays in the cube and promises a decrease
    rng = np.random.default_rng(4)
    for _ in range(50):
        a = rng.normal(size=(4, 4))
        hessian = jnp.asarray(a @ a.T + 0.1 * np.eye(4), jnp.float32)
        x = jnp.asarray(np.clip(rng.uniform(-0.2, 1.2, 4), 0.0, 1.0), jnp.float32)
        gradient = hessian @ (x - jnp.asarray(rng.normal(0.5, 2.0, 4), jnp.float32))
        step = _box_step(x, gradient, hessian, 1e-3, 1e-4)
        moved = np.asarray(x + step)
        assert np.all(moved >= 0.0) and np.all(moved <= 1.0)
        assert float(_model_decrease(gradient, hessian, step)) >= 0.0


@pytest.mark.parametrize("chord", [True, False])
def test_polish_in_unit_coordinates_reaches_a_map_at_the_box_edge(chord):
    """A star more metal-rich than the box ([Fe/H] = 0.7, box up to 0.5): the MAP has [Fe/H] on its
    edge.  Polished from a close start, the unit coordinates put it there exactly, in fewer
    iterations than z (where the edge is at infinity and the steps crawl along the sigmoid), at an
    objective no higher."""
    from stellarfit.inference.map import polish_map

    wavelength = log_lambda_grid(5150.0, 5350.0, 22_500.0, 3.0)
    model = ForwardModel(toy_flux, NATIVE, NATIVE_R, wavelength, 22_500.0, rv_range=(-20.0, 20.0))
    truth = np.array([5600.0, 3.8, 0.7])
    continuum = 1e4 * (1.0 + 0.1 * (wavelength - 5250.0) / 200.0)
    rng = np.random.default_rng(5)
    flux = continuum * np.asarray(model(jnp.asarray(truth), 0.0, 4.0), np.float64)
    flux = flux + rng.normal(size=flux.size) * continuum / 100.0
    problem = FitProblem(model, TOY_SPEC, flux, (100.0 / continuum) ** 2, continuum_design_matrix(wavelength, degree=2))
    start = np.array([5580.0, 3.75, 0.4, 0.3, 4.5])
    in_z = polish_map(problem, start, max_steps=30, chord=chord, space="z")
    in_unit = polish_map(problem, start, max_steps=30, chord=chord, space="unit")
    assert in_unit.converged
    assert in_unit.theta[2] == 0.5  # on the edge itself
    assert in_unit.iterations < in_z.iterations
    assert -in_unit.log_posterior <= -in_z.log_posterior + 0.05
    with pytest.raises(ValueError, match="space must be one of"):
        polish_map(problem, start, space="theta")
