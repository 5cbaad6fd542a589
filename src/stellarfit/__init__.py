"""stellarfit: stellar parameters and abundances from spectra, with posteriors.

Public API (names re-exported here; modules with a leading underscore are private):

- labels:       LabelSpec, Label, default_label_spec
- wavelengths:  air/vacuum conversion, log-lambda grids, LSF convolution, resampling
- grids:        SpectralGrid (HDF5), sampling designs, resumable grid generation
- synth:        atmospheres (atmosnet), line list (Gaia-ESO), synthesis engines
- emulators:    TransformerPayne and The Payne (Flax): training, fine-tuning, checkpoints
- spectra:      ObservedSpectrum and FITS readers (APOGEE, BOSS, LAMOST, DESI, Gaia RVS, generic)
- forward:      Doppler shift, rotation, LSF, resampling, continuum
- inference:    likelihood, RV search, MAP, Fisher matrices and Cramér-Rao bounds

Heavy parts (JAX, Flax) are imported on first use of a name, so that
``import stellarfit`` and the command line start quickly.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from stellarfit.labels import Label as Label
from stellarfit.labels import LabelSpec as LabelSpec
from stellarfit.labels import default_label_spec as default_label_spec

__version__ = "0.1.0"

#: public name -> module that defines it (imported lazily)
_LAZY = {
    "Emulator": "stellarfit.emulators",
    "load_emulator": "stellarfit.emulators",
    "SpectralGrid": "stellarfit.grids",
    "SpectralGridFile": "stellarfit.grids",
    "generate_grid": "stellarfit.grids",
    "sample_labels": "stellarfit.grids",
    "ObservedSpectrum": "stellarfit.spectra",
    "read_spectrum": "stellarfit.spectra",
    "fit_star": "stellarfit.inference",
    "fit_stars": "stellarfit.inference",
    "fit_batch": "stellarfit.inference",
    "MapSettings": "stellarfit.inference",
    "NutsSettings": "stellarfit.inference",
    "example_spectrum": "stellarfit.spectra",
    "degrade_resolution": "stellarfit.spectra",
    "cramer_rao": "stellarfit.inference",
    "cramer_rao_by_window": "stellarfit.inference",
    "enable_compilation_cache": "stellarfit._cache",
}

__all__ = ["Label", "LabelSpec", "default_label_spec", "__version__", *sorted(_LAZY)]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'stellarfit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:  # for type checkers and IDEs
    from stellarfit.emulators import Emulator as Emulator
    from stellarfit.emulators import load_emulator as load_emulator
    from stellarfit.grids import SpectralGrid as SpectralGrid
    from stellarfit.grids import SpectralGridFile as SpectralGridFile
    from stellarfit.grids import generate_grid as generate_grid
    from stellarfit.grids import sample_labels as sample_labels
    from stellarfit.spectra import ObservedSpectrum as ObservedSpectrum
    from stellarfit.inference import cramer_rao as cramer_rao
    from stellarfit.inference import cramer_rao_by_window as cramer_rao_by_window
    from stellarfit.inference import fit_star as fit_star
    from stellarfit.inference import fit_batch as fit_batch
    from stellarfit.inference import MapSettings as MapSettings
    from stellarfit.inference import NutsSettings as NutsSettings
    from stellarfit.inference import fit_stars as fit_stars
    from stellarfit.spectra import example_spectrum as example_spectrum
    from stellarfit.spectra import degrade_resolution as degrade_resolution
    from stellarfit.spectra import read_spectrum as read_spectrum
