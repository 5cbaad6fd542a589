"""NUTS (NumPyro and BlackJAX) against a posterior known exactly.

The linear toy (tests/_linear_toy.py) with rv held by a zero-width box, vsini by vsini_max = 0 and no
continuum (an already normalized spectrum) is a model linear in its three labels: with Gaussian noise
and the flat prior of a box far wider than the posterior, the posterior is the Gaussian with
covariance (J^T W J)^-1 around the weighted least-squares solution, written out here with numpy.
The samplers' means and standard deviations must match it within their own Monte Carlo errors
(from the effective sample sizes they report).
"""

import time

import numpy as np
import pytest

from _linear_toy import SPEC, LinearToyEmulator, NATIVE, observed_normalized
from stellarfit.inference import FitProblem, forward_model_for
from stellarfit.inference.nuts import sample_blackjax, sample_numpyro

R_OBS = 20_000.0
TRUTH = np.array([0.55, 0.35, 0.6])
RV = 7.3


@pytest.fixture(scope="module")
def linear_problem():
    wavelength = NATIVE[(NATIVE >= 5010.0) & (NATIVE <= 5050.0)]
    model = forward_model_for(LinearToyEmulator(), wavelength, R_OBS, rv_range=(-50.0, 50.0), vsini_max=0.0)
    sigma = np.full(wavelength.size, 1.0 / 80.0)
    flux = observed_normalized(TRUTH, RV, wavelength, R_OBS) + np.random.default_rng(4).normal(size=wavelength.size) * sigma
    ivar = 1.0 / sigma**2
    problem = FitProblem(model, SPEC, flux, ivar, np.zeros((wavelength.size, 0)), vsini_max=0.0, rv_range=(RV, RV),
                         continuum="marginalize")
    # the exact posterior: flux = 1 + J theta + noise
    jacobian = np.stack([observed_normalized(np.eye(3)[k], RV, wavelength, R_OBS) - 1.0 for k in range(3)], axis=1)
    covariance = np.linalg.inv(jacobian.T @ (jacobian * ivar[:, None]))
    mean = covariance @ (jacobian.T @ (ivar * (flux - 1.0)))
    assert np.all(np.sqrt(np.diag(covariance)) < 0.02) and np.all((mean > 0.1) & (mean < 0.9))  # far from the box edges
    return problem, mean, covariance


# ~45 s each on a loaded 2-core CPU; BlackJAX's in .ci/run's slow step
@pytest.mark.parametrize("sampler", [sample_numpyro, pytest.param(sample_blackjax, marks=pytest.mark.slow)],
                         ids=["numpyro", "blackjax"])
def test_nuts_matches_the_exact_gaussian_posterior(linear_problem, sampler):
    start = time.perf_counter()
    problem, mean, covariance = linear_problem
    theta = np.append(mean, [RV, 0.0])
    run = sampler(problem, theta, None, num_warmup=200, num_samples=500, num_chains=2, seed=1, chain_method="sequential")
    draws = run.samples.reshape(-1, run.samples.shape[-1])
    assert np.allclose(draws[:, 3], RV, rtol=0, atol=1e-5) and np.all(draws[:, 4] == 0.0)  # held by their boxes
    exact_sd = np.sqrt(np.diag(covariance))
    ess = np.array([run.diagnostics["ess_bulk"][name] for name in ("a", "b", "c")])
    assert np.all(ess > 200), ess
    sd = draws[:, :3].std(axis=0)
    # Monte Carlo standard errors of a mean and of a standard deviation of a Gaussian from ess draws
    assert np.all(np.abs(draws[:, :3].mean(axis=0) - mean) < 4.0 * exact_sd / np.sqrt(ess)), (draws[:, :3].mean(axis=0), mean)
    assert np.all(np.abs(sd / exact_sd - 1.0) < 4.0 / np.sqrt(2.0 * ess)), (sd / exact_sd, ess)
    exact_correlation = covariance / np.outer(exact_sd, exact_sd)
    np.testing.assert_allclose(np.corrcoef(draws[:, :3].T), exact_correlation, atol=4.0 / np.sqrt(ess.min()))
    print(f"{run.diagnostics['backend']}: sd / exact {sd / exact_sd}, mean offset / sd "
          f"{(draws[:, :3].mean(axis=0) - mean) / exact_sd}, ess {ess} ({time.perf_counter() - start:.1f} s)")
