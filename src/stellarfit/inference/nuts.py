"""NUTS posterior sampling of a :class:`~stellarfit.inference.FitProblem` with NumPyro or BlackJAX.

This module owns:

- :func:`numpyro_fit_model` (the problem as its argument) and
  :func:`numpyro_model` (bound to one problem): the NumPyro model of a fit,
  which users can extend;
- :func:`sample_numpyro`: NumPyro's NUTS kernel (``numpyro.infer.hmc.hmc``)
  on that model, warm-up and draws of all chains in one jitted program of the
  problem (chains one after another on a CPU, vectorized on an accelerator),
  compiled once per forward model like the BlackJAX path; on a multi-core CPU
  the chains are handed one at a time to worker processes pinned one per
  core, whichever is free, each running them in that program
  (``chain_method="processes"``);
- :func:`sample_blackjax`: BlackJAX Stan-style window adaptation followed by
  NUTS, draws by ``lax.scan``;
- :func:`unconstrained_laplace`: mode and Laplace covariance of the sampled
  density in z (Newton iterations from the MAP), which whiten the coordinates
  the samplers move in and place the chain starts;
- :func:`laplace_inverse_mass_matrix`, :func:`initial_positions`: the physical
  Laplace covariance mapped to z at the MAP, and starts drawn from it (kept as
  utilities; the samplers use :func:`unconstrained_laplace`);
- :func:`sampling_diagnostics`, :func:`summarize_samples`: R-hat, bulk and tail
  ESS and percentile summaries (ArviZ-stats array functions).

Both samplers work on the unconstrained vector z of the FitProblem (the
sigmoid map of each parameter's box, see
:mod:`stellarfit.inference.likelihood`) with the target density
``FitProblem.log_density_unconstrained(z)`` = log L + log prior + log|d theta/d z|,
i.e. a uniform prior in each box times any user Gaussian priors.  Use a
problem built with ``continuum="marginalize"`` so that the continuum
polynomial is integrated out analytically rather than profiled.  Samples are
returned in physical units, shape (n_chains, n_draws, p), parameters in
``problem.names`` order.

Warm start and coordinates (every ``mass_matrix="laplace..."``): the
Laplace approximation of the sampled density in z, N(mode, Sigma) with
Sigma = L L^T (:func:`unconstrained_laplace`), whitens the coordinates: the
samplers move w with z = mode + L w / sqrt(0.001), so that the Laplace
covariance is 0.001 I in w.  Posterior widths in z span three decades
(rv: ~0.0015, a parameter at a box edge: ~1), while Stan-style window
adaptation (NumPyro's and BlackJAX's alike) shrinks every window's covariance
estimate toward 0.001 I with weight 5 / (n + 5); in w that target *is* the
Laplace approximation, so the dense adapted matrix is shrunk toward it instead
of being swamped by an identity far wider than the posterior (for the shipped
example star with ``payne-default``, 4 chains x (200 + 200): 151 leapfrog
steps per warm-up iteration and 40 per draw before, 27 and 23 after).  Chains
start at mode + jitter N(0, Sigma) in z.  ``mass_matrix="dense"`` and
``"diagonal"`` sample z itself from an identity (unit) inverse mass matrix.

Warm-up schedule, the default ``"laplace-pooled"`` (:func:`pooled_phases`): 75
iterations adapt the step size with the Laplace metric; the next 125 run at
that step size, and their positions in *all* chains together (500 draws for 4
chains, each chain centred on its own mean) estimate one dense metric, shrunk
toward the Laplace one as Stan shrinks a window's; the chains then go on from
where they are with that metric, adapting the step size in the last 300
warm-up iterations.  The first 200 iterations take at most 2^6 - 1 = 63 leapfrog steps each
(:func:`first_phase_depth`): where the Laplace metric fits the posterior badly, their
trajectories ran ~100 steps and took half the fit's gradients; capped, those fits take
0.63-0.81x the gradients and the others are unchanged (a cap of 31 cut more but mixed one
star worse; docs/fitting.md, Speed).  Each chain estimating its own metric from its own 375
draws (``"laplace"``) left the chains' step sizes 0.26-0.45 on a noisy star
and their trees long; the pooled metric gives them all ~0.4, and the fit 16-20%
fewer gradients (docs/fitting.md, Speed).  The chains must meet once in the
middle of the warm-up, so a fit runs two programs.

Other schedules (:func:`adaptation_windows`): ``"laplace"`` re-estimates the
mass matrix once, from one long window between Stan's 75- and 50-iteration
step-size buffers; ``"laplace-windows"`` (the former default), ``"dense"`` and
``"diagonal"`` use Stan's doubling windows (25, 50, 100, ... iterations).
Started from the Laplace metric, the short windows only degraded it, and each
window end restarted the step-size search: one window needs about a fifth
fewer warm-up gradients (a third on the example star) at the same or better
draw efficiency (docs/fitting.md, Speed).

References: NUTS, Hoffman & Gelman (2014, JMLR 15, 1593); window adaptation as
in Stan (Stan Reference Manual, "HMC algorithm parameters"); rank-normalized
split R-hat and bulk/tail ESS, Vehtari et al. (2021, Bayesian Analysis 16, 667).
Tree-depth hits are counted as trajectories that used the maximum number of
doublings (2^max_tree_depth - 1 leapfrog steps).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import threading
import time
from collections.abc import Sequence
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from stellarfit.inference.likelihood import FitProblem
from stellarfit.inference.map import _gauss_newton_hessian_scaled

__all__ = [
    "MASS_MATRICES",
    "adaptation_windows",
    "first_phase_depth",
    "pooled_phases",
    "sample_numpyro_batch",
    "SamplerResult",
    "check_sampler_settings",
    "initial_positions",
    "laplace_inverse_mass_matrix",
    "numpyro_fit_model",
    "numpyro_model",
    "sample_blackjax",
    "sample_numpyro",
    "sampling_diagnostics",
    "summarize_samples",
]

#: mass-matrix choices: adapted diagonal, adapted dense from the identity, adapted dense from the Laplace
#: covariance in one long window ("laplace") or in Stan's doubling windows ("laplace-windows"), the
#: Laplace covariance kept, step size adapted only ("laplace-fixed"), or one dense metric from the
#: warm-up positions of all chains ("laplace-pooled", the default; see pooled_phases)
MASS_MATRICES = ("diagonal", "dense", "laplace", "laplace-windows", "laplace-fixed", "laplace-pooled")
CHAIN_METHODS = ("auto", "vectorized", "sequential", "parallel", "processes")


@dataclasses.dataclass
class SamplerResult:
    """Posterior draws and sampler diagnostics.

    Attributes:
        samples: (n_chains, n_draws, p) float64 draws in physical units, ``names`` order.
        names: parameter names.
        diagnostics: JSON-ready dict: ``r_hat``, ``ess_bulk``, ``ess_tail`` (dicts by
            parameter), ``divergences``, ``tree_depth_hits``, ``max_tree_depth``,
            ``step_size`` (list per chain), ``gradient_evaluations`` (leapfrog steps
            while drawing, all chains), ``gradient_evaluations_warmup``,
            ``gradient_evaluations_per_ess`` ((warm-up + draws) / min bulk ESS),
            ``mean_acceptance``, ``elapsed_s``, ``backend`` and the settings
            (``first_phase_max_tree_depth``: the cap of the pooled schedule's first phase,
            :func:`first_phase_depth`; None for other schedules).
        sample_stats: per-draw arrays (n_chains, n_draws): ``diverging``, ``n_steps``,
            ``tree_depth``, ``acceptance_rate``, ``lp`` (log density in z).
        warmup_n_steps: (n_chains, num_warmup) leapfrog steps of each warm-up iteration (every
            phase of the schedule, in order; see :func:`pooled_phases`), or None.
    """

    samples: np.ndarray
    names: tuple[str, ...]
    diagnostics: dict[str, Any]
    sample_stats: dict[str, np.ndarray]
    warmup_n_steps: np.ndarray | None = None

    @property
    def n_chains(self) -> int:
        return self.samples.shape[0]

    @property
    def n_draws(self) -> int:
        return self.samples.shape[1]


# -- settings ---------------------------------------------------------------------
def check_sampler_settings(problem, num_warmup, num_samples, num_chains, max_tree_depth, target_accept, mass_matrix,
                           jitter=0.3, chain_method="auto"):
    """Raise ValueError (TypeError for a wrong problem) naming any bad sampler setting; ``problem`` may be None."""
    if problem is not None and not isinstance(problem, FitProblem):
        raise TypeError(f"expected a FitProblem, got {type(problem).__name__}")
    for name, value, minimum in (("num_warmup", num_warmup, 1), ("num_samples", num_samples, 2), ("num_chains", num_chains, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if isinstance(max_tree_depth, bool) or not isinstance(max_tree_depth, (int, np.integer)) or not 1 <= max_tree_depth <= 15:
        raise ValueError(f"max_tree_depth must be an integer in [1, 15] (2^depth - 1 leapfrog steps at most), got {max_tree_depth!r}")
    if not 0.0 < float(target_accept) < 1.0:
        raise ValueError(f"target_accept must lie strictly between 0 and 1 (0.8 is usual), got {target_accept!r}")
    if mass_matrix not in MASS_MATRICES:
        raise ValueError(f"mass_matrix must be one of {MASS_MATRICES}, got {mass_matrix!r}")
    if not float(jitter) >= 0.0:
        raise ValueError(f"jitter must be >= 0, got {jitter!r}")
    if chain_method not in CHAIN_METHODS:
        raise ValueError(f"chain_method must be one of {CHAIN_METHODS}, got {chain_method!r}")


# -- warm starts ------------------------------------------------------------------
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


# -- diagnostics ------------------------------------------------------------------
def sampling_diagnostics(samples: np.ndarray, names) -> dict[str, dict[str, float]]:
    """Rank-normalized split R-hat, bulk ESS and tail ESS (5% and 95% quantiles) per parameter.

    Args:
        samples: (n_chains, n_draws, p) draws.
        names: p parameter names.
    Returns ``{"r_hat": {name: value}, "ess_bulk": {...}, "ess_tail": {...}}``.
    """
    from arviz_stats.base import array_stats

    samples = np.asarray(samples, dtype=np.float64)
    if samples.ndim != 3 or samples.shape[2] != len(names):
        raise ValueError(f"samples must have shape (n_chains, n_draws, {len(names)}), got {samples.shape}")
    with np.errstate(invalid="ignore", divide="ignore"):
        r_hat = array_stats.rhat(samples, chain_axis=0, draw_axis=1)
        bulk = array_stats.ess(samples, chain_axis=0, draw_axis=1, method="bulk")
        tail = array_stats.ess(samples, chain_axis=0, draw_axis=1, method="tail", prob=(0.05, 0.95))
    return {
        "r_hat": {n: float(v) for n, v in zip(names, np.atleast_1d(r_hat))},
        "ess_bulk": {n: float(v) for n, v in zip(names, np.atleast_1d(bulk))},
        "ess_tail": {n: float(v) for n, v in zip(names, np.atleast_1d(tail))},
    }


def summarize_samples(samples: np.ndarray, names) -> dict[str, dict[str, float]]:
    """Per parameter: median (``value``), 16th/84th percentiles (``lower``/``upper``),
    ``error`` = half the 68% width, ``mean``, ``std``, 2.5/97.5 percentiles (``lower95``/``upper95``)."""
    flat = np.asarray(samples, dtype=np.float64).reshape(-1, len(names))
    q = np.percentile(flat, [2.5, 16.0, 50.0, 84.0, 97.5], axis=0)
    out = {}
    for i, name in enumerate(names):
        out[name] = {
            "value": float(q[2, i]), "lower": float(q[1, i]), "upper": float(q[3, i]),
            "error": float(0.5 * (q[3, i] - q[1, i])), "mean": float(flat[:, i].mean()), "std": float(flat[:, i].std(ddof=1)),
            "lower95": float(q[0, i]), "upper95": float(q[4, i]),
        }
    return out


def _finish(problem, z, stats, warmup_steps, step_size, settings, start_time, laplace=None) -> SamplerResult:
    """Physical samples, per-draw stats and the diagnostics dict."""
    z = np.asarray(z)
    samples = np.asarray(jax.vmap(jax.vmap(problem.to_theta))(jnp.asarray(z, jnp.float32)), dtype=np.float64)
    names = problem.names
    stats = {k: np.asarray(v) for k, v in stats.items()}
    diagnostics: dict[str, Any] = sampling_diagnostics(samples, names)
    gradient_draws = int(np.sum(stats["n_steps"]))
    gradient_warmup = int(np.sum(warmup_steps))
    finite_ess = [v for v in diagnostics["ess_bulk"].values() if np.isfinite(v)]
    min_ess = min(finite_ess) if finite_ess else float("nan")
    max_steps = 2 ** settings["max_tree_depth"] - 1
    diagnostics.update(
        divergences=int(np.sum(stats["diverging"])),
        tree_depth_hits=int(np.sum(stats["n_steps"] >= max_steps)),
        step_size=[float(s) for s in np.atleast_1d(step_size)],
        gradient_evaluations=gradient_draws,
        gradient_evaluations_warmup=gradient_warmup,
        gradient_evaluations_per_ess=float((gradient_draws + gradient_warmup) / min_ess) if min_ess > 0 else float("nan"),
        min_ess_bulk=float(min_ess),
        mean_acceptance=float(np.mean(stats["acceptance_rate"])),
        elapsed_s=time.perf_counter() - start_time,
        **settings,
    )
    if laplace is not None:
        diagnostics.update(laplace_newton_iterations=laplace.iterations, laplace_converged=laplace.converged)
    warmup = np.asarray(warmup_steps)
    warmup = warmup.astype(np.int64) if warmup.ndim == 2 and warmup.shape[0] == samples.shape[0] else None
    return SamplerResult(samples=samples, names=names, diagnostics=diagnostics, sample_stats=stats, warmup_n_steps=warmup)


class _Start(NamedTuple):
    """Where and in which coordinates the chains start (see :func:`_prepare`)."""

    w_init: np.ndarray  # (num_chains, p) chain starts in the sampled coordinates w
    center: np.ndarray  # (p,) z = center + factor @ w
    factor: np.ndarray  # (p, p) lower triangular
    inverse_mass: np.ndarray  # (p, p) or (p,) initial inverse mass matrix in w
    laplace: UnconstrainedLaplace


def _prepare(problem, theta_map, covariance, num_chains, mass_matrix, jitter, seed) -> _Start:
    """The z-space Laplace approximation, the sampled coordinates and the chain starts.

    Chains start at mode + jitter * N(0, Sigma) in z (clipped to [-8, 8]) from the
    Laplace approximation of the sampled density in z (:func:`unconstrained_laplace`;
    if that fails, the MAP and the physical ``covariance`` mapped to z).  With
    ``mass_matrix="laplace"`` the samplers then work in whitened coordinates
    w = L^-1 (z - mode), Sigma = L L^T, with an identity initial inverse mass matrix;
    otherwise w = z.
    """
    theta_map = np.asarray(theta_map, dtype=np.float64)
    if theta_map.shape != (problem.n_parameters,):
        raise ValueError(f"theta_map must have shape ({problem.n_parameters},) ({problem.names}), got {theta_map.shape}")
    if not np.all(np.isfinite(theta_map)):
        raise ValueError(f"theta_map must be finite, got {theta_map}")
    p = problem.n_parameters
    laplace = unconstrained_laplace(problem, theta_map)
    center, sigma = laplace.mode, laplace.covariance
    if not (np.all(np.isfinite(center)) and np.all(np.isfinite(sigma))):
        center = np.clip(np.asarray(problem.to_unconstrained(jnp.asarray(theta_map, jnp.float32)), np.float64), -8.0, 8.0)
        sigma = laplace_inverse_mass_matrix(problem, theta_map, covariance)
    factor = np.linalg.cholesky(sigma + 1e-12 * np.trace(sigma) / p * np.eye(p))
    rng = np.random.default_rng(seed)
    z_init = np.clip(center + jitter * rng.standard_normal((num_chains, p)) @ factor.T, -8.0, 8.0)
    if _whitened(mass_matrix):
        scale = _WHITENED_VARIANCE ** 0.5
        w_init = scale * np.linalg.solve(factor, (z_init - center).T).T
        return _Start(w_init, center, factor / scale, _WHITENED_VARIANCE * _laplace_inverse_mass(p), laplace)
    inverse_mass = np.eye(p) if mass_matrix == "dense" else np.ones(p)
    return _Start(z_init, np.zeros(p), np.eye(p), inverse_mass, laplace)


#: variance of the Laplace approximation in the sampled coordinates of mass_matrix="laplace": the
#: target toward which Stan-style window adaptation (NumPyro's and BlackJAX's) shrinks each window's
#: covariance estimate, (n / (n + 5)) C + (5 / (n + 5)) 1e-3 I
_WHITENED_VARIANCE = 1e-3
#: mass-matrix adaptation in the whitened coordinates of mass_matrix="laplace"
_LAPLACE_ADAPTATION = "dense"


def _laplace_inverse_mass(p: int) -> np.ndarray:
    return np.eye(p) if _LAPLACE_ADAPTATION == "dense" else np.ones(p)


def _whitened(mass_matrix: str) -> bool:
    """Whether the samplers move in the Laplace-whitened coordinates w."""
    return mass_matrix in ("laplace", "laplace-windows", "laplace-fixed", "laplace-pooled")


#: mass_matrix="laplace-pooled": iterations of the first phase that adapt the step size only, then
#: iterations whose positions (all chains together) estimate the metric of the rest of the run
_POOLED_BUFFER = 75
_POOLED_COLLECT = 125
#: tree-depth cap of the pooled schedule's first phase (None: max_tree_depth throughout): on the Laplace
#: metric, stars whose posterior is far from it took ~100 leapfrog steps per iteration there, half their
#: gradients; 63 at most cut those fits to 0.63-0.81x and left the others alike (docs/fitting.md, Speed)
_FIRST_PHASE_DEPTH: int | None = 6


def pooled_phases(num_warmup: int) -> tuple[int, int, int]:
    """(buffer, collect, rest) of mass_matrix="laplace-pooled"'s warm-up: ``buffer`` iterations adapt the
    step size with the Laplace metric, the next ``collect`` run at that step size and their positions in
    every chain estimate one dense metric, and the last ``rest`` adapt the step size with it.  For 500
    warm-up iterations (75, 125, 300); below 250 the phases take 15%, 45% and 40% of the warm-up; below
    20 there is no pooling ((n, 0, 0): the Laplace metric throughout, step size adapted)."""
    n = int(num_warmup)
    if n < 20:  # too short to estimate a metric: the Laplace metric throughout (as "laplace-fixed")
        return n, 0, 0
    buffer, collect = _POOLED_BUFFER, _POOLED_COLLECT
    if buffer + collect + 50 > n:
        buffer, collect = int(0.15 * n), int(0.45 * n)
    return buffer, collect, n - buffer - collect


def first_phase_depth(num_warmup: int, mass_matrix: str, max_tree_depth: int) -> int | None:
    """Tree-depth cap of the pooled schedule's first phase (its buffer and collecting iterations):
    ``min(max_tree_depth, _FIRST_PHASE_DEPTH)``, or None for a schedule without that phase."""
    if mass_matrix != "laplace-pooled" or pooled_phases(num_warmup)[1] == 0:
        return None
    return int(max_tree_depth) if _FIRST_PHASE_DEPTH is None else min(int(max_tree_depth), _FIRST_PHASE_DEPTH)


def _unpooled(mass_matrix: str) -> str:
    """The schedule a sampler runs in one go: "laplace-pooled" too short to pool keeps the Laplace metric."""
    return "laplace-fixed" if mass_matrix == "laplace-pooled" else mass_matrix


def pooled_inverse_mass(w: np.ndarray, prior_variance: float) -> np.ndarray:
    """Dense metric from positions ``w`` (chains, draws, p) of every chain: their covariance about
    each chain's mean (a chain's offset from the others is not spread), shrunk toward
    ``prior_variance`` I as Stan regularizes a window's estimate: (n C + 5 v I) / (n + 5).  Chains
    with a non-finite position are left out; with none left, the metric is ``prior_variance`` I."""
    w = np.asarray(w, np.float64)
    w = w[np.all(np.isfinite(w), axis=(1, 2))]
    p = w.shape[-1]
    if w.shape[0] == 0 or w.shape[1] < 2:
        return prior_variance * np.eye(p)
    centred = (w - w.mean(axis=1, keepdims=True)).reshape(-1, p)
    n = centred.shape[0]
    covariance = centred.T @ centred / max(n - w.shape[0], 1)
    return (n * covariance + 5.0 * prior_variance * np.eye(p)) / (n + 5.0)


def _run_schedule(run: Callable, keys, w_init, inverse_mass, num_warmup: int, num_samples: int, mass_matrix: str,
                  max_tree_depth: int, *, per_star: bool = False):
    """``run(keys, w_init, inverse_mass, num_warmup, num_samples, mass_matrix, depth)`` -> (draws, step_size,
    warm-up steps) for the whole schedule.  "laplace-pooled" (:func:`pooled_phases`) is two runs: the
    first ends at the last collecting iteration (its "draws" are those iterations), its positions give
    the pooled metric, and the second goes on from each chain's last position with it; warm-up steps
    count both phases.  ``draws`` is (w, lp, diverging, n_steps, ...), chains (and with ``per_star``,
    stars before them) leading."""
    buffer, collect, rest = pooled_phases(num_warmup)
    if mass_matrix != "laplace-pooled" or collect == 0:
        return run(keys, w_init, inverse_mass, num_warmup, num_samples, _unpooled(mass_matrix), max_tree_depth)
    fold = jax.vmap(lambda key: jax.random.fold_in(key, 1))  # the first phase's own random numbers
    first, _, warmup1 = run(jax.vmap(fold)(keys) if per_star else fold(keys), w_init, inverse_mass, buffer, collect,
                            "laplace-fixed", first_phase_depth(num_warmup, mass_matrix, max_tree_depth))
    w1, steps1 = np.asarray(first[0]), np.asarray(first[3])
    pooled = (np.stack([pooled_inverse_mass(star, _WHITENED_VARIANCE) for star in w1]) if per_star
              else pooled_inverse_mass(w1, _WHITENED_VARIANCE))
    draws, step_size, warmup2 = run(keys, w1[..., -1, :], pooled, rest, num_samples, "laplace-fixed", max_tree_depth)
    return draws, step_size, np.concatenate([np.asarray(warmup1), steps1, np.asarray(warmup2)], axis=-1)


def _dense_adaptation(mass_matrix: str) -> bool:
    return mass_matrix == "dense" or (_whitened(mass_matrix) and _LAPLACE_ADAPTATION == "dense")


# -- warm-up schedule ---------------------------------------------------------------
def adaptation_windows(num_warmup: int, mass_matrix: str = "laplace") -> list[tuple[int, int]]:
    """Warm-up windows as inclusive (start, end) iteration ranges covering ``range(num_warmup)``.

    The first and last ranges are the fast buffers (step size only), those between
    them the slow windows at whose ends the mass matrix is re-estimated.  Stan's
    schedule (``"dense"``, ``"diagonal"``, ``"laplace-windows"``): a 75-iteration
    buffer, windows of 25, 50, 100, ... iterations (the last one stretched to the
    end buffer) and a 50-iteration end buffer; for 500 warm-up iterations
    (0-74), (75-99), (100-149), (150-249), (250-449), (450-499).  ``"laplace"``:
    the same buffers around one window, (0-74), (75-449), (450-499).  Its chains
    start with the Laplace metric, which the short early windows only make worse
    (25 or 50 draws estimate the dense covariance of 15 parameters poorly and each new metric
    restarts the step-size search); one long window cuts warm-up gradients by
    about a fifth (a third on the example star) at equal or better draw
    efficiency (docs/fitting.md, Speed).  Below 20
    iterations there is one fast range, and when the buffers do not fit they
    shrink to 15% and 10% of the warm-up, as in Stan.  ``"laplace-fixed"``: one fast range
    (step size only; the metric stays the Laplace whitening).
    """
    n = int(num_warmup)
    if n < 20:
        return [(0, n - 1)]
    start, end, first = 75, 50, 25
    if start + first + end > n:
        start, end = int(0.15 * n), int(0.1 * n)
        first = n - start - end
    windows = [(0, start - 1)]
    stop = n - end
    if mass_matrix == "laplace-fixed":
        return [(0, n - 1)]
    if mass_matrix == "laplace":
        windows.append((start, stop - 1))
    else:
        begin, size = start, first
        while begin < stop:
            this = size if 3 * size <= stop - begin else stop - begin
            if 3 * size <= stop - begin:
                size = 2 * size
            windows.append((begin, begin + this - 1))
            begin += this
    windows.append((stop, n - 1))
    return windows


_SCHEDULE_LOCK = threading.RLock()


@contextlib.contextmanager
def _numpyro_schedule(mass_matrix: str):
    """Make NumPyro's warm-up adapter, while it is being built, use :func:`adaptation_windows`.

    NumPyro builds its window schedule from ``num_warmup`` alone
    (``numpyro.infer.hmc_util.build_adaptation_schedule``, called when the NUTS
    init kernel is traced) and takes no schedule argument; this swaps that
    function for the duration of the trace, under a lock.
    """
    from numpyro.infer import hmc_util

    if not hasattr(hmc_util, "build_adaptation_schedule") or not hasattr(hmc_util, "AdaptWindow"):
        raise RuntimeError("this NumPyro has no numpyro.infer.hmc_util.build_adaptation_schedule; "
                           "use sample_blackjax or install the NumPyro version pinned in pyproject.toml")
    with _SCHEDULE_LOCK:
        original = hmc_util.build_adaptation_schedule
        hmc_util.build_adaptation_schedule = lambda n: [hmc_util.AdaptWindow(a, b) for a, b in adaptation_windows(n, mass_matrix)]
        try:
            yield
        finally:
            hmc_util.build_adaptation_schedule = original


def _blackjax_schedule(mass_matrix: str) -> Callable:
    """:func:`adaptation_windows` as BlackJAX's per-iteration (stage, is_window_end) schedule."""
    def schedule(num_steps):
        stages = []
        windows = adaptation_windows(num_steps, mass_matrix)
        for i, (a, b) in enumerate(windows):
            slow = 0 < i < len(windows) - 1
            stages += [(int(slow), False)] * (b - a) + [(int(slow), slow)]
        return jnp.array(stages)

    return schedule


