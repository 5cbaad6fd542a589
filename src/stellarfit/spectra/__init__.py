"""Observed spectra: the ObservedSpectrum container and FITS readers for survey formats.

- :class:`ObservedSpectrum`: vacuum wavelengths [A], flux, ivar, mask,
  resolving power or per-pixel LSF sigma, arm ids, metadata; validated on
  construction; :meth:`ObservedSpectrum.from_arrays` for any convention.
- :func:`read_spectrum` / :func:`read_spectra`: auto-detect the format and read
  (``format=`` overrides); :func:`available_formats`, :func:`identify_format`,
  :func:`register_format` for the registry.
- :func:`degrade_resolution`: convolve a spectrum down to a lower resolving power and
  resample it, with its noise (exact variance, ivar corrected for the correlation the
  smoothing introduces); what the fits do to observations sharper than the emulator.
- One module per format, each with ``identify`` and ``read``: ``generic``,
  ``text`` (plain text / CSV), ``apogee_apstar``, ``apogee_aspcap``, ``boss``,
  ``lamost_lrs``, ``lamost_mrs``, ``desi``, ``gaia_rvs``.  NaN/inf pixels are
  masked on reading and counted in ``metadata['n_nonfinite_masked']``.

Only numpy and astropy are needed here (and scipy for :func:`degrade_resolution`).
"""

from stellarfit.spectra._degrade import degrade_resolution
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
    "degrade_resolution",
    "read_spectrum",
    "read_spectra",
    "available_formats",
    "get_format",
    "identify_format",
    "register_format",
]
