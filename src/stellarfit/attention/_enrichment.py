"""Enrichment ratios: how much of a map's weight falls on one element's pixels, against random wavelengths.

For a non-negative map ``w`` over pixels (attention, or |d flux / d label|) and a set of pixels
``S`` (those whose strongest line is of element X),

    enrichment(w, S) = mean(w[S]) / mean(w),

the share of the map on ``S`` divided by the share ``|S| / n`` that pixels drawn at random
would get: 1 for a uniform map, > 1 where the map favours X's lines.  Because lines cluster,
"random wavelengths" are also made explicit as circular shifts of ``S`` along the pixel axis
(the same number and grouping of pixels, at other wavelengths): :func:`shift_baseline`.
"""

from __future__ import annotations

import numpy as np

__all__ = ["MIN_PIXELS", "enrichment", "enrichment_matrix", "pixel_correlation", "shift_baseline"]

#: fewer pixels than this in a group: no ratio is given (None)
MIN_PIXELS = 5


def enrichment(weights: np.ndarray, mask: np.ndarray) -> float | None:
    """mean(weights[mask]) / mean(weights) for a map (n_pixels,) >= 0; None for < MIN_PIXELS pixels or an all-zero map."""
    weights = np.asarray(weights, np.float64)
    mask = np.asarray(mask, bool)
    if mask.shape != weights.shape:
        raise ValueError(f"mask {mask.shape} and weights {weights.shape} differ in shape")
    total = weights.mean()
    if mask.sum() < MIN_PIXELS or not np.isfinite(total) or total <= 0:
        return None
    return float(weights[mask].mean() / total)


def enrichment_matrix(maps: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Enrichment of each of ``maps`` (n_maps, n_pixels) on ``mask``: (n_maps,) float64, NaN where undefined."""
    maps = np.asarray(maps, np.float64)
    mask = np.asarray(mask, bool)
    if mask.sum() < MIN_PIXELS:
        return np.full(maps.shape[0], np.nan)
    total = maps.mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, maps[:, mask].mean(axis=1) / total, np.nan)


def shift_baseline(maps: np.ndarray, mask: np.ndarray, *, n_shifts: int = 200, seed: int = 0,
                   reduce: str = "max") -> dict:
    """The enrichment of ``maps`` on ``mask`` against the same pixel set circularly shifted to random places.

    Args:
        maps: (n_maps, n_pixels) or (n_pixels,).
        mask: (n_pixels,) bool.
        n_shifts: random shifts (at least 5% of the pixels away from the original place).
        seed: for the shifts (recorded in the result).
        reduce: "max" (the best of the maps: the statistic one reads off when choosing the most
            enriched head, so the baseline carries the same selection) or "mean" over the maps.
    Returns:
        {"observed", "random_median", "random_p95", "fraction_random_at_least_observed", "n_shifts", "seed"}
        (None values when the group has too few pixels).
    """
    maps = np.atleast_2d(np.asarray(maps, np.float64))
    mask = np.asarray(mask, bool)
    combine = np.nanmax if reduce == "max" else np.nanmean
    out = {"observed": None, "random_median": None, "random_p95": None, "fraction_random_at_least_observed": None,
           "n_shifts": int(n_shifts), "seed": int(seed), "reduce": reduce}
    if mask.sum() < MIN_PIXELS:
        return out
    n = mask.size
    rng = np.random.default_rng(seed)
    margin = max(1, n // 20)
    shifts = rng.integers(margin, n - margin, size=n_shifts) if n > 2 * margin else rng.integers(1, n, size=n_shifts)
    observed = float(combine(enrichment_matrix(maps, mask)))
    randoms = np.array([combine(enrichment_matrix(maps, np.roll(mask, int(s)))) for s in shifts])
    out.update(observed=observed, random_median=float(np.median(randoms)), random_p95=float(np.percentile(randoms, 95)),
               fraction_random_at_least_observed=float(np.mean(randoms >= observed)))
    return out


def pixel_correlation(maps: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Pearson correlation across pixels of each map with each target: (n_maps, n_targets).

    Args:
        maps: (n_maps, n_pixels); targets: (n_targets, n_pixels).  Constant rows give NaN.
    """
    a = np.asarray(maps, np.float64)
    b = np.asarray(targets, np.float64)
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    norm = np.sqrt((a**2).sum(axis=1))[:, None] * np.sqrt((b**2).sum(axis=1))[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(norm > 0, (a @ b.T) / norm, np.nan)
