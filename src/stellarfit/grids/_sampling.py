"""Sampling designs: where in label space a training grid puts its spectra.

This module owns :func:`sample_labels`, which draws points in the unit
hypercube with a space-filling design and maps them to labels with
:meth:`stellarfit.labels.LabelSpec.from_unit_cube` (which applies the relative
constraints, e.g. ``mg_fe`` within +-0.4 dex of ``alpha_fe``).

Designs (all from :mod:`scipy.stats.qmc` or numpy):

- ``'sobol'``: scrambled Sobol' sequence (Sobol' 1967; Owen 1998 scrambling).
  Its balance properties hold for n a power of two; for other n we draw the
  next power of two with ``random_base2`` and keep the first n points (still
  a low-discrepancy prefix; this avoids scipy's balance warning).
- ``'lhs'``: Latin hypercube (McKay, Beckman & Conover 1979): every 1-D
  marginal of the unit-cube design has exactly one point in each of n equal
  strata.
- ``'uniform'``: independent uniform random points (baseline).

For a label bounded relative to another one, the stratified unit coordinate
is the *offset* from the reference label, not the label itself.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import qmc

from stellarfit.labels import LabelSpec

__all__ = ["SAMPLING_METHODS", "sample_unit_cube", "sample_labels"]

#: Names accepted by :func:`sample_labels`.
SAMPLING_METHODS = ("sobol", "lhs", "uniform")


def sample_unit_cube(d: int, n: int, method: str = "sobol", seed: int = 0) -> np.ndarray:
    """n points of a design in the d-dimensional unit hypercube, shape (n, d) float64.

    Reproducible: the same ``(d, n, method, seed)`` gives the same points.
    """
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer number of spectra, got {n!r}")
    if int(d) != d or d < 1:
        raise ValueError(f"d must be a positive integer, got {d!r}")
    n, d = int(n), int(d)
    rng = np.random.default_rng(seed)
    if method == "sobol":
        engine = qmc.Sobol(d, scramble=True, rng=rng)
        points = engine.random_base2(max(0, math.ceil(math.log2(n))))[:n]
    elif method == "lhs":
        points = qmc.LatinHypercube(d, rng=rng).random(n)
    elif method == "uniform":
        points = rng.random((n, d))
    else:
        raise ValueError(f"unknown sampling method {method!r}; choose one of {', '.join(SAMPLING_METHODS)}")
    return np.asarray(points, dtype=np.float64)


def sample_labels(spec: LabelSpec, n: int, method: str = "sobol", seed: int = 0) -> np.ndarray:
    """Draw n label vectors inside the box and relative constraints of ``spec``.

    Args:
        spec: the labels to sample (bounds, relative constraints).
        n: number of label vectors.
        method: 'sobol' (scrambled Sobol', default), 'lhs' (Latin hypercube)
            or 'uniform'.
        seed: seed of the scrambling / permutation / random draws; record it
            with the grid (``generate_grid(..., seed=seed, design=method)``).

    Returns:
        (n, n_labels) float64 labels in ``spec`` order; every row passes
        ``spec.validate``.

    Example:
        >>> from stellarfit.labels import default_label_spec
        >>> labels = sample_labels(default_label_spec(), 100, "sobol", seed=1)
        >>> labels.shape
        (100, 13)
    """
    if not isinstance(spec, LabelSpec):
        raise TypeError(f"spec must be a stellarfit.labels.LabelSpec, got {type(spec).__name__}")
    unit = sample_unit_cube(len(spec), n, method, seed)
    return spec.from_unit_cube(unit)
