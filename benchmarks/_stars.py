"""The two stars of the NUTS speed benchmarks: the shipped example spectrum and a second one on its pixels.

The second is the example with an independent noise draw added (seed 1), at
sqrt(2) the noise, so its ivar halves: a different posterior on the same
pixels, which reuses every compiled program.
"""

from __future__ import annotations

import numpy as np


def two_stars():
    """(example, second) ObservedSpectrum pair."""
    from stellarfit.spectra import ObservedSpectrum, example_spectrum

    first = example_spectrum()
    rng = np.random.default_rng(1)
    sigma = np.where(first.ivar > 0, 1.0 / np.sqrt(np.where(first.ivar > 0, first.ivar, 1.0)), 0.0)
    second = ObservedSpectrum.from_arrays(first.wavelength, first.flux + rng.normal(size=first.flux.size) * sigma,
                                          ivar=first.ivar / 2.0, resolution=first.resolution)
    return first, second