def _resolve_chain_method(chain_method: str, problem: FitProblem | None = None, num_chains: int = 1,
                          portable: bool = True) -> str:
    """"auto": on an accelerator, vectorized; on a CPU, the chains split over worker processes pinned
    one per core ("processes") where that works (Linux, >= 2 cores, >= 2 chains, a problem built from
    a stellarfit Emulator, the built-in model), else one chain after another ("sequential": a vmapped
    gradient batch costs about as much as the chains' gradients one by one on a CPU, and vmapped
    chains wait for the longest trajectory).  ``portable``: the sampler's model can be rebuilt in a
    worker (the built-in NumPyro model or log density)."""
    from stellarfit.inference import _processes

    if chain_method == "auto":
        if jax.default_backend() != "cpu":
            return "vectorized"
        if portable and problem is not None and _processes.usable(problem, num_chains) is None:
            return "processes"
        return "sequential"
    if chain_method == "processes":
        reason = "a custom model or log density stays in this process" if not portable else (
            None if problem is None else _processes.usable(problem, num_chains))
        if reason is not None:
            raise ValueError(f"chain_method='processes' cannot run here: {reason}; use chain_method='sequential'")
    return chain_method


def _to_z(start: _Start, w) -> np.ndarray:
    """Sampled coordinates w (..., p) -> z (..., p)."""
    return start.center + np.asarray(w, np.float64) @ start.factor.T


