"""Laplace and Gauss-Newton covariances of a fit at its MAP: the Hessian of the negative log posterior in
box-scaled parameters, inverted in float64 with fixed parameters and flat directions left out."""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np

from stellarfit.inference.likelihood import FitProblem

__all__ = ["covariance_is_proper", "gauss_newton_covariance", "laplace_covariance"]


@jax.jit
def _hessian_scaled(problem: FitProblem, origin, widths):
    """Hessian of the negative log posterior in u, theta = origin + u * widths, at u = 0
    (rows and columns of zero widths, i.e. fixed parameters, are 0)."""

    def negative_log_posterior(u):
        t = origin + u * widths
        return -(problem.log_likelihood(t) + problem.log_prior(t))

    return jax.hessian(negative_log_posterior)(jnp.zeros_like(origin))


@jax.jit
def _gauss_newton_hessian_scaled(problem: FitProblem, origin, widths):
    """J^T J of the whitened residuals (:meth:`FitProblem.residuals`: noise, error modes, Gaussian
    priors; the continuum profiled) in u, theta = origin + u * widths, at u = 0."""
    jacobian = jax.jacfwd(lambda u: problem.residuals(origin + u * widths))(jnp.zeros_like(origin))
    return jacobian.T @ jacobian


def gauss_newton_covariance(problem: FitProblem, theta: np.ndarray) -> np.ndarray:
    """Inverse Gauss-Newton Hessian J^T J of the negative log posterior in physical theta.

    Positive semi-definite by construction (a direction the data and priors do not constrain
    gets NaN), so it stands in for :func:`laplace_covariance` where the full Hessian at a MAP is
    not positive definite: a MAP pressed against a box (or against the interval an
    [alpha/Fe]-relative abundance leaves its reference) is not a stationary point, and the
    Hessian there can have negative eigenvalues.  It omits the residual-weighted curvature,
    small when the fit is good.
    """
    widths = problem.box_widths()
    origin = np.asarray(theta, dtype=np.float64)
    dtype = jnp.result_type(float)
    hessian_scaled = _gauss_newton_hessian_scaled(problem, jnp.asarray(origin, dtype), jnp.asarray(widths, dtype))
    return _invert_hessian(np.asarray(hessian_scaled, dtype=np.float64), widths)


def covariance_is_proper(covariance: np.ndarray | None, widths: np.ndarray) -> bool:
    """True when the free parameters' (box width > 0) finite block of ``covariance`` is positive
    definite: no negative or zero variance, no negative eigenvalue."""
    if covariance is None:
        return False
    covariance = np.asarray(covariance, dtype=np.float64)
    variance = np.diag(covariance)
    free = np.asarray(widths) > 0
    known = free & np.isfinite(variance)
    if not known.any():
        return False
    block = covariance[np.ix_(known, known)]
    if not np.all(np.isfinite(block)) or np.any(np.diag(block) <= 0):
        return False
    scale = 1.0 / np.sqrt(np.diag(block))
    return bool(np.linalg.eigvalsh(block * np.outer(scale, scale)).min() > 1e-10)


def laplace_covariance(problem: FitProblem, theta: np.ndarray) -> np.ndarray:
    """Inverse Hessian of the negative log posterior in physical theta; NaN if singular.

    The Hessian is taken in parameters scaled by their box widths (for
    conditioning) in the model's dtype and inverted in float64.  Fixed
    parameters (zero-width box) have zero rows and columns.
    """
    widths = problem.box_widths()
    origin = np.asarray(theta, dtype=np.float64)
    dtype = jnp.result_type(float)
    hessian_scaled = _hessian_scaled(problem, jnp.asarray(origin, dtype), jnp.asarray(widths, dtype))
    return _invert_hessian(np.asarray(hessian_scaled, dtype=np.float64), widths)


def _invert_hessian(hessian_scaled: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Covariance from the Hessian in width-scaled parameters: fixed parameters (width 0) get zero
    rows and columns, the rest is inverted in physical units."""
    covariance = np.zeros_like(hessian_scaled)
    free = np.flatnonzero(widths > 0)
    if free.size:
        block = hessian_scaled[np.ix_(free, free)] / np.outer(widths[free], widths[free])
        covariance[np.ix_(free, free)] = _invert_free(block)
    return covariance


def _invert_free(hessian: np.ndarray) -> np.ndarray:
    hessian = 0.5 * (hessian + hessian.T)
    diagonal = np.diag(hessian)
    if not np.all(np.isfinite(hessian)) or np.any(diagonal <= 0):
        # vsini at 0 (or any parameter at a flat spot) has no curvature: invert the rest
        keep = np.flatnonzero(np.isfinite(diagonal) & (diagonal > 0))
        covariance = np.full_like(hessian, np.nan)
        if keep.size:
            covariance[np.ix_(keep, keep)] = _safe_inverse(hessian[np.ix_(keep, keep)])
        return covariance
    return _safe_inverse(hessian)


def _safe_inverse(matrix: np.ndarray) -> np.ndarray:
    scale = 1.0 / np.sqrt(np.abs(np.diag(matrix)))
    scaled = matrix * np.outer(scale, scale)
    try:
        inverse = np.linalg.inv(scaled)
    except np.linalg.LinAlgError:
        return np.full_like(matrix, np.nan)
    return inverse * np.outer(scale, scale)
