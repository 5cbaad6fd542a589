"""Parameter-tree helpers shared by the emulator modules (private).

Emulator parameters are plain nested dicts of arrays (the "pure dict" form of a
Flax NNX state: attribute names are ``str`` keys, list indices are ``int``
keys).  Checkpoints, optimizers and trainable/frozen partitions work on a flat
form whose keys are the path components joined by ``/`` (for example
``blocks/3/query/kernel``).  Attribute names are Python identifiers, so a purely
numeric component is always a list index.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["flatten_params", "unflatten_params", "count_parameters", "hash_arrays"]


def flatten_params(tree: Mapping[Any, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> flat dict with ``/``-joined string keys (sorted traversal)."""
    flat: dict[str, Any] = {}
    for key in sorted(tree, key=lambda k: (0, k, "") if isinstance(k, int) else (1, 0, str(k))):
        value = tree[key]
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, name))
        else:
            flat[name] = value
    return flat


def unflatten_params(flat: Mapping[str, Any]) -> dict[Any, Any]:
    """Inverse of :func:`flatten_params` (numeric components become ``int`` keys)."""
    tree: dict[Any, Any] = {}
    for name, value in flat.items():
        parts = [int(part) if part.isdigit() else part for part in name.split("/")]
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return tree


def count_parameters(tree: Mapping[Any, Any]) -> int:
    """Total number of scalars in a parameter tree."""
    return int(sum(int(np.prod(np.shape(v))) for v in flatten_params(tree).values()))


def hash_arrays(*arrays: np.ndarray | None) -> str:
    """SHA-256 (hex) of the arrays' dtypes, shapes and bytes; ``None`` entries count as absent.

    Used as the training-grid hash recorded in checkpoints: the same labels,
    wavelengths and fluxes give the same hash on any machine.
    """
    digest = hashlib.sha256()
    for array in arrays:
        if array is None:
            digest.update(b"none;")
            continue
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()
