"""Fits with a :class:`~stellarfit.emulators.composite.CompositeEmulator` (one emulator per window).

What a composite changes in a fit, each a function here that the single-emulator code calls at
one marked place:

- the forward model (:func:`composite_forward_model_for`, through
  :func:`~stellarfit.inference.forward_model_for`): the observed pixels are split by window, each
  member gets its own cached :class:`~stellarfit.forward.ForwardModel` on its pixels (with their
  per-pixel resolution), and a :class:`~stellarfit.forward.CompositeForwardModel` joins them;
  pixels of no window are left out (masked) and counted; a spectrum with no pixel in any window
  raises :class:`~stellarfit.forward.ObservationOutsideEmulatorError`;
- the continuum (:func:`continuum_segments`): a polynomial per arm *and* window -- one
  polynomial across a gap of hundreds of Angstrom between windows would have to bend through
  pixels it never sees; a degree given per arm applies to each window of that arm;
- the error terms (:func:`composite_error_terms`): each member's own pixel error, error modes and
  physics error, on its pixels;
- the report (:func:`windows_report`): ``FitResult.diagnostics["windows"]``.
"""

from __future__ import annotations

import collections
import hashlib

import numpy as np

from stellarfit.forward import CompositeForwardModel, ObservationOutsideEmulatorError, doppler_factor

__all__ = ["is_composite", "composite_forward_model_for", "continuum_segments", "composite_error_terms", "windows_report"]

#: (composite, pixels, resolution, options) -> its forward model; (composite, members' shared models,
#: indices) -> the composite whose programs those share (varying LSFs on the anchor ladder)
_CACHE: "collections.OrderedDict[tuple, tuple]" = collections.OrderedDict()
_SHARED: "collections.OrderedDict[tuple, tuple]" = collections.OrderedDict()
_CACHE_SIZE = 16


def is_composite(emulator) -> bool:
    """True for a :class:`~stellarfit.emulators.composite.CompositeEmulator` (told by its ``model_type``,
    so that this module does not import the emulators, Flax and all)."""
    return getattr(emulator, "model_type", None) == "composite" and hasattr(emulator, "members")


def _digest(array) -> str:
    return hashlib.sha1(np.ascontiguousarray(array).tobytes()).hexdigest()


def _remember(cache, key, value) -> None:
    cache[key] = value
    while len(cache) > _CACHE_SIZE:
        cache.popitem(last=False)


def assign_pixels(composite, wavelength: np.ndarray, rv_range: tuple[float, float]) -> np.ndarray:
    """(n,) int: the member each observed pixel belongs to, -1 for none.  A pixel belongs to the
    window that holds its rest wavelength at the middle of ``rv_range``, else to the nearest
    window (in ln lambda) it can reach at some RV in ``rv_range``."""
    wavelength = np.asarray(wavelength, dtype=np.float64)
    rv_min, rv_max = (float(v) for v in rv_range)
    index = composite.member_of(wavelength, 0.5 * (rv_min + rv_max))
    loose = np.flatnonzero(index < 0)
    if loose.size:
        log_rest = np.log(wavelength[loose] / float(doppler_factor(0.5 * (rv_min + rv_max))))
        reach = np.log(float(doppler_factor(rv_max)) / float(doppler_factor(rv_min)))
        distance = np.stack([np.maximum(np.log(lo) - log_rest, 0) + np.maximum(log_rest - np.log(hi), 0)
                             for lo, hi in composite.windows])  # (n_members, n_loose)
        nearest = np.argmin(distance, axis=0)
        reachable = distance[nearest, np.arange(loose.size)] <= reach
        index[loose[reachable]] = nearest[reachable]
    return index


def composite_forward_model_for(composite, wavelength: np.ndarray, resolution, *, member_model_for, **options):
    """The :class:`~stellarfit.forward.CompositeForwardModel` of ``composite`` for the observed
    pixels ``wavelength`` (n,) at ``resolution`` (scalar or (n,)), cached like the single models.

    ``member_model_for(emulator, wavelength, resolution, **options)`` makes each member's model
    (:func:`~stellarfit.inference.forward_model_for`).  A member whose pixels it cannot model at
    all (none covered for every RV in ``rv_range``) is left out, its pixels masked; when no
    member is left, ObservationOutsideEmulatorError says which windows the spectrum misses."""
    wavelength = np.ascontiguousarray(wavelength, dtype=np.float64)
    per_pixel = np.ndim(resolution) > 0 and np.size(resolution) > 1
    if resolution is None:
        raise ObservationOutsideEmulatorError(
            "the observation's resolving power is unknown: give it (e.g. --resolution R or resolution= in Python)")
    key = (id(composite), _digest(wavelength), _digest(np.asarray(resolution, dtype=np.float64)),
           tuple(sorted((k, repr(v)) for k, v in options.items())))
    cached = _CACHE.get(key)
    if cached is not None and cached[0] is composite:
        _CACHE.move_to_end(key)
        return cached[1]
    rv_range = tuple(options.get("rv_range", (-1000.0, 1000.0)))
    assignment = assign_pixels(composite, wavelength, rv_range)
    members, indices, windows = [], [], []
    for i, (member, window) in enumerate(zip(composite.members, composite.windows)):
        index = np.flatnonzero(assignment == i)
        if index.size < 2:
            continue
        member_resolution = np.asarray(resolution, dtype=np.float64)[index] if per_pixel else resolution
        try:
            model = member_model_for(member, wavelength[index], member_resolution, **options)
        except ObservationOutsideEmulatorError as error:
            # ForwardModel's "no observed pixel lies inside the emulator's coverage": this window's pixels
            # sit at its edges, where no full kernel fits; anything else (resolution) is the user's to fix
            if "no observed pixel" not in str(error):
                raise
            continue
        members.append(model)
        indices.append(index)
        windows.append(window)
    if not members:
        raise ObservationOutsideEmulatorError(
            f"no observed pixel ({wavelength.min():.1f}-{wavelength.max():.1f} A) lies inside any window of the composite "
            f"emulator ({', '.join(f'{lo:.1f}-{hi:.1f} A' for lo, hi in composite.windows)}, vacuum, rest frame) for "
            f"radial velocities {rv_range[0]:g}..{rv_range[1]:g} km/s; use emulators that cover these wavelengths")
    model = CompositeForwardModel(members, indices, wavelength, windows)
    # spectra on these pixels whose members share programs (the anchor ladder) share the composite's too
    shared_key = (id(composite), tuple(id(m.shared) for m in members), tuple(_digest(ix) for ix in indices), wavelength.size)
    shared = _SHARED.get(shared_key)
    if shared is not None and shared[0] is composite:
        model.shared = shared[1]
    else:
        _remember(_SHARED, shared_key, (composite, model))
    _remember(_CACHE, key, (composite, model))
    return model


