"""Astrophysical log gf: corrections to a line list's oscillator strengths fitted on real stars.

The corrections are a JSON document (written by ``scripts/calibrate_loggf.py``) with one row
per corrected line: its index in the shipped Gaia-ESO subset, the line's identity (air
wavelength, atomic number, ion, laboratory log gf) and ``dloggf``, the change in dex.  The
identity is checked before a correction is applied, so a table made for another list
cannot be applied by mistake.

Shipped: ``stellarfit/data/ges_loggf_astro_5000_5500.json``, fitted on the Sun, Arcturus and
Procyon over 5000-5500 A (provenance and the measured effect in docs/validation/real_stars.md).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import json
import os
from pathlib import Path

import numpy as np

from stellarfit.synth.linelist import LineList, load_default_linelist

ASTRO_LOGGF_FILE = "ges_loggf_astro_5000_5500.json"
ASTRO_LINELIST_NAME = "astro"
_COLUMNS = ("index", "wavelength_air", "atomic_number", "ion", "log_gf", "dloggf")


def load_loggf_corrections(path: str | os.PathLike | None = None) -> dict:
    """The corrections document: the shipped one (``path=None``) or a file of ``calibrate_loggf.py``."""
    if path is None:
        resource = importlib.resources.files("stellarfit") / "data" / ASTRO_LOGGF_FILE
        if not resource.is_file():
            raise FileNotFoundError(f"the shipped log gf corrections {ASTRO_LOGGF_FILE} are missing from the "
                                    "stellarfit package data; reinstall stellarfit")
        document = json.loads(resource.read_text())
        source = f"stellarfit/data/{ASTRO_LOGGF_FILE}"
    else:
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"log gf corrections file {path} does not exist")
        document = json.loads(path.read_text())
        source = str(path)
    rows = document.get("lines") if isinstance(document, dict) else None
    if not isinstance(rows, list) or any(not isinstance(r, dict) or set(_COLUMNS) - set(r) for r in rows):
        raise ValueError(f"{source} is not a log gf corrections file: it needs a 'lines' list whose rows have "
                         f"{', '.join(_COLUMNS)} (as scripts/calibrate_loggf.py writes)")
    return document


def apply_loggf_corrections(linelist: LineList, corrections: dict) -> LineList:
    """``linelist`` with each corrected line's log gf raised by its ``dloggf``.

    Raises ValueError, naming the first mismatch, when a row's index does not hold the
    line it describes (the corrections were made for another list).
    """
    rows = corrections["lines"]
    index = np.array([int(r["index"]) for r in rows], dtype=np.int64)
    if index.size and (index.min() < 0 or index.max() >= len(linelist.log_gf)):
        raise ValueError(f"log gf corrections refer to line {index.max()} but the list has {len(linelist.log_gf)} lines: "
                         "they were made for another line list")
    for r, i in zip(rows, index):
        same = (abs(float(linelist.wavelength_air[i]) - float(r["wavelength_air"])) < 5e-4
                and int(linelist.atomic_number[i]) == int(r["atomic_number"]) and int(linelist.ion[i]) == int(r["ion"])
                and abs(float(linelist.log_gf[i]) - float(r["log_gf"])) < 5e-4)
        if not same:
            raise ValueError(
                f"log gf correction row for line {i} describes {r['wavelength_air']} A Z={r['atomic_number']} ion "
                f"{r['ion']} log gf {r['log_gf']}, but the list has {float(linelist.wavelength_air[i])} A "
                f"Z={int(linelist.atomic_number[i])} ion {int(linelist.ion[i])} log gf {float(linelist.log_gf[i])}: "
                "the corrections were made for another line list")
    log_gf = np.array(linelist.log_gf, dtype=np.float64)
    np.add.at(log_gf, index, np.array([float(r["dloggf"]) for r in rows]))
    log_gf.setflags(write=False)
    return dataclasses.replace(linelist, log_gf=log_gf)


@functools.cache
def load_astrophysical_linelist() -> LineList:
    """The shipped Gaia-ESO subset with the shipped astrophysical log gf corrections (cached)."""
    return apply_loggf_corrections(load_default_linelist(), load_loggf_corrections())
