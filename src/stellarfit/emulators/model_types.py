"""The one registry of emulator model types, and what a fit needs of an emulator.

A model type is a name (the ``model_type`` an emulator directory's ``emulator.json`` records) and the
:class:`~stellarfit.emulators.Emulator` subclass that :func:`~stellarfit.emulators.read_emulator`
builds from such a directory.  The built-in types are registered at the end of this module by
module and class name and imported on first use; adding a type is one call,
``register_model_type(YourEmulator)`` (also usable as a class decorator), after which
checkpoints of that type save and load like the built-in ones (docs/design/adding_an_emulator.md).
In the spirit of the spectrum formats' registry (:mod:`stellarfit.spectra._registry`).

:class:`FittableEmulator` is the :class:`typing.Protocol` of what
:func:`~stellarfit.inference.fit_star`, the forward model and the Fisher matrix use of an
emulator: any object with these members can be fitted, registered or not (the tests fit an
analytic one).  Every Emulator subclass has them.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from stellarfit.labels import LabelSpec

if TYPE_CHECKING:
    from stellarfit.emulators.base import Emulator

__all__ = ["FittableEmulator", "MODEL_TYPES", "ModelType", "available_model_types", "get_model_type",
           "register_model_type"]


@runtime_checkable
class FittableEmulator(Protocol):
    """What a fit uses of an emulator (``isinstance(x, FittableEmulator)`` checks that the members exist).

    Attributes:
        label_spec: the labels, in input order, with their units, boxes and default priors.
        label_names: ``label_spec.names``.
        wavelength: (n_pixels,) the native grid, vacuum A, increasing.
        native_resolution: R of the native grid (Gaussian LSF); None when unknown (a fit then
            refuses to degrade sharper spectra to it).
        metadata: JSON-able facts; a fit reads ``"name"``, ``"fast_path"`` and
            ``"label_error_floor"`` where present.
        pixel_error: (n_pixels,) the emulator's own error per native pixel, or None.

    Read where present (``getattr``), not required: ``physics_error``, ``error_modes``,
    ``model_type``, ``linear_readout(wavelength)`` (a flux linear in a last layer, applied in
    Fourier space by the forward model) and ``save(directory, overwrite=True)`` (batch fits in
    worker processes ship the emulator as a checkpoint).
    """

    label_spec: LabelSpec
    wavelength: np.ndarray
    native_resolution: float | None
    metadata: Mapping[str, Any]

    @property
    def label_names(self) -> Sequence[str]: ...

    @property
    def pixel_error(self) -> np.ndarray | None: ...

    def flux_fn(self, wavelength: Any = None) -> Callable[[Any], Any]:
        """A pure function physical labels (..., n_labels) -> normalized flux (..., n_wavelengths)
        at ``wavelength`` (None: the native grid), differentiable (jax) in the labels."""
        ...


@dataclasses.dataclass(frozen=True)
class ModelType:
    """One registered model type: its name and the class, or ``"module:Class"`` imported on first use."""

    name: str
    target: Any  # type[Emulator] | str
    description: str = ""

    def load(self) -> type[Emulator]:
        """The Emulator subclass (imports its module the first time)."""
        if not isinstance(self.target, str):
            return self.target
        module, _, attribute = self.target.partition(":")
        cls = getattr(importlib.import_module(module), attribute)
        if getattr(cls, "model_type", None) != self.name:
            raise TypeError(f"{self.target} has model_type {getattr(cls, 'model_type', None)!r}, registered as {self.name!r}")
        return cls


_REGISTRY: dict[str, ModelType] = {}


def register_model_type(cls: Any = None, target: Any = None, *, description: str = "", overwrite: bool = False):
    """Add a model type to the registry.

    ``register_model_type(YourEmulator)`` (or ``@register_model_type`` on the class) registers an
    Emulator subclass by its ``model_type`` and returns the class; ``register_model_type(name,
    "package.module:Class")`` registers a class imported on first use and returns the
    :class:`ModelType`.  A name already registered for another class is a ValueError unless
    ``overwrite``; registering the same class again changes nothing.
    """
    if isinstance(cls, str):
        name = cls
        if not isinstance(target, (str, type)):
            raise TypeError(f"register_model_type({name!r}, target): target must be a class or 'module:Class', got {target!r}")
    else:
        name, target = getattr(cls, "model_type", ""), cls
        if not isinstance(cls, type) or not name:
            raise TypeError(f"register_model_type needs an Emulator subclass with a model_type (or a name and a target), got {cls!r}")
    entry = ModelType(name, target, description or _summary(target))
    known = _REGISTRY.get(name)
    if known is not None and _spelled(known.target) != _spelled(target) and not overwrite:
        raise ValueError(f"model type {name!r} is already registered ({_spelled(known.target)}); pass overwrite=True to "
                         "replace it, or give your class another model_type")
    if known is None or overwrite:
        _REGISTRY[name] = entry
    return cls if isinstance(cls, type) else entry


def _spelled(target: Any) -> str:
    return target if isinstance(target, str) else f"{target.__module__}:{target.__qualname__}"


def _summary(target: Any) -> str:
    doc = "" if isinstance(target, str) else (target.__doc__ or "")
    return doc.strip().splitlines()[0] if doc.strip() else ""


def available_model_types() -> list[str]:
    """Names of the registered model types."""
    return list(_REGISTRY)


def get_model_type(name: str) -> type[Emulator]:
    """The Emulator subclass of model type ``name`` (a KeyError listing the known types if unknown)."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown emulator model type {name!r}; known: {sorted(_REGISTRY)} "
                       "(register a new one with stellarfit.emulators.register_model_type)")
    return _REGISTRY[name].load()


class _ModelClasses(Mapping):
    """Read-only view name -> class of the registry (classes imported on access)."""

    def __getitem__(self, name: str) -> type[Emulator]:
        return get_model_type(name)

    def __iter__(self) -> Iterator[str]:
        return iter(list(_REGISTRY))

    def __len__(self) -> int:
        return len(_REGISTRY)


#: model_type -> Emulator subclass, as a read-only mapping over the registry (the earlier name)
MODEL_TYPES: Mapping[str, type] = _ModelClasses()

# -- the built-in model types --------------------------------------------------------
register_model_type("payne", "stellarfit.emulators.payne:PayneEmulator",
                    description="The Payne: an MLP from the labels to every pixel of a fixed grid")
register_model_type("transformer_payne", "stellarfit.emulators.transformer_payne:TransformerPayneEmulator",
                    description="TransformerPayne: label tokens cross-attended by a sinusoidal wavelength encoding")
