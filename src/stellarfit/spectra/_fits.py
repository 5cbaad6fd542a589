"""FITS plumbing shared by the spectrum readers (private).

Owns: opening a file with clear errors (missing, not FITS, truncated),
the ``open_source`` context that turns any problem inside a reader into a
:class:`SpectrumReadError` naming the file and the format, case-insensitive
column lookup, 1-D WCS wavelengths (linear, IRAF/SDSS log10, FITS WAVE-LOG),
resolution and air/vacuum header keywords, and small array helpers.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from astropy.io import fits

from stellarfit.spectra._spectrum import InvalidSpectrumError, SpectrumReadError

#: Header keywords holding a resolving power (first found wins), for generic files.
RESOLUTION_KEYWORDS = ("R", "RESOLUTN", "SPECRES", "SPEC_RES", "RESOLVPW")
#: Header keywords copied into ``metadata['header']`` when present.
INTERESTING_KEYWORDS = (
    "OBJECT", "OBJID", "OBSID", "DESIG", "TARGETID", "CATALOGID", "SOURCE_ID", "APOGEE_ID",
    "RA", "DEC", "PLUG_RA", "PLUG_DEC", "TELESCOP", "INSTRUME", "MJD", "DATE-OBS",
    "PLATEID", "FIBERID", "FIELD", "EXPTIME", "BUNIT", "AIRORVAC", "VACUUM", "SNR", "SN",
)


class FormatProblem(Exception):
    """Raised inside a reader; :func:`open_source` adds the file and format to the message."""


def problem(message: str) -> FormatProblem:
    return FormatProblem(message)


def _is_fatal_warning(message: str) -> bool:
    text = message.lower()
    return any(word in text for word in ("truncated", "corrupt", "not multiple of 2880", "unexpected end"))


def open_fits(path: Any) -> fits.HDUList:
    """Open a FITS file with all headers read; clear errors for missing, non-FITS and truncated files.

    Raises:
        FileNotFoundError: the path does not exist.
        SpectrumReadError: not a FITS file, empty, truncated or corrupt.
    """
    name = os.fspath(path)
    if not os.path.exists(name):
        raise FileNotFoundError(f"{name}: no such file")
    if os.path.isdir(name):
        raise SpectrumReadError(f"{name}: is a directory, not a spectrum file", path=name)
    if os.path.getsize(name) == 0:
        raise SpectrumReadError(f"{name}: the file is empty (0 bytes); download it again", path=name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            hdul = fits.open(name, memmap=False, lazy_load_hdus=False)
        except OSError as exc:
            text = str(exc)
            if "SIMPLE" in text or "Empty or corrupt" in text or "does not appear" in text:
                raise SpectrumReadError(f"{name}: not a FITS file ({text.splitlines()[0]})", path=name) from None
            raise SpectrumReadError(f"{name}: cannot be opened as FITS: {text}", path=name) from None
        except (ValueError, TypeError, IndexError, KeyError) as exc:
            raise SpectrumReadError(f"{name}: corrupt FITS file: {exc}", path=name) from None
    fatal = [str(w.message) for w in caught if _is_fatal_warning(str(w.message))]
    if fatal:
        hdul.close()
        detail = fatal[0].splitlines()[0]
        raise SpectrumReadError(
            f"{name}: the file is truncated or corrupt ({detail}); download or write it again", path=name
        )
    if len(hdul) == 0:
        hdul.close()
        raise SpectrumReadError(f"{name}: the FITS file has no HDUs", path=name)
    return hdul


def source_name(source: Any) -> str:
    if isinstance(source, fits.HDUList):
        filename = source.filename()
        return str(filename) if filename else "<HDUList>"
    return os.fspath(source)


@contextlib.contextmanager
def reader_errors(name: str, format_name: str) -> Iterator[None]:
    """Inside the block, :class:`FormatProblem` and :class:`InvalidSpectrumError` become
    :class:`SpectrumReadError` ``"<file>: <format> format: <problem>"`` (for readers of non-FITS files)."""
    try:
        yield
    except (FormatProblem, InvalidSpectrumError) as exc:
        raise SpectrumReadError(f"{name}: {format_name} format: {exc}", path=name, format=format_name) from exc


@contextlib.contextmanager
def open_source(source: Any, format_name: str, *, name: str | None = None) -> Iterator[tuple[fits.HDUList, str]]:
    """Yield (hdulist, name) for a path or an open HDUList; re-raise reader problems with the file named.

    Inside the block, :class:`FormatProblem` and :class:`InvalidSpectrumError`
    become :class:`SpectrumReadError` ``"<file>: <format> format: <problem>"``.
    A path is closed on exit; an HDUList passed in is left open.  ``name``
    names an in-memory HDUList made from another file (e.g. a CSV).
    """
    name = source_name(source) if name is None else name
    if isinstance(source, fits.HDUList):
        hdul, close = source, False
    else:
        hdul, close = open_fits(source), True
    try:
        with reader_errors(name, format_name):
            yield hdul, name
    finally:
        if close:
            hdul.close()


@contextlib.contextmanager
def hdulist_for_identify(source: Any) -> Iterator[fits.HDUList | None]:
    """Yield an HDUList for an identify function, or None when the source cannot be opened."""
    if isinstance(source, fits.HDUList):
        yield source
        return
    try:
        hdul = open_fits(source)
    except (OSError, SpectrumReadError):
        yield None
        return
    try:
        yield hdul
    finally:
        hdul.close()


def safe_identify(func):
    """Decorator: identify functions take a path or an HDUList and never raise (False on any problem)."""

    def identify(source: Any) -> bool:
        with hdulist_for_identify(source) as hdul:
            if hdul is None:
                return False
            try:
                return bool(func(hdul))
            except Exception:  # noqa: BLE001 - identify must answer yes/no, never fail
                return False

    identify.__name__ = func.__name__
    identify.__qualname__ = func.__qualname__
    identify.__doc__ = func.__doc__
    identify.__module__ = func.__module__
    return identify


# ---------------------------------------------------------------------- HDUs and data
def hdu_label(hdul: fits.HDUList, index: int) -> str:
    name = hdul[index].name
    return f"HDU {index}" + (f" ({name})" if name and name != "PRIMARY" else "")


def find_hdu(hdul: fits.HDUList, name: str) -> int | None:
    """Index of the HDU with EXTNAME ``name`` (case-insensitive), or None."""
    target = name.upper()
    for i, hdu in enumerate(hdul):
        if (hdu.name or "").upper() == target:
            return i
    return None


def require_hdu(hdul: fits.HDUList, key: int | str, what: str) -> int:
    """Index of HDU ``key`` (number or EXTNAME) or a FormatProblem saying it is missing."""
    if isinstance(key, str):
        index = find_hdu(hdul, key)
        if index is None:
            raise problem(f"missing HDU {key!r} ({what}); the file has {summarize(hdul)}")
        return index
    if key >= len(hdul):
        raise problem(f"missing HDU {key} ({what}); the file has only {len(hdul)} HDU(s): {summarize(hdul)}")
    return key


def data_of(hdul: fits.HDUList, index: int) -> Any:
    """The data of one HDU; read errors (truncated files) become a FormatProblem."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return hdul[index].data
    except (ValueError, OSError, TypeError, IndexError) as exc:
        raise problem(f"cannot read the data of {hdu_label(hdul, index)} ({exc}); the file may be truncated") from None


