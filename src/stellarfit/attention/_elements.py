"""Which element makes the strongest line at each pixel: a line-strength proxy over the shipped line list.

The proxy (a classical curve-of-growth ordering, e.g. Gray, *The Observation and Analysis of
Stellar Photospheres*, ch. 16) of a line's central strength is

    strength = log10(g f) + A(X) - theta * chi_lower,    theta = 5040 K / Teff,

with ``A(X)`` the solar abundance (Asplund et al. 2009, :data:`stellarfit.synth.abundances.SOLAR_ABUNDANCES`)
plus the labels' [Fe/H] and [X/Fe] where given, and ``chi_lower`` [eV] the lower level's
excitation energy.  The ionization balance is ignored: a neutral and an ionized line of one
element both use the element's total abundance (in a solar-type photosphere most Fe, Mg, Ti,
Cr, Ni ... is once ionized, so neutral lines are overrated by ~1 dex against ionized ones, and
Na I lines by more).  It orders lines; it is not a synthesis.

Each pixel takes the element of the strongest line whose (vacuum) centre lies within
+-1 FWHM = lambda / R of it; a pixel whose strongest line is below ``threshold`` is continuum
(element 0).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from stellarfit.synth.abundances import ELEMENT_SYMBOLS, SOLAR_ABUNDANCES

__all__ = [
    "CONTINUUM",
    "DEFAULT_STRENGTH_THRESHOLD",
    "LABEL_ELEMENTS",
    "PixelElements",
    "assign_pixel_elements",
    "line_strength",
]

#: element code of a pixel without a line above the threshold
CONTINUUM = 0
#: strength (dex, see the module docstring) below which a pixel's strongest line counts as weak.  At
#: solar labels on the default window (R 30,000) 40% of the pixels are then line pixels (median depth
#: 0.14 in the shipped emulator's solar spectrum, 6% shallower than 0.02) and the continuum pixels have
#: a median depth of 0.013 (7% deeper than 0.1: wings and lines the proxy underrates, e.g. Fe II);
#: 1.5 is the highest value at which Mn lines (Mn I 5394, 5420, 5432 A) are not all continuum
DEFAULT_STRENGTH_THRESHOLD = 1.5
#: the element each abundance label changes (teff, logg, vmic and alpha_fe have none of their own)
LABEL_ELEMENTS = {"fe_h": "Fe", "mg_fe": "Mg", "si_fe": "Si", "ca_fe": "Ca", "ti_fe": "Ti",
                  "na_fe": "Na", "ni_fe": "Ni", "cr_fe": "Cr", "mn_fe": "Mn"}


def line_strength(linelist, labels: Mapping[str, float] | None = None) -> np.ndarray:
    """The proxy strength (n_lines,) [dex] of every line of ``linelist`` (see the module docstring).

    Args:
        linelist: a :class:`stellarfit.synth.linelist.LineList`.
        labels: physical labels; ``teff`` [K] (default 5772), ``fe_h`` and any ``<x>_fe`` shift
            the abundances (default 0: solar).
    """
    labels = dict(labels or {})
    theta = 5040.0 / float(labels.get("teff", 5772.0))
    z = np.asarray(linelist.atomic_number, np.int64)
    abundance = SOLAR_ABUNDANCES[z - 1].astype(np.float64)
    fe_h = float(labels.get("fe_h", 0.0))
    abundance = abundance + np.where(z > 2, fe_h, 0.0)
    for name, symbol in LABEL_ELEMENTS.items():
        if name != "fe_h" and name in labels:
            abundance = abundance + np.where(z == ELEMENT_SYMBOLS.index(symbol) + 1, float(labels[name]), 0.0)
    return np.asarray(linelist.log_gf, np.float64) + abundance - theta * np.asarray(linelist.excitation_potential, np.float64)


class PixelElements:
    """Per-pixel element of the strongest line.

    Attributes:
        wavelength: (n_pixels,) vacuum A.
        atomic_number: (n_pixels,) int, 0 = continuum.
        strength: (n_pixels,) the winning line's proxy strength (-inf where no line is within reach).
        line_wavelength: (n_pixels,) vacuum A of the winning line (NaN where none).
        threshold: the strength below which a pixel is continuum.
    """

    def __init__(self, wavelength, atomic_number, strength, line_wavelength, threshold):
        self.wavelength = wavelength
        self.atomic_number = atomic_number
        self.strength = strength
        self.line_wavelength = line_wavelength
        self.threshold = float(threshold)

    def mask(self, element: str) -> np.ndarray:
        """(n_pixels,) bool: the pixels whose strongest line is of ``element`` (a symbol, e.g. "Mg";
        "continuum" for the continuum, "lines" for every line pixel)."""
        if element == "continuum":
            return self.atomic_number == CONTINUUM
        if element == "lines":
            return self.atomic_number != CONTINUUM
        return self.atomic_number == ELEMENT_SYMBOLS.index(element) + 1

    def counts(self) -> dict[str, int]:
        """Pixels per element symbol (and ``continuum``), largest first."""
        values, counts = np.unique(self.atomic_number, return_counts=True)
        out = {("continuum" if v == CONTINUUM else ELEMENT_SYMBOLS[v - 1]): int(c) for v, c in zip(values, counts)}
        return dict(sorted(out.items(), key=lambda item: -item[1]))


def assign_pixel_elements(wavelength, resolution: float, *, linelist=None, labels: Mapping[str, float] | None = None,
                          threshold: float = DEFAULT_STRENGTH_THRESHOLD) -> PixelElements:
    """The element of the strongest line within +-1 FWHM of each pixel.

    Args:
        wavelength: (n_pixels,) vacuum A, increasing.
        resolution: resolving power R; the reach is +-lambda / R (one FWHM) around each pixel.
        linelist: a LineList (default: the shipped Gaia-ESO subset, 4950-5550 A air; its air
            wavelengths are converted to vacuum, Birch & Downs 1994).
        labels: physical labels for the strengths (:func:`line_strength`; default: the Sun).
        threshold: minimum strength of a line pixel [dex].
    """
    if linelist is None:
        from stellarfit.synth.linelist import load_default_linelist

        linelist = load_default_linelist()
    wavelength = np.asarray(wavelength, np.float64)
    if wavelength.ndim != 1 or wavelength.size < 1 or np.any(np.diff(wavelength) <= 0):
        raise ValueError("wavelength must be a 1-d increasing array (vacuum A)")
    if not resolution or resolution <= 0:
        raise ValueError(f"resolution must be positive, got {resolution}")
    line_wavelength = np.asarray(linelist.wavelength_vacuum, np.float64)
    strength = line_strength(linelist, labels)
    z = np.asarray(linelist.atomic_number, np.int64)
    reach = line_wavelength / float(resolution)
    first = np.searchsorted(wavelength, line_wavelength - reach, side="left")
    last = np.searchsorted(wavelength, line_wavelength + reach, side="right")
    # every (pixel, line) pair within reach
    width = last - first
    keep = width > 0
    lines = np.repeat(np.flatnonzero(keep), width[keep])
    offsets = np.arange(lines.size) - np.repeat(np.cumsum(width[keep]) - width[keep], width[keep])
    pixels = first[lines] + offsets
    order = np.lexsort((strength[lines], pixels))  # by pixel, then by strength: each pixel's last is its strongest
    pixels, lines = pixels[order], lines[order]
    is_last = np.append(pixels[1:] != pixels[:-1], True) if pixels.size else np.zeros(0, bool)
    best_line = np.full(wavelength.size, -1, np.int64)
    best_line[pixels[is_last]] = lines[is_last]
    has = best_line >= 0
    best_strength = np.where(has, strength[np.maximum(best_line, 0)], -np.inf)
    winner_wavelength = np.where(has, line_wavelength[np.maximum(best_line, 0)], np.nan)
    element = np.where(has & (best_strength >= threshold), z[np.maximum(best_line, 0)], CONTINUUM)
    return PixelElements(wavelength, element.astype(np.int64), best_strength, winner_wavelength, threshold)
