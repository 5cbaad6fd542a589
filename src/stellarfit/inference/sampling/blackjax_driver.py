"""NUTS with BlackJAX: Stan-style window adaptation, then draws by ``lax.scan``; :func:`sample_blackjax`."""

from __future__ import annotations

import functools
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from stellarfit.inference.likelihood import FitProblem
from stellarfit.inference.sampling.common import (
    SamplerResult,
    _chains,
    _draw_stats,
    _finish,
    _prepare,
    _resolve_chain_method,
    _run_settings,
    _to_z,
    check_sampler_settings,
)
from stellarfit.inference.sampling.schedule import _blackjax_schedule, _dense_adaptation, _run_schedule

__all__ = ["sample_blackjax"]


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


def _sequential_chains(problem: FitProblem, keys, w_init, center, factor, inverse_mass, options: dict):
    """chain_method="processes", worker side: a worker's chains one after another, in the same program as
    chain_method="sequential" (:func:`stellarfit.inference._processes.run_chains`)."""
    return _blackjax_chains(problem, keys, w_init, center, factor, inverse_mass, **{**options, "chain_method": "sequential"})


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

            return _processes.run_chains(_sequential_chains, problem, keys, *arguments, options)
        if logdensity_fn is None:
            # compiled once per forward model and settings: the problem's data are arguments
            return _blackjax_chains(problem, keys, *arguments, **options)
        return jax.jit(lambda k, *a: _blackjax_chains_fn(logdensity_fn, k, *a, **options))(keys, *arguments)

    (w, lp, diverging, n_steps, depths, acceptance), step_size, warmup_steps = _run_schedule(
        run, keys, start.w_init, start.inverse_mass, num_warmup, num_samples, mass_matrix, int(max_tree_depth))
    stats = _draw_stats(lp, diverging, n_steps, acceptance, tree_depth=depths)
    settings = _run_settings("blackjax", num_warmup, num_samples, num_chains, depth, target_accept, mass_matrix,
                             chain_method, seed)
    return _finish(problem, _to_z(start, w), stats, warmup_steps, step_size, settings, start_time, start.laplace)
