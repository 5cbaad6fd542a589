"""NUTS with NumPyro: the NumPyro model of a fit, its chains in one jitted program per forward
model (one star, or many stars vmapped together), and :func:`sample_numpyro`."""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Sequence
from typing import Any, Callable, NamedTuple

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
from stellarfit.inference.sampling.schedule import _dense_adaptation, _numpyro_schedule, _run_schedule

__all__ = ["numpyro_fit_model", "numpyro_model", "sample_numpyro", "sample_numpyro_batch"]


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


def _numpyro_chains_fn(problem, keys, w_init, center, factor, inverse_mass, options, chain_method):
    one_chain = functools.partial(_numpyro_one_chain, problem, center=center, factor=factor, inverse_mass=inverse_mass,
                                  options=options)
    return _chains(one_chain, keys, w_init, chain_method)


@functools.partial(jax.jit, static_argnames=("options", "chain_method"))
def _numpyro_chains(problem: FitProblem, keys, w_init, center, factor, inverse_mass, options: _NumpyroOptions, chain_method: str):
    """All chains, warm-up and draws in one program; compiled once per forward model, model function and settings."""
    return _numpyro_chains_fn(problem, keys, w_init, center, factor, inverse_mass, options, chain_method)


def _sequential_chains(problem: FitProblem, keys, w_init, center, factor, inverse_mass, options: _NumpyroOptions):
    """chain_method="processes", worker side: a worker's chains one after another, in the same program as
    chain_method="sequential" (:func:`stellarfit.inference._processes.run_chains`)."""
    return _numpyro_chains(problem, keys, w_init, center, factor, inverse_mass, options=options, chain_method="sequential")


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

            return _processes.run_chains(_sequential_chains, problem, *arguments[1:], options)
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
    stats = _draw_stats(lp, diverging, n_steps, acceptance)
    settings = _run_settings("numpyro", num_warmup, num_samples, num_chains, max_tree_depth, target_accept, mass_matrix,
                             chain_method, seed)
    return _finish(problem, _to_z(start, w), stats, warmup_steps, step_size, settings, start_time, start.laplace)


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
    settings = _run_settings("numpyro", num_warmup, num_samples, num_chains, max_tree_depth, target_accept, mass_matrix,
                             "batched", seed)
    results = []
    for i, (problem, start) in enumerate(zip(problems, starts)):
        stats = _draw_stats(lp[i], diverging[i], n_steps[i], acceptance[i])
        results.append(_finish(problem, _to_z(start, w[i]), stats, warmup_steps[i], step_size[i], settings,
                               time.perf_counter() - share, start.laplace))
    return results
