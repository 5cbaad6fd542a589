"""Radial-velocity search and maximum a posteriori fits.

- :func:`estimate_rv`: chi-square scan over a velocity grid (continuum profiled)
  with a template spectrum: robust for any RV in +-1000 km/s, where a local
  optimizer started at 0 would fail (The Payne's +-5 km/s bound is a known
  failure mode).
- :func:`fit_map`: multi-start optimization in the unconstrained space (Adam,
  vmapped over starts in one jitted ``lax.scan``), then every start is
  polished with Levenberg-Marquardt on the whitened residuals and the best
  wins; the Laplace covariance is the inverse Hessian of the negative log
  posterior at the optimum (float64).  Starts cover the Teff-logg plane to
  escape the Teff-logg-[Fe/H] degeneracy's local minima.

Fixed parameters: a parameter whose box has zero width (``vsini_max=0``, an RV
box of zero width) is held at its value: it is left out of the optimization
steps, of the Laplace covariance (its rows and columns are 0, so its error is 0)
and, in :func:`~stellarfit.inference.cramer_rao_from_fisher`, of the Fisher
inversion (a zero scale).

Convergence (``MapResult.converged``): the fit is converged when the optimizer
itself could not lower -log posterior by more than ``CONVERGED_DECREASE``: the
objective fell by less than that over the last ``CONVERGENCE_TAIL_STEPS``
Levenberg-Marquardt iterations (the second half of a shorter polish), and no fraction (1, 1/2, ..., 1/4096) of a full
Gauss-Newton step from the result lowers it by more.  The Gauss-Newton
decrement g^T H^-1 g itself is no measure here: a Payne MLP is piecewise linear
in the labels, so at an optimum that lies on a kink the local gradient and the
predicted decrease stay large while every step raises the objective (on
Turbospectrum spectra at S/N 100 the decrement was 1-60 at optima that 300
further iterations could not improve by 0.002).  Decreases are summed per pixel
as (r0 - r)(r0 + r), so float32 cancellation in chi2 ~ 1e4 does not enter.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from stellarfit.inference.likelihood import FitProblem
from stellarfit.inference._covariance import (  # noqa: F401 - the covariances, importable from here as before
    _gauss_newton_hessian_scaled,
    _hessian_scaled,
    _invert_free,
    _invert_hessian,
    _safe_inverse,
    covariance_is_proper,
    gauss_newton_covariance,
    laplace_covariance,
)
from stellarfit.inference._rv_search import _rv_chi2_scan, estimate_rv  # noqa: F401 - the RV search, likewise

#: a MAP fit is converged when neither the last Levenberg-Marquardt iterations nor a (fraction of a)
#: Gauss-Newton step can lower -log posterior by more than this: a likelihood ratio of e^0.1 = 1.1,
#: statistically negligible (for a smooth quadratic optimum, a point 0.45 sigma away along one
#: direction is 0.1 above it; the Gauss-Newton step itself would have found that).  Raised to the
#: float32 rounding level of the residuals where that is larger (very high S/N, many pixels).
CONVERGED_DECREASE = 0.1

#: Levenberg-Marquardt iterations at the end of the polish whose total decrease is tested
CONVERGENCE_TAIL_STEPS = 10

#: fractions of the Gauss-Newton step tried by the convergence test
_PROBE_FRACTIONS = tuple(0.5**k for k in range(13))

__all__ = ["MapResult", "estimate_rv", "fit_map", "fit_map_batch", "polish_map", "polish_map_batch", "stack_problems",
           "default_starts", "laplace_covariance", "gauss_newton_covariance", "covariance_is_proper",
           "fixed_parameters"]


@dataclasses.dataclass(frozen=True)
class MapResult:
    """Result of :func:`fit_map`.

    Attributes:
        theta: (p,) best parameters, in ``names`` order.
        names: parameter names.
        log_posterior: at ``theta``.
        chi2: at ``theta`` (continuum profiled); ``n_good`` pixels used.
        covariance: (p, p) Laplace covariance (inverse Hessian), float64; NaN where singular,
            0 in the rows and columns of fixed parameters (zero-width box); None from
            :func:`polish_map`, which leaves it to the caller (``fit_star`` takes the
            Gauss-Newton form from the Jacobian it needs for the Cramér-Rao bounds anyway).
        all_objectives: (n_starts,) final objective of every start.
        converged: True if the optimizer could not lower -log posterior by more than
            :data:`CONVERGED_DECREASE` (see the module docstring).
        remaining_decrease: the largest decrease of -log posterior the convergence test found.
        convergence_tolerance: the threshold it was compared with (``CONVERGED_DECREASE``, or
            the float32 rounding level of the residuals where larger).
        iterations: Levenberg-Marquardt iterations of :func:`polish_map`.
        jacobians: the Jacobians those iterations took (fewer with ``chord``).
        accepted_steps: how many of those iterations' steps were kept (the others were rejected and
            retried with more damping or a fresh Jacobian).
        curvature: (p, p) the data's Gauss-Newton curvature J^T J in u = theta / box width from the
            last of them (``chord``: with the secant corrections of the steps after it; and
            :func:`polish_map_batch`; None otherwise): a start for
            :func:`~stellarfit.inference.nuts.unconstrained_laplace`'s ``curvature``.
    """

    theta: np.ndarray
    names: tuple[str, ...]
    log_posterior: float
    chi2: float
    n_good: int
    covariance: np.ndarray | None
    all_objectives: np.ndarray
    converged: bool
    remaining_decrease: float = float("nan")
    convergence_tolerance: float = CONVERGED_DECREASE
    iterations: int | None = None
    jacobians: int | None = None
    curvature: np.ndarray | None = None
    accepted_steps: int | None = None

    @property
    def sigma(self) -> np.ndarray:
        return np.sqrt(np.clip(np.diag(self.covariance), 0.0, None))


def box_centre(spec) -> np.ndarray:
    """(n_labels,) the centre of the label box; labels bounded relative to another label start at
    that label's centre (or at 0 when relative to 0)."""
    centre = 0.5 * (spec.lower + spec.upper)
    for i, label in enumerate(spec):
        if label.offset_from is not None:
            centre[i] = centre[spec.index(label.offset_from)] if label.offset_from else 0.0
    return centre


