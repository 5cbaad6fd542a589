"""Several emulators, one per wavelength window, used as one (:class:`CompositeEmulator`).

The design's windows (5000-5500 A, red 6300-6800 A, Gaia RVS 8450-8750 A) each get their own
emulator; a star observed in several of them is fitted once, with one set of labels, one RV and
one vsini for all windows (``fit_star(spectrum, composite)``).  The composite holds the members,
checks that they take the same labels and do not overlap, and says which member covers which
wavelength; fits build one forward model per member for the observed pixels it covers and join
them (:class:`stellarfit.forward.CompositeForwardModel`, built by
:func:`stellarfit.inference.forward_model_for`).  Observed pixels that no member covers are
masked and counted (``FitResult.diagnostics["windows"]``).

On disk a composite is a directory holding ``composite.json`` (JSON, no pickle) and either its
members' own emulator directories (``member_0/``, ..., written by ``Emulator.save``) or
references to them (paths or shipped names): ``load_emulator(path)`` reads either.

What the composite is not: one network.  Paths that need a single network -- the distilled fast
path (``init="fast"``, ``sample_with="fast"``), the linear-readout shortcut across windows, worker
processes for NUTS chains -- are not taken for a composite (see :func:`stellarfit.fit_star`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from stellarfit._io import to_jsonable, write_json_atomic
from stellarfit.labels import LabelSpec

__all__ = ["CompositeEmulator", "COMPOSITE_FILE", "COMPOSITE_FORMAT", "is_composite", "read_composite"]

#: the file that marks a composite's directory
COMPOSITE_FILE = "composite.json"
#: ``format`` value of that file, and its schema version
COMPOSITE_FORMAT = "stellarfit-composite-emulator"
COMPOSITE_SCHEMA_VERSION = 1


def is_composite(emulator: Any) -> bool:
    """True for a :class:`CompositeEmulator` (several windows' emulators used as one)."""
    return isinstance(emulator, CompositeEmulator)


def _window_text(window: tuple[float, float]) -> str:
    return f"{window[0]:.0f}-{window[1]:.0f}"


class CompositeEmulator:
    """Emulators of separate wavelength windows with the same labels, used as one emulator.

    Args:
        members: the window emulators (stellarfit Emulators, or objects with what a fit needs of
            one: ``label_spec``, ``wavelength``, ``native_resolution``, ``flux_fn``, ``metadata``).
            They are kept sorted by wavelength.
        metadata: free JSON-able metadata; ``name`` names the composite in results, and
            ``label_error_floor`` (name -> floor) replaces the default floors (below).
        sources: optional, one per member: the directory or shipped name it was loaded from
            (what ``save(..., members="reference")`` writes).

    Raises ValueError when the members' label specs differ (names, order, bounds or units: one
    set of labels is fitted for all windows) or their wavelength ranges overlap (a pixel must
    belong to one member).

    ``label_error_floor`` (the floors ``fit_star`` adds to the errors, measured per emulator by
    injection tests): unless ``metadata`` gives the composite's own, each label's floor is the
    smallest of its members' -- a joint fit is at least as good as its best window; measure the
    composite's floors by injection tests to replace that guess.
    """

    model_type = "composite"

    def __init__(self, members: Sequence[Any], *, metadata: Mapping[str, Any] | None = None,
                 sources: Sequence[str | None] | None = None):
        members = list(members)
        sources = [None] * len(members) if sources is None else [None if s is None else str(s) for s in sources]
        if len(sources) != len(members):
            raise ValueError(f"sources: {len(sources)} given for {len(members)} members")
        if not members:
            raise ValueError("a composite emulator needs at least one member emulator")
        for i, member in enumerate(members):
            if isinstance(member, CompositeEmulator):
                raise TypeError(f"member {i} is itself a composite; pass its members instead (composite.members)")
            if not isinstance(getattr(member, "label_spec", None), LabelSpec):
                raise TypeError(f"member {i} ({type(member).__name__}) is not an emulator: it has no stellarfit LabelSpec")
        order = np.argsort([float(np.asarray(m.wavelength, np.float64)[0]) for m in members], kind="stable")
        members = [members[i] for i in order]
        sources = [sources[i] for i in order]
        spec = members[0].label_spec
        for member in members[1:]:
            if member.label_spec != spec:
                raise ValueError(
                    f"the member emulators take different labels: {_name(members[0])} "
                    f"({_window_text(_range(members[0]))} A) and {_name(member)} ({_window_text(_range(member))} A): "
                    f"{spec.difference(member.label_spec)}. A composite fits one set of labels to every "
                    "window, so its members must have the same label spec (names, order, bounds, units)")
        for left, right in zip(members, members[1:]):
            if _range(right)[0] <= _range(left)[1]:
                raise ValueError(
                    f"the member emulators overlap in wavelength: {_name(left)} covers {_range(left)[0]:.2f}-"
                    f"{_range(left)[1]:.2f} A and {_name(right)} {_range(right)[0]:.2f}-{_range(right)[1]:.2f} A "
                    "(vacuum); each pixel must belong to one member: trim one of them "
                    "(emulator.replace(wavelength=...)) or combine emulators of separate windows")
        self.members: tuple[Any, ...] = tuple(members)
        self.sources: tuple[str | None, ...] = tuple(sources)
        self.label_spec: LabelSpec = spec
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.metadata.setdefault("name", "composite(" + ", ".join(_name(m) for m in members) + ")")
        if "label_error_floor" not in self.metadata:
            floors = _smallest_floors(members)
            if floors:
                self.metadata["label_error_floor"] = floors
        self._wavelength = np.concatenate([np.asarray(m.wavelength, np.float64) for m in members])
        self._wavelength.setflags(write=False)

    # ------------------------------------------------------------------ description
    @classmethod
    def from_directories(cls, paths: Sequence[str | os.PathLike], *, metadata: Mapping[str, Any] | None = None,
                         load: Callable[[str], Any] | None = None) -> "CompositeEmulator":
        """The composite of the emulator directories ``paths``, remembered as their sources.  ``load``: the
        loader (default :func:`~stellarfit.emulators.read_emulator`; pass
        :func:`stellarfit.emulators.load_emulator` to also accept shipped names)."""
        if load is None:
            from stellarfit.emulators.checkpoint import read_emulator as load
        texts = [os.fspath(p) for p in paths]
        return cls([load(text) for text in texts], metadata=metadata,
                   sources=[os.path.abspath(t) if os.path.exists(t) else t for t in texts])

    @property
    def label_names(self) -> tuple[str, ...]:
        return self.label_spec.names

    @property
    def n_labels(self) -> int:
        return len(self.label_spec)

    @property
    def windows(self) -> tuple[tuple[float, float], ...]:
        """(lo, hi) native coverage of each member [A, vacuum], in wavelength order."""
        return tuple(_range(m) for m in self.members)

    @property
    def wavelength(self) -> np.ndarray:
        """The members' native wavelengths one after the other, (n_pixels,), vacuum A (read-only).
        Not uniform in ln(lambda): there are gaps between the windows."""
        return self._wavelength

    @property
    def n_pixels(self) -> int:
        return int(self._wavelength.size)

    @property
    def wavelength_range(self) -> tuple[float, float]:
        """(min, max) of the union of the members' coverage [A, vacuum] (the gaps included)."""
        return float(self._wavelength[0]), float(self._wavelength[-1])

    @property
    def native_resolution(self) -> float | None:
        """The lowest native R of the members (None if one records none): an observation at or
        below it is no sharper than any member."""
        values = [getattr(m, "native_resolution", None) for m in self.members]
        return None if any(v is None for v in values) else float(min(values))

    @property
    def has_continuum(self) -> bool:
        return all(bool(getattr(m, "has_continuum", False)) for m in self.members)

    # the error terms are each member's own, applied to its pixels by the fits (stellarfit.inference)
    pixel_error = None
    error_modes = None
    physics_error = None

    def with_physics_error(self, physics_error) -> "CompositeEmulator":
        """A copy whose members carry ``physics_error`` (per wavelength, so one serves every window;
        see :meth:`stellarfit.emulators.Emulator.with_physics_error`)."""
        return CompositeEmulator([m.with_physics_error(physics_error) for m in self.members], metadata=self.metadata,
                                 sources=self.sources)

    def member_of(self, wavelength: np.ndarray, rv: float = 0.0) -> np.ndarray:
        """(n,) int: the member whose native range holds each wavelength [A, vacuum] seen at radial
        velocity ``rv`` [km/s] (rest wavelength lambda / D(rv)), -1 where none does."""
        from stellarfit.wavelengths import SPEED_OF_LIGHT_KMS

        beta = float(rv) / SPEED_OF_LIGHT_KMS
        rest = np.asarray(wavelength, np.float64) / np.sqrt((1.0 + beta) / (1.0 - beta))
        index = np.full(rest.shape, -1, dtype=np.int64)
        for i, (lo, hi) in enumerate(self.windows):
            index[(rest >= lo) & (rest <= hi)] = i
        return index

    def __repr__(self) -> str:
        windows = ", ".join(f"{_window_text(w)} A" for w in self.windows)
        return f"CompositeEmulator(labels={list(self.label_names)}, windows=[{windows}], members={len(self.members)})"

    def describe(self) -> dict[str, Any]:
        """JSON-able summary: the composite's metadata and each member's window and description."""
        return {
            "model_type": self.model_type,
            "label_names": list(self.label_names),
            "windows": [list(w) for w in self.windows],
            "native_resolution": self.native_resolution,
            "metadata": to_jsonable(self.metadata),
            "members": [m.describe() if hasattr(m, "describe") else {"name": _name(m)} for m in self.members],
        }

    # ------------------------------------------------------------------ predictions
    def _split(self, wavelength: np.ndarray | None) -> tuple[np.ndarray, list[np.ndarray]]:
        """(index (n,), per member the positions of its wavelengths); every wavelength must be covered."""
        if wavelength is None:
            sizes = [np.asarray(m.wavelength).size for m in self.members]
            index = np.repeat(np.arange(len(self.members)), sizes)
        else:
            wavelength = np.asarray(wavelength, np.float64)
            if wavelength.ndim != 1 or wavelength.size == 0 or not np.all(np.isfinite(wavelength)):
                raise ValueError(f"wavelength must be a non-empty 1-D array of finite values (vacuum A), got shape {wavelength.shape}")
            index = self.member_of(wavelength)
            if np.any(index < 0):
                outside = wavelength[index < 0]
                raise ValueError(
                    f"{outside.size} wavelength(s) ({outside.min():.2f}-{outside.max():.2f} A) lie outside every member's "
                    f"window ({', '.join(_window_text(w) + ' A' for w in self.windows)}, vacuum); trim them")
        return index, [np.flatnonzero(index == i) for i in range(len(self.members))]

    def predict(self, labels, wavelength: np.ndarray | None = None, **options) -> np.ndarray:
        """Normalized flux (n_spectra, n_wavelengths), float32: each member's ``predict`` on the
        wavelengths in its window.  ``wavelength=None``: every member's native grid, one after the
        other (:attr:`wavelength`); wavelengths outside every window are an error.  ``options`` go
        to each member's ``predict`` (``batch_size``, ``check_bounds``)."""
        index, positions = self._split(wavelength)
        out = None
        for member, where in zip(self.members, positions):
            if where.size == 0:
                continue
            flux = np.asarray(member.predict(labels, None if wavelength is None else np.asarray(wavelength)[where], **options))
            if out is None:
                out = np.empty((flux.shape[0], index.size), dtype=np.float32)
            out[:, where] = flux
        return out

    def predict_with_continuum(self, labels, wavelength: np.ndarray | None = None, **options) -> tuple[np.ndarray, np.ndarray]:
        """(normalized flux, log10 continuum), each (n_spectra, n_wavelengths): each member's
        ``predict_with_continuum`` on its wavelengths (see :meth:`predict`); every member must have a continuum."""
        if not self.has_continuum:
            raise ValueError("not every member of this composite was trained with a continuum; use predict for normalized flux")
        index, positions = self._split(wavelength)
        flux = continuum = None
        for member, where in zip(self.members, positions):
            if where.size == 0:
                continue
            f, c = member.predict_with_continuum(labels, None if wavelength is None else np.asarray(wavelength)[where], **options)
            if flux is None:
                flux = np.empty((np.shape(f)[0], index.size), dtype=np.float32)
                continuum = np.empty_like(flux)
            flux[:, where], continuum[:, where] = f, c
        return flux, continuum

    def flux_fn(self, wavelength: np.ndarray | None = None) -> Callable:
        """A JAX function of physical labels (..., n_labels) -> flux (..., n_wavelengths): each
        member's ``flux_fn`` on its wavelengths, joined in the order of ``wavelength``."""
        index, positions = self._split(wavelength)
        used = [(i, where) for i, where in enumerate(positions) if where.size]
        functions = [self.members[i].flux_fn(None if wavelength is None else np.asarray(wavelength, np.float64)[where])
                     for i, where in used]
        order = np.argsort(np.concatenate([where for _, where in used]), kind="stable")

        def fn(labels):
            pieces = [jnp.asarray(f(labels)) for f in functions]
            return jnp.take(jnp.concatenate(pieces, axis=-1), jnp.asarray(order), axis=-1)

        return fn

    # ------------------------------------------------------------------ I/O
    def save(self, path: str | os.PathLike, *, members: str = "copy", overwrite: bool = False) -> str:
        """Write the composite to directory ``path``: ``composite.json`` and, with ``members="copy"``
        (default), each member's own emulator directory ``member_<i>/`` (``Emulator.save``), so the
        directory stands alone; with ``members="reference"``, the members' sources (directories as
        absolute paths, or shipped names) instead -- only for a composite made from them
        (:meth:`from_directories`, or loaded).  Returns the directory."""
        if members not in ("copy", "reference"):
            raise ValueError(f"members must be 'copy' or 'reference', got {members!r}")
        path = os.fspath(path)
        target = os.path.join(path, COMPOSITE_FILE)
        if os.path.exists(target) and not overwrite:
            raise FileExistsError(f"{path} already holds a composite emulator; pass overwrite=True to replace it")
        entries = []
        for i, (member, source) in enumerate(zip(self.members, self.sources)):
            entry: dict[str, Any] = {"window": list(_range(member)), "name": _name(member)}
            if members == "reference":
                if source is None:
                    raise ValueError(f"member {i} ({_name(member)}) was not loaded from a directory or name, so it cannot "
                                     "be referenced; save with members='copy'")
                entry["source"] = source
            else:
                if not hasattr(member, "save"):
                    raise TypeError(f"member {i} ({type(member).__name__}) cannot be saved: it is not a stellarfit Emulator")
                member.save(os.path.join(path, f"member_{i}"), overwrite=overwrite)
                entry["path"] = f"member_{i}"
            entries.append(entry)
        os.makedirs(path, exist_ok=True)
        document = {"format": COMPOSITE_FORMAT, "schema_version": COMPOSITE_SCHEMA_VERSION,
                    "label_names": list(self.label_names), "metadata": to_jsonable(self.metadata), "members": entries}
        write_json_atomic(target, document, indent=2)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, *, load: Callable[[str], Any] | None = None,
             label_spec: LabelSpec | None = None) -> "CompositeEmulator":
        """Read a composite directory written by :meth:`save` (see :func:`read_composite`)."""
        return read_composite(path, load=load, label_spec=label_spec)