# -- NumPyro ----------------------------------------------------------------------
def numpyro_fit_model(problem: FitProblem, *, site: str = "z"):
    """The NumPyro model of a fit, with the :class:`FitProblem` as its argument; returns theta (p,).

    One latent site ``site`` (default "z"): the unconstrained vector (p,) with
    an improper flat base measure (``dist.ImproperUniform(real_vector)``); the
    whole target density is added by
    ``numpyro.factor("log_density", problem.log_density_unconstrained(z))``.
    The box priors and their Jacobian are inside that factor, so the sampler
    sees exactly the same density as :func:`sample_blackjax`.

    Because the problem (a pytree: flux, ivar, boxes, priors are its leaves)
    is an argument rather than a closure, :func:`sample_numpyro` compiles this
    model once per forward model and settings and reuses the program for every
    further spectrum on the same pixels.  Extend it the same way, with a model
    of your own that takes the problem::

        def model(problem):
            theta = numpyro_fit_model(problem)
            numpyro.factor("teff_phot", -0.5 * ((theta[0] - 5777.0) / 80.0) ** 2)

        sample_numpyro(problem, theta_map, model=model)   # compiled once for all stars

    Your own latent sites may be added too (they get a diagonal mass-matrix block).
    """
    import numpyro
    import numpyro.distributions as dist
    from numpyro.distributions import constraints

    p = problem.n_parameters
    z = numpyro.sample(site, dist.ImproperUniform(constraints.real_vector, (), event_shape=(p,)))
    numpyro.factor("log_density", problem.log_density_unconstrained(z))
    return problem.to_theta(z)


