"""The one registry of spectrum file formats, and ``read_spectrum`` with auto-detection.

Each format is a name, an ``identify(path_or_hdulist) -> bool`` function and a
``read(path_or_hdulist, **options)`` function (in the spirit of specutils'
loader registry).  Auto-detection opens the file once and asks each format in
registration order; the first that says yes reads it.  Survey formats are
registered before the generic reader, which is the fallback; formats
registered later by users go before the generic one too.

Text files (anything that is not FITS, gzip or binary: ``.txt``, ``.csv``,
``.dat`` ...) are not opened as FITS: each format's ``identify`` is asked with
the path (FITS formats answer no), so ``gaia-rvs`` claims Gaia RVS CSV files
and ``text`` reads other column files.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

from astropy.io import fits

from stellarfit.spectra import _fits as F
from stellarfit.spectra import apogee_apstar, apogee_aspcap, boss, desi, gaia_rvs, generic, lamost_lrs, lamost_mrs, text
from stellarfit.spectra._spectrum import ObservedSpectrum, SpectrumList, SpectrumReadError, UnknownFormatError

__all__ = [
    "SpectrumFormat",
    "register_format",
    "available_formats",
    "get_format",
    "identify_format",
    "read_spectrum",
    "read_spectra",
]


@dataclasses.dataclass(frozen=True)
class SpectrumFormat:
    """One registered file format."""

    name: str
    identify: Callable[[Any], bool]
    read: Callable[..., Any]
    description: str = ""

    def options(self) -> list[str]:
        """Keyword options the reader accepts."""
        return [
            p.name
            for p in inspect.signature(self.read).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY
        ]


_REGISTRY: dict[str, SpectrumFormat] = {}


def register_format(
    name: str,
    identify: Callable[[Any], bool],
    read: Callable[..., Any],
    description: str = "",
    *,
    overwrite: bool = False,
    before: str | None = "generic",
) -> SpectrumFormat:
    """Add a format to the registry.

    Args:
        name: short lowercase name used by ``read_spectrum(..., format=name)``.
        identify: ``identify(path_or_hdulist) -> bool``; must not raise.
        read: ``read(path_or_hdulist, **options) -> ObservedSpectrum | list[ObservedSpectrum]``.
        description: one line for humans.
        overwrite: replace an existing format of the same name.
        before: detection priority: insert before this format (default: before the
            generic fallback); None appends at the end.
    """
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"spectrum format {name!r} is already registered; pass overwrite=True to replace it")
    entry = SpectrumFormat(name, identify, read, description)
    items = [(key, value) for key, value in _REGISTRY.items() if key != name]
    position = len(items)
    if before is not None:
        for i, (key, _) in enumerate(items):
            if key == before:
                position = i
                break
    items.insert(position, (name, entry))
    _REGISTRY.clear()
    _REGISTRY.update(items)
    return entry


def available_formats() -> list[str]:
    """Names of the registered formats, in auto-detection order."""
    return list(_REGISTRY)


def get_format(name: str) -> SpectrumFormat:
    """The registered format ``name`` (a clear error listing the formats if unknown)."""
    key = str(name).strip().lower()
    if key not in _REGISTRY:
        raise ValueError(f"unknown spectrum format {name!r}; available formats: {', '.join(_REGISTRY)}")
    return _REGISTRY[key]


def _formats_help() -> str:
    return "; ".join(f"{fmt.name} ({fmt.description})" if fmt.description else fmt.name for fmt in _REGISTRY.values())


def identify_format(path: Any) -> list[str]:
    """Names of all formats whose identify function accepts the file (possibly several, possibly none)."""
    if text.looks_like_text(path):
        return [fmt.name for fmt in _REGISTRY.values() if fmt.identify(path)]
    with F.hdulist_for_identify(path) as hdul:
        if hdul is None:
            return []
        return [fmt.name for fmt in _REGISTRY.values() if fmt.identify(hdul)]


#: options a reader may lack: they are dropped for it instead of refused (``snr`` only matters for
#: files without uncertainties, and formats whose files always carry them do not take it).
_OPTIONAL_OPTIONS = ("snr",)


def _check_options(fmt: SpectrumFormat, options: dict[str, Any], name: str) -> None:
    """Refuse options the reader does not take (a TypeError listing its options); drops, in place,
    the :data:`_OPTIONAL_OPTIONS` it does not take."""
    parameters = inspect.signature(fmt.read).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    for key in _OPTIONAL_OPTIONS:
        if key in options and key not in parameters:
            del options[key]
    unknown = [key for key in options if key not in parameters]
    if unknown:
        raise TypeError(
            f"{name}: the {fmt.name!r} reader does not take option(s) {', '.join(map(repr, unknown))}; "
            f"its options are: {', '.join(fmt.options())}"
        )


def read_spectrum(path: Any, format: str | None = None, **options: Any) -> ObservedSpectrum | SpectrumList:  # noqa: A002
    """Read a spectrum file of any supported format.

    Args:
        path: file path (or an open astropy HDUList): FITS, or a text/CSV file.
        format: one of :func:`available_formats` to skip auto-detection.
        **options: passed to the reader (all readers take ``resolution=``, ``air=`` (True: the
            file's wavelengths are in air, False: vacuum, None: what the file says) and
            ``fix_nonfinite=`` (default True: NaN/inf pixels are masked and counted in
            ``metadata['n_nonfinite_masked']``); see each reader's ``read`` for the rest).
    Returns:
        an ObservedSpectrum, or a SpectrumList for files holding several spectra
        (DESI coadds; Gaia RVS tables with several sources).
    Raises:
        FileNotFoundError: no such file.
        SpectrumReadError: not FITS, truncated, or the reader found a problem (message names the file).
        UnknownFormatError: no reader recognises the file (message lists the formats).
    """
    if format is not None:
        fmt = get_format(format)
        _check_options(fmt, options, F.source_name(path))
        return fmt.read(path, **options)
    name = F.source_name(path)
    own = not isinstance(path, fits.HDUList)
    if own and text.looks_like_text(path):
        for fmt in _REGISTRY.values():
            if fmt.identify(path):  # FITS formats answer no for a text file
                _check_options(fmt, options, name)
                return fmt.read(path, **options)
        raise UnknownFormatError(
            f"{name}: a text file that no reader recognises. The text reader needs at least two numeric "
            "columns (wavelength, flux[, error]), optionally under a header line naming them, with '#' "
            "comment lines; pass format='text' with columns={...} to name the columns. Supported formats: "
            f"{_formats_help()}",
            path=name,
        )
    hdul = F.open_fits(path) if own else path
    try:
        for fmt in _REGISTRY.values():
            if fmt.identify(hdul):
                _check_options(fmt, options, name)
                try:
                    return fmt.read(hdul, **options)
                except SpectrumReadError as exc:
                    if exc.path == "<HDUList>" or exc.path is None:
                        raise SpectrumReadError(str(exc).replace("<HDUList>", name, 1), path=name, format=exc.format) from exc
                    raise
        raise UnknownFormatError(
            f"{name}: not a recognised spectrum file (it has {F.summarize(hdul)}). Supported formats: "
            f"{_formats_help()}. If you know the format, pass format=<name>; a generic file needs a table with "
            "WAVELENGTH and FLUX columns plus IVAR or ERROR, or a 1-D image with CRVAL1/CDELT1.",
            path=name,
        )
    finally:
        if own:
            hdul.close()


def read_spectra(path: Any, format: str | None = None, **options: Any) -> SpectrumList:  # noqa: A002
    """Like :func:`read_spectrum` but always returns a list (one entry for single-spectrum files)."""
    result = read_spectrum(path, format=format, **options)
    if isinstance(result, list):
        return result if isinstance(result, SpectrumList) else SpectrumList(result)
    return SpectrumList([result])


for _module in (desi, boss, lamost_mrs, lamost_lrs, apogee_apstar, apogee_aspcap, gaia_rvs, text, generic):
    register_format(_module.FORMAT, _module.identify, _module.read, _module.DESCRIPTION, before=None)
del _module


def example_spectrum(name: str = "example") -> ObservedSpectrum:
    """A shipped example spectrum: by default a held-out Turbospectrum star observed at
    R = 22,500 and S/N 60 (``stellarfit.data.example_truth()`` gives its true labels)."""
    from stellarfit.data import example_path

    return read_spectrum(example_path(name))