def read_composite(path: str | os.PathLike, *, load: Callable[[str], Any] | None = None,
                   label_spec: LabelSpec | None = None) -> CompositeEmulator:
    """The composite in directory ``path`` (its ``composite.json``).  Members stored inside it are
    read from their directories; referenced ones from their paths or shipped names.  ``load``
    loads one member (default :func:`~stellarfit.emulators.read_emulator`, directories only;
    :func:`stellarfit.emulators.load_emulator` passes itself, so shipped names work there);
    ``label_spec``: if given, the members' labels must equal it."""
    path = os.fspath(path)
    if load is None:
        from stellarfit.emulators.checkpoint import read_emulator as load
    target = os.path.join(path, COMPOSITE_FILE)
    try:
        with open(target, encoding="utf-8") as handle:
            document = json.load(handle)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} holds no composite emulator ({COMPOSITE_FILE} is missing)") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{target} is not valid JSON ({error})") from None
    if document.get("format") != COMPOSITE_FORMAT:
        raise ValueError(f"{target}: format {document.get('format')!r} is not {COMPOSITE_FORMAT!r}")
    version = document.get("schema_version")
    if not isinstance(version, int) or version > COMPOSITE_SCHEMA_VERSION:
        raise ValueError(f"{target}: schema version {version!r} is newer than this stellarfit reads "
                         f"({COMPOSITE_SCHEMA_VERSION}); upgrade stellarfit")
    entries = document.get("members") or []
    if not entries:
        raise ValueError(f"{target} lists no members")
    members, sources = [], []
    for i, entry in enumerate(entries):
        if "path" in entry:
            where = os.path.join(path, entry["path"])
            if not os.path.isdir(where):
                raise FileNotFoundError(f"{target}: member {i}'s directory {where} is missing")
            source = os.path.abspath(where)
        elif "source" in entry:
            source = where = entry["source"]
        else:
            raise ValueError(f"{target}: member {i} has neither 'path' nor 'source'")
        member = load(where)
        if label_spec is not None and member.label_spec != label_spec:
            raise ValueError(f"{path}: member {i} ({where}) does not take the expected labels "
                             f"({label_spec.difference(member.label_spec)})")
        members.append(member)
        sources.append(source)
    return CompositeEmulator(members, metadata=document.get("metadata"), sources=sources)


def _name(member: Any) -> str:
    return str((getattr(member, "metadata", None) or {}).get("name", type(member).__name__))


def _range(member: Any) -> tuple[float, float]:
    wavelength = np.asarray(member.wavelength, np.float64)
    return float(wavelength[0]), float(wavelength[-1])


def _smallest_floors(members: Sequence[Any]) -> dict[str, float]:
    """Per parameter, the smallest ``label_error_floor`` among the members that record one."""
    out: dict[str, float] = {}
    for member in members:
        floors = (getattr(member, "metadata", None) or {}).get("label_error_floor") or {}
        for name, value in floors.items():
            if value is not None and np.isfinite(value):
                out[name] = float(min(out.get(name, np.inf), value))
    return out