def numpyro_model(problem: FitProblem, *, site: str = "z") -> Callable[[], Any]:
    """A NumPyro model bound to ``problem`` (no arguments); calling it returns theta (p,) in physical units.

    It is :func:`numpyro_fit_model` with the problem filled in: one latent
    site ``site`` (default "z"), the unconstrained vector (p,) with an improper
    flat base measure, and the whole target density added by
    ``numpyro.factor("log_density", problem.log_density_unconstrained(z))``.
    Extend it by calling it inside your own model and adding factors or sites,
    e.g. a photometric Teff::

        base = numpyro_model(problem)

        def model():
            theta = base()
            numpyro.factor("teff_phot", -0.5 * ((theta[0] - 5777.0) / 80.0) ** 2)

        sample_numpyro(problem, theta_map, model=model)

    Such a closure holds one star's data, so :func:`sample_numpyro` compiles it
    on every call; for many stars write the model with the problem as its
    argument (see :func:`numpyro_fit_model`), which compiles once.
    """
    return functools.partial(numpyro_fit_model, problem, site=site)


class _NumpyroOptions(NamedTuple):
    """Static settings of the jitted NumPyro sampler (hashable: one compiled program per value)."""

    model: Callable
    num_warmup: int
    num_samples: int
    depth: int
    target_accept: float
    dense: bool
    mass_matrix: str = "laplace"


