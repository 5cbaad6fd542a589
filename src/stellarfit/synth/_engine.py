"""What the grid engines (``turbospectrum``, ``jax``) share.

Both engines put their spectra on the same output pixels (a log-lambda grid
over ``window`` at ``resolution`` and ``sampling``), describe themselves with
the same metadata keys in grid files, and read labels the same way (teff, logg
and fe_h required; vmic and alpha_fe defaulted).  :class:`PixelEngine` holds
that common part; the engines subclass it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from stellarfit.synth.abundances import SOLAR_SCALE
from stellarfit.wavelengths import log_lambda_grid

__all__ = ["DEFAULT_LINELIST_RANGE_AIR", "LABEL_DEFAULTS", "PixelEngine", "merge_labels"]

#: Air wavelength range [A] of the shipped Gaia-ESO line-list subset.
DEFAULT_LINELIST_RANGE_AIR = (4950.0, 5550.0)
#: Values of the optional labels when a caller leaves them out: vmic [km/s], alpha_fe [dex].
LABEL_DEFAULTS = {"vmic": 1.0, "alpha_fe": 0.0}
_REQUIRED_LABELS = ("teff", "logg", "fe_h")


def merge_labels(labels: Mapping[str, float], known: Sequence[str], engine: str) -> dict[str, float]:
    """``labels`` as floats over :data:`LABEL_DEFAULTS`, after checking their names.

    Args:
        labels: name -> value; teff, logg and fe_h are required.
        known: the label names the engine accepts (listed, in this order, in the error).
        engine: the engine's name for error messages.

    Raises:
        ValueError: an unknown or a missing required label.
    """
    unknown = sorted(set(labels) - set(known))
    if unknown:
        raise ValueError(f"unknown label(s) {unknown} for the {engine} engine; known labels are {list(known)}")
    missing = [name for name in _REQUIRED_LABELS if name not in labels]
    if missing:
        raise ValueError(f"missing label(s) {missing}: teff, logg and fe_h are required")
    values = dict(LABEL_DEFAULTS)
    values.update({name: float(value) for name, value in labels.items()})
    return values


class PixelEngine:
    """Base of the grid engines: the output pixels and the metadata every engine writes.

    Subclasses set ``name`` and ``physics`` and call :meth:`_set_pixels` in ``__init__``.
    """

    name: ClassVar[str]
    physics: ClassVar[str]

    window: tuple[float, float]
    resolution: float
    sampling: float
    step: float
    margin: float
    #: (n_pixels,) output pixel centres [A, vacuum], log-lambda spaced.
    wavelength: np.ndarray

    def _set_pixels(
        self, window: tuple[float, float], resolution: float, sampling: float, step: float, margin: float
    ) -> tuple[float, float]:
        """Check and store the output-pixel configuration; returns (lower, upper) of the window [A]."""
        lower, upper = float(window[0]), float(window[1])
        if not 0 < lower < upper:
            raise ValueError(f"window must be (lower, upper) in Angstrom with lower < upper, got {window}")
        if not 0 < step <= 0.1:
            raise ValueError(f"step must be in (0, 0.1] A, got {step}")
        self.window = (lower, upper)
        self.resolution = float(resolution)
        self.sampling = float(sampling)
        self.step = float(step)
        self.margin = float(margin)
        self.wavelength = log_lambda_grid(lower, upper, self.resolution, self.sampling)
        return lower, upper

    def _metadata(self, *, engine_version: str, linelist: str, atmospheres: str, radiative_transfer: str, **extra: Any) -> dict:
        """The grid-file metadata shared by the engines, with the engine's own entries (``extra`` last)."""
        return {
            "engine": self.name,
            "engine_version": engine_version,
            "physics": self.physics,
            "linelist": linelist,
            "atmospheres": atmospheres,
            "solar_scale": SOLAR_SCALE,
            "resolution": self.resolution,
            "sampling": self.sampling,
            "window": list(self.window),
            "synthesis_step_angstrom": self.step,
            "synthesis_margin_angstrom": self.margin,
            "lsf": "Gaussian, FWHM = lambda / resolution",
            "wavelength_medium": "vacuum",
            "radiative_transfer": radiative_transfer,
            **extra,
        }
