"""The unconstrained parametrization of a fit: boxes, labels bounded relative to a reference, Jacobian."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stellarfit as sf
from stellarfit.data import example_truth
from stellarfit.inference.fit import _prepare
from stellarfit.spectra import example_spectrum


@pytest.fixture(scope="module", params=["logit", "probit", "probit-labels"])
def problem(request):
    """The example's FitProblem with each map from z to the boxes (FitProblem.with_transform)."""
    emulator = sf.load_emulator("payne-default")
    problem = _prepare(example_spectrum(), emulator, priors=None, rv_range=(-1000.0, 1000.0), rv_window=50.0,
                       vsini_max=100.0, continuum_degree=2).problem
    return problem.with_transform(request.param)


def test_transforms_differ_and_bad_names_are_refused(problem):
    z = jnp.full(problem.n_parameters, -1.5, jnp.float32)
    unit = np.asarray(problem._unit(z))
    logistic, normal = 1.0 / (1.0 + np.exp(1.5)), 0.0668072
    expected = {"logit": [logistic] * problem.n_parameters, "probit": [normal] * problem.n_parameters,
                "probit-labels": [normal] * problem.n_labels + [logistic] * 2}[problem.transform]
    np.testing.assert_allclose(unit, expected, rtol=1e-5)
    with pytest.raises(ValueError, match="transform must be one of"):
        problem.with_transform("tanh")
    assert problem.with_continuum("marginalize").transform == problem.transform  # survives other copies


def _members(problem):
    spec = problem.label_spec
    labels = list(spec)
    alpha = spec.index("alpha_fe")
    members = [spec.index(n) for n in ("mg_fe", "si_fe", "ca_fe", "ti_fe")]
    assert all(labels[i].offset_from == "alpha_fe" for i in members)
    return alpha, members, np.array([labels[i].offset_halfwidth for i in members])


def _feasible_thetas(problem, n, seed):
    """Physical points well inside every box and the +-h constraints (margin 0.03 dex)."""
    rng = np.random.default_rng(seed)
    alpha, members, h = _members(problem)
    lower, upper = np.asarray(problem.lower, float), np.asarray(problem.upper, float)
    theta = lower + (upper - lower) * rng.uniform(0.05, 0.95, (n, lower.size))
    theta[:, members] = theta[:, [alpha]] + rng.uniform(-1.0, 1.0, (n, len(members))) * (h - 0.03)
    for i, label in enumerate(problem.label_spec):
        if label.offset_from == "":
            theta[:, i] = rng.uniform(-1.0, 1.0, n) * (label.offset_halfwidth - 0.03)
    return theta


def test_round_trip_inside_the_allowed_region(problem):
    theta = _feasible_thetas(problem, 50, seed=0)
    truth = example_truth()
    theta = np.vstack([theta, [[truth[n] for n in problem.names]]])
    back = np.asarray(jax.vmap(lambda t: problem.to_theta(problem.to_unconstrained(t)))(jnp.asarray(theta, jnp.float32)))
    scale = np.asarray(problem.upper - problem.lower, float)
    assert np.max(np.abs(back - theta) / scale) < 2e-5


def test_reference_depends_on_its_members_and_stays_inside_their_bounds(problem):
    alpha, members, h = _members(problem)
    rng = np.random.default_rng(1)
    # the same points of the unit box for every transform: sigmoid of N(0, 2.5^2), mapped to this transform's z
    unit = jax.nn.sigmoid(jnp.asarray(rng.normal(scale=2.5, size=(400, problem.n_parameters)), jnp.float32))
    z = problem._z_of_unit(jnp.clip(unit, 1e-6, 1.0 - 1e-6))
    theta = np.asarray(jax.vmap(problem.to_theta)(z), float)
    x = theta[:, members]
    lo = np.maximum(float(problem.lower[alpha]), (x - h).max(axis=1))
    hi = np.minimum(float(problem.upper[alpha]), (x + h).min(axis=1))
    feasible = hi - lo > 0.05  # members leave the reference >= 0.05 dex
    assert 50 < feasible.sum() < 400
    offsets = np.abs(x - theta[:, [alpha]])[feasible]
    assert np.max(offsets - h) < 1e-4, np.max(offsets - h)  # softplus excess of the interval: < 1e-4 at 0.05 dex
    assert np.all((theta[:, alpha] >= problem.lower[alpha] - 1e-6) & (theta[:, alpha] <= problem.upper[alpha] + 1e-6))
    # the members do not depend on the reference's coordinate; the reference depends on the members'
    jacobian = np.asarray(jax.jacfwd(problem.to_theta)(z[0]))
    assert np.all(jacobian[members, alpha] == 0.0)
    assert np.any(jacobian[alpha, members] != 0.0)


