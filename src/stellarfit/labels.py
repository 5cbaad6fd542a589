"""Stellar labels: one description of names, units, bounds, scaling and priors.

A :class:`LabelSpec` is the single source of truth for the parameters a grid
spans, an emulator takes and a fit infers.  Priors, optimizer scaling, CLI
validation, checkpoints and catalog columns all read it.

Abundance labels are *total* ``[X/Fe]`` values.  Some labels are bounded
relative to another label (in the default model ``[Mg/Fe]`` lies within
+-0.4 dex of ``[alpha/Fe]``): such a label has ``offset_from`` set and its box
bounds are the widest values the relative constraint allows.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["Label", "LabelSpec", "default_label_spec", "ALPHA_ELEMENT_LABELS", "OTHER_ELEMENT_LABELS"]

#: Abundance labels of the default model that are bounded around [alpha/Fe].
ALPHA_ELEMENT_LABELS = ("mg_fe", "si_fe", "ca_fe", "ti_fe")
#: Abundance labels of the default model that are bounded around solar.
OTHER_ELEMENT_LABELS = ("na_fe", "ni_fe", "cr_fe", "mn_fe")


@dataclasses.dataclass(frozen=True)
class Label:
    """One stellar label.

    Attributes:
        name: canonical name (``teff``, ``logg``, ``fe_h``, ``mg_fe`` ...).
        unit: unit string (``K``, ``dex``, ``km/s``).
        lower, upper: box bounds [unit].
        description: one line for humans (tables, ``--help``).
        offset_from: if set, the label must lie within ``offset_halfwidth`` of
            this other label's value (``""`` means "of zero", i.e. solar).
        offset_halfwidth: half-width of the relative constraint [unit].
    """

    name: str
    unit: str
    lower: float
    upper: float
    description: str = ""
    offset_from: str | None = None
    offset_halfwidth: float = 0.0

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"label name {self.name!r} must be a Python identifier (e.g. 'fe_h')")
        if not (np.isfinite(self.lower) and np.isfinite(self.upper) and self.lower < self.upper):
            raise ValueError(f"label {self.name!r}: bounds must be finite with lower < upper, got [{self.lower}, {self.upper}]")


class LabelSpec:
    """An ordered set of :class:`Label` objects.

    Example:
        >>> spec = default_label_spec()
        >>> spec.names[:3]
        ('teff', 'logg', 'vmic')
        >>> float(spec.scale({'teff': 5500.0, 'logg': 3.0, 'vmic': 1.75, 'fe_h': -1.0,
        ...                   'alpha_fe': 0.2, 'mg_fe': 0.2, 'si_fe': 0.2, 'ca_fe': 0.2,
        ...                   'ti_fe': 0.2, 'na_fe': 0.0, 'ni_fe': 0.0, 'cr_fe': 0.0,
        ...                   'mn_fe': 0.0})[0])
        0.0
    """

    def __init__(self, labels: Sequence[Label]):
        labels = tuple(labels)
        names = [label.name for label in labels]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate label names in {names}")
        for label in labels:
            if label.offset_from and label.offset_from not in names:
                raise ValueError(f"label {label.name!r} is bounded relative to {label.offset_from!r}, which is not in the spec")
        self.labels = labels
        self._index = {name: i for i, name in enumerate(names)}

    # -- basic access -----------------------------------------------------
    @property
    def names(self) -> tuple[str, ...]:
        return tuple(label.name for label in self.labels)

    @property
    def lower(self) -> np.ndarray:
        """Box lower bounds, shape (n_labels,)."""
        return np.array([label.lower for label in self.labels], dtype=np.float64)

    @property
    def upper(self) -> np.ndarray:
        """Box upper bounds, shape (n_labels,)."""
        return np.array([label.upper for label in self.labels], dtype=np.float64)

    def __len__(self) -> int:
        return len(self.labels)

    def __iter__(self):
        return iter(self.labels)

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def __getitem__(self, name: str) -> Label:
        return self.labels[self.index(name)]

    def index(self, name: str) -> int:
        try:
            return self._index[name]
        except KeyError:
            raise KeyError(f"unknown label {name!r}; known labels are: {', '.join(self.names)}") from None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LabelSpec) and self.labels == other.labels

    def __repr__(self) -> str:
        return f"LabelSpec({', '.join(self.names)})"

    def difference(self, other: "LabelSpec") -> str:
        """How ``other`` differs from this spec, in words (for error messages; "" when equal)."""
        if self == other:
            return ""
        if self.names != other.names:
            missing = [n for n in self.names if n not in other.names]
            extra = [n for n in other.names if n not in self.names]
            if not missing and not extra:
                return f"same labels in a different order: {list(other.names)} vs expected {list(self.names)}"
            return f"missing {missing}, unexpected {extra}"
        changed = [f"{b.name}: {b} vs {a}" for a, b in zip(self.labels, other.labels) if a != b]
        return "different bounds/units: " + "; ".join(changed)

    def subset(self, names: Sequence[str]) -> "LabelSpec":
        """A spec with only ``names`` (in that order); relative constraints to dropped labels are dropped."""
        keep = [self[name] for name in names]
        kept = set(names)
        return LabelSpec(
            [dataclasses.replace(lab, offset_from=None, offset_halfwidth=0.0) if lab.offset_from and lab.offset_from not in kept else lab for lab in keep]
        )

    # -- conversion between mappings and arrays ---------------------------
    def to_array(self, labels: Mapping[str, Any] | np.ndarray, *, defaults: Mapping[str, float] | None = None) -> np.ndarray:
        """Labels as an array of shape (..., n_labels) in spec order.

        ``labels`` may be a mapping name -> value(s) or an array already in
        spec order.  Missing names are taken from ``defaults`` if given, else
        an error names them.  Unknown names are an error.
        """
        if not isinstance(labels, Mapping):
            array = np.asarray(labels, dtype=np.float64)
            if array.shape[-1:] != (len(self),):
                raise ValueError(f"label array has shape {array.shape}; expected (..., {len(self)}) in the order {self.names}")
            return array
        unknown = sorted(set(labels) - set(self.names))
        if unknown:
            raise KeyError(f"unknown label(s) {unknown}; known labels are: {', '.join(self.names)}")
        defaults = dict(defaults or {})
        missing = [name for name in self.names if name not in labels and name not in defaults]
        if missing:
            raise KeyError(f"missing label(s) {missing}; give a value for each of: {', '.join(self.names)}")
        columns = [np.asarray(labels[name] if name in labels else defaults[name], dtype=np.float64) for name in self.names]
        columns = np.broadcast_arrays(*columns)
        return np.stack(columns, axis=-1)

    def to_dict(self, array: np.ndarray) -> dict[str, np.ndarray]:
        """Inverse of :meth:`to_array`: mapping name -> array of shape (...)."""
        array = np.asarray(array)
        if array.shape[-1] != len(self):
            raise ValueError(f"label array has last dimension {array.shape[-1]}; expected {len(self)}")
        return {name: array[..., i] for i, name in enumerate(self.names)}

    # -- scaling ----------------------------------------------------------
    def scale(self, labels: Mapping[str, Any] | np.ndarray) -> np.ndarray:
        """Min-max scale to [-0.5, 0.5] over the box (The Payne's convention)."""
        array = self.to_array(labels)
        return (array - self.lower) / (self.upper - self.lower) - 0.5

    def unscale(self, scaled: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`scale`."""
        return (np.asarray(scaled) + 0.5) * (self.upper - self.lower) + self.lower

    # -- validation -------------------------------------------------------
    def violations(self, labels: Mapping[str, Any] | np.ndarray, *, tolerance: float = 1e-9) -> list[str]:
        """Human-readable list of bound violations (empty if all fine).

        Checks box bounds, relative constraints and NaNs, for an array of shape
        (..., n_labels) or a mapping; each message names the label and the
        allowed range.
        """
        array = np.atleast_2d(self.to_array(labels))
        problems: list[str] = []
        for i, label in enumerate(self.labels):
            column = array[..., i]
            if np.any(~np.isfinite(column)):
                problems.append(f"{label.name} is NaN or infinite")
                continue
            low, high = column.min(), column.max()
            if low < label.lower - tolerance or high > label.upper + tolerance:
                bad = low if low < label.lower - tolerance else high
                problems.append(f"{label.name}={bad:g} {label.unit} is outside [{label.lower:g}, {label.upper:g}]")
            if label.offset_from is not None:
                reference = array[..., self.index(label.offset_from)] if label.offset_from else 0.0
                offset = np.abs(column - reference)
                if np.any(offset > label.offset_halfwidth + tolerance):
                    ref_name = label.offset_from or "solar (0)"
                    problems.append(
                        f"{label.name} differs from {ref_name} by {offset.max():.3g} {label.unit}; "
                        f"it must lie within +-{label.offset_halfwidth:g}"
                    )
        return problems

    def validate(self, labels: Mapping[str, Any] | np.ndarray) -> np.ndarray:
        """Array of labels in spec order, or a ValueError listing every violation."""
        array = self.to_array(labels)
        problems = self.violations(array)
        if problems:
            raise ValueError("labels outside the allowed range: " + "; ".join(problems) + f". Allowed ranges: {self.describe_bounds()}")
        return array

    def describe_bounds(self) -> str:
        return ", ".join(f"{lab.name} [{lab.lower:g}, {lab.upper:g}] {lab.unit}" for lab in self.labels)

    # -- sampling helpers ---------------------------------------------------
    def from_unit_cube(self, unit: np.ndarray) -> np.ndarray:
        """Map points of the unit hypercube, shape (n, n_labels), to labels.

        Labels without a relative constraint fill their box; a label with
        ``offset_from`` is the reference value plus an offset spanning
        +-offset_halfwidth, clipped to the box.  Used by sampling designs.
        """
        unit = np.asarray(unit, dtype=np.float64)
        if unit.ndim != 2 or unit.shape[1] != len(self):
            raise ValueError(f"unit-cube points must have shape (n, {len(self)}), got {unit.shape}")
        out = self.lower + unit * (self.upper - self.lower)
        for i, label in enumerate(self.labels):
            if label.offset_from is not None:
                reference = out[:, self.index(label.offset_from)] if label.offset_from else 0.0
                out[:, i] = np.clip(reference + (2.0 * unit[:, i] - 1.0) * label.offset_halfwidth, label.lower, label.upper)
        return out

    # -- serialization ----------------------------------------------------
    def to_json(self) -> list[dict[str, Any]]:
        return [dataclasses.asdict(label) for label in self.labels]

    @classmethod
    def from_json(cls, data: str | Sequence[Mapping[str, Any]]) -> "LabelSpec":
        if isinstance(data, str):
            data = json.loads(data)
        try:
            return cls([Label(**dict(item)) for item in data])
        except TypeError as error:
            raise ValueError(f"not a valid label spec: {error}") from None


def default_label_spec() -> LabelSpec:
    """Labels of the default model (DESIGN.md): 13 labels, total [X/Fe] abundances."""
    labels = [
        Label("teff", "K", 4000.0, 7000.0, "effective temperature"),
        Label("logg", "dex", 1.0, 5.0, "log10 surface gravity [cgs]"),
        Label("vmic", "km/s", 0.5, 3.0, "microturbulent velocity"),
        Label("fe_h", "dex", -2.5, 0.5, "[Fe/H], iron abundance relative to solar"),
        Label("alpha_fe", "dex", -0.2, 0.6, "[alpha/Fe]: sets the atmosphere and O, Ne, S, Ar"),
    ]
    for name in ALPHA_ELEMENT_LABELS:
        element = name.split("_")[0].capitalize()
        labels.append(Label(name, "dex", -0.6, 1.0, f"total [{element}/Fe]", offset_from="alpha_fe", offset_halfwidth=0.4))
    for name in OTHER_ELEMENT_LABELS:
        element = name.split("_")[0].capitalize()
        labels.append(Label(name, "dex", -0.4, 0.4, f"total [{element}/Fe]", offset_from="", offset_halfwidth=0.4))
    return LabelSpec(labels)