def default_starts(problem: FitProblem, n_starts: int = 8, *, rv: float = 0.0, vsini: float = 5.0, seed: int = 0) -> np.ndarray:
    """Starting points (n_starts, p): a Sobol set over (teff, logg, fe_h), other labels at the box centre."""
    from scipy.stats import qmc

    spec = problem.label_spec
    centre = box_centre(spec)
    varied = [spec.index(name) for name in ("teff", "logg", "fe_h") if name in spec]
    if not varied:  # a label set without the usual names: spread the starts over its first labels
        varied = [i for i, label in enumerate(spec) if label.offset_from is None][:3]
    starts = np.tile(centre, (n_starts, 1))
    if varied and n_starts > 1:
        unit = qmc.Sobol(len(varied), scramble=True, seed=seed).random_base2(int(np.ceil(np.log2(n_starts))))[:n_starts]
        unit = 0.1 + 0.8 * unit  # stay away from the box edges
        starts[:, varied] = spec.lower[varied] + unit * (spec.upper[varied] - spec.lower[varied])
    rv = float(np.clip(rv, problem.lower[-2] + 1e-3, problem.upper[-2] - 1e-3))
    vsini = float(np.clip(vsini, 1e-3, problem.upper[-1] * 0.5))
    return np.concatenate([starts, np.full((n_starts, 1), rv), np.full((n_starts, 1), vsini)], axis=1)


# -- compiled pieces: module-level functions of the problem (a pytree), so that they compile
# once per forward model and are reused for every spectrum on the same pixels ----------------


@functools.partial(jax.jit, static_argnames=("adam_steps", "learning_rate"))
def _adam_starts(problem: FitProblem, z_start, *, adam_steps: int, learning_rate: float):
    """Adam from each start (n_starts, p) -> (z_final (n_starts, p), objective (n_starts,))."""
    objective = problem.objective_unconstrained
    optimizer = optax.adam(learning_rate)

    def run(z0):
        def step(carry, _):
            z, state = carry
            value, gradient = jax.value_and_grad(objective)(z)
            gradient = jnp.where(jnp.isfinite(gradient) & _free(problem), gradient, 0.0)
            updates, state = optimizer.update(gradient, state, z)
            return (optax.apply_updates(z, updates), state), value

        (z_final, _), _ = jax.lax.scan(step, (z0, optimizer.init(z0)), None, length=adam_steps)
        return z_final, objective(z_final)

    return jax.vmap(run)(z_start)


def _free(problem: FitProblem):
    """(p,) True for parameters with a box of positive width (traceable: the box is pytree data)."""
    return (jnp.asarray(problem.upper) - jnp.asarray(problem.lower)) > 0


def fixed_parameters(problem: FitProblem) -> np.ndarray:
    """(p,) bool: parameters held fixed because their box has zero width (e.g. vsini with ``vsini_max=0``)."""
    return ~(problem.box_widths() > 0)


def _linearize(problem: FitProblem, x, space: str = "z"):
    """Whitened residuals r at x, gradient J^T r and Gauss-Newton matrix J^T J (fixed parameters' columns zeroed)."""
    residual = problem.residuals_unconstrained if space == "z" else (lambda y: _residuals_at(problem, y, space))
    r = residual(x)
    jacobian = jnp.where(_free(problem)[None, :], jax.jacfwd(residual)(x), 0.0)
    return r, jacobian.T @ r, jacobian.T @ jacobian


#: largest move of one unconstrained coordinate in one Levenberg-Marquardt iteration (a box spans ~+-4 in z)
MAX_LM_STEP = 4.0


#: Marquardt's damping scales with each parameter's curvature in z, floored at this (nats per unit z^2)
MARQUARDT_FLOOR = 1e-4


def _gauss_newton_step(gradient, hessian, damping, floor=1e-20):
    """-(H + damping max(diag H, floor))^-1 g, solved with H scaled to unit diagonal (the
    RV is thousands of times sharper in z than the abundances).

    The floor matters for a parameter pressed against its box edge that the data barely constrain:
    its sigmoid is saturated, its curvature in z ~1e-10, and a damping in proportion to that alone
    let its step run to ~1e6 in z (capped at MAX_LM_STEP, still a jump that was rejected however the
    damping grew, while the other parameters' steps vanished).  A parameter the data do constrain
    keeps a curvature above the floor even at an edge, and its capped step still leaves the edge.
    :func:`polish_map` uses ``floor=MARQUARDT_FLOOR``; the multi-start search keeps 1e-20 (its
    Adam phase leaves no label pinned at an edge it would have to leave)."""
    scale = 1.0 / jnp.sqrt(jnp.maximum(jnp.diag(hessian), floor))
    scaled = hessian * scale[:, None] * scale[None, :]
    return -scale * jnp.linalg.solve(scaled + damping * jnp.eye(gradient.size, dtype=gradient.dtype), gradient * scale)