def test_log_abs_det_jacobian_equals_autodiff(problem):
    rng = np.random.default_rng(2)
    for z in rng.normal(scale=1.5, size=(4, problem.n_parameters)):
        z = jnp.asarray(z, jnp.float32)
        sign, logdet = jnp.linalg.slogdet(jax.jacfwd(problem.to_theta)(z).astype(jnp.float64) if jax.config.jax_enable_x64
                                          else jax.jacfwd(problem.to_theta)(z))
        assert float(sign) > 0
        np.testing.assert_allclose(float(problem.log_abs_det_jacobian(z)), float(logdet), rtol=0, atol=2e-3)


def test_uniform_prior_over_the_allowed_region(problem):
    """Sampled by importance weights exp(log|J|) over z, the reference is uniform in its allowed interval."""
    alpha, members, h = _members(problem)
    rng = np.random.default_rng(3)
    # fix the members at values that leave [alpha/Fe] the interval [0.0, 0.3] (Mg 0.4 sets hi-... ):
    values = np.array([-0.1, 0.3, 0.2, 0.1])  # lo = max(-0.2, -0.5, -0.1, -0.2, -0.3) = -0.1, hi = min(0.6, 0.3, 0.7, 0.6, 0.5) = 0.3
    theta0 = _feasible_thetas(problem, 1, seed=4)[0]
    theta0[members] = values
    z0 = np.asarray(problem.to_unconstrained(jnp.asarray(theta0, jnp.float32)), float)
    grid = np.linspace(-9.0, 9.0, 4001)
    zs = np.repeat(z0[None, :], grid.size, axis=0)
    zs[:, alpha] = grid
    zs = jnp.asarray(zs, jnp.float32)
    a = np.asarray(jax.vmap(problem.to_theta)(zs)[:, alpha], float)
    weight = np.exp(np.asarray(jax.vmap(problem.log_abs_det_jacobian)(zs), float) - float(problem.log_abs_det_jacobian(zs[0])))
    # the density of alpha implied by a uniform density in theta is flat on (lo, hi)
    np.testing.assert_allclose([a.min(), a.max()], [-0.1, 0.3], atol=0.01, err_msg=str(theta0[members]))
    inside = (a > -0.08) & (a < 0.28)
    density = weight[inside] / np.gradient(a, grid)[inside]
    assert np.ptp(density) / np.mean(density) < 1e-2
    del rng


def test_fixed_reference_stays_fixed(problem):
    alpha, members, h = _members(problem)
    children, static = problem.tree_flatten()
    lower, upper = np.array(problem.lower, float), np.array(problem.upper, float)
    lower[alpha] = upper[alpha] = 0.1
    children = (children[0], children[1], children[2], lower, upper) + tuple(children[5:])
    fixed = type(problem).tree_unflatten(static, children)
    rng = np.random.default_rng(5)
    theta = np.asarray(jax.vmap(fixed.to_theta)(jnp.asarray(rng.normal(scale=3.0, size=(100, fixed.n_parameters)), jnp.float32)))
    np.testing.assert_allclose(theta[:, alpha], 0.1, atol=1e-7)
    assert np.all(np.abs(theta[:, members] - 0.1) <= h + 1e-6)
    assert np.all(np.isfinite(np.asarray(jax.vmap(fixed.log_abs_det_jacobian)(jnp.zeros((3, fixed.n_parameters))))))


def test_near_edges_sees_the_label_boxes_and_the_intervals_relative_to_alpha(problem):
    """The grid_edge flag's test: a label box edge, or an [alpha/Fe]-relative abundance +-h from its
    reference (the edge of the emulator's training grid, inside the abundance's own box)."""
    spec = problem.label_spec
    alpha, members, h = _members(problem)
    theta = 0.5 * (np.asarray(problem.lower, float) + np.asarray(problem.upper, float))
    theta[alpha] = 0.2
    theta[members] = 0.2
    assert not problem.near_edges(theta).any()
    at_box = theta.copy()
    at_box[spec.index("teff")] = problem.lower[spec.index("teff")]
    assert problem.near_edges(at_box).tolist() == [i == spec.index("teff") for i in range(theta.size)]
    pressed = theta.copy()
    pressed[members[1]] = 0.2 + h[1]  # Si 0.4 dex above [alpha/Fe]: inside its own box, at the grid's edge
    assert problem.lower[members[1]] < pressed[members[1]] < problem.upper[members[1]]
    assert problem.near_edges(pressed).tolist() == [i == members[1] for i in range(theta.size)]
    inside = theta.copy()
    inside[members[1]] = 0.2 + 0.9 * h[1]
    assert not problem.near_edges(inside).any()
