"""Plain-text and CSV spectra: columns of wavelength, flux and optionally an uncertainty.

Layout understood (as such files are published: ``.txt``, ``.dat``, ``.csv``,
``.tsv``, ``.asc`` ...):

- columns separated by commas, tabs, semicolons or whitespace (detected from
  the header or the first data line; ``delimiter=`` overrides);
- lines starting with ``#`` are comments (a trailing ``# ...`` on a data line
  is ignored too); empty lines are skipped;
- an optional header line: the first non-comment line that is not all numbers,
  or, when there is none, a last comment line holding exactly one name per
  column (``# wavelength flux error``);
- columns found by header name, case-insensitively, ignoring a unit in
  parentheses/brackets or after an underscore (``wavelength_nm``,
  ``Wavelength (A)``, ``lambda[um]``, ``wave_air``): wavelength =
  wavelength/wave/lambda/lam/wl/loglam; flux = flux/f_lambda/flam/intensity/
  normalized_flux/...; uncertainty = flux_error/error/sigma/err/e_flux/
  uncertainty/noise, or ivar/invvar, or variance/var; mask = mask/badmask
  (nonzero = bad).  Other columns (source_id, ra, dec, ...) are ignored.
- without a header, by position: 1st wavelength, 2nd flux, 3rd 1-sigma error
  (when there are at least three columns);
- ``columns={"wavelength": ..., "flux": ..., "error": ...}`` (names or 0-based
  positions; also "ivar", "variance", "mask") overrides both.

Wavelength unit: ``wavelength_unit=`` if given, else a unit in the column
name, else inferred from the range (>= 3000: Angstrom, 80-3000: nm, see
:func:`stellarfit.spectra._conventions.infer_wavelength_unit`);
``metadata['wavelength_unit_source']`` says which.  Air or vacuum: ``air=``,
else an ``air``/``vac`` tag in the wavelength column name, else a comment
line that mentions vacuum or air wavelengths, else vacuum; recorded in
``metadata['air_or_vacuum_source']``.  Uncertainties: from the columns, else
``snr=`` (``--snr``), else a clear error.  NaN/inf (and empty CSV fields)
are masked and counted in ``metadata['n_nonfinite_masked']``; runs of exactly
zero flux are masked as gaps (``metadata['n_zero_flux_masked']``).
Resolution: ``resolution=`` (``--resolution``), else unknown.

Gaia DR3 RVS CSV files (wavelength 846-870 nm, flux, flux_error) are claimed
by the ``gaia-rvs`` reader first (it knows R = 11,500 and splits source_ids);
``read_spectrum(path, format="text")`` reads them with this reader.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from stellarfit.spectra import _conventions as C
from stellarfit.spectra import _fits as F
from stellarfit.spectra._spectrum import InvalidSpectrumError, ObservedSpectrum

__all__ = ["FORMAT", "DESCRIPTION", "identify", "read", "looks_like_text", "read_text_table", "sniff", "TextTable"]

FORMAT = "text"
DESCRIPTION = "plain text / CSV: columns wavelength, flux, optional error/sigma/ivar (header names or positions)"

TEXT_SUFFIXES = (".txt", ".dat", ".csv", ".tsv", ".asc", ".ascii", ".tab", ".text", ".spec", ".spc")
WAVELENGTH_NAMES = ("wavelength", "wave", "lambda", "lam", "wl", "wavelength_vac", "wavelength_air", "wave_vac", "wave_air")
LOG_WAVELENGTH_NAMES = ("loglam", "loglambda", "logwave", "log_wavelength")
FLUX_NAMES = ("flux", "flux_density", "f_lambda", "flam", "fnu", "spec", "intensity", "normalized_flux", "norm_flux",
              "flux_norm", "nflux", "irradiance", "counts")
ERROR_NAMES = ("flux_error", "error", "sigma", "err", "flux_err", "e_flux", "err_flux", "flux_sigma", "uncertainty",
               "noise", "unc", "eflux", "sig")
IVAR_NAMES = ("ivar", "invvar", "inv_var", "flux_ivar")
VARIANCE_NAMES = ("variance", "var", "flux_var")
MASK_NAMES = ("mask", "badmask", "pixmask", "and_mask", "andmask")
_ROLES = {"wavelength": WAVELENGTH_NAMES + LOG_WAVELENGTH_NAMES, "flux": FLUX_NAMES, "error": ERROR_NAMES,
          "ivar": IVAR_NAMES, "variance": VARIANCE_NAMES, "mask": MASK_NAMES}
_UNIT_WORDS = {"a": "angstrom", "aa": "angstrom", "ang": "angstrom", "angstrom": "angstrom", "angstroms": "angstrom",
               "nm": "nm", "nanometer": "nm", "nanometers": "nm", "nanometre": "nm", "um": "micron",
               "micron": "micron", "microns": "micron", "mum": "micron"}
_AIR_WORDS = {"air": True, "vac": False, "vacuum": False}
_SNIFF_BYTES = 65536
_FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz")


def looks_like_text(source: Any) -> bool:
    """True when ``source`` is a path to an existing file that is neither FITS nor gzip and reads as text.

    A file named like FITS (.fits, .fit, .fts, optionally .gz) is never text: it is read (and
    refused, when it is not FITS) as FITS.
    """
    if not isinstance(source, (str, os.PathLike)):
        return False
    name = os.fspath(source)
    if name.lower().endswith(_FITS_SUFFIXES) or not os.path.isfile(name):
        return False
    try:
        with open(name, "rb") as handle:
            head = handle.read(4096)
    except OSError:
        return False
    if not head or head.startswith(b"SIMPLE  =") or head.startswith(b"\x1f\x8b") or b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        try:
            head.decode("latin-1")
        except UnicodeDecodeError:
            return False
    return True


def _split(line: str, delimiter: str | None) -> list[str]:
    if delimiter is None:
        return line.split()
    return [field.strip() for field in line.split(delimiter)]


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _clean_line(line: str) -> str:
    return line.split("#", 1)[0].strip() if "#" in line else line.strip()


def _delimiter_of(line: str) -> str | None:
    for candidate in ("\t", ",", ";", "|"):
        if candidate in line:
            return candidate
    return None


def _next_data_line(lines: list[str], start: int) -> str | None:
    for raw in lines[start:]:
        line = _clean_line(raw)
        if line and not raw.strip().startswith("#"):
            return line
    return None


@dataclasses.dataclass
class TextTable:
    """Columns of a text spectrum file.

    Attributes:
        names: one name per column (``col1``, ``col2``, ... when the file has no header).
        columns: name -> (n_rows,) array: int64 when every value is an integer literal
            (Gaia source_ids keep their 19 digits), float64 otherwise (NaN for empty/unparsable fields).
        comments: the comment lines, without the leading ``#``.
        delimiter: ',' '\\t' ';' '|' or None (whitespace).
        has_header: whether the names came from the file.
    """

    names: list[str]
    columns: dict[str, np.ndarray]
    comments: list[str]
    delimiter: str | None
    has_header: bool


def _lines(path: str, limit: int | None = None) -> list[str]:
    with open(path, encoding="utf-8", errors="replace") as handle:
        return handle.readlines(limit) if limit else handle.read().splitlines()


def _layout(lines: list[str], delimiter: str | None) -> tuple[list[str] | None, int, list[str], str | None, int]:
    """(header names or None, index of the first data line, comments, delimiter, number of columns)."""
    comments: list[str] = []
    header: list[str] | None = None
    for i, raw in enumerate(lines):
        stripped = raw.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            comments.append(stripped.lstrip("#").strip())
            continue
        line = _clean_line(raw)
        if not line:
            continue
        sep = delimiter if delimiter is not None else _delimiter_of(line)
        fields = _split(line, sep)
        if header is None and any(_number(f) is None for f in fields if f):
            if delimiter is None:  # the data line decides (a header may hold commas in '(A, air)')
                following = _next_data_line(lines, i + 1)
                sep = _delimiter_of(following) if following is not None else sep
            header = [f.strip().strip('"').strip("'") for f in _split(line, sep)]
            delimiter = sep
            continue
        if header is not None and len(fields) != len(header):
            raise F.problem(f"line {i + 1} has {len(fields)} fields but the header names {len(header)} columns")
        if header is None and comments:  # '# wavelength flux error' just above the data
            last = _split(comments[-1], sep)
            known = {name for names in _ROLES.values() for name in names}
            if (len(last) == len(fields) and all(_number(f) is None for f in last)
                    and any(_parse_name(f)[0] in known for f in last)):
                header = [f.strip() for f in last]
        return header, i, comments, sep, len(fields)
    raise F.problem("no data lines: the file holds only comments, a header or blank lines")


def read_text_table(path: str | os.PathLike, *, delimiter: str | None = None) -> TextTable:
    """Parse a text/CSV spectrum file into columns (see the module docstring for the layout).

    Raises FormatProblem (a SpectrumReadError once inside a reader) for ragged or empty files.
    """
    name = os.fspath(path)
    lines = _lines(name)
    header, first, comments, sep, n_columns = _layout(lines, delimiter)
    if n_columns < 2:
        raise F.problem("a text spectrum needs at least two columns (wavelength and flux); found one")
    rows: list[list[str]] = []
    for number in range(first, len(lines)):
        raw = lines[number]
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        fields = _split(_clean_line(raw), sep)
        if len(fields) != n_columns:
            raise F.problem(
                f"line {number + 1} has {len(fields)} fields but the first data line has {n_columns}; "
                "every data line needs the same columns (comment lines start with '#')"
            )
        rows.append(fields)
    names = header if header is not None else [f"col{i + 1}" for i in range(n_columns)]
    columns: dict[str, np.ndarray] = {}
    for j, column_name in enumerate(names):
        values = [row[j] for row in rows]
        try:
            columns[column_name] = np.array([int(v) for v in values], dtype=np.int64)
            continue
        except (ValueError, OverflowError):
            pass
        parsed = np.full(len(values), np.nan)
        for i, value in enumerate(values):
            number = _number(value)
            if number is not None:
                parsed[i] = number
        columns[column_name] = parsed
    return TextTable(list(names), columns, comments, sep, header is not None)


def _parse_name(name: str) -> tuple[str, str | None, bool | None]:
    """(base name, unit or None, air True / vacuum False / None) of a column name such as
    'Wavelength (nm)', 'wave_air', 'lambda[A]', 'wavelength_nm_vac'."""
    text = name.strip().lower()
    unit = None
    air = None
    bracket = re.search(r"[\(\[\{]\s*([^\)\]\}]*)\s*[\)\]\}]", text)
    if bracket:
        inside = bracket.group(1).strip()
        for word in re.split(r"[\s,;]+", inside):
            if word in _UNIT_WORDS:
                unit = _UNIT_WORDS[word]
            elif word in _AIR_WORDS:
                air = _AIR_WORDS[word]
        text = (text[: bracket.start()] + text[bracket.end():]).strip()
    parts = [p for p in re.split(r"[\s_\-]+", text) if p]
    kept = []
    for part in parts:
        if kept and part in _UNIT_WORDS:
            unit = _UNIT_WORDS[part]
        elif kept and part in _AIR_WORDS:
            air = _AIR_WORDS[part]
        else:
            kept.append(part)
    return "_".join(kept), unit, air


def _find(names: list[str], candidates: tuple[str, ...]) -> str | None:
    bases = {name: _parse_name(name)[0] for name in names}
    for candidate in candidates:
        for name in names:
            if name.strip().lower() == candidate or bases[name] == candidate:
                return name
    return None


def _pick(table: TextTable, columns: Mapping[str, Any] | None) -> dict[str, str | None]:
    """role -> column name, from ``columns``, the header, or positions."""
    chosen: dict[str, str | None] = {role: None for role in _ROLES}
    given = dict(columns or {})
    unknown = [role for role in given if role not in _ROLES]
    if unknown:
        raise F.problem(f"columns= has unknown role(s) {unknown}; use {sorted(_ROLES)}")
    for role, key in given.items():
        if isinstance(key, (int, np.integer)):
            if not 0 <= int(key) < len(table.names):
                raise F.problem(f"columns[{role!r}] = {key} but the file has {len(table.names)} columns (0-based)")
            chosen[role] = table.names[int(key)]
        else:
            match = _find(table.names, (str(key).strip().lower(),))
            if match is None:
                raise F.problem(f"columns[{role!r}] = {key!r} is not a column; columns: {table.names}")
            chosen[role] = match
    if table.has_header:
        for role, candidates in _ROLES.items():
            if chosen[role] is None:
                chosen[role] = _find([n for n in table.names if n not in chosen.values()], candidates)
    else:
        for role, position in (("wavelength", 0), ("flux", 1), ("error", 2)):
            if chosen[role] is None and position < len(table.names) and table.names[position] not in chosen.values():
                if role == "error" and any(chosen[r] for r in ("ivar", "variance")):
                    continue
                chosen[role] = table.names[position]
    for role in ("wavelength", "flux"):
        if chosen[role] is None:
            raise F.problem(
                f"no {role} column: the header names {table.names}; name it one of {_ROLES[role][:6]} or pass "
                f"columns={{'{role}': <name or 0-based position>}}"
            )
    return chosen


def _air_from_comments(comments: list[str]) -> tuple[bool | None, str | None]:
    for line in comments:
        text = line.lower()
        if re.search(r"\bvac(uum)?\b", text):
            return False, f"comment line {line.strip()!r}"
        if re.search(r"\bair\b", text) and "wave" in text:
            return True, f"comment line {line.strip()!r}"
    return None, None


def sniff(path: str | os.PathLike) -> tuple[list[str] | None, list[str]]:
    """(header names or None, fields of the first data line) from the first 64 kB of a text file.

    Raises FormatProblem when there is no data line; for identify functions (gaia_rvs's too).
    """
    lines = _lines(os.fspath(path), _SNIFF_BYTES)
    header, first, _, sep, _ = _layout(lines, None)
    return header, _split(_clean_line(lines[first]), sep)


def identify(source: Any) -> bool:
    """True for a text file (not FITS) whose first data line has at least two numeric fields."""
    if not looks_like_text(source):
        return False
    try:
        _, fields = sniff(source)
        return sum(_number(f) is not None for f in fields) >= 2
    except Exception:  # noqa: BLE001 - identify answers yes/no, never fails
        return False


def read(
    source: Any,
    *,
    wavelength_unit: str | None = None,
    air: bool | None = None,
    resolution: float | np.ndarray | None = None,
    snr: float | None = None,
    columns: Mapping[str, Any] | None = None,
    delimiter: str | None = None,
    fix_nonfinite: bool = True,
    use_mask: bool = True,
) -> ObservedSpectrum:
    """Read a plain-text or CSV spectrum.

    Args:
        source: path to the file.
        wavelength_unit: 'angstrom', 'nm', 'micron' or 'loglam' (default: from the column name,
            else inferred from the range; recorded in ``metadata['wavelength_unit_source']``).
        air: True/False: the wavelengths are in air/vacuum (default: from the column name or a
            comment, else vacuum; recorded in ``metadata['air_or_vacuum_source']``).
        resolution: resolving power lambda/FWHM (text files rarely say; needed to fit).
        snr: assume this S/N per pixel (sigma = median|flux| / snr) when there is no uncertainty column.
        columns: role -> column name or 0-based position, roles 'wavelength', 'flux', 'error',
            'ivar', 'variance', 'mask'.
        delimiter: field separator (default: detected; None after detection means whitespace).
        fix_nonfinite: mask NaN/inf/empty values (default; counted in ``metadata['n_nonfinite_masked']``).
        use_mask: apply a mask column (nonzero = bad).
    Returns: one ObservedSpectrum (vacuum Angstrom; rows sorted by wavelength if the file is not).
    """
    from stellarfit.spectra.generic import _uncertainty, gap_mask

    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"the text reader reads a file path, got {type(source).__name__}")
    name = os.fspath(source)
    if not os.path.exists(name):
        raise FileNotFoundError(f"{name}: no such file")
    with F.reader_errors(name, FORMAT):
        if not looks_like_text(name):
            raise F.problem("not a text file (it is FITS, compressed or binary); use read_spectrum without format='text'")
        table = read_text_table(name, delimiter=delimiter)
        chosen = _pick(table, columns)
        wave_name, flux_name = chosen["wavelength"], chosen["flux"]
        wavelength = np.asarray(table.columns[wave_name], dtype=np.float64)
        flux = np.asarray(table.columns[flux_name], dtype=np.float64)
        base, name_unit, name_air = _parse_name(wave_name) if table.has_header else ("", None, None)
        if wavelength_unit is not None:
            unit, unit_source = wavelength_unit, "user"
        elif base in LOG_WAVELENGTH_NAMES:
            unit, unit_source = "loglam", f"column name {wave_name!r}"
        elif name_unit is not None:
            unit, unit_source = name_unit, f"column name {wave_name!r}"
        else:
            unit, unit_source = C.infer_wavelength_unit(wavelength)
        keep = np.isfinite(wavelength)
        n_dropped = int((~keep).sum())
        if n_dropped:  # a pixel without a wavelength cannot be placed anywhere
            wavelength, flux = wavelength[keep], flux[keep]
        if wavelength.size and np.any(np.diff(wavelength) <= 0):
            order = np.argsort(wavelength, kind="stable")
            if np.any(np.diff(wavelength[order]) == 0):
                raise F.problem(f"column {wave_name!r} repeats wavelengths; a file with several spectra needs one file each")
        else:
            order = None

        def get(role: str, dtype: Any = np.float64) -> np.ndarray | None:
            column = chosen[role]
            if column is None:
                return None
            values = np.asarray(table.columns[column], dtype=np.float64)[keep]
            if dtype is not np.float64:
                values = np.where(np.isfinite(values), values, 1).astype(dtype)
            return values

        errors = (get("ivar"), get("error"), get("variance"))
        mask = get("mask", np.int64) if use_mask else None
        if order is not None:
            wavelength, flux = wavelength[order], flux[order]
            errors = tuple(None if e is None else e[order] for e in errors)
            mask = None if mask is None else mask[order]
        uncertainty = _uncertainty(*errors, flux, snr, "the file")
        if "sigma" in uncertainty and np.any(np.asarray(uncertainty["sigma"]) < 0):
            raise F.problem(f"column {chosen['error']!r} has negative uncertainties; is it really a 1-sigma error?")
        mask, n_gap = gap_mask(flux, uncertainty, mask, assumed=all(e is None for e in errors))
        if air is not None:
            is_air, air_source = bool(air), "user"
        elif name_air is not None:
            is_air, air_source = name_air, f"column name {wave_name!r}"
        else:
            said, where = _air_from_comments(table.comments)
            is_air, air_source = (said, where) if said is not None else (False, "default (vacuum; the file does not say)")
        metadata = {
            "source": name,
            "format": FORMAT,
            "object_id": None,
            "flux_unit": None,
            "resolution_source": None if resolution is None else "user",
            "air_or_vacuum_source": air_source,
            "wavelength_unit": unit,
            "wavelength_unit_source": unit_source,
            "columns": {role: column for role, column in chosen.items() if column is not None},
            "n_zero_flux_masked": n_gap,
            "n_no_wavelength_dropped": n_dropped,
            "comments": table.comments[:20],
        }
        try:
            return ObservedSpectrum.from_arrays(
                wavelength, flux, mask=mask, resolution=resolution, air=is_air, wavelength_unit=unit,
                fix_nonfinite=fix_nonfinite, metadata=metadata, **uncertainty,
            )
        except InvalidSpectrumError as exc:
            raise F.problem(f"{exc} (columns used: {metadata['columns']})") from None

