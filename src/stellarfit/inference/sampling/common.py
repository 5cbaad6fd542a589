"""What both NUTS drivers share: the settings and their checks, the result, the chain starts in
whitened coordinates, where the chains run, and the diagnostics of a finished run."""

from __future__ import annotations

import dataclasses
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from stellarfit.inference.likelihood import FitProblem
from stellarfit.inference.sampling.diagnostics import sampling_diagnostics
from stellarfit.inference.sampling.laplace import UnconstrainedLaplace, laplace_inverse_mass_matrix, unconstrained_laplace
from stellarfit.inference.sampling.schedule import _WHITENED_VARIANCE, _laplace_inverse_mass, _whitened, first_phase_depth

__all__ = ["CHAIN_METHODS", "MASS_MATRICES", "SamplerResult", "check_sampler_settings"]

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


def _run_settings(backend: str, num_warmup, num_samples, num_chains, max_tree_depth, target_accept, mass_matrix,
                  chain_method: str, seed) -> dict[str, Any]:
    """The settings a run records in its diagnostics (both drivers; :func:`_finish` adds them)."""
    return dict(backend=backend, num_warmup=int(num_warmup), num_samples=int(num_samples), num_chains=int(num_chains),
                max_tree_depth=int(max_tree_depth),
                first_phase_max_tree_depth=first_phase_depth(num_warmup, mass_matrix, int(max_tree_depth)),
                target_accept=float(target_accept), mass_matrix=mass_matrix, chain_method=chain_method, seed=int(seed))


def _draw_stats(lp, diverging, n_steps, acceptance, tree_depth=None) -> dict[str, Any]:
    """Per-draw statistics, (num_chains, num_samples) each; the tree depth from the leapfrog counts
    (2^depth - 1 steps at most) where the kernel does not report it (NumPyro's)."""
    if tree_depth is None:
        n_steps = np.asarray(n_steps)
        tree_depth = np.ceil(np.log2(n_steps + 1.0)).astype(int)
    return {"diverging": diverging, "n_steps": n_steps, "tree_depth": tree_depth, "acceptance_rate": acceptance, "lp": lp}


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


def _chains(one_chain, keys, w_init, chain_method):
    """Run ``one_chain(key, w0)`` for every chain: ``lax.map`` (sequential) or ``vmap`` (vectorized)."""
    if chain_method == "sequential":
        return jax.lax.map(lambda args: one_chain(*args), (keys, w_init))
    return jax.vmap(one_chain)(keys, w_init)
