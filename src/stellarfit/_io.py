"""What every part that writes files shares: values made JSON-ready (:func:`to_jsonable`) and
files written atomically (:func:`atomic_path`, :func:`atomic_write`, :func:`write_json_atomic`).

An atomic write goes to a temporary file next to the target (same directory, so the same file
system), is flushed to disk, given the mode a new file would have (umask) and renamed over the
target with :func:`os.replace`: a reader sees the old file or the new one, never a part, and a
write that fails leaves the target as it was and no temporary file behind.

This module imports nothing from stellarfit, so that any module may import it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = ["NON_FINITE", "OTHER", "atomic_path", "atomic_write", "default_file_mode", "to_jsonable", "write_json_atomic"]

#: what :func:`to_jsonable` makes of NaN and infinities: None ("null", strict JSON), the float itself
#: ("keep": ``json`` writes NaN / Infinity), or ``{"$float": "nan" | "inf" | "-inf"}`` ("tag", read back
#: by the fit files' decoder)
NON_FINITE = ("null", "keep", "tag")
#: what :func:`to_jsonable` makes of a value of no JSON type: left as it is ("keep": ``json`` refuses
#: it), its text ("str"), or a TypeError ("error")
OTHER = ("keep", "str", "error")

_JSON_KEY_TYPES = (str, int, float, bool, type(None))


def to_jsonable(value: Any, *, non_finite: str = "null", other: str = "keep") -> Any:
    """A copy of ``value`` made of JSON types: mappings -> dicts, lists / tuples / arrays -> lists
    (sets -> sorted lists), numpy scalars -> Python numbers and bools, paths -> text, dataclass
    instances -> dicts of their fields; NaN and infinities as ``non_finite`` says
    (:data:`NON_FINITE`), anything else as ``other`` says (:data:`OTHER`).  Mapping keys stay when
    JSON takes them (str, int, float, bool, None; numpy scalars as Python ones), else their text.

    Example: ``to_jsonable({"a": np.float32(1.5), "b": np.array([np.nan, 2])})`` is
    ``{"a": 1.5, "b": [None, 2.0]}``.
    """
    if non_finite not in NON_FINITE:
        raise ValueError(f"non_finite must be one of {NON_FINITE}, got {non_finite!r}")
    if other not in OTHER:
        raise ValueError(f"other must be one of {OTHER}, got {other!r}")
    return _convert(value, non_finite, other)


def _key(key: Any) -> Any:
    if isinstance(key, np.generic):
        key = key.item()
    return key if isinstance(key, _JSON_KEY_TYPES) else str(key)


def _convert(value: Any, non_finite: str, other: str) -> Any:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        return {_key(k): _convert(v, non_finite, other) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_convert(v, non_finite, other) for v in value]
    if isinstance(value, (set, frozenset)):
        return [_convert(v, non_finite, other) for v in sorted(value)]
    if isinstance(value, np.ndarray):
        return _convert(value.tolist(), non_finite, other)
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if math.isfinite(value) or non_finite == "keep":
            return value
        if non_finite == "null":
            return None
        return {"$float": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
    if isinstance(value, np.generic):  # other numpy scalars (complex, datetime): their Python value
        return _convert(value.item(), non_finite, other)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _convert(dataclasses.asdict(value), non_finite, other)
    if other == "str":
        return str(value)
    if other == "error":
        raise TypeError(f"value {value!r} of type {type(value).__name__} cannot be stored as JSON")
    return value


def default_file_mode() -> int:
    """0o666 minus the process umask: the mode ``open()`` gives a new file (``tempfile.mkstemp``
    creates files 0o600; renamed into place they would stay so)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary file next to ``path`` (``.<name>.<random>.tmp``, created empty) to write by name.

    When the block ends without an exception, the file is synced to disk, given the usual mode for
    a new file and renamed over ``path``; when it raises, the temporary file is removed and
    ``path`` is left as it was.  For writers that take a file name (astropy, h5py)::

        with atomic_path(out) as temporary:
            hdus.writeto(temporary, overwrite=True)
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    temporary = Path(name)
    try:
        yield temporary
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(temporary, default_file_mode())
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(handle)`` on a binary file that replaces ``path`` only once ``write`` returned
    (:func:`atomic_path`); returns ``path``.  Example:
    ``atomic_write(out, lambda handle: np.save(handle, labels, allow_pickle=False))``."""
    path = Path(path)
    with atomic_path(path) as temporary:
        with open(temporary, "wb") as handle:
            write(handle)
    return path


def write_json_atomic(path: str | os.PathLike, data: Mapping[str, Any], *, indent: int | None = 1) -> Path:
    """``data`` as strict JSON (:func:`to_jsonable`: NaN and infinities as null), written atomically."""
    text = json.dumps(to_jsonable(dict(data)), indent=indent, allow_nan=False)
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))
