"""Radial-velocity search and maximum a posteriori fits.

- :func:`estimate_rv`: chi-square scan over a velocity grid (continuum profiled)
  with a template spectrum: robust for any RV in +-1000 km/s, where a local
  optimizer started at 0 would fail (The Payne's +-5 km/s bound is a known
  failure mode).
- :func:`fit_map`: multi-start optimization in the unconstrained space (Adam,
  vmapped over starts in one jitted ``lax.scan``), then the best start is
  polished with L-BFGS; the Laplace covariance is the inverse Hessian of the
  negative log posterior at the optimum (float64).  Starts cover the
  Teff-logg plane to escape the Teff-logg-[Fe/H] degeneracy's local minima.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from stellarfit.inference.likelihood import FitProblem

__all__ = ["MapResult", "estimate_rv", "fit_map", "default_starts"]


@dataclasses.dataclass(frozen=True)
class MapResult:
    """Result of :func:`fit_map`.

    Attributes:
        theta: (p,) best parameters, in ``names`` order.
        names: parameter names.
        log_posterior: at ``theta``.
        chi2: at ``theta`` (continuum profiled); ``n_good`` pixels used.
        covariance: (p, p) Laplace covariance (inverse Hessian), float64; NaN if singular.
        all_objectives: (n_starts,) final objective of every start.
        converged: True if the polish step ended with a small gradient.
    """

    theta: np.ndarray
    names: tuple[str, ...]
    log_posterior: float
    chi2: float
    n_good: int
    covariance: np.ndarray
    all_objectives: np.ndarray
    converged: bool

    @property
    def sigma(self) -> np.ndarray:
        return np.sqrt(np.clip(np.diag(self.covariance), 0.0, None))


def estimate_rv(forward_model, template_labels, flux, ivar, design, *, step_kms: float | None = None, vsini: float = 0.0):
    """Best RV [km/s] on a grid over ``forward_model.rv_range`` by chi-square with the continuum profiled.

    Returns ``(rv_best, rv_grid, chi2_grid)``.
    """
    from stellarfit.forward import profile_continuum

    low, high = forward_model.rv_range
    step = step_kms or max(forward_model.velocity_step, 1.0)
    grid = np.arange(low, high + 0.5 * step, step)
    flux = jnp.asarray(flux, jnp.float32)
    ivar = jnp.asarray(np.where(forward_model.covered, ivar, 0.0), jnp.float32)
    design = jnp.asarray(design, jnp.float32)
    broadened = forward_model.broaden(forward_model.rest_frame(jnp.asarray(template_labels)), vsini)

    @jax.jit
    def chi2_at(rv):
        model = forward_model.shift_to_observed(broadened, rv)
        return profile_continuum(model, flux, ivar, design)[2]

    chi2 = np.array(jax.lax.map(chi2_at, jnp.asarray(grid, jnp.float32), batch_size=64))
    best = int(np.argmin(chi2))
    # parabolic refinement around the minimum
    rv = grid[best]
    if 0 < best < grid.size - 1:
        left, centre, right = chi2[best - 1 : best + 2]
        denominator = left - 2 * centre + right
        if denominator > 0:
            rv = grid[best] + 0.5 * step * (left - right) / denominator
    return float(rv), grid, chi2


def default_starts(problem: FitProblem, n_starts: int = 8, *, rv: float = 0.0, vsini: float = 5.0, seed: int = 0) -> np.ndarray:
    """Starting points (n_starts, p): a Sobol set over (teff, logg, fe_h), other labels at the box centre."""
    from scipy.stats import qmc

    spec = problem.label_spec
    centre = 0.5 * (spec.lower + spec.upper)
    for i, label in enumerate(spec):
        if label.offset_from is not None:
            centre[i] = centre[spec.index(label.offset_from)] if label.offset_from else 0.0
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


def fit_map(
    problem: FitProblem,
    starts: np.ndarray,
    *,
    adam_steps: int = 300,
    learning_rate: float = 0.05,
    polish_steps: int = 50,
) -> MapResult:
    """Multi-start MAP fit of a :class:`FitProblem` from ``starts`` (n_starts, p) in physical units."""
    starts = np.atleast_2d(np.asarray(starts, dtype=np.float64))
    if starts.shape[1] != problem.n_parameters:
        raise ValueError(f"starts must have {problem.n_parameters} columns ({problem.names}), got {starts.shape[1]}")
    z0 = problem.to_unconstrained(jnp.asarray(starts, jnp.float32))
    objective = problem.objective_unconstrained
    optimizer = optax.adam(learning_rate)

    @jax.jit
    def run_adam(z_start):
        def step(carry, _):
            z, state = carry
            value, gradient = jax.value_and_grad(objective)(z)
            gradient = jnp.where(jnp.isfinite(gradient), gradient, 0.0)
            updates, state = optimizer.update(gradient, state, z)
            return (optax.apply_updates(z, updates), state), value

        (z_final, _), _ = jax.lax.scan(step, (z_start, optimizer.init(z_start)), None, length=adam_steps)
        return z_final, objective(z_final)

    z_all, values = jax.vmap(run_adam)(z0)
    values = np.asarray(values)
    values = np.where(np.isfinite(values), values, np.inf)
    best = int(np.argmin(values))
    z_best, converged = _polish(objective, z_all[best], polish_steps)
    theta = problem.to_theta(z_best)
    log_posterior = -float(objective(z_best))
    chi2 = float(problem.continuum_fit(theta)[2])
    covariance = laplace_covariance(problem, np.asarray(theta, dtype=np.float64))
    return MapResult(
        theta=np.asarray(theta, dtype=np.float64),
        names=problem.names,
        log_posterior=log_posterior,
        chi2=chi2,
        n_good=problem.n_good,
        covariance=covariance,
        all_objectives=values,
        converged=converged,
    )


def _polish(objective, z, steps: int):
    solver = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(objective)

    @jax.jit
    def run(z):
        def step(carry, _):
            z, state = carry
            value, gradient = value_and_grad(z, state=state)
            updates, state = solver.update(gradient, state, z, value=value, grad=gradient, value_fn=objective)
            return (optax.apply_updates(z, updates), state), None

        (z_final, _), _ = jax.lax.scan(step, (z, solver.init(z)), None, length=steps)
        return z_final, jnp.linalg.norm(jax.grad(objective)(z_final))

    z_final, gradient_norm = run(z)
    if not bool(jnp.all(jnp.isfinite(z_final))) or float(objective(z_final)) > float(objective(z)):
        z_final, gradient_norm = z, jnp.linalg.norm(jax.grad(objective)(z))
    # converged: the log posterior changes by < 0.1 per unit of z (the parameters' boxes
    # map to |z| of a few units, so the optimum is pinned far below the posterior width)
    return z_final, bool(gradient_norm < 0.1)


def laplace_covariance(problem: FitProblem, theta: np.ndarray) -> np.ndarray:
    """Inverse Hessian of the negative log posterior in physical theta; NaN if singular.

    The Hessian is taken in parameters scaled by their box widths (for
    conditioning) in the model's dtype and inverted in float64.
    """
    widths = problem.box_widths()
    origin = np.asarray(theta, dtype=np.float64)

    @jax.jit
    def negative_log_posterior(u):
        t = jnp.asarray(origin) + u * jnp.asarray(widths)
        return -(problem.log_likelihood(t) + problem.log_prior(t))

    u0 = jnp.zeros(origin.size, dtype=jnp.result_type(float))
    hessian_scaled = np.asarray(jax.jit(jax.hessian(negative_log_posterior))(u0), dtype=np.float64)
    hessian = hessian_scaled / np.outer(widths, widths)
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