def _numpyro_one_chain(problem, key, w0, center, factor, inverse_mass, options: _NumpyroOptions):
    """One NUTS chain of ``options.model(problem)`` with NumPyro's functional HMC API.

    ``initialize_model`` turns the model into a potential-energy generator of
    its arguments (``dynamic_args=True``), so the problem's data stay traced
    arguments; the site "z" is then sampled as w with z = center + factor @ w
    (whitened coordinates for ``mass_matrix="laplace"``, w = z otherwise).
    ``numpyro.infer.hmc.hmc`` gives the NUTS init and sample kernels (the ones
    ``numpyro.infer.NUTS`` wraps), whose warm-up adapts the step size by dual
    averaging and the mass matrix in Stan-style windows.  Returns the draws of w.
    """
    from numpyro.infer.hmc import hmc
    from numpyro.infer.initialization import init_to_value
    from numpyro.infer.util import initialize_model

    key_init, key_kernel = jax.random.split(key)
    param_info, potential_fn_gen, _, _ = initialize_model(
        key_init, options.model, init_strategy=init_to_value(values={"z": center + factor @ w0}), dynamic_args=True,
        model_args=(problem,))
    if "z" not in param_info.z or jnp.shape(param_info.z["z"]) != jnp.shape(w0):
        raise ValueError(f"the NumPyro model must sample the site 'z' of shape {jnp.shape(w0)} (the FitProblem's unconstrained "
                         f"vector), e.g. by calling numpyro_fit_model(problem); its latent sites are {sorted(param_info.z)}")

    def whitened_potential_fn_gen(problem, center, factor):
        potential_fn = potential_fn_gen(problem)
        return lambda params: potential_fn({**params, "z": center + factor @ params["z"]})

    model_args = (problem, center, factor)
    init_kernel, sample_kernel = hmc(potential_fn_gen=whitened_potential_fn_gen, algo="NUTS")
    with _numpyro_schedule(options.mass_matrix):
        state = init_kernel(
            {**param_info.z, "z": w0}, options.num_warmup, step_size=1.0, inverse_mass_matrix={("z",): inverse_mass},
            adapt_step_size=True, adapt_mass_matrix=options.mass_matrix != "laplace-fixed", dense_mass=[("z",)] if options.dense else [],
            target_accept_prob=options.target_accept, trajectory_length=None, max_tree_depth=options.depth,
            model_args=model_args, rng_key=key_kernel,
        )

    def warmup_step(state, _):
        state = sample_kernel(state, model_args=model_args)
        return state, state.num_steps

    def draw_step(state, _):
        state = sample_kernel(state, model_args=model_args)
        return state, (state.z["z"], -state.potential_energy, state.diverging, state.num_steps, state.accept_prob)

    state, warmup_steps = jax.lax.scan(warmup_step, state, None, length=options.num_warmup)
    step_size = state.adapt_state.step_size
    _, draws = jax.lax.scan(draw_step, state, None, length=options.num_samples)
    return draws, step_size, warmup_steps


