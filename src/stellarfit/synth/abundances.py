"""Chemical composition: the solar scale and label -> abundance-pattern mapping.

Solar scale: Asplund, Grevesse, Sauval & Scott (2009, ARA&A 47, 481), Table 1,
present-day photospheric values, meteoritic values where no photospheric one
is given; A(X) = log10(N_X / N_H) + 12.  Elements with no stable isotope
(Tc, Pm, Po-Ac, Pa) get A = -9 (absent).

Both synthesis engines (Turbospectrum and the JAX synthesizer) use this one
mapping, so that a label vector means the same composition everywhere:

- ``[Fe/H]`` scales every element heavier than He;
- ``[alpha/Fe]`` is added for O, Ne, Mg, Si, S, Ar, Ca, Ti (Turbospectrum's
  alpha set);
- a total ``[X/Fe]`` label (``mg_fe``, ``na_fe`` ...) replaces the default
  ``[X/Fe]`` of its element (``[alpha/Fe]`` or 0).

The mapping is linear: A = solar + matrix @ labels, so it works unchanged on
NumPy or JAX arrays (and is differentiable).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = [
    "ELEMENT_SYMBOLS",
    "SOLAR_ABUNDANCES",
    "SOLAR_SCALE",
    "ALPHA_ELEMENTS",
    "atomic_number",
    "abundance_matrix",
    "abundances_from_labels",
]

SOLAR_SCALE = "Asplund et al. 2009 (ARA&A 47, 481), photospheric"

# fmt: off
ELEMENT_SYMBOLS = (
    "H", "He", "Li", "Be", "B", "C", "N", "O", "F", "Ne", "Na", "Mg", "Al", "Si", "P", "S", "Cl", "Ar",
    "K", "Ca", "Sc", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn", "Ga", "Ge", "As", "Se", "Br",
    "Kr", "Rb", "Sr", "Y", "Zr", "Nb", "Mo", "Tc", "Ru", "Rh", "Pd", "Ag", "Cd", "In", "Sn", "Sb", "Te",
    "I", "Xe", "Cs", "Ba", "La", "Ce", "Pr", "Nd", "Pm", "Sm", "Eu", "Gd", "Tb", "Dy", "Ho", "Er", "Tm",
    "Yb", "Lu", "Hf", "Ta", "W", "Re", "Os", "Ir", "Pt", "Au", "Hg", "Tl", "Pb", "Bi", "Po", "At", "Rn",
    "Fr", "Ra", "Ac", "Th", "Pa", "U",
)

#: A(X) for Z = 1..92 (index Z-1).
SOLAR_ABUNDANCES = np.array([
    12.00, 10.93, 1.05, 1.38, 2.70, 8.43, 7.83, 8.69, 4.56, 7.93,   # H-Ne
    6.24, 7.60, 6.45, 7.51, 5.41, 7.12, 5.50, 6.40, 5.03, 6.34,     # Na-Ca
    3.15, 4.95, 3.93, 5.64, 5.43, 7.50, 4.99, 6.22, 4.19, 4.56,     # Sc-Zn
    3.04, 3.65, 2.30, 3.34, 2.54, 3.25, 2.52, 2.87, 2.21, 2.58,     # Ga-Zr
    1.46, 1.88, -9.0, 1.75, 0.91, 1.57, 0.94, 1.71, 0.80, 2.04,     # Nb-Sn
    1.01, 2.18, 1.55, 2.24, 1.08, 2.18, 1.10, 1.58, 0.72, 1.42,     # Sb-Nd
    -9.0, 0.96, 0.52, 1.07, 0.30, 1.10, 0.48, 0.92, 0.10, 0.84,     # Pm-Yb
    0.10, 0.85, -0.12, 0.85, 0.26, 1.40, 1.38, 1.62, 0.92, 1.17,    # Lu-Hg
    0.90, 1.75, 0.65, -9.0, -9.0, -9.0, -9.0, -9.0, -9.0, 0.02,     # Tl-Th
    -9.0, -0.54,                                                    # Pa-U
])
# fmt: on

#: Elements enhanced by [alpha/Fe] (Turbospectrum's ALPHA/Fe set).
ALPHA_ELEMENTS = ("O", "Ne", "Mg", "Si", "S", "Ar", "Ca", "Ti")

_N_ELEMENTS = len(ELEMENT_SYMBOLS)


def atomic_number(symbol: str) -> int:
    """Atomic number of an element symbol (case-insensitive)."""
    for i, known in enumerate(ELEMENT_SYMBOLS):
        if known.lower() == symbol.lower():
            return i + 1
    raise KeyError(f"unknown element symbol {symbol!r}")


def _element_of_label(name: str) -> str | None:
    """'mg_fe' -> 'Mg'; None for labels that are not [X/Fe]."""
    if name.endswith("_fe") and name not in ("alpha_fe",):
        return name[:-3].capitalize()
    return None


def abundance_matrix(label_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The linear map from labels to absolute abundances.

    Returns ``(solar, matrix)`` with ``solar`` (92,) and ``matrix`` (92, n_labels)
    such that ``A = solar + matrix @ labels`` for a label vector in
    ``label_names`` order.  Labels that do not set the composition (teff, logg,
    vmic, rv ...) get zero columns.
    """
    names = list(label_names)
    matrix = np.zeros((_N_ELEMENTS, len(names)))
    metals = np.arange(_N_ELEMENTS) >= 2  # Li and heavier
    individual = {}
    for j, name in enumerate(names):
        element = _element_of_label(name)
        if element is not None:
            if element == "Fe":
                raise ValueError("'fe_fe' is not a label; iron is set by 'fe_h'")
            individual[atomic_number(element) - 1] = j
    if "fe_h" in names:
        matrix[metals, names.index("fe_h")] = 1.0
    if "alpha_fe" in names:
        column = names.index("alpha_fe")
        for symbol in ALPHA_ELEMENTS:
            index = atomic_number(symbol) - 1
            if index not in individual:
                matrix[index, column] = 1.0
    for index, column in individual.items():
        matrix[index, column] = 1.0
    return SOLAR_ABUNDANCES.copy(), matrix


def abundances_from_labels(labels: Mapping[str, float]) -> np.ndarray:
    """Absolute abundances A(X), shape (92,), for one star given as a mapping.

    Only composition labels are read (``fe_h``, ``alpha_fe``, ``<x>_fe``);
    others are ignored.
    """
    names = [name for name in labels if name in ("fe_h", "alpha_fe") or _element_of_label(name) is not None]
    solar, matrix = abundance_matrix(names)
    values = np.array([float(labels[name]) for name in names])
    return solar + matrix @ values
