"""Spectral grids: the SpectralGrid container (HDF5), sampling designs, splits and generation.

- :class:`SpectralGrid` / :class:`SpectralGridFile`: a grid in memory / an open
  grid file streamed in batches (layout in :mod:`stellarfit.grids._grid`).
- :func:`sample_labels`: Sobol' / Latin-hypercube / uniform label designs.
- :func:`split_indices`: deterministic train / validation / test splits.
- :func:`generate_grid`: resumable, parallel synthesis of a grid with any engine.
"""

from stellarfit.grids._generate import DEFAULT_CHUNK_SIZE as DEFAULT_CHUNK_SIZE
from stellarfit.grids._generate import GenerationError as GenerationError
from stellarfit.grids._generate import GenerationResult as GenerationResult
from stellarfit.grids._generate import generate_grid as generate_grid
from stellarfit.grids._generate import parts_dir_for as parts_dir_for
from stellarfit.grids._grid import FORMAT_NAME as FORMAT_NAME
from stellarfit.grids._grid import SCHEMA_VERSION as SCHEMA_VERSION
from stellarfit.grids._grid import GridBatch as GridBatch
from stellarfit.grids._grid import GridFailures as GridFailures
from stellarfit.grids._grid import GridFormatError as GridFormatError
from stellarfit.grids._grid import SpectralGrid as SpectralGrid
from stellarfit.grids._grid import SpectralGridFile as SpectralGridFile
from stellarfit.grids._grid import check_writable as check_writable
from stellarfit.grids._grid import split_indices as split_indices
from stellarfit.grids._sampling import SAMPLING_METHODS as SAMPLING_METHODS
from stellarfit.grids._sampling import sample_labels as sample_labels
from stellarfit.grids._sampling import sample_unit_cube as sample_unit_cube

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "FORMAT_NAME",
    "SAMPLING_METHODS",
    "SCHEMA_VERSION",
    "GenerationError",
    "GenerationResult",
    "GridBatch",
    "GridFailures",
    "GridFormatError",
    "SpectralGrid",
    "SpectralGridFile",
    "check_writable",
    "generate_grid",
    "parts_dir_for",
    "sample_labels",
    "sample_unit_cube",
    "split_indices",
]