def image(hdul: fits.HDUList, key: int | str, what: str, *, dtype: Any = np.float64) -> np.ndarray:
    """An image HDU's data as an array of ``dtype`` (None keeps the file's); FormatProblem if missing, empty or a table."""
    index = require_hdu(hdul, key, what)
    hdu = hdul[index]
    if not isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)):
        raise problem(f"{hdu_label(hdul, index)} ({what}) should be an image but is a {type(hdu).__name__}")
    data = data_of(hdul, index)
    if data is None or np.size(data) == 0:
        raise problem(f"{hdu_label(hdul, index)} ({what}) holds no data")
    return np.array(data, dtype=dtype)


def summarize(hdul: fits.HDUList) -> str:
    """'[0 PRIMARY image (5, 100), 1 COADD table 100 rows x 8 cols]' for error messages."""
    parts = []
    for i, hdu in enumerate(hdul[:12]):
        name = hdu.name or "?"
        if isinstance(hdu, (fits.BinTableHDU, fits.TableHDU)):
            parts.append(f"{i} {name} table {hdu.header.get('NAXIS2', 0)} rows x {hdu.header.get('TFIELDS', 0)} cols")
        else:
            naxis = int(hdu.header.get("NAXIS", 0))
            shape = tuple(int(hdu.header.get(f"NAXIS{k}", 0)) for k in range(naxis, 0, -1))
            parts.append(f"{i} {name} image {shape}" if naxis else f"{i} {name} (header only)")
    if len(hdul) > 12:
        parts.append(f"... {len(hdul) - 12} more")
    return "[" + ", ".join(parts) + "]"


