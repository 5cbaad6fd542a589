"""One TransformerPayne over several wavelength windows: joined training data, and its split into a composite.

The TransformerPayne predicts any wavelength (its wavelength is an input, not an output pixel), so
one network can learn several windows at once -- the blue 5000-5500 A, red 6300-6800 A and Gaia
RVS 8450-8750 A windows -- from grids of the same label design, one grid per window:

- :func:`join_windows` joins such grids into one :class:`~stellarfit.emulators.TrainingData`
  whose pixels are the windows' pixels one after the other (a wavelength grid with gaps); rows are
  matched by their labels (:func:`match_rows`), so grids with different failed syntheses join on
  the stars every window has.
- :func:`split_by_design_row` splits the joined rows into train / validation / test by their row
  in the label design, so the same star is never in the training part of one window and the test
  part of another, and a single window's grid can be split the same way later.
- :func:`split_windows` turns the network trained on the joined grid into a
  :class:`~stellarfit.emulators.CompositeEmulator` with one member per window, whose native grid
  is that window's pixels, all sharing the same weights (no copy is trained).  The forward model
  needs a native grid uniform in ln(lambda) (its broadening and Doppler shift act on that lattice),
  so fits never use the gapped grid directly: they use the composite, with its per-window forward
  models, per-arm continuum and LSF (docs/guide/windows.md).

The Payne's output layer is one unit per pixel of one grid; a Payne per window, combined with
:class:`~stellarfit.emulators.CompositeEmulator`, is the way to cover several windows with it.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from stellarfit.emulators.composite import CompositeEmulator
from stellarfit.emulators.training import TrainingData
from stellarfit.grids import split_indices

__all__ = ["RowMatch", "design_size", "find_windows", "join_windows", "match_rows", "split_by_design_row", "split_windows"]

#: a step in ln(lambda) more than this many times the median step is a gap between windows
GAP_FACTOR = 1.5


@dataclasses.dataclass(frozen=True)
class RowMatch:
    """Rows of several window grids that hold the same stars (:func:`match_rows`).

    Attributes:
        rows: (n_common, n_parts) int64: for each common star, its row in each part (parts in the
            order given), in the order of the first part's rows.
        n_rows: the number of rows of each part.
    """

    rows: np.ndarray
    n_rows: tuple[int, ...]

    @property
    def n_common(self) -> int:
        return int(self.rows.shape[0])

    @property
    def n_dropped(self) -> tuple[int, ...]:
        """Per part, its rows left out because some other part lacks that star."""
        return tuple(n - self.n_common for n in self.n_rows)


def _as_data(part: Any) -> TrainingData:
    return part if isinstance(part, TrainingData) else TrainingData.from_grid(part)


def _window_text(wavelength: np.ndarray) -> str:
    return f"{float(wavelength[0]):.2f}-{float(wavelength[-1]):.2f} A"


def _common_spec(parts: Sequence[TrainingData]):
    specs = [p.label_spec for p in parts]
    spec = next((s for s in specs if s is not None), None)
    for i, part in enumerate(parts):
        if part.labels.shape[1] != parts[0].labels.shape[1]:
            raise ValueError(f"the window grids have different numbers of labels: part 0 has {parts[0].labels.shape[1]}, "
                             f"part {i} ({_window_text(part.wavelength)}) {part.labels.shape[1]}; join grids of the same "
                             "label design")
        if spec is not None and part.label_spec is not None and part.label_spec != spec:
            raise ValueError(f"the window grids take different labels: part {i} ({_window_text(part.wavelength)}): "
                             f"{spec.difference(part.label_spec)}. One network learns one set of labels for every "
                             "window: make the grids with the same label spec (names, order, bounds, units)")
    return spec


def match_rows(parts: Sequence[Any], *, rtol: float = 1e-9) -> RowMatch:
    """The stars present in every part, matched by their labels.

    Args:
        parts: TrainingData, SpectralGrid objects or grid paths (anything with ``labels``).
        rtol: two label rows are the same star when every label agrees to ``rtol`` times the
            label's scale (the label spec's span where the parts have one, else the largest
            absolute value of that label, at least 1).

    Returns a :class:`RowMatch` (rows in the first part's order).  Raises ValueError when no star
    is in every part.  A part with two rows of the same labels matches the first.
    """
    labels = [np.asarray(p.labels if hasattr(p, "labels") else _as_data(p).labels, np.float64) for p in parts]
    if not labels:
        raise ValueError("no window grids given")
    n_labels = labels[0].shape[1]
    if any(x.ndim != 2 or x.shape[1] != n_labels for x in labels):
        raise ValueError(f"the parts' labels must all have shape (n, {n_labels}); got {[x.shape for x in labels]}")
    spec = next((getattr(p, "label_spec", None) for p in parts if getattr(p, "label_spec", None) is not None), None)
    if spec is not None:
        scale = np.asarray(spec.upper - spec.lower, np.float64)
    else:
        scale = np.max([np.abs(x).max(axis=0) if x.size else np.zeros(n_labels) for x in labels], axis=0)
    scale = np.where(np.isfinite(scale) & (scale > 0), np.maximum(scale, 1.0 if spec is None else 0.0), 1.0)
    tol = float(rtol)
    reference = labels[0] / scale
    found = np.ones(reference.shape[0], bool)
    rows = [np.arange(reference.shape[0], dtype=np.int64)]
    for other in labels[1:]:
        scaled = other / scale
        order = np.argsort(scaled[:, 0], kind="stable") if scaled.size else np.zeros(0, np.int64)
        first = scaled[order, 0] if scaled.size else np.zeros(0)
        lo = np.searchsorted(first, reference[:, 0] - tol, side="left")
        hi = np.searchsorted(first, reference[:, 0] + tol, side="right")
        match = np.full(reference.shape[0], -1, dtype=np.int64)
        for i in np.flatnonzero(hi > lo):
            candidates = order[lo[i]:hi[i]]
            close = np.all(np.abs(scaled[candidates] - reference[i]) <= tol, axis=1)
            if close.any():
                match[i] = candidates[np.argmax(close)]
        found &= match >= 0
        rows.append(match)
    if not found.any():
        raise ValueError(f"no star is in every window grid (labels matched to {rtol:g} of each label's scale; "
                         f"{', '.join(str(x.shape[0]) for x in labels)} rows): join grids made from the same label "
                         "design (the same --n, --seed and --design of `stellarfit grid`)")
    return RowMatch(np.stack([r[found] for r in rows], axis=1), tuple(int(x.shape[0]) for x in labels))


def join_windows(parts: Sequence[Any], *, rtol: float = 1e-9, match: RowMatch | None = None,
                 warn: bool = True) -> TrainingData:
    """One TrainingData from grids of the same label design in different wavelength windows.

    Args:
        parts: TrainingData, SpectralGrid objects or grid paths, one per window, in any order.
        rtol: label agreement that makes two rows the same star (:func:`match_rows`).
        match: the parts' :func:`match_rows` (computed here when None).
        warn: warn (``UserWarning``) when rows are dropped.

    Returns TrainingData whose rows are the stars every part has (in the first part's order), whose
    pixels are the windows' pixels in wavelength order (a wavelength grid with gaps: train a
    TransformerPayne on it, fit with :func:`split_windows`), with the log10 continuum only when
    every part has one.

    Raises ValueError when windows overlap, the parts take different labels, or no star is in every
    part.
    """
    data = [_as_data(p) for p in parts]
    if not data:
        raise ValueError("no window grids given")
    spec = _common_spec(data)
    order = np.argsort([float(d.wavelength[0]) for d in data], kind="stable")
    for a, b in zip(order, order[1:]):
        if data[b].wavelength[0] <= data[a].wavelength[-1]:
            raise ValueError(f"the window grids overlap in wavelength: part {a} covers {_window_text(data[a].wavelength)} "
                             f"and part {b} {_window_text(data[b].wavelength)} (vacuum); each pixel must belong to one "
                             "window: trim one grid or join grids of separate windows")
    if match is None:
        match = match_rows(data, rtol=rtol)
    if len(match.n_rows) != len(data) or any(n != d.n_spectra for n, d in zip(match.n_rows, data)):
        raise ValueError("match does not describe these parts (its row counts differ)")
    if warn and any(match.n_dropped):
        warnings.warn(
            f"join_windows: {match.n_common} stars are in every window grid; dropped "
            + ", ".join(f"{n} of {d.n_spectra} rows of {_window_text(d.wavelength)}" for n, d in zip(match.n_dropped, data) if n)
            + " (stars another window lacks, e.g. failed syntheses)", UserWarning, stacklevel=2)
    labels = data[0].labels[match.rows[:, 0]]
    flux = np.concatenate([data[k].flux[match.rows[:, k]] for k in order], axis=1)
    wavelength = np.concatenate([data[k].wavelength for k in order])
    continuum = None
    if all(d.log10_continuum is not None for d in data):
        continuum = np.concatenate([data[k].log10_continuum[match.rows[:, k]] for k in order], axis=1)
    return TrainingData(labels, flux, wavelength, continuum, spec)


def design_size(grid: Any) -> int:
    """The number of label vectors in the design a grid was made from: its recorded
    ``generation.n_requested``, else its rows plus its failures, at least max(design_index) + 1."""
    metadata = getattr(grid, "metadata", None) or {}
    generation = metadata.get("generation") if isinstance(metadata.get("generation"), Mapping) else {}
    index = np.asarray(getattr(grid, "design_index", np.arange(len(grid.labels))))
    failures = getattr(grid, "failures", None)
    n = generation.get("n_requested")
    if n is None:
        n = len(grid.labels) + (0 if failures is None else len(failures.indices))
    return int(max(int(n), int(index.max()) + 1 if index.size else 0))


def split_by_design_row(design_index: np.ndarray, n_design: int, fractions: Sequence[float] = (0.8, 0.1, 0.1),
                        seed: int = 0) -> tuple[np.ndarray, ...]:
    """Positions of ``design_index`` (each row's row in the label design) in each part of the split.

    The design's rows are split with :func:`stellarfit.grids.split_indices` (``n_design``,
    ``fractions``, ``seed``) and each row goes to the part of its design row: a star's part depends
    on the star alone, so every window's grid of the design (whatever failed in it) and their join
    put it in the same part.  For a grid with no failures (``design_index`` = 0..n-1) this is
    exactly ``grid.split(fractions, seed)``."""
    design_index = np.asarray(design_index, np.int64)
    if design_index.size and (design_index.min() < 0 or design_index.max() >= n_design):
        raise ValueError(f"design rows must lie in [0, {n_design}), got {design_index.min()}..{design_index.max()}")
    part_of = np.empty(int(n_design), np.int64)
    for k, rows in enumerate(split_indices(int(n_design), fractions, seed)):
        part_of[rows] = k
    where = part_of[design_index]
    return tuple(np.flatnonzero(where == k).astype(np.int64) for k in range(len(fractions)))


def find_windows(wavelength: np.ndarray, gap_factor: float = GAP_FACTOR) -> tuple[tuple[float, float], ...]:
    """(lo, hi) of each stretch of ``wavelength`` [A] between gaps (steps in ln(lambda) more than
    ``gap_factor`` times the median step)."""
    wavelength = np.asarray(wavelength, np.float64)
    if wavelength.size < 2:
        return ((float(wavelength[0]), float(wavelength[-1])),) if wavelength.size else ()
    step = np.diff(np.log(wavelength))
    breaks = np.flatnonzero(step > gap_factor * np.median(step))
    starts = np.concatenate([[0], breaks + 1])
    ends = np.concatenate([breaks, [wavelength.size - 1]])
    return tuple((float(wavelength[s]), float(wavelength[e])) for s, e in zip(starts, ends))


def split_windows(emulator: Any, windows: Sequence[Sequence[float]] | None = None, *,
                  metadata: Mapping[str, Any] | None = None) -> CompositeEmulator:
    """The composite of ``emulator`` restricted to each window: one member per window.

    Args:
        emulator: an emulator that predicts any wavelength (a TransformerPayne), typically trained
            on :func:`join_windows` data.
        windows: (lo, hi) per window [A, vacuum]; each member's native grid is the emulator's
            native pixels inside it.  None: ``emulator.metadata["windows"]`` if recorded, else the
            stretches of its native grid between gaps (:func:`find_windows`).
        metadata: the composite's metadata (default: the emulator's name, the windows and
            ``shared_network: True``, its ``label_error_floor`` and training split if recorded).

    The members share the emulator's parameter arrays (nothing is copied or retrained): on its
    pixels each member predicts what the emulator predicts.  Each member's float32-exact
    ``reference_wavelength`` (used only to encode traced float32 wavelengths, see
    :func:`~stellarfit.emulators.transformer_payne.encode_wavelength`) moves to its window's middle,
    where that encoding is most accurate.  The emulator's per-pixel error is sliced per member;
    error modes are sliced too (their correlation across windows is dropped).

    Raises TypeError for an emulator tied to its pixels (The Payne: train one per window and use
    :class:`~stellarfit.emulators.CompositeEmulator`), ValueError for a window with no pixel.
    """
    if isinstance(emulator, CompositeEmulator):
        raise TypeError("the emulator is already a composite (one member per window)")
    if not getattr(emulator, "samples_wavelengths", False) or "reference_wavelength" not in getattr(emulator, "config", {}):
        raise TypeError(
            f"split_windows needs an emulator that predicts any wavelength (a TransformerPayne); a "
            f"{getattr(emulator, 'model_type', type(emulator).__name__)!r} emulator's output layer is one unit per pixel "
            "of its grid: train one per window and combine them with CompositeEmulator")
    wavelength = np.asarray(emulator.wavelength, np.float64)
    if windows is None:
        windows = emulator.metadata.get("windows") or find_windows(wavelength)
    windows = [(float(lo), float(hi)) for lo, hi in windows]
    members = []
    name = str(emulator.metadata.get("name", emulator.model_type))
    pixel_error, error_modes = emulator.pixel_error, emulator.error_modes
    for lo, hi in windows:
        inside = (wavelength >= lo) & (wavelength <= hi)
        if inside.sum() < 2:
            raise ValueError(f"window {lo:.2f}-{hi:.2f} A holds {int(inside.sum())} of the emulator's native pixels "
                             f"({_window_text(wavelength)}); a member needs at least 2")
        pixels = wavelength[inside]
        config = {**emulator.config, "reference_wavelength": float(np.round(0.5 * (pixels[0] + pixels[-1])))}
        member_metadata = {**emulator.metadata, "name": f"{name} {pixels[0]:.0f}-{pixels[-1]:.0f}",
                           "window": [float(pixels[0]), float(pixels[-1])]}
        member = emulator.replace(wavelength=pixels, config=config, metadata=member_metadata)
        if pixel_error is not None:
            member = member.with_pixel_error(np.asarray(pixel_error)[inside])
        if error_modes is not None:
            member = member.with_error_modes(np.asarray(error_modes)[:, inside])
        members.append(member)
    if metadata is None:
        metadata = {"name": name, "shared_network": True, "windows": [list(w) for w in windows]}
        for key in ("label_error_floor", "training_split"):
            if key in emulator.metadata:
                metadata[key] = emulator.metadata[key]
    return CompositeEmulator(members, metadata=metadata)
