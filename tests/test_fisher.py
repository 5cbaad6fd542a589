"""Fisher matrices and Cramér-Rao bounds against analytic results."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stellarfit.inference import cramer_rao_from_fisher, fisher_matrix


@pytest.mark.parametrize("x64", [True, False])
def test_linear_model_equals_analytic_inverse(x64):
    # f = A theta: F = A^T W A exactly; the bound is sqrt(diag((A^T W A)^-1)).
    # With JAX x64 on, J is float64 and F matches to 1e-12; in float32 to 1e-6.
    rng = np.random.default_rng(0)
    design = rng.normal(size=(200, 3))
    ivar = rng.uniform(0.5, 2.0, 200)
    with jax.enable_x64(x64):
        fisher = fisher_matrix(lambda t: jnp.asarray(design, dtype=t.dtype) @ t, np.array([1.0, -2.0, 0.5]), ivar)
    expected = design.T @ (design * ivar[:, None])
    np.testing.assert_allclose(fisher, expected, rtol=1e-12 if x64 else 1e-6, atol=0 if x64 else 1e-5 * np.abs(expected).max())
    result = cramer_rao_from_fisher(fisher, ["a", "b", "c"])
    np.testing.assert_allclose(result.sigma, np.sqrt(np.diag(np.linalg.inv(expected))), rtol=1e-10 if x64 else 1e-5)
    assert result.fisher.dtype == np.float64 and not result.ill_conditioned


def test_gaussian_line_toy_model_analytic():
    # f(x) = 1 - d exp(-(x - mu)^2 / (2 s^2)), known s; analytic Fisher for (d, mu) by direct derivative sums
    x = np.linspace(-10.0, 10.0, 2001)
    s, d, mu, sigma_noise = 1.3, 0.4, 0.2, 0.01

    def model(theta):
        return 1.0 - theta[0] * jnp.exp(-0.5 * ((jnp.asarray(x) - theta[1]) / s) ** 2)

    g = np.exp(-0.5 * ((x - mu) / s) ** 2)
    j_depth = -g
    j_centre = -d * g * (x - mu) / s**2
    jac = np.stack([j_depth, j_centre], axis=1)
    expected = jac.T @ jac / sigma_noise**2
    with jax.enable_x64(True):
        fisher = fisher_matrix(model, np.array([d, mu]), np.full(x.size, 1 / sigma_noise**2), chunk_size=300)
    np.testing.assert_allclose(fisher, expected, rtol=1e-10, atol=1e-9 * np.abs(expected).max())


def test_priors_nuisance_marginalization_and_unconstrained():
    fisher = np.array([[4.0, 1.9, 0.0], [1.9, 1.0, 0.0], [0.0, 0.0, 0.0]])
    result = cramer_rao_from_fisher(fisher, ["label", "nuisance", "dead"])
    assert result.unconstrained == ("dead",)
    assert np.isinf(result.sigma[2])
    marginal = np.sqrt(np.linalg.inv(fisher[:2, :2])[0, 0])
    assert result.sigma[0] == pytest.approx(marginal)
    assert result.sigma[0] > 1 / np.sqrt(4.0)  # fixing the nuisance would be optimistic
    assert abs(result.correlation[0, 1]) > 0.9
    # a prior on the nuisance tightens the label
    with_prior = cramer_rao_from_fisher(fisher, ["label", "nuisance", "dead"], prior_sigma=[None, 0.1, 2.0])
    assert with_prior.sigma[0] < result.sigma[0]
    assert with_prior.sigma[2] == pytest.approx(2.0)


def test_bound_scales_inversely_with_snr():
    x = np.linspace(0, 1, 300)

    def model(theta):
        return theta[0] + theta[1] * jnp.asarray(x) ** 2

    low = cramer_rao_from_fisher(fisher_matrix(model, np.array([1.0, 0.3]), np.full(300, 30.0**2)), ["a", "b"])
    high = cramer_rao_from_fisher(fisher_matrix(model, np.array([1.0, 0.3]), np.full(300, 100.0**2)), ["a", "b"])
    np.testing.assert_allclose(low.sigma / high.sigma, 100 / 30, rtol=1e-10)


def test_bad_input():
    with pytest.raises(ValueError, match="exactly one"):
        fisher_matrix(lambda t: t, np.ones(2))
    with pytest.raises(ValueError, match="ivar must be finite"):
        fisher_matrix(lambda t: jnp.concatenate([t, t]), np.ones(2), np.array([1.0, -1.0, 1.0, 1.0]))
    with pytest.raises(FloatingPointError, match="NaN"):
        fisher_matrix(lambda t: jnp.sqrt(t - 2.0), np.ones(2), np.ones(2))
    with pytest.raises(ValueError, match="not symmetric"):
        cramer_rao_from_fisher(np.array([[1.0, 2.0], [0.0, 1.0]]), ["a", "b"])
