"""Convergence diagnostics and summaries of posterior draws: R-hat, bulk and tail ESS, percentiles."""

from __future__ import annotations

import numpy as np

__all__ = ["sampling_diagnostics", "summarize_samples"]


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