def _decrease(r0, r):
    """0.5 (|r0|^2 - |r|^2), summed per pixel as (r0 - r)(r0 + r): no float32 cancellation of two large sums."""
    return 0.5 * jnp.sum((r0 - r) * (r0 + r), axis=-1)


def _lm_step(problem: FitProblem, x, damping, value):
    """One Levenberg-Marquardt iteration: the step is kept only if it lowers the objective, and the
    damping adapts (/3 on success, x4 on failure).  Returns (x, damping, objective, decrease; 0 if
    the step was rejected)."""
    r, gradient, hessian = _linearize(problem, x)
    x, value, decrease, better, _ = _try_step(problem, x, value, r, gradient, hessian, damping)
    damping = jnp.where(better, jnp.maximum(damping / 3.0, 1e-8), jnp.minimum(damping * 4.0, 1e8))
    return x, damping, value, jnp.where(better, decrease, 0.0)


def _model_decrease(gradient, hessian, step):
    """The decrease of the objective the Gauss-Newton model predicts for a step."""
    return -(gradient @ step + 0.5 * step @ hessian @ step)


#: rounds of :func:`_box_step` that send the coordinates a step would take out of the cube to its
#: faces and solve again for the rest
BOX_STEP_ROUNDS = 3


def _box_step(x, gradient, hessian, damping, floor):
    """A damped Gauss-Newton step in the unit cube from x (bounded Levenberg-Marquardt).

    Coordinates on a face whose gradient points out of the cube stay there.  Two candidates, and
    the one the Gauss-Newton model promises more for: (a) coordinates the step would carry out of
    the cube are put on the face they cross and the step is solved again for the others, up to
    :data:`BOX_STEP_ROUNDS` times (a MAP on a face is reached in one step); (b) the step shortened
    to where it first meets a face (a descent step of the model, so its promise is positive: the
    fallback where (a)'s coordinates at the faces would pull the others the wrong way)."""
    held = ((x <= 0.0) & (gradient > 0.0)) | ((x >= 1.0) & (gradient < 0.0))

    def solve(fixed, shift):
        """The damped model's minimum over the coordinates not ``fixed``, those moved by ``shift``."""
        free = ~fixed
        tilted = gradient + hessian @ shift
        step = _gauss_newton_step(jnp.where(free, tilted, 0.0), jnp.where(free[:, None] & free[None, :], hessian, 0.0),
                                  damping, floor)
        return jnp.where(free, step, shift)

    step = solve(held, jnp.zeros_like(x))
    # (b): shortened to the first face it meets
    room = jnp.where(step < 0.0, -x / jnp.where(step < 0.0, step, -1.0),
                     jnp.where(step > 0.0, (1.0 - x) / jnp.where(step > 0.0, step, 1.0), jnp.inf))
    shortened = step * jnp.clip(jnp.min(room), 0.0, 1.0)
    # (a): the crossing coordinates on their faces, the rest solved again
    fixed, faced = held, step
    for _ in range(BOX_STEP_ROUNDS):
        crossing = ~fixed & ((x + faced < 0.0) | (x + faced > 1.0))
        fixed = fixed | crossing
        faced = solve(fixed, jnp.where(crossing, jnp.clip(x + faced, 0.0, 1.0) - x, jnp.where(fixed, faced, 0.0)))
    faced = jnp.clip(x + faced, 0.0, 1.0) - x
    better = _model_decrease(gradient, hessian, faced) >= _model_decrease(gradient, hessian, shortened)
    return jnp.where(better, faced, shortened)


def _try_step(problem: FitProblem, x, value, r, gradient, hessian, damping, floor=1e-20, space: str = "z"):
    """The damped Gauss-Newton step from x, kept only if it lowers the objective.  Returns (x,
    objective, decrease, whether the step was kept, the decrease the model predicted).

    ``space="unit"`` (x in the unit cube): the step stays in the cube (:func:`_box_step`), so a
    MAP at a box edge is reached in a step or two instead of along a saturated sigmoid."""
    if space == "unit":
        step = _box_step(x, gradient, hessian, damping, floor)
        candidate = jnp.clip(x + step, 0.0, 1.0)
        decrease = _decrease(r, _residuals_at(problem, candidate, space))
        better = jnp.all(jnp.isfinite(candidate)) & jnp.isfinite(decrease) & (decrease > 0)
        predicted = _model_decrease(gradient, hessian, candidate - x)
        return jnp.where(better, candidate, x), jnp.where(better, value - decrease, value), decrease, better, predicted
    # a parameter pressed against its box edge has a saturated sigmoid: almost no curvature in z, so
    # the Marquardt-scaled step along it is huge and would get every step rejected; cap it
    step = _gauss_newton_step(gradient, hessian, damping, floor)
    candidate = x + jnp.clip(step, -MAX_LM_STEP, MAX_LM_STEP)
    decrease = _decrease(r, problem.residuals_unconstrained(candidate))
    better = jnp.all(jnp.isfinite(candidate)) & jnp.isfinite(decrease) & (decrease > 0)
    # the decrease the Gauss-Newton model promised for the damped step before its cap (> 0): what a
    # rejection says about convergence
    predicted = -(gradient @ step + 0.5 * step @ hessian @ step)
    return jnp.where(better, candidate, x), jnp.where(better, value - decrease, value), decrease, better, predicted