def is_table(hdu: Any) -> bool:
    return isinstance(hdu, (fits.BinTableHDU, fits.TableHDU))


def is_image(hdu: Any) -> bool:
    return isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU))


def image_shape(hdu: Any) -> tuple[int, ...]:
    """Shape of an image HDU from its header (numpy order), without reading the data."""
    naxis = int(hdu.header.get("NAXIS", 0))
    return tuple(int(hdu.header.get(f"NAXIS{k}", 0)) for k in range(naxis, 0, -1))


def column_names(hdu: Any) -> list[str]:
    return list(hdu.columns.names) if is_table(hdu) else []


def find_column(names: Sequence[str], candidates: Sequence[str]) -> str | None:
    """The first of ``candidates`` present in ``names`` (case-insensitive); the actual spelling."""
    lookup = {name.upper(): name for name in names}
    for candidate in candidates:
        if candidate.upper() in lookup:
            return lookup[candidate.upper()]
    return None


def has_columns(hdu: Any, *required: str) -> bool:
    upper = {name.upper() for name in column_names(hdu)}
    return all(name.upper() in upper for name in required)


def table_rows(hdul: fits.HDUList, index: int) -> Any:
    """FITS_rec of a table HDU (FormatProblem when empty or unreadable)."""
    data = data_of(hdul, index)
    if data is None or len(data) == 0:
        raise problem(f"{hdu_label(hdul, index)} is an empty table (0 rows)")
    return data


def column(data: Any, name: str, *, row: int | None = None, dtype: Any = np.float64) -> np.ndarray:
    """One column as a 1-D array: the whole column (one pixel per row) or the vector in ``row``."""
    try:
        values = data.field(name)
    except (KeyError, ValueError, IndexError) as exc:
        raise problem(f"cannot read column {name!r}: {exc}") from None
    values = np.asarray(values)
    if row is not None:
        values = values[row]
    try:
        return np.array(values, dtype=dtype).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise problem(f"column {name!r} is not numeric ({values.dtype}): {exc}") from None


# ---------------------------------------------------------------------- headers
def header_value(headers: Sequence[Any], *keys: str) -> Any:
    """The first of ``keys`` found in the first header that has it (None if none)."""
    for header in headers:
        if header is None:
            continue
        for key in keys:
            if key in header:
                return header[key]
    return None


def header_subset(*headers: Any) -> dict[str, Any]:
    """The :data:`INTERESTING_KEYWORDS` found in the headers, as plain Python values."""
    out: dict[str, Any] = {}
    for header in headers:
        if header is None:
            continue
        for key in INTERESTING_KEYWORDS:
            if key in header and key not in out:
                value = header[key]
                if isinstance(value, (bool, int, float, str)):
                    out[key] = value
    return out


def header_says_air(*headers: Any) -> bool | None:
    """True if a header says the wavelengths are in air, False if vacuum, None if it does not say.

    Looks at AIRORVAC ('air'/'vac'), VACUUM (logical, or 'T'/'F'), and CTYPE1
    ('AWAV' = air, 'WAVE'/'WAVE-LOG' = vacuum, per FITS WCS paper III).
    """
    for header in headers:
        if header is None:
            continue
        value = header.get("AIRORVAC")
        if isinstance(value, str) and value.strip():
            text = value.strip().lower()
            if text.startswith("air"):
                return True
            if text.startswith("vac"):
                return False
        value = header.get("VACUUM")
        if isinstance(value, bool):
            return not value
        if isinstance(value, str) and value.strip().upper() in ("T", "F", "TRUE", "FALSE", "Y", "N"):
            return value.strip().upper() in ("F", "FALSE", "N")
        ctype = header.get("CTYPE1")
        if isinstance(ctype, str):
            text = ctype.strip().upper()
            if text.startswith("AWAV"):
                return True
            if text.startswith("WAVE"):
                return False
    return None


def air_convention(air: bool | None, *headers: Any, default: str = "format (vacuum)") -> tuple[bool, str]:
    """(wavelengths in air?, who says so): the caller's ``air`` if given (``"user"``),
    else what the headers say (:func:`header_says_air`, ``"header"``), else vacuum
    (``default`` names that source in ``metadata['air_or_vacuum_source']``)."""
    if air is not None:
        return bool(air), "user"
    said = header_says_air(*headers)
    if said is None:
        return False, default
    return said, "header"


