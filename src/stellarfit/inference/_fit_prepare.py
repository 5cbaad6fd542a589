"""A spectrum made ready to fit: its modelled pixels, the resolution, the RV search, the continuum and
the error terms, and the :class:`~stellarfit.inference.FitProblem` around them."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from stellarfit.forward import AUTO_DEGREE, continuum_design_matrix
from stellarfit.inference._resolution import degrade_for_emulator
from stellarfit.inference.continuum import choose_continuum, fixed_info, start_degrees
from stellarfit.inference._model_cache import forward_model_for
from stellarfit.inference._composite import (composite_error_terms, continuum_segments, is_composite, segment_degrees,
                                             windows_report)
from stellarfit.inference.likelihood import FitProblem
from stellarfit.inference.map import box_centre, estimate_rv


@dataclasses.dataclass
class _Prepared:
    spectrum: Any
    problem: FitProblem
    rv0: float
    wavelength: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray
    physics_error: dict | None = None  # what PhysicsError.describe() says of the one in the noise, if any
    degraded: dict | None = None  # degrade_for_emulator's record, when the spectrum was degraded
    arms: np.ndarray | None = None
    degree: Any = 2  # the design's continuum degree: an int for every arm or a tuple per arm
    continuum: dict | None = None  # diagnostics["continuum"]
    windows: dict | None = None  # a composite emulator's windows used (stellarfit.inference._composite.windows_report)
    vsini_unresolved: bool = False  # vsini held at 0: the instrument's resolution element is far wider


#: vsini_max="auto" fits vsini in [0, AUTO_VSINI_MAX] km/s, or holds it at 0 where the observed LSF's
#: FWHM (c / R, median over pixels) exceeds UNRESOLVED_LSF_FWHM km/s (R below ~5,000: BOSS, LAMOST LRS,
#: DESI): there rotation of FGK stars is far below the resolution element, is not constrained, and
#: would trade against the LSF and the labels (seen: BOSS-like fits sliding to the box edge)
AUTO_VSINI_MAX = 100.0
UNRESOLVED_LSF_FWHM = 60.0


def resolve_vsini_max(vsini_max, resolution) -> tuple[float, bool]:
    """(the vsini box's upper end [km/s], whether vsini is held at 0 as unresolved) for ``vsini_max``."""
    if isinstance(vsini_max, str):
        if vsini_max != "auto":
            raise ValueError(f"vsini_max must be a number of km/s or 'auto', got {vsini_max!r}")
        fwhm = 299_792.458 / float(np.median(np.asarray(resolution, dtype=np.float64)))
        return (0.0, True) if fwhm > UNRESOLVED_LSF_FWHM else (AUTO_VSINI_MAX, False)
    value = float(vsini_max)
    if not value >= 0.0:
        raise ValueError(f"vsini_max must be >= 0 km/s (0 holds vsini at 0), got {vsini_max!r}")
    return value, False


def _choose_continuum(items: list[_Prepared], results: list, continuum_degree, errors: str = "raise") -> list:
    """For ``continuum_degree="auto"``: each item's problem, degree and ``continuum`` diagnostics set to
    the evidence's choice at its MAP, and the MAPs (re-polished where the degree changed); otherwise
    ``results`` as they are (:func:`~stellarfit.inference.continuum.choose_continuum`).  With
    ``errors="collect"`` a batch whose choice fails is redone item by item, and an item whose choice
    fails keeps its first MAP and degree (said in its diagnostics)."""
    if continuum_degree != AUTO_DEGREE:
        return results
    try:
        problems, results, infos = choose_continuum([item.problem for item in items], results,
                                                    [item.wavelength for item in items], [item.arms for item in items],
                                                    [item.degree for item in items])
    except Exception as error:  # noqa: BLE001 - recorded per spectrum on request
        if errors == "raise":
            raise
        if len(items) > 1:
            return [_choose_continuum([item], [result], continuum_degree, errors)[0] for item, result in zip(items, results)]
        items[0].continuum = {**fixed_info(items[0].degree), "chosen_by": f"fixed (the evidence's choice failed: {error})"}
        return results
    for item, problem, info in zip(items, problems, infos):
        item.problem, item.continuum = problem, info
        if "degrees" in info:
            item.degree = tuple(info["degrees"]) if len(info["degrees"]) > 1 else int(info["degrees"][0])
    return results


def modelled_pixels(spectrum, emulator, rv_range: tuple[float, float] = (-1000.0, 1000.0)):
    """``spectrum`` cut to the pixels the emulator can reach at some RV in ``rv_range``:
    rest wavelengths inside the emulator's native range (the rest carry no information for it).

    What ``fit_star`` and ``fit_stars`` fit, and what their FitResult holds.  Spectra on one
    wavelength lattice with different first and last pixels (BOSS coadds, LAMOST: log10 steps
    of 1e-4 from per-spectrum starts) become the same pixels after the cut, so they share one
    forward model and its compiled programs (docs/design/forward_model.md, "Spectra on one wavelength
    lattice").  A spectrum with fewer than two such pixels is returned whole, for the forward
    model to report it as outside the emulator.
    """
    if not hasattr(spectrum, "select"):
        return spectrum
    from stellarfit.forward import doppler_factor

    native = np.asarray(emulator.wavelength, dtype=np.float64)
    rv_min, rv_max = (float(v) for v in rv_range)
    lower = native[0] * float(doppler_factor(rv_min)) * (1.0 - 1e-9)
    upper = native[-1] * float(doppler_factor(rv_max)) * (1.0 + 1e-9)
    wavelength = np.asarray(spectrum.wavelength, dtype=np.float64)
    keep = (wavelength >= lower) & (wavelength <= upper)
    if keep.all() or keep.sum() < 2:
        return spectrum
    return spectrum.select(lower, upper)


def _prepare(spectrum, emulator, *, priors, rv_range, rv_window, vsini_max, continuum_degree, emulator_error=True,
             physics_error=False, degrade=True, start: dict[str, float] | None = None) -> _Prepared:
    """Pixels (degraded to the emulator's R when sharper and ``degrade``), continuum design, RV search
    and the FitProblem of one spectrum.

    ``start`` (name -> value, from ``init``): its rv replaces the RV search and its labels the
    box-centre template that puts the emulator's error into flux units."""
    n_before = _n_good(spectrum)
    spectrum = modelled_pixels(spectrum, emulator, rv_range)
    n_cut = n_before - _n_good(spectrum)
    spectrum, degraded = degrade_for_emulator(spectrum, emulator) if degrade else (spectrum, None)
    resolution = spectrum.require_resolution() if hasattr(spectrum, "require_resolution") else spectrum.resolution
    vsini_max, vsini_unresolved = resolve_vsini_max(vsini_max, resolution)
    wavelength = np.asarray(spectrum.wavelength, dtype=np.float64)
    good = ~np.asarray(spectrum.mask) & (np.asarray(spectrum.ivar) > 0)
    ivar = np.where(good, spectrum.ivar, 0.0)
    flux = np.where(good, spectrum.flux, 0.0)
    arms = np.asarray(getattr(spectrum, "arm", np.zeros(wavelength.size, dtype=int)))
    degree = start_degrees(continuum_degree)
    spec = emulator.label_spec
    centre = box_centre(spec)
    # one forward model over the whole RV range (cached per pixel grid): the fit's RV box around
    # the search result is data of the FitProblem, so nothing recompiles from star to star
    model = forward_model_for(emulator, wavelength, resolution, rv_range=tuple(rv_range), vsini_max=vsini_max)
    composite = is_composite(emulator)
    if composite:  # one emulator per window: a continuum per arm and window (stellarfit.inference._composite)
        segments = continuum_segments(model, arms)
        degree, arms = segment_degrees(degree, arms, segments), segments
    design = continuum_design_matrix(wavelength, arms, list(degree) if isinstance(degree, tuple) else degree)
    if start is not None:
        centre = np.clip([start.get(name, centre[i]) for i, name in enumerate(spec.names)], spec.lower, spec.upper)
    if start is not None and "rv" in start:
        if not model.rv_range[0] <= start["rv"] <= model.rv_range[1]:
            raise ValueError(f"init rv {start['rv']:g} km/s is outside rv_range {tuple(rv_range)}")
        rv0 = start["rv"]
    else:
        rv0, _, _ = estimate_rv(model, centre, flux, ivar, design)
    low = max(rv0 - rv_window, model.rv_range[0])
    high = min(rv0 + rv_window, model.rv_range[1])
    fit_ivar, error_basis = ivar, None
    pixel_error = getattr(emulator, "pixel_error", None) if emulator_error else None
    error_modes = getattr(emulator, "error_modes", None) if emulator_error else None
    physics = getattr(emulator, "physics_error", None) if physics_error else None
    physics_info = None if physics is None else physics.describe()
    if composite and (emulator_error or physics_error):  # each window's own error terms on its pixels
        fit_ivar, error_basis, physics_info = composite_error_terms(
            model, emulator, rv0, ivar, lambda: _template_continuum(model, centre, rv0, flux, ivar, design),
            emulator_error=emulator_error, physics_error=physics_error, with_emulator_error=_with_emulator_error,
            observed_error_modes=_observed_error_modes)
    elif pixel_error is not None or error_modes is not None or physics is not None:
        template_continuum = _template_continuum(model, centre, rv0, flux, ivar, design)
        if pixel_error is not None or physics is not None:
            fit_ivar = _with_emulator_error(model, emulator, rv0, ivar, pixel_error, template_continuum, physics)
        if error_modes is not None:
            error_basis = _observed_error_modes(model, error_modes, rv0, template_continuum)
    problem = FitProblem(model, spec, flux, fit_ivar, design, priors=priors, vsini_max=vsini_max, rv_range=(low, high),
                         error_basis=error_basis)
    return _Prepared(spectrum, problem, float(rv0), wavelength, flux, np.where(np.asarray(problem.ivar) > 0, ivar, 0.0),
                     physics_info, degraded, arms=arms, degree=degree, continuum=fixed_info(degree),
                     windows=windows_report(model, problem.ivar, ivar, n_cut) if composite else None,
                     vsini_unresolved=vsini_unresolved)


def _n_good(spectrum) -> int:
    """Good pixels (ivar > 0, not masked) of an ObservedSpectrum (0 for anything else)."""
    if not hasattr(spectrum, "ivar") or not hasattr(spectrum, "mask"):
        return 0
    return int(np.sum(~np.asarray(spectrum.mask) & (np.asarray(spectrum.ivar) > 0)))


def _template_continuum(model, template_labels, rv, flux, ivar, design) -> np.ndarray:
    """The continuum (n_obs,) of the RV-search template fit (a few per cent off at most: enough
    to put the emulator's error, a fraction of normalized flux, into flux units)."""
    from stellarfit.forward import profile_continuum

    template = model(jnp.asarray(template_labels, jnp.float32), rv, 0.0)
    good = np.where(model.covered, ivar, 0.0)
    _, continuum, _, _ = profile_continuum(template, jnp.asarray(flux, jnp.float32), jnp.asarray(good, jnp.float32),
                                           jnp.asarray(design, jnp.float32))
    return np.asarray(continuum, np.float64)


def _with_emulator_error(model, emulator, rv, ivar, pixel_error, continuum, physics=None) -> np.ndarray:
    """ivar with the emulator's own error and the physics error added to the noise:
    1 / (1/ivar + C^2 (sigma_emu^2 + sigma_phys^2)).

    sigma_emu is the emulator's per-pixel error (normalized flux; None: 0) and sigma_phys the
    physics error (:class:`~stellarfit.emulators.physics_error.PhysicsError`; None: 0), moved to
    the observed frame at the RV-search velocity; C is the template continuum (:func:`_template_continuum`).
    """
    from stellarfit.forward import doppler_factor

    rest = model.observed_wavelength / float(doppler_factor(rv))
    variance = np.zeros(rest.shape)
    if pixel_error is not None:
        variance += np.interp(rest, emulator.wavelength, np.asarray(pixel_error, np.float64)) ** 2
    if physics is not None:
        variance += physics.at(rest) ** 2
    variance *= continuum**2
    with np.errstate(divide="ignore"):
        return np.where(ivar > 0, 1.0 / (1.0 / np.where(ivar > 0, ivar, 1.0) + variance), 0.0)


def _observed_error_modes(model, error_modes, rv, continuum) -> np.ndarray:
    """The emulator's error modes (n_modes, n_native) seen through the observation: broadened by
    the instrument (no rotation), shifted to the RV-search velocity, resampled to the observed
    pixels and multiplied by the template continuum; (n_obs, n_modes)."""
    native = jnp.asarray(np.asarray(error_modes, np.float32)[:, model.native_slice])
    observed = jax.vmap(lambda mode: model.shift_to_observed(model.broaden(mode, 0.0), rv))(native)
    return (np.asarray(observed, np.float64) * continuum[None, :]).T
