"""Emulators shipped to worker processes as their checkpoint files (``Emulator.save``: JSON + npz, no
pickle), keyed by a digest of their content so that each worker loads each emulator once."""

from __future__ import annotations

import collections
import hashlib
import io
import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

#: parent side: id(emulator) -> (emulator, key, files) of recently sent emulators
_PAYLOADS: "collections.OrderedDict[int, tuple[Any, str, dict]]" = collections.OrderedDict()


def _emulator_files(emulator) -> tuple[str, dict[str, bytes]]:
    cached = _PAYLOADS.get(id(emulator))
    if cached is not None and cached[0] is emulator:
        _PAYLOADS.move_to_end(id(emulator))
        return cached[1], cached[2]
    with tempfile.TemporaryDirectory(prefix="stellarfit-emulator-") as directory:
        emulator.save(directory, overwrite=True)
        files = {path.name: path.read_bytes() for path in sorted(Path(directory).iterdir()) if path.is_file()}
    key = "emulator-" + _checkpoint_digest(files)
    _PAYLOADS[id(emulator)] = (emulator, key, files)
    while len(_PAYLOADS) > 2:
        _PAYLOADS.popitem(last=False)
    return key, files


def load_emulator_files(files: dict[str, bytes]):
    """Worker side: an emulator from its checkpoint files' bytes."""
    from stellarfit.emulators import load_emulator

    with tempfile.TemporaryDirectory(prefix="stellarfit-emulator-") as directory:
        for name, data in files.items():
            Path(directory, name).write_bytes(data)
        return load_emulator(directory)  # reads every array into memory: the files can go


def _checkpoint_digest(files: Mapping[str, bytes]) -> str:
    """SHA-1 of a saved emulator's content (JSON without its save time, array values), the same for every save."""
    digest = hashlib.sha1()
    for name, data in sorted(files.items()):
        digest.update(name.encode() + b"\0")
        if name.endswith(".json"):
            try:
                meta = json.loads(data)
            except ValueError:
                meta = None
            if isinstance(meta, dict):
                meta.pop("created", None)
                data = json.dumps(meta, sort_keys=True).encode()
        elif name.endswith(".npz"):
            with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
                for key in sorted(arrays.files):
                    value = np.ascontiguousarray(arrays[key])
                    digest.update(f"{key}:{value.dtype.str}:{value.shape}".encode())
                    digest.update(value.tobytes())
            continue
        digest.update(data)
    return digest.hexdigest()
