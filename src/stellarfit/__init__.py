"""stellarfit: stellar parameters and abundances from spectra, with posteriors.

Public API (names re-exported here; modules with a leading underscore are private):

- labels:       LabelSpec, Label, default_label_spec
- wavelengths:  air/vacuum conversion, log-lambda grids, LSF convolution, resampling
- grids:        SpectralGrid (HDF5), sampling designs, resumable grid generation
- synth:        atmospheres (atmosnet), line list (Gaia-ESO), synthesis engines
"""

from stellarfit.grids import SpectralGrid as SpectralGrid
from stellarfit.grids import SpectralGridFile as SpectralGridFile
from stellarfit.grids import generate_grid as generate_grid
from stellarfit.grids import sample_labels as sample_labels
from stellarfit.labels import Label as Label
from stellarfit.labels import LabelSpec as LabelSpec
from stellarfit.labels import default_label_spec as default_label_spec

__version__ = "0.1.0"

__all__ = [
    "Label",
    "LabelSpec",
    "SpectralGrid",
    "SpectralGridFile",
    "default_label_spec",
    "generate_grid",
    "sample_labels",
    "__version__",
]