def continuum_segments(model, arms: np.ndarray) -> np.ndarray:
    """(n_obs,) int ids 0, 1, ... of (arm, window) segments, in pixel order of first appearance:
    what the continuum design takes as arms.  Pixels of no window join the segment of the nearest
    pixel of their arm that has one (they are masked; this keeps every segment fitted)."""
    arms = np.asarray(arms, dtype=np.int64)
    member = np.asarray(model.member_index, dtype=np.int64).copy()
    for arm in np.unique(arms):
        pick = np.flatnonzero(arms == arm)
        known = pick[member[pick] >= 0]
        if known.size == 0:
            known = np.flatnonzero(member >= 0)
        unknown = pick[member[pick] < 0]
        if unknown.size:
            nearest = known[np.argmin(np.abs(unknown[:, None] - known[None, :]), axis=1)]
            member[unknown] = member[nearest]
    pairs = arms * (int(member.max()) + 1) + member
    _, first, inverse = np.unique(pairs, return_index=True, return_inverse=True)
    rank = np.empty(first.size, dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)
    return rank[inverse.reshape(-1)]


def segment_degrees(degree, arms: np.ndarray, segments: np.ndarray):
    """A continuum degree per arm (a tuple) -> one per segment (each window of an arm takes the
    arm's); an integer stays as it is."""
    if not isinstance(degree, tuple):
        return degree
    arm_ids = np.unique(arms)
    if len(degree) != arm_ids.size:
        return degree  # already one per segment (a FitResult's choice used as init), or wrong: the design says
    arm_of_segment = [int(arms[np.flatnonzero(segments == s)[0]]) for s in range(int(segments.max()) + 1)]
    return tuple(int(degree[int(np.flatnonzero(arm_ids == a)[0])]) for a in arm_of_segment)


def composite_error_terms(model, composite, rv, ivar, continuum, *, emulator_error: bool, physics_error: bool,
                          with_emulator_error, observed_error_modes):
    """(fit ivar (n_obs,), error basis (n_obs, K) or None, physics-error description or None): each
    member's own pixel error, physics error and error modes on its pixels, put into flux units by
    ``continuum()`` ((n_obs,), the template continuum; called only when a member has any) (the single-emulator
    helpers ``with_emulator_error`` and ``observed_error_modes`` of
    :mod:`stellarfit.inference._fit_prepare`, applied per member)."""
    ivar = np.asarray(ivar, dtype=np.float64)
    fit_ivar = ivar.copy()
    blocks, described = [], []
    emulators = _member_emulators(model, composite)
    template = None
    for member_model, index, emulator in zip(model.members, model.indices, emulators):
        pixel_error = getattr(emulator, "pixel_error", None) if emulator_error else None
        error_modes = getattr(emulator, "error_modes", None) if emulator_error else None
        physics = getattr(emulator, "physics_error", None) if physics_error else None
        described.append(None if physics is None else physics.describe())
        if template is None and (pixel_error is not None or error_modes is not None or physics is not None):
            template = np.asarray(continuum(), dtype=np.float64)
        if pixel_error is not None or physics is not None:
            fit_ivar[index] = with_emulator_error(member_model, emulator, rv, ivar[index], pixel_error, template[index],
                                                  physics)
        if error_modes is not None:
            blocks.append((index, observed_error_modes(member_model, error_modes, rv, template[index])))
    basis = None
    if blocks:
        basis = np.zeros((ivar.size, sum(block.shape[1] for _, block in blocks)))
        column = 0
        for index, block in blocks:
            basis[index, column : column + block.shape[1]] = block
            column += block.shape[1]
    physics_info = {"windows": described} if any(d is not None for d in described) else None
    return fit_ivar, basis, physics_info


def _member_emulators(model, composite) -> list:
    """The composite's member emulator behind each of ``model``'s member models."""
    out = []
    for window in model.windows:
        out.append(composite.members[composite.windows.index(window)])
    return out


def windows_report(model, fit_ivar, ivar, n_cut: int = 0) -> dict:
    """``FitResult.diagnostics["windows"]``: per used window (``used``) its range [A] and fitted
    pixels; ``n_pixels_outside``: the good observed pixels that no window models -- those between
    or at the edges of the windows (kept in the result, masked in the fit) plus ``n_cut``, those
    beyond all windows (left out of the fitted spectrum, :func:`~stellarfit.inference.modelled_pixels`)."""
    fit_ivar = np.asarray(fit_ivar)
    good = np.asarray(ivar) > 0
    used = model.describe_windows(fit_ivar)
    return {"used": used, "n_pixels_outside": int(np.sum(good & ~(fit_ivar > 0))) + int(n_cut)}

