"""The Laplace approximation of a fit's sampled density in z: it whitens the samplers' coordinates
and places the chain starts (Newton iterations from the MAP, see :func:`unconstrained_laplace`)."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from stellarfit.inference.likelihood import FitProblem
from stellarfit.inference._covariance import _gauss_newton_hessian_scaled

__all__ = ["UnconstrainedLaplace", "initial_positions", "laplace_inverse_mass_matrix", "unconstrained_laplace"]


def _theta_jacobian(problem: FitProblem, z: np.ndarray) -> np.ndarray:
    """d theta / d z (p, p) at z, float64."""
    return np.asarray(jax.jacfwd(problem.to_theta)(jnp.asarray(z, jnp.float32)), dtype=np.float64)


def laplace_inverse_mass_matrix(problem: FitProblem, theta_map: np.ndarray, covariance: np.ndarray | None) -> np.ndarray:
    """The Laplace covariance (p, p) in physical theta mapped to z: J^-1 C J^-T, J = d theta/d z at the MAP.

    Parameters without a finite Laplace variance (e.g. vsini at 0, where the
    posterior has no curvature) get unit variance in z and no correlation.
    The result is symmetrized and its eigenvalues clipped to [1e-8, 1e4]
    (relative to z, whose boxes span a few units) so it is a valid metric.
    Returns the (p, p) identity when ``covariance`` is None.
    """
    p = problem.n_parameters
    if covariance is None:
        return np.eye(p)
    covariance = np.asarray(covariance, dtype=np.float64)
    if covariance.shape != (p, p):
        raise ValueError(f"covariance must have shape ({p}, {p}), got {covariance.shape}")
    z_map = np.asarray(problem.to_unconstrained(jnp.asarray(theta_map, jnp.float32)), dtype=np.float64)
    jacobian = _theta_jacobian(problem, z_map)
    good = np.isfinite(np.diag(covariance)) & (np.diag(covariance) > 0)
    good &= np.all(np.isfinite(covariance[:, good]), axis=1)
    result = np.eye(p)
    if np.any(good):
        inverse_jacobian = np.linalg.inv(jacobian)
        block = inverse_jacobian[np.ix_(good, good)] @ covariance[np.ix_(good, good)] @ inverse_jacobian[np.ix_(good, good)].T
        result[np.ix_(good, good)] = block
    result = 0.5 * (result + result.T)
    values, vectors = np.linalg.eigh(result)
    values = np.clip(values, 1e-8, 1e4)
    return (vectors * values) @ vectors.T


def initial_positions(
    problem: FitProblem,
    theta_map: np.ndarray,
    num_chains: int,
    inverse_mass_matrix: np.ndarray | None = None,
    *,
    jitter: float = 0.3,
    seed: int = 0,
) -> np.ndarray:
    """Starting z (num_chains, p) near the MAP: z_map + jitter * N(0, Sigma_z) (Sigma_z = identity if None).

    Each z is clipped to [-8, 8] so no chain starts deep in a box edge's tail.
    """
    z_map = np.asarray(problem.to_unconstrained(jnp.asarray(theta_map, jnp.float32)), dtype=np.float64)
    sigma = np.eye(z_map.size) if inverse_mass_matrix is None else np.asarray(inverse_mass_matrix, dtype=np.float64)
    factor = np.linalg.cholesky(sigma + 1e-12 * np.eye(z_map.size))
    rng = np.random.default_rng(seed)
    z = z_map + jitter * rng.standard_normal((num_chains, z_map.size)) @ factor.T
    return np.clip(z, -8.0, 8.0)



class UnconstrainedLaplace(NamedTuple):
    """The Laplace approximation of the sampled density in z (:func:`unconstrained_laplace`).

    Attributes:
        mode: (p,) z at the maximum of ``problem.log_density_unconstrained``.
        covariance: (p, p) the inverse of minus its Hessian there (eigenvalues of minus the
            Hessian floored at 1/4, i.e. no direction wider than 2 in z).
        log_density: the log density at the mode.
        iterations: Newton iterations taken.
        converged: whether the Newton decrement fell below the tolerance.
    """

    mode: np.ndarray
    covariance: np.ndarray
    log_density: float
    iterations: int
    converged: bool
    curvature_evaluations: int = 0


@jax.jit
def _log_density_and_derivatives(problem: FitProblem, z):
    """log density in z, its gradient (p,) and Hessian (p, p); compiled once per forward model."""
    value, gradient = jax.value_and_grad(problem.log_density_unconstrained)(z)
    return value, gradient, jax.hessian(problem.log_density_unconstrained)(z)


@jax.jit
def _log_density(problem: FitProblem, z):
    return problem.log_density_unconstrained(z)


def _gauss_newton_log_density(problem: FitProblem, z):
    """-|r(z)|^2 / 2 + log |d theta / d z|: the density in z with the continuum profiled (the
    whitened residuals r of Levenberg-Marquardt, priors included)."""
    r = problem.residuals_unconstrained(z)
    return -0.5 * jnp.sum(r * r) + problem.log_abs_det_jacobian(z)


_gauss_newton_log_density_jit = jax.jit(_gauss_newton_log_density)


def _unit_widths(problem: FitProblem):
    """Box widths of theta for scaling its curvature (1 where a box has no width)."""
    widths = jnp.asarray(problem.upper, jnp.float32) - jnp.asarray(problem.lower, jnp.float32)
    return jnp.where(widths > 0, widths, 1.0)


@jax.jit
def _residual_curvature(problem: FitProblem, z):
    """J^T J of the whitened residuals in u = theta / box width at theta(z) (map's Gauss-Newton
    curvature, the data's and the priors'): one forward-mode Jacobian through the emulator."""
    return _gauss_newton_hessian_scaled(problem, problem.to_theta(z), _unit_widths(problem))


@functools.partial(jax.jit, static_argnames="second_order")
def _gauss_newton_chord(problem: FitProblem, z, curvature, second_order: bool = True):
    """:func:`_gauss_newton_log_density`, its exact gradient (one reverse-mode pass through the
    emulator) and the Gauss-Newton Hessian in z from a data curvature in u (:func:`_residual_curvature`)
    computed earlier, mapped through the transform's Jacobian at this z, plus the log Jacobian's
    Hessian and the chain rule's second-order term (:func:`_transform_second_order`): with
    ``curvature`` from this z, -J^T J (J = dr/dz) plus those two."""
    value, gradient = jax.value_and_grad(lambda x: _gauss_newton_log_density(problem, x))(z)
    jacobian = jax.jacfwd(problem.to_theta)(z)  # d theta / d z, triangular
    transform = jacobian / _unit_widths(problem)[:, None]  # d u / d z
    hessian = -transform.T @ curvature @ transform + jax.hessian(problem.log_abs_det_jacobian)(z)
    if second_order:
        hessian = hessian + _transform_second_order(problem, z, jacobian, gradient)
    return value, gradient, hessian


def _transform_second_order(problem: FitProblem, z, jacobian, gradient):
    """The chain rule's second term of the data's Hessian in z: sum_j (d log L / d theta_j)
    d^2 theta_j / dz dz^T, exact from the gradient (no Jacobian through the emulator).

    Gauss-Newton approximates the data's curvature in theta; mapped to z it needs this term as well,
    which is not small where a parameter sits in the sigmoid's tail: there the data still pull on
    theta at the mode in z (balancing the log Jacobian's pull towards the box centre), and leaving the
    term out under-estimates the curvature there by ~(1 - 2 sigmoid(z))^2 (logit), so Newton steps
    overshoot and oscillate about the mode.  At the mode the term is -(d log|d theta/dz| / dz)^2 on
    the diagonal (negative); away from it, it can have either sign, and only its negative part is
    kept, so that the Newton matrix never loses curvature from it."""
    log_jacobian_gradient = jax.grad(problem.log_abs_det_jacobian)(z)
    data_gradient = gradient - log_jacobian_gradient
    fixed = jnp.diag(jacobian) == 0.0  # a zero-width box: theta does not move, the data do not pull on z
    theta_gradient = jnp.linalg.solve((jacobian + jnp.diag(fixed.astype(jacobian.dtype))).T, data_gradient)
    theta_gradient = jax.lax.stop_gradient(jnp.where(fixed, 0.0, theta_gradient))
    second = jax.hessian(lambda x: jnp.dot(theta_gradient, problem.to_theta(x)))(z)
    values, vectors = jnp.linalg.eigh(0.5 * (second + second.T))
    return (vectors * jnp.minimum(values, 0.0)) @ vectors.T


#: smallest eigenvalue of minus the Hessian in z (variance at most 4: even a parameter the data do not
#: constrain at all has the logistic density of the box's sigmoid in z, variance pi^2 / 3)
_CURVATURE_FLOOR = 0.25
#: largest Newton move of one coordinate of z in one iteration
_MAX_NEWTON_STEP = 4.0


def unconstrained_laplace(problem: FitProblem, theta_map: np.ndarray, *, max_iterations: int = 12,
                          tolerance: float = 0.05, gauss_newton: bool = False,
                          curvature_refresh: str = "shortened", curvature: np.ndarray | None = None,
                          start: np.ndarray | None = None, second_order: bool = True) -> UnconstrainedLaplace:
    """Mode and Laplace covariance of the density the samplers draw from, in z.

    Damped Newton iterations on ``problem.log_density_unconstrained`` (log L + log prior
    + log |d theta / d z|, with the problem's own continuum treatment) from the MAP mapped
    to z (clipped to [-8, 8]).  Minus the Hessian is made positive definite by flooring its
    eigenvalues at 1/4, each step is capped at 4 in every coordinate and halved until the
    density does not fall; iterations stop when the Newton decrement g^T H^-1 g / 2 drops
    below ``tolerance`` (nats), or when steps have to be cut below 1/4: a Payne emulator
    with plain leaky ReLU (``activation_sharpness`` 0) is piecewise linear in the labels,
    so the density has kinks and Newton ends up within a fraction of a nat of the mode
    rather than converging -- which is close enough for a mass matrix, a centre for the
    whitening and chain starts.

    Unlike the physical Laplace covariance mapped through d theta / d z at the MAP
    (:func:`laplace_inverse_mass_matrix`), this stays right for parameters at a box edge
    (vsini at 0, an abundance at the edge of its offset box): there the density in z has an
    exponential tail, its mode sits where theta is about one posterior width inside the edge
    and its width is of order 1 in z, whereas the mapped covariance diverges.

    ``gauss_newton=True``: the density with the continuum profiled, -|r|^2 / 2 + log |d theta / d z|
    (r the whitened residuals), and its Gauss-Newton Hessian -J^T J (J = dr/dz) plus the log
    Jacobian's exact Hessian and the negative part of the chain rule's second-order term
    (``second_order``, :func:`_transform_second_order`; without it the curvature of a label in the
    sigmoid's tail is under-estimated and Newton steps overshoot and oscillate there) -- for an
    emulator whose Hessian is expensive (a TransformerPayne on a CPU: ~3 s per Jacobian of r,
    11 s per Hessian).  The data's curvature J^T J is computed in
    physical coordinates (one Jacobian of r) at the start and again only after a step that had to
    be shortened; the other iterations reuse it with the transform's Jacobian at the new z, and
    take the exact gradient (one reverse-mode pass, a fraction of a Jacobian's cost).  The
    parameters move by fractions of their posterior widths near a MAP, where J^T J barely
    changes, while the transform's Jacobian (which moves the mode of a parameter at a box edge
    by widths) stays exact.  Since the gradient is exact, these iterations end at the same mode;
    with a curvature from another z the Newton decrement is only an estimate, so they stop at a
    tenth of ``tolerance``.  ``curvature_refresh="always"`` recomputes the curvature at every
    iteration (the full Gauss-Newton iteration).  ``curvature_evaluations`` counts the Jacobians of r.
    ``curvature`` (with ``gauss_newton=True``): a data curvature in u to start from instead of a
    Jacobian at the start, treated like one from an earlier iterate -- the one the MAP's polish
    ended with (``MapResult.curvature``; ``fit_star`` passes it for the TransformerPayne).
    ``start``: the z to start from instead of the MAP's (e.g. where a parameter's MAP is at a box
    edge, z there is clipped to -+8 while its mode in z is usually well inside; ``fit_star`` starts
    such parameters at the fast path's mode).  ``second_order=False``: the plain Gauss-Newton
    Hessian, without the term above (for comparisons: benchmarks/bench_edge_labels.py).
    """
    if curvature_refresh not in ("shortened", "always"):
        raise ValueError(f"curvature_refresh must be 'shortened' or 'always', got {curvature_refresh!r}")
    if curvature is not None:
        p = problem.n_parameters
        curvature = np.asarray(curvature, np.float64)
        if not gauss_newton or curvature.shape != (p, p) or not np.all(np.isfinite(curvature)):
            raise ValueError(f"curvature must be a finite ({p}, {p}) Gauss-Newton curvature, with gauss_newton=True")
        curvature = jnp.asarray(curvature, jnp.float32)
    density = _gauss_newton_log_density_jit if gauss_newton else _log_density
    evaluations, fresh = 0, True

    def derivatives(z, refresh: bool = True):
        nonlocal curvature, evaluations, fresh
        z = jnp.asarray(z, jnp.float32)
        if not gauss_newton:
            return tuple(np.asarray(v, np.float64) for v in _log_density_and_derivatives(problem, z))
        if refresh or curvature is None:
            curvature, evaluations, fresh = _residual_curvature(problem, z), evaluations + 1, True
        else:
            fresh = False
        return tuple(np.asarray(v, np.float64) for v in _gauss_newton_chord(problem, z, curvature, second_order))

    z = np.clip(np.asarray(problem.to_unconstrained(jnp.asarray(theta_map, jnp.float32)), np.float64), -8.0, 8.0)
    if start is not None:
        start = np.asarray(start, np.float64)
        if start.shape != z.shape or not np.all(np.isfinite(start)):
            raise ValueError(f"start must be a finite z of shape {z.shape} ({problem.names}), got shape {start.shape}")
        z = np.clip(start, -8.0, 8.0)
    value, gradient, hessian = derivatives(z, refresh=curvature is None)
    finite = lambda: bool(np.isfinite(value) and np.all(np.isfinite(gradient)) and np.all(np.isfinite(hessian)))  # noqa: E731
    last_finite = (z, value, gradient, hessian) if finite() else None
    converged = False
    iteration = 0
    for iteration in range(1, max_iterations + 1):
        if not finite():
            break
        last_finite = (z, value, gradient, hessian)
        values, vectors = np.linalg.eigh(-0.5 * (hessian + hessian.T))
        step = vectors @ ((vectors.T @ gradient) / np.maximum(values, _CURVATURE_FLOOR))
        decrement = 0.5 * float(gradient @ step)
        # with a curvature from another z the decrement is an estimate: ask for a tenth of the
        # tolerance (a few more gradients; the gradient is exact, so the iteration still ends at the mode)
        if decrement < (tolerance if fresh else 0.1 * tolerance):
            converged = True
            break
        step *= min(1.0, _MAX_NEWTON_STEP / np.max(np.abs(step)))
        scale = 1.0
        while scale >= 1.0 / 16.0:
            trial_value = float(density(problem, jnp.asarray(z + scale * step, jnp.float32)))
            if np.isfinite(trial_value) and trial_value >= value - 1e-6 * abs(value):
                break
            scale *= 0.5
        if scale < 1.0 / 16.0:
            break  # no step improves the density: float32 round-off, or a kink of a piecewise-linear emulator
        z = z + scale * step
        value, gradient, hessian = derivatives(z, refresh=scale < 1.0 or curvature_refresh == "always")
        if scale < 0.25:
            break  # steps cut short by kinks (a leaky-ReLU emulator is piecewise linear): close enough
    if not finite():
        if last_finite is None:  # no finite curvature anywhere: the caller falls back (a non-finite result)
            nan = np.full((z.size, z.size), np.nan)
            return UnconstrainedLaplace(mode=np.asarray(z, np.float64), covariance=nan, log_density=float(value),
                                        iterations=int(iteration), converged=False, curvature_evaluations=evaluations)
        # the derivatives went non-finite after a step (float32 overflow far into a box's tail, say):
        # the last point with finite ones is the approximation
        z, value, gradient, hessian = last_finite
        converged = False
    values, vectors = np.linalg.eigh(-0.5 * (hessian + hessian.T))
    covariance = (vectors / np.maximum(values, _CURVATURE_FLOOR)) @ vectors.T
    return UnconstrainedLaplace(mode=z, covariance=0.5 * (covariance + covariance.T), log_density=float(value),
                                iterations=int(iteration), converged=bool(converged), curvature_evaluations=evaluations)