def _chains(one_chain, keys, w_init, chain_method):
    """Run ``one_chain(key, w0)`` for every chain: ``lax.map`` (sequential) or ``vmap`` (vectorized)."""
    if chain_method == "sequential":
        return jax.lax.map(lambda args: one_chain(*args), (keys, w_init))
    return jax.vmap(one_chain)(keys, w_init)


def _numpyro_chains_fn(problem, keys, w_init, center, factor, inverse_mass, options, chain_method):
    one_chain = functools.partial(_numpyro_one_chain, problem, center=center, factor=factor, inverse_mass=inverse_mass,
                                  options=options)
    return _chains(one_chain, keys, w_init, chain_method)


@functools.partial(jax.jit, static_argnames=("options", "chain_method"))
def _numpyro_chains(problem: FitProblem, keys, w_init, center, factor, inverse_mass, options: _NumpyroOptions, chain_method: str):
    """All chains, warm-up and draws in one program; compiled once per forward model, model function and settings."""
    return _numpyro_chains_fn(problem, keys, w_init, center, factor, inverse_mass, options, chain_method)


#: chain_method="parallel": one chain per device; the problem, the whitening and the mass matrix are broadcast
_numpyro_chains_parallel = jax.pmap(_numpyro_one_chain, in_axes=(None, 0, 0, None, None, None), static_broadcasted_argnums=(6,))


def _as_problem_model(model: Callable | None) -> tuple[Callable, bool]:
    """(model called as model(problem), whether it may be cached) for sample_numpyro's ``model``."""
    if model is None:
        return numpyro_fit_model, True
    if not callable(model):
        raise TypeError(f"model must be a NumPyro model (a callable), got {type(model).__name__}")
    try:
        signature = inspect.signature(model)
    except (TypeError, ValueError):  # builtins and the like: assume model(problem)
        return model, True
    try:
        signature.bind(None)
        return model, True
    except TypeError:
        pass
    try:
        signature.bind()
    except TypeError:
        raise TypeError(
            f"model must take the FitProblem as its only argument (def model(problem): ...) or no argument "
            f"(a closure such as numpyro_model(problem)); its signature is {signature}"
        ) from None

    def closed(problem):
        return model()

    return closed, False


def sample_numpyro(
    problem: FitProblem,
    theta_map: np.ndarray,
    covariance: np.ndarray | None = None,
    *,
    num_warmup: int = 500,
    num_samples: int = 500,
    num_chains: int = 4,
    seed: int = 0,
    max_tree_depth: int = 8,
    target_accept: float = 0.8,
    mass_matrix: str = "laplace-pooled",
    chain_method: str = "auto",
    jitter: float = 0.3,
    model: Callable | None = None,
) -> SamplerResult:
    """NUTS with NumPyro, started near the mode of the sampled density.

    The NumPyro model (:func:`numpyro_fit_model` unless ``model`` is given)
    takes the problem as its argument and each run -- model initialization,
    warm-up and draws of every chain -- is one jitted program whose arguments
    are the problem's data, the chain starts and the initial mass matrix (the
    default ``"laplace-pooled"`` runs two: up to the middle of the warm-up, and
    on from there with the metric pooled over the chains).  They are compiled
    once per (forward model, model function, settings) and reused for every
    further spectrum on the same pixels, as :func:`sample_blackjax`'s are.  The
    kernel is NumPyro's NUTS (``numpyro.infer.hmc.hmc``, the kernel behind
    ``numpyro.infer.NUTS``) with dual-averaging step size per chain and, as
    ``mass_matrix`` says, one metric for all chains or windowed adaptation of
    each chain's own.

    Args:
        problem: the fit (build it with ``continuum="marginalize"`` for sampling).
        theta_map: (p,) MAP in physical units (``fit_map(...).theta``).
        covariance: (p, p) Laplace covariance in physical units, or None.
        num_warmup, num_samples, num_chains: per-chain warm-up and kept draws, number of chains.
        seed: random seed (chain starts and the sampler).
        max_tree_depth: NUTS tree-depth cap (at most 2^depth - 1 leapfrog steps per draw).
        target_accept: dual-averaging target acceptance probability.
        mass_matrix: "laplace-pooled" (default: coordinates whitened by :func:`unconstrained_laplace`,
            then one dense metric estimated from the warm-up positions of all chains together;
            see the module docstring), "laplace" (each chain adapts its own dense metric, shrunk
            toward the Laplace covariance, in one long warm-up window), "laplace-windows" (the
            same in Stan's doubling windows),
            "laplace-fixed" (the Laplace whitening kept as the metric: warm-up adapts the step
            size only), "dense" (z, from the identity) or "diagonal" (z, from ones), both in
            Stan's windows (:func:`adaptation_windows`).
        chain_method: "auto" (default: "processes" on a multi-core Linux CPU where it applies, else
            "sequential" on a CPU; "vectorized" on an accelerator), "processes" (the chains dealt
            out to worker processes pinned one per core, :mod:`stellarfit.inference._processes`;
            the same program, keys and starts as "sequential": the same posterior, though the draws
            can differ once last-bit differences of a one-core process grow along a chain),
            "sequential" (``lax.map``, one chain after another in one program: on a CPU a
            vmapped gradient of 4 chains costs as much as 4 single ones -- the emulator's
            batched matrix product is no faster than 4 matrix-vector products there -- and
            vmapped NUTS chains advance in lockstep, each draw waiting for the longest
            trajectory), "vectorized" (``vmap``, which suits a GPU) or "parallel" (``pmap``,
            needs one device per chain).
        jitter: spread of the chain starts in units of the Laplace sigma (in z).
        model: optional NumPyro model replacing :func:`numpyro_fit_model`; it must
            sample the site "z" of shape (p,), e.g. by calling ``numpyro_fit_model(problem)``.
            Either ``model(problem)`` (compiled once per model function: define it once
            and pass the same function for every star) or ``model()``, a closure such as
            one wrapping ``numpyro_model(problem)`` (compiled on every call).
    """
    check_sampler_settings(problem, num_warmup, num_samples, num_chains, max_tree_depth, target_accept, mass_matrix, jitter, chain_method)
    chain_method = _resolve_chain_method(chain_method, problem, num_chains, portable=model is None)
    if chain_method == "parallel" and num_chains > jax.local_device_count():
        raise ValueError(
            f"chain_method='parallel' needs one device per chain ({num_chains} chains, {jax.local_device_count()} device(s)); "
            "use chain_method='sequential' or 'vectorized', or set XLA_FLAGS=--xla_force_host_platform_device_count before importing jax"
        )
    problem_model, reusable = _as_problem_model(model)
    start_time = time.perf_counter()
    start = _prepare(problem, theta_map, covariance, num_chains, mass_matrix, jitter, seed)
    keys = jax.random.split(jax.random.PRNGKey(seed), num_chains)

    def run(keys, w_init, inverse_mass, num_warmup, num_samples, mass_matrix, depth):
        options = _NumpyroOptions(model=problem_model, num_warmup=int(num_warmup), num_samples=int(num_samples),
                                  depth=int(depth), target_accept=float(target_accept),
                                  dense=_dense_adaptation(mass_matrix), mass_matrix=mass_matrix)
        arguments = (problem, keys, *(jnp.asarray(a, jnp.float32) for a in (w_init, start.center, start.factor, inverse_mass)))
        if chain_method == "processes":
            from stellarfit.inference import _processes

            return _processes.run_chains("numpyro", problem, *arguments[1:], options)
        if chain_method == "parallel":
            parallel = _numpyro_chains_parallel if reusable else jax.pmap(
                _numpyro_one_chain, in_axes=(None, 0, 0, None, None, None), static_broadcasted_argnums=(6,))
            return parallel(*arguments, options)
        if reusable:
            # compiled once per forward model, model function and settings: the problem's data are arguments
            return _numpyro_chains(*arguments, options=options, chain_method=chain_method)
        return jax.jit(functools.partial(_numpyro_chains_fn, options=options, chain_method=chain_method))(*arguments)

    (w, lp, diverging, n_steps, acceptance), step_size, warmup_steps = _run_schedule(
        run, keys, start.w_init, start.inverse_mass, num_warmup, num_samples, mass_matrix, int(max_tree_depth))
    stats = _numpyro_stats(lp, diverging, n_steps, acceptance)
    settings = _numpyro_settings(num_warmup, num_samples, num_chains, max_tree_depth, target_accept, mass_matrix,
                                 chain_method, seed)
    return _finish(problem, _to_z(start, w), stats, warmup_steps, step_size, settings, start_time, start.laplace)


