"""stellarfit: stellar parameters and abundances from spectra, with posteriors.

Public API (names re-exported here; modules with a leading underscore are private):

- labels:       LabelSpec, Label, default_label_spec
- wavelengths:  air/vacuum conversion, log-lambda grids, LSF convolution, resampling
- grids:        SpectralGrid (HDF5), sampling designs, resumable grid generation
- synth:        atmospheres (atmosnet), line list (Gaia-ESO), synthesis engines
"""

from stellarfit.labels import Label as Label
from stellarfit.labels import LabelSpec as LabelSpec
from stellarfit.labels import default_label_spec as default_label_spec

__version__ = "0.1.0"

__all__ = ["Label", "LabelSpec", "default_label_spec", "__version__"]