def header_resolution(*headers: Any) -> float | None:
    """Resolving power from R/RESOLUTN/SPECRES/SPEC_RES/RESOLVPW, or None (non-positive values ignored)."""
    for header in headers:
        if header is None:
            continue
        for key in RESOLUTION_KEYWORDS:
            value = header.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value) and value > 0:
                return float(value)
    return None


def wcs_wavelength(header: Any, n: int, *, log10: bool | None = None) -> tuple[np.ndarray, str]:
    """Wavelengths of a 1-D WCS axis, and the unit they are in ('angstrom' or another CUNIT1).

    Pixel i (0-based) has world coordinate x = CRVAL1 + CDELT1 * (i + 1 - CRPIX1)
    (CD1_1 if CDELT1 is absent, CRPIX1 = 1 by default).  The axis is log10 when
    ``log10`` is True, DC-FLAG = 1 (IRAF), or CTYPE1 is 'LOG-LINEAR' (SDSS/APOGEE):
    lambda = 10**x.  CTYPE1 'WAVE-LOG'/'AWAV-LOG' follows FITS WCS paper III:
    lambda = CRVAL1 * exp(CDELT1 * (p - CRPIX1) / CRVAL1).
    """
    crval = header.get("CRVAL1")
    cdelt = header.get("CDELT1", header.get("CD1_1"))
    if crval is None or cdelt is None:
        raise problem("no wavelength WCS in the header (need CRVAL1 and CDELT1 or CD1_1)")
    crpix = float(header.get("CRPIX1", 1.0))
    pixel = np.arange(n, dtype=np.float64) + 1.0 - crpix
    ctype = str(header.get("CTYPE1", "")).strip().upper()
    if log10 is None:
        log10 = int(header.get("DC-FLAG", 0) or 0) == 1 or ctype in ("LOG-LINEAR", "LOGLAM", "LOG10")
    if ctype.endswith("-LOG"):
        wavelength = float(crval) * np.exp(float(cdelt) * pixel / float(crval))
    elif log10:
        wavelength = 10.0 ** (float(crval) + float(cdelt) * pixel)
    else:
        wavelength = float(crval) + float(cdelt) * pixel
    unit = str(header.get("CUNIT1", "") or header.get("WAT1_001", "")).strip()
    return wavelength, unit_name(unit) or "angstrom"


def unit_name(unit: str) -> str | None:
    """Map a FITS unit string to 'angstrom', 'nm', 'micron', 'm', or None when empty/unknown."""
    text = unit.strip().lower()
    if not text:
        return None
    if "units=" in text:  # IRAF WAT1_001 = 'wtype=linear label=Wavelength units=angstroms'
        text = text.split("units=")[1].split()[0]
    if text in ("angstrom", "angstroms", "a", "aa", "ang", "0.1 nm", "1e-10 m"):
        return "angstrom"
    if text in ("nm", "nanometer", "nanometers", "nanometre"):
        return "nm"
    if text in ("um", "micron", "microns", "micrometer", "micrometre", "mum"):
        return "micron"
    if text in ("m", "meter", "metre"):
        return "m"
    return None


# ---------------------------------------------------------------------- arrays
def fill_positive(values: np.ndarray) -> np.ndarray | None:
    """Replace non-finite or non-positive entries by linear interpolation of the valid ones.

    Returns None when no entry is valid.  Used for per-pixel resolution arrays
    whose bad pixels carry zeros.
    """
    values = np.asarray(values, dtype=np.float64)
    valid = np.isfinite(values) & (values > 0)
    if not valid.any():
        return None
    if valid.all():
        return values
    index = np.arange(values.size)
    return np.interp(index, index[valid], values[valid])


def bitmask_bad(bits: np.ndarray, bad_bits: int | Sequence[int] | None) -> np.ndarray:
    """Bool array: True where any of ``bad_bits`` is set.

    ``bad_bits`` is an integer bit pattern (e.g. 0b1011), or a sequence of bit
    numbers (e.g. [0, 1, 3]), or None meaning "any bit".
    """
    bits = np.asarray(bits)
    if not np.issubdtype(bits.dtype, np.integer):
        finite = np.isfinite(bits)
        bits = np.where(finite, bits, 0).astype(np.int64)
    bits = bits.astype(np.int64)
    if bad_bits is None:
        return bits != 0
    if isinstance(bad_bits, (int, np.integer)):
        pattern = int(bad_bits)
    else:
        pattern = 0
        for bit in bad_bits:
            pattern |= 1 << int(bit)
    return (bits & pattern) != 0