def _numpyro_stats(lp, diverging, n_steps, acceptance) -> dict:
    """Per-draw statistics of NumPyro chains, (num_chains, num_samples) each."""
    n_steps = np.asarray(n_steps)
    return {"diverging": diverging, "n_steps": n_steps, "tree_depth": np.ceil(np.log2(n_steps + 1.0)).astype(int),
            "acceptance_rate": acceptance, "lp": lp}


def _numpyro_settings(num_warmup, num_samples, num_chains, max_tree_depth, target_accept, mass_matrix, chain_method,
                      seed) -> dict:
    return dict(backend="numpyro", num_warmup=int(num_warmup), num_samples=int(num_samples), num_chains=int(num_chains),
                max_tree_depth=int(max_tree_depth),
                first_phase_max_tree_depth=first_phase_depth(num_warmup, mass_matrix, max_tree_depth),
                target_accept=float(target_accept), mass_matrix=mass_matrix, chain_method=chain_method, seed=int(seed))


# -- BlackJAX ---------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("options",))
def _numpyro_batch(problems: FitProblem, keys, w_init, center, factor, inverse_mass, options: _NumpyroOptions):
    """NUTS chains of many stars in one program: vmapped over stars, and over each star's chains."""
    def one_star(problem, star_keys, star_w, star_center, star_factor, star_mass):
        one_chain = functools.partial(_numpyro_one_chain, problem, center=star_center, factor=star_factor,
                                      inverse_mass=star_mass, options=options)
        return jax.vmap(one_chain)(star_keys, star_w)

    return jax.vmap(one_star)(problems, keys, w_init, center, factor, inverse_mass)


def sample_numpyro_batch(
    problems: Sequence[FitProblem],
    theta_maps: Sequence[np.ndarray],
    covariances: Sequence[np.ndarray | None] | None = None,
    *,
    num_warmup: int = 500,
    num_samples: int = 500,
    num_chains: int = 4,
    seed: int = 0,
    max_tree_depth: int = 8,
    target_accept: float = 0.8,
    mass_matrix: str = "laplace-pooled",
    jitter: float = 0.3,
) -> list[SamplerResult]:
    """NUTS with NumPyro for many stars at once: :func:`sample_numpyro` vmapped over stars.

    The problems must share their static part (forward model, labels, priors, continuum
    treatment: spectra on the same pixels, see :func:`~stellarfit.inference.stack_problems`).
    Each star gets its own Laplace whitening and chain starts (host side, as in
    :func:`sample_numpyro`), and each chain its own step-size adaptation (and metric, as
    ``mass_matrix`` says: by default one per star, pooled over its chains); all
    chains of all stars then run in one jitted program per phase, compiled once per (forward model,
    number of stars, settings).  Chains advance in lockstep: every NUTS iteration waits for the
    longest trajectory among all chains of the batch, and ``max_tree_depth`` caps it.  This is
    the program that fills a GPU; on a CPU, batched gradients cost as much as separate ones, so
    :func:`sample_numpyro` one star at a time is faster there.  Every star uses ``seed``; star i's
    posterior is that of ``sample_numpyro(problems[i], ..., seed=seed)`` within Monte-Carlo error
    (the draws themselves part ways during warm-up, as batched arithmetic rounds differently).  Returns one :class:`SamplerResult` per star, in order, whose
    ``elapsed_s`` is that star's share of the batch.
    """
    problems = list(problems)
    if not problems:
        raise ValueError("no problems to sample")
    theta_maps = [np.asarray(t, dtype=np.float64) for t in theta_maps]
    covariances = [None] * len(problems) if covariances is None else list(covariances)
    if not len(theta_maps) == len(covariances) == len(problems):
        raise ValueError(f"got {len(problems)} problems, {len(theta_maps)} MAP points and {len(covariances)} covariances")
    for problem in problems:
        check_sampler_settings(problem, num_warmup, num_samples, num_chains, max_tree_depth, target_accept, mass_matrix,
                               jitter, "vectorized")
    from stellarfit.inference.map import stack_problems

    start_time = time.perf_counter()
    stacked = stack_problems(problems)
    starts = [_prepare(problem, theta, covariance, num_chains, mass_matrix, jitter, seed)
              for problem, theta, covariance in zip(problems, theta_maps, covariances)]
    keys = jnp.stack([jax.random.split(jax.random.PRNGKey(seed), num_chains)] * len(problems))
    stack = lambda name: jnp.asarray(np.stack([getattr(start, name) for start in starts]), jnp.float32)  # noqa: E731

    def run(keys, w_init, inverse_mass, num_warmup, num_samples, mass_matrix, depth):
        options = _NumpyroOptions(model=numpyro_fit_model, num_warmup=int(num_warmup), num_samples=int(num_samples),
                                  depth=int(depth), target_accept=float(target_accept),
                                  dense=_dense_adaptation(mass_matrix), mass_matrix=mass_matrix)
        outputs = _numpyro_batch(stacked, keys, jnp.asarray(w_init, jnp.float32), stack("center"), stack("factor"),
                                 jnp.asarray(inverse_mass, jnp.float32), options=options)
        return jax.tree_util.tree_map(np.asarray, outputs)

    (w, lp, diverging, n_steps, acceptance), step_size, warmup_steps = _run_schedule(
        run, keys, stack("w_init"), stack("inverse_mass"), num_warmup, num_samples, mass_matrix, int(max_tree_depth),
        per_star=True)
    share = (time.perf_counter() - start_time) / len(problems)
    settings = _numpyro_settings(num_warmup, num_samples, num_chains, max_tree_depth, target_accept, mass_matrix,
                                 "batched", seed)
    results = []
    for i, (problem, start) in enumerate(zip(problems, starts)):
        stats = _numpyro_stats(lp[i], diverging[i], n_steps[i], acceptance[i])
        results.append(_finish(problem, _to_z(start, w[i]), stats, warmup_steps[i], step_size[i], settings,
                               time.perf_counter() - share, start.laplace))
    return results


