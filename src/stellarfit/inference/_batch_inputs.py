"""Batch inputs: files, glob patterns, directories and list files expanded to spectrum files, and reading them."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any



_SPECTRUM_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz")
_LIST_SUFFIXES = (".txt", ".lst", ".list")
_GLOB_CHARS = set("*?[")


def _is_list_file(path: Path) -> bool:
    """A .txt/.lst/.list file that is not itself a text spectrum (numeric columns, see spectra.text)."""
    if not path.name.lower().endswith(_LIST_SUFFIXES):
        return False
    from stellarfit.spectra import text

    return not text.identify(path)


def expand_inputs(inputs: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Input files, in order, without duplicates.

    Each input is a glob pattern (``*``, ``?``, ``[``; ``**`` recursive), a
    directory (its FITS files, recursively: .fits, .fit, .fts, optionally .gz),
    a list file (.txt, .lst, .list: one path per line, ``#`` comments, relative
    paths relative to the list file) or a spectrum file (FITS or text/CSV; a
    .txt file whose lines hold numeric columns is a text spectrum, not a list).

    Raises: FileNotFoundError for a missing path, a pattern matching nothing or no files at all.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    files: list[Path] = []

    def add(path: Path, depth: int = 0) -> None:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.name.lower().endswith(_SPECTRUM_SUFFIXES))
            files.extend(found)
        elif _is_list_file(path) and path.is_file():
            if depth > 4:
                raise ValueError(f"list files nested too deeply at {path}")
            for number, line in enumerate(path.read_text().splitlines(), start=1):
                line = line.split("#", 1)[0].strip()
                if not line:
                    continue
                entry = Path(line).expanduser()
                entry = entry if entry.is_absolute() else path.parent / entry
                if not entry.exists() and not _GLOB_CHARS & set(line):
                    raise FileNotFoundError(f"{path}, line {number}: no such file {entry}")
                expand(str(entry), depth + 1)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"no such file or directory: {path}")

    def expand(text: str, depth: int = 0) -> None:
        text = os.path.expanduser(text)
        if _GLOB_CHARS & set(text) and not os.path.exists(text):
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                raise FileNotFoundError(f"the pattern {text!r} matches no files")
            for match in matches:
                add(Path(match), depth)
        else:
            add(Path(text), depth)

    for item in inputs:
        expand(os.fspath(item))
    unique: list[Path] = []
    seen: set[str] = set()
    for path in files:
        key = str(path.resolve())
        if key not in seen:
            seen.add(key)
            unique.append(path)
    if not unique:
        raise FileNotFoundError(f"no spectrum files found in {list(map(os.fspath, inputs))}")
    return unique


def _read(path: Path, format: str | None, options: Mapping[str, Any]):  # noqa: A002
    from stellarfit.spectra import read_spectra

    try:
        return read_spectra(path, format=format, errors="skip", **options)
    except TypeError as error:
        if "does not take option" not in str(error):
            raise
        return read_spectra(path, format=format, **options)  # single-spectrum readers have no errors= option
