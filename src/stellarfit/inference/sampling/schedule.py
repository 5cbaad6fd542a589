"""NUTS warm-up schedules: the Laplace-whitened metric, the pooled schedule's phases and metric,
Stan-style adaptation windows, and those windows handed to NumPyro and BlackJAX."""

from __future__ import annotations

import contextlib
import threading
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["adaptation_windows", "first_phase_depth", "pooled_inverse_mass", "pooled_phases"]


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
#: gradients; 63 at most cut those fits to 0.63-0.81x and left the others alike (docs/validation/speed.md)
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
    efficiency (docs/validation/speed.md).  Below 20
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