def _blackjax_chains_fn(logdensity, keys, w_init, center, factor, inverse_mass, *, num_warmup, num_samples, depth,
                        target_accept, diagonal, chain_method, mass_matrix="laplace"):
    import blackjax

    def whitened_logdensity(w):
        return logdensity(center + factor @ w)

    warmup = blackjax.window_adaptation(
        blackjax.nuts, whitened_logdensity,
        is_mass_matrix_diagonal=diagonal,
        initial_inverse_mass_matrix=inverse_mass,
        target_acceptance_rate=target_accept,
        max_num_doublings=depth,
        schedule_fn=_blackjax_schedule(mass_matrix),
    )

    def one_chain(key, w0):
        key_warmup, key_draws = jax.random.split(key)
        (state, parameters), warmup_info = warmup.run(key_warmup, w0, num_warmup)
        kernel = blackjax.nuts(whitened_logdensity, parameters["step_size"], parameters["inverse_mass_matrix"],
                               max_num_doublings=depth)

        def step(state, key):
            state, info = kernel.step(key, state)
            return state, (state.position, state.logdensity, info.is_divergent, info.num_integration_steps,
                           info.num_trajectory_expansions, info.acceptance_rate)

        _, draws = jax.lax.scan(step, state, jax.random.split(key_draws, num_samples))
        return draws, parameters["step_size"], warmup_info.info.num_integration_steps

    return _chains(one_chain, keys, w_init, chain_method)


@functools.partial(jax.jit, static_argnames=("num_warmup", "num_samples", "depth", "target_accept", "diagonal", "chain_method",
                                             "mass_matrix"))
def _blackjax_chains(problem: FitProblem, keys, w_init, center, factor, inverse_mass, **options):
    return _blackjax_chains_fn(problem.log_density_unconstrained, keys, w_init, center, factor, inverse_mass, **options)


def sample_blackjax(
    problem: FitProblem,
    theta_map: np.ndarray,
    covariance: np.ndarray | None = None,
    *,
    num_warmup: int = 500,
    num_samples: int = 500,
    num_chains: int = 4,
    seed: int = 0,
    max_tree_depth: int = 8,
    target_accept: float = 0.8,
    mass_matrix: str = "laplace-pooled",
    chain_method: str = "auto",
    jitter: float = 0.3,
    logdensity_fn: Callable | None = None,
) -> SamplerResult:
    """NUTS with BlackJAX: ``blackjax.window_adaptation`` then ``lax.scan`` of the NUTS kernel.

    Same arguments and result as :func:`sample_numpyro` (the same whitening, chain starts
    and adaptation scheme); each chain adapts its own step size, and the metric is pooled
    over the chains or each chain's own as ``mass_matrix`` says.
    ``chain_method`` is "auto" (default), "processes", "sequential" or "vectorized" (no "parallel").
    ``logdensity_fn`` (z (p,) -> scalar) replaces ``problem.log_density_unconstrained``
    when given (e.g. with extra prior terms); the Laplace approximation that whitens the
    coordinates is still that of ``problem``.
    """
    check_sampler_settings(problem, num_warmup, num_samples, num_chains, max_tree_depth, target_accept, mass_matrix, jitter,
                           chain_method)
    chain_method = _resolve_chain_method(chain_method, problem, num_chains, portable=logdensity_fn is None)
    if chain_method == "parallel":
        raise ValueError("sample_blackjax runs chains 'sequential' or 'vectorized' (or 'auto'); 'parallel' is NumPyro's only")
    start_time = time.perf_counter()
    start = _prepare(problem, theta_map, covariance, num_chains, mass_matrix, jitter, seed)
    depth = int(max_tree_depth)
    keys = jax.random.split(jax.random.PRNGKey(seed), num_chains)

    def run(keys, w_init, inverse_mass, num_warmup, num_samples, mass_matrix, depth):
        options = dict(num_warmup=int(num_warmup), num_samples=int(num_samples), depth=int(depth),
                       target_accept=float(target_accept), diagonal=not _dense_adaptation(mass_matrix),
                       chain_method=chain_method, mass_matrix=mass_matrix)
        arguments = tuple(jnp.asarray(a, jnp.float32) for a in (w_init, start.center, start.factor, inverse_mass))
        if chain_method == "processes":
            from stellarfit.inference import _processes

            return _processes.run_chains("blackjax", problem, keys, *arguments, options)
        if logdensity_fn is None:
            # compiled once per forward model and settings: the problem's data are arguments
            return _blackjax_chains(problem, keys, *arguments, **options)
        return jax.jit(lambda k, *a: _blackjax_chains_fn(logdensity_fn, k, *a, **options))(keys, *arguments)

    (w, lp, diverging, n_steps, depths, acceptance), step_size, warmup_steps = _run_schedule(
        run, keys, start.w_init, start.inverse_mass, num_warmup, num_samples, mass_matrix, int(max_tree_depth))
    stats = {"diverging": diverging, "n_steps": n_steps, "tree_depth": depths, "acceptance_rate": acceptance, "lp": lp}
    settings = dict(backend="blackjax", num_warmup=int(num_warmup), num_samples=int(num_samples), num_chains=int(num_chains),
                    max_tree_depth=depth, first_phase_max_tree_depth=first_phase_depth(num_warmup, mass_matrix, depth),
                    target_accept=float(target_accept), mass_matrix=mass_matrix,
                    chain_method=chain_method, seed=int(seed))
    return _finish(problem, _to_z(start, w), stats, warmup_steps, step_size, settings, start_time, start.laplace)