@functools.partial(jax.jit, static_argnames=("steps",))
def _polish(problem: FitProblem, z, *, steps: int):
    """Levenberg-Marquardt from z on the whitened residuals (profiled continuum, Gaussian priors).

    ``steps`` iterations of :func:`_lm_step`.  Returns (z, objective, decrease of the objective over the last
    ``CONVERGENCE_TAIL_STEPS`` iterations, or the second half of fewer steps).
    """
    residual = problem.residuals_unconstrained

    def step(carry, _):
        x, damping, value, decrease = _lm_step(problem, *carry)
        return (x, damping, value), decrease

    r = residual(z)
    (z_final, _, value), decreases = jax.lax.scan(step, (z, jnp.asarray(1e-2, z.dtype), 0.5 * jnp.sum(r * r)), None,
                                                  length=steps)
    # a short polish (from a close start) is judged on its second half
    tail = min(CONVERGENCE_TAIL_STEPS, max(steps // 2, 1))
    return z_final, value, jnp.sum(decreases[steps - tail:])


def _convergence_probe(problem: FitProblem, z):
    """(largest decrease of the objective over fractions of the Gauss-Newton step from z,
    float32 rounding level of such a decrease)."""
    residual = problem.residuals_unconstrained
    r0, gradient, hessian = _linearize(problem, z)
    delta = _gauss_newton_step(gradient, hessian, 1e-6)
    fractions = jnp.asarray(_PROBE_FRACTIONS, z.dtype)
    decreases = _decrease(r0[None, :], jax.vmap(lambda t: residual(z + t * delta))(fractions))
    decreases = jnp.where(jnp.isfinite(decreases), decreases, -jnp.inf)
    # each whitened residual carries a float32 rounding error ~ eps * sqrt(ivar) |flux| (the model's
    # own precision), so a decrease is known to ~ eps sqrt(sum r^2 ivar flux^2); x10 for the MLP's accumulation
    n = problem.flux.shape[-1]
    snr = jnp.sqrt(problem.ivar) * jnp.abs(problem.flux)
    rounding = 10.0 * jnp.finfo(jnp.float32).eps * jnp.sqrt(jnp.sum((r0[:n] * snr) ** 2))
    return jnp.max(decreases), rounding


@functools.partial(jax.jit, static_argnames=("adam_steps", "learning_rate", "polish_steps"))
def _optimize_starts(problem: FitProblem, z_start, *, adam_steps: int, learning_rate: float, polish_steps: int):
    """Adam from every start, then Levenberg-Marquardt from every Adam result; the best wins.

    Polishing every start (not only Adam's best) matters: a Payne MLP with (leaky) ReLUs is
    piecewise linear in the labels, so the chi2 surface has many shallow local minima at the
    kinks, and Adam's ranking after a few hundred steps is not the final ranking.
    Returns (z_best, remaining decrease at z_best (the convergence test), its tolerance,
    objective at z_best, final objective per start).
    """
    z_start = jnp.where(_free(problem), z_start, 0.0)  # fixed parameters: any finite z gives theta = lower = upper
    z_all, _ = _adam_starts(problem, z_start, adam_steps=adam_steps, learning_rate=learning_rate)
    z_all, values, tails = jax.vmap(lambda z: _polish(problem, z, steps=polish_steps))(z_all)
    values = jnp.where(jnp.isfinite(values), values, jnp.inf)
    best = jnp.argmin(values)
    probe, rounding = _convergence_probe(problem, z_all[best])
    remaining = jnp.maximum(tails[best], probe)
    return z_all[best], remaining, jnp.maximum(CONVERGED_DECREASE, rounding), values[best], values


@functools.partial(jax.jit, static_argnames=("space",))
def _theta_chi2(problem: FitProblem, z, space: str = "z"):
    theta = _to_theta(problem, z, space)
    return theta, problem.continuum_fit(theta)[2]


def fit_map(
    problem: FitProblem,
    starts: np.ndarray,
    *,
    adam_steps: int = 150,
    learning_rate: float = 0.05,
    polish_steps: int = 50,
) -> MapResult:
    """Multi-start MAP fit of a :class:`FitProblem` from ``starts`` (n_starts, p) in physical units.

    The optimizers are compiled once per forward model, number of starts and
    settings: fitting further spectra on the same pixels reuses them.
    Parameters whose box has zero width stay at their value (error 0).
    """
    starts = np.atleast_2d(np.asarray(starts, dtype=np.float64))
    if starts.shape[1] != problem.n_parameters:
        raise ValueError(f"starts must have {problem.n_parameters} columns ({problem.names}), got {starts.shape[1]}")
    _check_steps(adam_steps, polish_steps)
    z0 = problem.to_unconstrained(jnp.asarray(starts, jnp.float32))
    z_best, remaining, tolerance, objective, values = _optimize_starts(
        problem, z0, adam_steps=adam_steps, learning_rate=float(learning_rate), polish_steps=polish_steps)
    values = np.asarray(values)
    theta, chi2 = _theta_chi2(problem, z_best)
    theta = np.asarray(theta, dtype=np.float64)
    covariance = laplace_covariance(problem, theta)
    return MapResult(
        theta=theta,
        names=problem.names,
        log_posterior=-float(objective),
        chi2=float(chi2),
        n_good=problem.n_good,
        covariance=covariance,
        all_objectives=values,
        converged=bool(remaining < tolerance),
        remaining_decrease=float(remaining),
        convergence_tolerance=float(tolerance),
    )


#: an accepted step of :func:`polish_map` that lowered -log posterior by more than this (nats) is
#: followed by a Jacobian: the point moved far, and the curvature may have changed with it (10 until
#: 2026-11-28; see :func:`_polish_until`)
CHORD_DECREASE = 100.0

#: steps from an older curvature that :func:`polish_map` tries at one point, each with 4x the
#: damping of the one before, before it takes a Jacobian there (see :func:`_polish_until`)
CHORD_RETRIES = 2

#: whether :func:`polish_map` corrects its kept curvature along each accepted step by a BFGS update
#: from the change of the exact gradient (since 2026-11-28; see :func:`_polish_until`)
CHORD_SECANT = True


#: the coordinates :func:`polish_map` can step in: "z" (the sampler's unconstrained coordinates) or
#: "unit" (each parameter's place in its box: the allowed region is the unit cube)
POLISH_SPACES = ("z", "unit")


def _to_theta(problem: FitProblem, x, space: str = "z"):
    """theta at the polish's coordinates x: z (unconstrained) or unit (the cube [0, 1]^p)."""
    return problem.theta_of_unit(x) if space == "unit" else problem.to_theta(x)


def _residuals_at(problem: FitProblem, x, space: str = "z"):
    return problem.residuals(_to_theta(problem, x, space))


def _unit_transform(problem: FitProblem, x, space: str = "z"):
    """d u / d x at x (u = theta / box width; x is z or the unit coordinates), fixed parameters' columns zeroed."""
    jacobian = jax.jacfwd(lambda y: _to_theta(problem, y, space))(x)
    return jnp.where(_free(problem)[None, :], jacobian / _unit_widths(problem)[:, None], 0.0)


def _linearize_curvature(problem: FitProblem, x, space: str = "z"):
    """:func:`_linearize` (whitened residuals r, J^T r and J^T J in z) plus the data's curvature
    J_u^T J_u in u = theta / box width, which stays valid while z moves a little (the transform's
    part d u / d z is exact wherever it is evaluated: :func:`_chord_linearize`), and the gradient
    J_u^T r in u, and d u / d z at x."""
    theta = _to_theta(problem, x, space)
    widths = _unit_widths(problem)
    residual_u = lambda u: problem.residuals(theta + u * widths)  # noqa: E731
    r = residual_u(jnp.zeros_like(theta))
    jacobian_u = jax.jacfwd(residual_u)(jnp.zeros_like(theta))
    transform = _unit_transform(problem, x, space)
    jacobian = jacobian_u @ transform  # d r / d z
    return r, jacobian.T @ r, jacobian.T @ jacobian, jacobian_u.T @ jacobian_u, jacobian_u.T @ r, transform


def _chord_linearize(problem: FitProblem, x, curvature, space: str = "z"):
    """r, the exact J^T r in z (one reverse-mode pass: a fraction of a Jacobian's cost), J^T J in z
    from a curvature in u computed at an earlier iterate, mapped through d u / d z at this x, the
    exact gradient J_u^T r in u, and d u / d z."""
    theta = _to_theta(problem, x, space)
    widths = _unit_widths(problem)
    r, pullback = jax.vjp(lambda u: problem.residuals(theta + u * widths), jnp.zeros_like(theta))
    gradient_u = pullback(r)[0]
    transform = _unit_transform(problem, x, space)
    return r, transform.T @ gradient_u, transform.T @ curvature @ transform, gradient_u, transform


def _secant_update(curvature, step, change):
    """BFGS update of a curvature (p, p) so that it maps ``step`` to ``change`` (the change of the
    exact gradient along the step): the curvature along a step that the kept Jacobian misjudged is
    corrected, the rest kept.  Unchanged where the step shows no positive curvature."""
    bend = step @ change
    pushed = curvature @ step
    along = step @ pushed
    ok = (bend > 1e-6 * jnp.sqrt((step @ step) * (change @ change))) & (along > 0)
    updated = (curvature + jnp.outer(change, change) / jnp.where(ok, bend, 1.0)
               - jnp.outer(pushed, pushed) / jnp.where(ok, along, 1.0))
    return jnp.where(ok, 0.5 * (updated + updated.T), curvature)


def _unit_widths(problem: FitProblem):
    """Box widths of theta for scaling its curvature (1 where a box has no width)."""
    widths = jnp.asarray(problem.upper, jnp.float32) - jnp.asarray(problem.lower, jnp.float32)
    return jnp.where(widths > 0, widths, 1.0)


@functools.partial(jax.jit, static_argnames=("max_steps", "chord", "keep_curvature", "space"))
def _polish_until(problem: FitProblem, z, *, max_steps: int, chord: bool = True, keep_curvature: bool = False,
                  space: str = "z"):
    """Levenberg-Marquardt from a close start ``z``, stopping early once the objective fell by less
    than ``CONVERGED_DECREASE`` over the last two iterations (a rejected step counts the decrease
    the Gauss-Newton model promised for it: two rejected steps that promised little mean the
    objective cannot fall further, two that promised much only that the damping was too small),
    else after ``max_steps``.  Returns (z, objective, decrease over the last two iterations, iterations,
    Jacobians, accepted steps, the data's curvature in u).

    ``chord``: an iteration takes a Jacobian only at the start, after an accepted step that lowered
    the objective by more than :data:`CHORD_DECREASE`, and where :data:`CHORD_RETRIES` steps from an
    older curvature were rejected at one point (each retry with 4x the damping).  Otherwise it keeps
    the data's curvature in u from the last Jacobian and takes the exact gradient (a reverse-mode
    pass): from a close start the steps are fractions of the posterior's width and J^T J barely
    changes, while a TransformerPayne Jacobian on a CPU costs ~5 gradients.  A step rejected with a
    fresh curvature is retried from the same curvature with more damping (plain Levenberg-Marquardt
    would take the same Jacobian again).  A retry from the same point reuses that point's residuals
    and gradient.  Until 2026-11-28 the threshold was 10 nats and the first rejection from an older
    curvature took a Jacobian: 52 Jacobians against 35 now on 13 held-out TransformerPayne stars
    polished from `default-fast`'s MAPs, the same optima (benchmarks/bench_polish_jacobians.py,
    docs/design/sampling.md).  With :data:`CHORD_SECANT` the kept curvature is corrected after every
    accepted step from a kept curvature by a BFGS update from the step and the change of the exact
    gradient, both in u (:func:`_secant_update`): where the objective bends less or more along the
    steps than the last Jacobian said (a valley of correlated labels the polish walks along), the
    steps would otherwise cover a fixed fraction of the remaining way each.  ``space``: the
    coordinates ``z`` and the steps are in, "z" or "unit" (the boxes' own coordinates, bounded
    steps: :func:`_box_step`; see :func:`polish_map`).  Under ``vmap``
    both branches would run, so batches use ``chord=False``; with ``keep_curvature`` they still
    return the data's curvature in u of their last Jacobian (the same Jacobian, taken in u).
    """
    p = z.shape[-1]

    def keep_going(carry):
        k, last, previous = carry[3], carry[4], carry[5]
        return (k < max_steps) & ~((k >= 2) & (last + previous < CONVERGED_DECREASE))

    def _chord_branch(x, curvature, linear):
        r, gradient, hessian, gradient_u, transform = _chord_linearize(problem, x, curvature, space)
        return r, gradient, hessian, curvature, gradient_u, transform

    def step(carry):
        (x, damping, value, k, last, _, curvature, need, jacobians, accepted, current, moved, linear, stale,
         previous_u, previous_gradient_u) = carry
        if chord:
            # a new Jacobian (need), the exact gradient with the kept curvature where x moved, else
            # (a rejected step's retry from the same x) what this x's linearization gave already
            branch = jnp.where(need, 0, jnp.where(moved, 1, 2))
            r, gradient, hessian, curvature, gradient_u, transform = jax.lax.switch(
                branch, (lambda x, c, lin: _linearize_curvature(problem, x, space), _chord_branch,
                         lambda x, c, lin: lin), x, curvature, linear)
            u = _to_theta(problem, x, space) / _unit_widths(problem)
            if CHORD_SECANT:
                # after an accepted step, the kept curvature learns what the step showed of the
                # objective's curvature along it
                secant = moved & ~need
                curvature = jnp.where(secant, _secant_update(curvature, u - previous_u, gradient_u - previous_gradient_u),
                                      curvature)
                hessian = jnp.where(secant, transform.T @ curvature @ transform, hessian)
            linear = (r, gradient, hessian, curvature, gradient_u, transform)
            previous_u, previous_gradient_u = u, gradient_u
            current = need | (current & ~moved)
        elif keep_curvature:
            r, gradient, hessian, curvature, *_ = _linearize_curvature(problem, x, space)
            current = jnp.asarray(True)
        else:
            r, gradient, hessian = _linearize(problem, x, space)
            current = jnp.asarray(True)
        x, value, decrease, better, predicted = _try_step(problem, x, value, r, gradient, hessian, damping,
                                                          MARQUARDT_FLOOR, space)
        # a step that failed is retried with more damping: from this point's own curvature (a new
        # Jacobian would be the same), or from an older one up to CHORD_RETRIES times in all; after
        # that, with this point's own curvature, damping unchanged
        stale = jnp.where(better | current, 0, stale + 1)
        retry_stale = ~current & (stale < CHORD_RETRIES)
        grow = jnp.where(current | retry_stale, jnp.minimum(damping * 4.0, 1e8), damping)
        damping = jnp.where(better, jnp.maximum(damping / 3.0, 1e-8), grow)
        jacobians = jacobians + (need | (not chord)).astype(jnp.int32)
        need = jnp.where(better, decrease > CHORD_DECREASE, ~current & ~retry_stale)
        # a rejected step counts towards convergence by the decrease it was predicted to make: a
        # rejection of a step that promised much says the damping was too small, not that the
        # objective cannot fall further
        decrease = jnp.where(better, decrease, jnp.maximum(predicted, 0.0)).astype(value.dtype)
        accepted = accepted + better.astype(jnp.int32)
        return (x, damping, value, k + 1, decrease, last, curvature, need, jacobians, accepted, current, better,
                linear, stale, previous_u, previous_gradient_u)

    r = _residuals_at(problem, z, space)
    value = 0.5 * jnp.sum(r * r)
    big = jnp.asarray(jnp.inf, value.dtype)
    square = jnp.zeros((p, p), z.dtype)
    linear = (jnp.zeros_like(r), jnp.zeros_like(z), square, square, jnp.zeros_like(z), square)
    carry = (z, jnp.asarray(1e-2, z.dtype), value, jnp.asarray(0), big, big, square,
             jnp.asarray(True), jnp.asarray(0, jnp.int32), jnp.asarray(0, jnp.int32), jnp.asarray(False),
             jnp.asarray(True), linear, jnp.asarray(0, jnp.int32), jnp.zeros_like(z), jnp.zeros_like(z))
    z, _, value, k, last, previous, curvature, _, jacobians, accepted, *_ = jax.lax.while_loop(keep_going, step, carry)
    return z, value, last + previous, k, jacobians, accepted, curvature


def _polished(problem: FitProblem, z0, max_steps: int, chord: bool = True, keep_curvature: bool = False,
              space: str = "z"):
    z, value, remaining, k, jacobians, accepted, curvature = _polish_until(
        problem, z0, max_steps=max_steps, chord=chord, keep_curvature=keep_curvature, space=space)
    theta, chi2 = _theta_chi2(problem, z, space)
    return theta, chi2, value, remaining, k, jacobians, accepted, curvature


def _polish_result(problem: FitProblem, theta, chi2, value, remaining, steps, jacobians=None, accepted=None,
                   curvature=None) -> MapResult:
    return MapResult(
        theta=np.asarray(theta, dtype=np.float64), names=problem.names, log_posterior=-float(value), chi2=float(chi2),
        n_good=problem.n_good, covariance=None, all_objectives=np.asarray([value]),
        converged=bool(remaining < CONVERGED_DECREASE), remaining_decrease=float(remaining),
        convergence_tolerance=CONVERGED_DECREASE, iterations=int(steps),
        jacobians=None if jacobians is None else int(jacobians),
        accepted_steps=None if accepted is None else int(accepted),
        # none without a Jacobian (max_steps=0: the carry's zeros are not a curvature)
        curvature=None if curvature is None or not jacobians else np.asarray(curvature, np.float64))


def polish_map(problem: FitProblem, start: np.ndarray, *, max_steps: int = 8, chord: bool = True,
               space: str = "z") -> MapResult:
    """MAP by Levenberg-Marquardt from one close ``start`` (p,) (physical units), e.g. the MAP of a
    faster emulator: no multi-start, no Adam, no Hessian (``covariance`` is None).

    Stops once the last two iterations lowered -log posterior by less than
    :data:`CONVERGED_DECREASE` together (``converged``), or after ``max_steps`` iterations.  This
    is how a slow emulator (a TransformerPayne on a CPU, ~3 s per Jacobian) gets its MAP in a few
    Jacobians.  With ``chord`` (default) iterations near the optimum keep the last Jacobian's
    curvature, corrected along their accepted steps, and take an exact gradient instead of a new
    Jacobian (:func:`_polish_until`); ``jacobians`` counts the Jacobians taken, ``iterations`` the iterations.

    ``space``: the coordinates it steps in.  "z" (default): the unconstrained coordinates, where a
    MAP at a box edge lies at infinity and the steps along the saturated sigmoid crawl towards it,
    but where the sigmoid also keeps the steps from a distant start short.  "unit": each
    parameter's place in its box (the allowed region is the unit cube), with bounded steps
    (:func:`_box_step`): from a close start, such as another emulator's MAP, labels whose MAP is at
    an edge get there in a step or two (on 13 held-out TransformerPayne stars polished from
    `default-fast`'s MAPs: 78 iterations against 140, 0.72x the time, the same optima); from a
    start several sigma away it took more iterations than "z" (docs/design/sampling.md).
    """
    start = np.asarray(start, dtype=np.float64)
    if start.shape != (problem.n_parameters,):
        raise ValueError(f"start must have shape ({problem.n_parameters},) ({problem.names}), got {start.shape}")
    _check_steps(0, max_steps)
    space = _check_space(space)
    x0 = _polish_start(problem, jnp.asarray(start, jnp.float32), space)
    *values, curvature = _polished_jit(problem, x0, max_steps=max_steps, chord=bool(chord), space=space)
    return _polish_result(problem, *values, curvature=curvature if chord else None)


def _check_space(space: str) -> str:
    if space not in POLISH_SPACES:
        raise ValueError(f"space must be one of {POLISH_SPACES}, got {space!r}")
    return space


def _polish_start(problem: FitProblem, theta, space: str):
    """The polish's coordinates of a start theta (clipped into the boxes)."""
    if space == "unit":
        return jnp.clip(problem.unit_of_theta(theta), 0.0, 1.0)
    return problem.to_unconstrained(theta)


_polished_jit = jax.jit(_polished, static_argnames=("max_steps", "chord", "space"))


@functools.partial(jax.jit, static_argnames=("max_steps", "space"))
def _polished_batch(stacked: FitProblem, z0, *, max_steps: int, space: str = "z"):
    return jax.vmap(lambda problem, z: _polished(problem, z, max_steps, chord=False, keep_curvature=True,
                                                 space=space))(stacked, z0)


def polish_map_batch(problems, starts: np.ndarray, *, max_steps: int = 8, space: str = "z") -> list[MapResult]:
    """:func:`polish_map` for many problems on one forward model at once (one ``vmap``); starts (n, p).
    Full Levenberg-Marquardt (a Jacobian every iteration: no chord under ``vmap``); each result's
    ``curvature`` is the data's J^T J in u of its last Jacobian."""
    problems = list(problems)
    starts = np.asarray(starts, dtype=np.float64)
    if starts.shape != (len(problems), problems[0].n_parameters):
        raise ValueError(f"starts must have shape ({len(problems)}, {problems[0].n_parameters}), got {starts.shape}")
    _check_steps(0, max_steps)
    space = _check_space(space)
    stacked = stack_problems(problems)
    x0 = jnp.stack([_polish_start(problem, jnp.asarray(s, jnp.float32), space) for problem, s in zip(problems, starts)])
    arrays = [np.asarray(a) for a in _polished_batch(stacked, x0, max_steps=max_steps, space=space)]
    return [_polish_result(problem, *(a[i] for a in arrays)) for i, problem in enumerate(problems)]


def _check_steps(adam_steps, polish_steps) -> None:
    for name, value in (("adam_steps", adam_steps), ("polish_steps", polish_steps)):
        if not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")


def stack_problems(problems) -> FitProblem:
    """Stack FitProblems that share a forward model, label spec, priors and continuum treatment
    into one batched problem (leaves gain a leading batch axis) for :func:`fit_map_batch`."""
    problems = list(problems)
    if not problems:
        raise ValueError("no problems to stack")
    structure = jax.tree_util.tree_structure(problems[0])
    for i, problem in enumerate(problems[1:], start=1):
        if jax.tree_util.tree_structure(problem) != structure:
            raise ValueError(
                f"problem {i} differs from problem 0 in its forward model, labels, priors or continuum treatment; "
                "only problems on the same pixels with the same settings can be fitted as one batch"
            )
    return jax.tree_util.tree_map(lambda *leaves: jnp.stack([jnp.asarray(leaf) for leaf in leaves]), *problems)


@functools.partial(jax.jit, static_argnames=("adam_steps", "learning_rate", "polish_steps"))
def _map_batch(stacked: FitProblem, z_start, *, adam_steps: int, learning_rate: float, polish_steps: int):
    def one(problem, z0):
        z_best, remaining, tolerance, objective, values = _optimize_starts(
            problem, z0, adam_steps=adam_steps, learning_rate=learning_rate, polish_steps=polish_steps)
        theta, chi2 = _theta_chi2(problem, z_best)
        widths = problem.upper - problem.lower
        return theta, chi2, objective, remaining, tolerance, values, _hessian_scaled(problem, theta, widths)

    return jax.vmap(one)(stacked, z_start)


def fit_map_batch(
    problems,
    starts: np.ndarray,
    *,
    adam_steps: int = 150,
    learning_rate: float = 0.05,
    polish_steps: int = 50,
) -> list[MapResult]:
    """:func:`fit_map` for many spectra at once: one ``vmap`` over spectra (and starts), one compiled
    program for the whole batch — the way to fill a GPU.

    Args:
        problems: FitProblems on the same forward model (see :func:`stack_problems`).
        starts: (n_starts, p) shared starts or (n_problems, n_starts, p) per-problem starts.
    Returns one :class:`MapResult` per problem, in order.
    """
    problems = list(problems)
    stacked = stack_problems(problems)
    starts = np.asarray(starts, dtype=np.float64)
    if starts.ndim == 2:
        starts = np.broadcast_to(starts, (len(problems),) + starts.shape)
    if starts.shape[0] != len(problems) or starts.shape[-1] != problems[0].n_parameters:
        raise ValueError(f"starts must have shape (n_starts, {problems[0].n_parameters}) or "
                         f"({len(problems)}, n_starts, {problems[0].n_parameters}), got {starts.shape}")
    _check_steps(adam_steps, polish_steps)
    z0 = jnp.stack([problem.to_unconstrained(jnp.asarray(s, jnp.float32)) for problem, s in zip(problems, starts)])
    theta, chi2, objective, remaining, tolerance, values, hessians = (
        np.asarray(a) for a in _map_batch(stacked, z0, adam_steps=adam_steps, learning_rate=float(learning_rate),
                                          polish_steps=polish_steps)
    )
    results = []
    for i, problem in enumerate(problems):
        widths = problem.box_widths()
        results.append(MapResult(
            theta=theta[i].astype(np.float64),
            names=problem.names,
            log_posterior=-float(objective[i]),
            chi2=float(chi2[i]),
            n_good=problem.n_good,
            covariance=_invert_hessian(hessians[i].astype(np.float64), widths),
            all_objectives=values[i],
            converged=bool(remaining[i] < tolerance[i]),
            remaining_decrease=float(remaining[i]),
            convergence_tolerance=float(tolerance[i]),
        ))
    return results
