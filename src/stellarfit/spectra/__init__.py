"""Observed spectra: the ObservedSpectrum container and FITS readers for survey formats.

- :class:`ObservedSpectrum`: vacuum wavelengths [A], flux, ivar, mask,
  resolving power or per-pixel LSF sigma, arm ids, metadata; validated on
  construction; :meth:`ObservedSpectrum.from_arrays` for any convention.
- :func:`read_spectrum` / :func:`read_spectra`: auto-detect the format and read
  (``format=`` overrides); :func:`available_formats`, :func:`identify_format`,
  :func:`register_format` for the registry.
- One module per format, each with ``identify`` and ``read``: ``generic``,
  ``text`` (plain text / CSV), ``apogee_apstar``, ``apogee_aspcap``, ``boss``,
  ``lamost_lrs``, ``lamost_mrs``, ``desi``, ``gaia_rvs``.  NaN/inf pixels are
  masked on reading and counted in ``metadata['n_nonfinite_masked']``.

Only numpy and astropy are needed here.
"""

from stellarfit.spectra._registry import (
    SpectrumFormat,
    available_formats,
    get_format,
    identify_format,
    read_spectra,
    example_spectrum,
    read_spectrum,
    register_format,
)
from stellarfit.spectra._spectrum import (
    InvalidSpectrumError,
    ObservedSpectrum,
    SpectrumList,
    SpectrumReadError,
    UnknownFormatError,
)

__all__ = [
    "ObservedSpectrum",
    "SpectrumList",
    "InvalidSpectrumError",
    "SpectrumReadError",
    "UnknownFormatError",
    "SpectrumFormat",
    "example_spectrum",
    "read_spectrum",
    "read_spectra",
    "available_formats",
    "get_format",
    "identify_format",
    "register_format",
]
