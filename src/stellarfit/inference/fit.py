"""``fit_star``: the convenient top-level fit of one observed spectrum with an emulator.

Steps (each a library piece that can be used alone):

1. pixels: the spectrum's good pixels (ivar > 0, not masked); the resolution
   from the spectrum (a clear error if unknown); a spectrum sharper than the emulator
   degraded to its native R (:mod:`stellarfit.inference._resolution`);
2. RV search over ``rv_range`` (default +-1000 km/s) with a template at the
   centre of the label box (:func:`~stellarfit.inference.estimate_rv`);
3. a :class:`~stellarfit.inference.FitProblem` around that RV (+-``rv_window``),
   continuum a Legendre polynomial per arm, profiled;  with ``continuum_degree="auto"``
   (default) its degree per arm is then chosen by the evidence at the MAP's labels and the MAP
   re-polished if it changed (:mod:`stellarfit.inference.continuum`, docs/guide/continuum.md);
4. multi-start MAP (:func:`~stellarfit.inference.fit_map`) with its Laplace
   covariance;
5. Cramér-Rao bounds at the MAP, with RV, vsini and the continuum
   coefficients as nuisance parameters;
6. for ``method="nuts"`` (NumPyro) or ``method="blackjax"``: NUTS on the same
   problem with the continuum marginalized analytically, chains started near
   the MAP with a dense mass matrix warm-started from the Laplace covariance
   (:mod:`stellarfit.inference.nuts`); the summary is then the posterior median
   and 16th/84th percentiles.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from stellarfit.forward import check_continuum_degree
from stellarfit.inference.continuum import start_degrees
from stellarfit.inference._model_cache import forward_model_for  # noqa: F401 - re-exported
from stellarfit.inference.likelihood import GaussianPrior
from stellarfit.inference.map import default_starts, fit_map, polish_map, polish_map_batch
from stellarfit.inference._encoder_start import EncoderStart, encoder_starts, resolve_encoder
from stellarfit.inference.settings import NUTS_Z_TRANSFORM, MapSettings, NutsSettings, _DEFAULT, resolve_settings  # noqa: F401 - NUTS_Z_TRANSFORM re-exported
from stellarfit.results.fitfile import FLAGS, FitResult, _finite_or_none, _json_safe  # noqa: F401 - re-exported
# the fit modules' names, importable from here as before the split
from stellarfit.inference._fast_path import (  # noqa: F401
    _FAST_PATH_CACHE,
    EDGE_Z,
    FAST_PATH_POLISH_SPACE,
    INIT_POLISH_STEPS,
    SAMPLE_WITH,
    _FastPath,
    _init_values,
    _mode_search_start,
    _polish_space,
    _resolve_init,
    _resolve_sample_with,
    _start_vector,
    _Surrogate,
    _surrogate_map,
    fast_path_emulator,
    recentred_posterior,
)
from stellarfit.inference._fit_finish import (  # noqa: F401
    _continuum_and_model,
    _finish,
    _full_model_jacobian,
    _gauss_newton_from_jacobian,
    _hold_vsini_near_zero,
)
from stellarfit.inference._fit_prepare import (  # noqa: F401
    _choose_continuum,
    _observed_error_modes,
    _prepare,
    _Prepared,
    _template_continuum,
    _with_emulator_error,
    modelled_pixels,
)

if TYPE_CHECKING:
    from stellarfit.emulators.model_types import FittableEmulator

#: phase timings of fit_stars' batches (INFO): logging.getLogger("stellarfit").setLevel("INFO")
_log = logging.getLogger(__name__)

__all__ = ["FitResult", "MapSettings", "NutsSettings", "fit_star", "fit_stars", "forward_model_for", "modelled_pixels", "recentred_posterior", "FLAGS", "SAMPLE_WITH"]

#: fitting methods of :func:`fit_star`
METHODS = ("map", "nuts", "blackjax")


def fit_star(
    spectrum,
    emulator: FittableEmulator,
    method: str = "map",
    *,
    priors: Mapping[str, GaussianPrior] | None = None,
    rv_range: tuple[float, float] = (-1000.0, 1000.0),
    rv_window: float = 50.0,
    vsini_max: float | str = "auto",
    continuum_degree: int | str = "auto",
    n_starts: int = _DEFAULT.n_starts,
    adam_steps: int = _DEFAULT.adam_steps,
    seed: int = 0,
    num_warmup: int = _DEFAULT.num_warmup,
    num_samples: int = _DEFAULT.num_samples,
    num_chains: int = _DEFAULT.num_chains,
    max_tree_depth: int = _DEFAULT.max_tree_depth,
    target_accept: float = _DEFAULT.target_accept,
    mass_matrix: str = _DEFAULT.mass_matrix,
    chain_method: str = _DEFAULT.chain_method,
    emulator_error: bool = True,
    physics_error: bool = False,
    error_floor: bool = True,
    init=_DEFAULT.init,
    polish_steps: int | None = _DEFAULT.polish_steps,
    sample_with: str = _DEFAULT.sample_with,
    z_transform: str = _DEFAULT.z_transform,
    degrade: bool = True,
    map_settings: MapSettings | None = None,
    nuts_settings: NutsSettings | None = None,
) -> FitResult:
    """Fit one :class:`~stellarfit.spectra.ObservedSpectrum` with an emulator.

    Args:
        spectrum: the observation (vacuum wavelengths, flux, ivar, mask, resolution).
        emulator: a stellarfit emulator (``load_emulator(...)``), any object with the members of
            :class:`~stellarfit.emulators.FittableEmulator`, or a
            :class:`~stellarfit.emulators.composite.CompositeEmulator` (one emulator per wavelength
            window, fitted together with shared labels, RV and vsini; docs/guide/windows.md): its
            observed pixels are split by window, pixels of no window masked and counted, the
            continuum is a polynomial per arm and window, and ``diagnostics["windows"]`` says
            which windows were used.  A composite has no fast path: ``init="fast"`` and
            ``sample_with="fast"`` are refused, ``"auto"`` fits and samples the composite itself,
            and NUTS chains run in this process (no worker processes).
        method: "map" (MAP + Laplace errors), "nuts" (NumPyro NUTS) or "blackjax" (BlackJAX NUTS).
        priors: optional Gaussian priors by parameter name, e.g. ``{"logg": GaussianPrior(4.4, 0.05)}``.
        rv_range: RV search range [km/s].
        rv_window: half-width [km/s] of the RV box around the search result.
        vsini_max: largest vsini [km/s] fitted; 0 holds vsini at 0.  ``"auto"`` (default): 100 km/s,
            or 0 with the flag ``vsini_unresolved`` where the observed LSF's FWHM exceeds 60 km/s
            (R below ~5,000: BOSS, LAMOST LRS, DESI), whose resolution element hides the rotation
            of FGK stars; pass a number to fit it there anyway.
        continuum_degree: Legendre degree of the continuum per arm: "auto" (default: after a
            first MAP with degree 2, the degree 0-8 per arm with the largest evidence of the
            continuum coefficients under a Gaussian prior scaled to the flux level, the MAP
            re-polished with it; ``diagnostics["continuum"]`` holds the choice and the evidence
            table; docs/guide/continuum.md), an integer >= 0 for every arm, or one per arm.
        n_starts, adam_steps, seed: multi-start MAP settings (seed also seeds the sampler).
        num_warmup, num_samples, num_chains: NUTS warm-up and kept draws per chain, number of chains.
        max_tree_depth, target_accept, mass_matrix: NUTS settings (see
            :func:`stellarfit.inference.nuts.sample_numpyro`).
        chain_method: how chains run: "auto" (default: on a multi-core Linux CPU, dealt out to
            worker processes pinned one per core, else one after another; vectorized on an
            accelerator), "processes", "sequential", "vectorized", or (NumPyro only)
            "parallel", one device per chain (see docs/guide/fitting.md, NUTS settings).
        emulator_error: when the emulator records its own per-pixel error
            (``emulator.pixel_error``, shipped emulators do), add it to the noise of
            every pixel, so that errors and posteriors include the emulator's
            imperfection (The Payne's fits do the same with a model-error mask).
            ``crb`` stays the bound from the observational noise alone.
        physics_error: when True and the emulator carries a physics error (``emulator.physics_error``:
            where its physics misses real stars, measured on benchmark stars; shipped emulators
            carry one, see :mod:`stellarfit.emulators.physics_error`), add it to the noise too.
            Off by default: on real stars it has not yet been shown to help
            (docs/validation/real_stars.md).
        error_floor: when the emulator records error floors per label and for
            rv and vsini (``emulator.metadata["label_error_floor"]``, measured by
            injection tests on held-out realistic spectra; see docs/design/errors.md), add
            them in quadrature to each parameter's error and widen lower/upper
            accordingly (vsini's lower end stays >= 0); the error without the
            floor is kept as ``error_statistical``.
        init: where the MAP starts.  ``None``: the multi-start search (RV search, then
            ``n_starts`` starts, Adam and Levenberg-Marquardt from each).  A previous
            :class:`FitResult` (its MAP), a mapping name -> value (labels missing from it start
            at the box centre, a missing rv is searched, a missing vsini starts at 5 km/s) or
            an array in ``labels``, rv, vsini order: Levenberg-Marquardt from that one point,
            no RV search.  ``"fast"``: first fit the spectrum with the emulator's fast path
            (``emulator.metadata["fast_path"]``, a shipped emulator such as ``default-fast``, a
            Payne distilled from the shipped TransformerPayne) by the multi-start search, then
            polish that MAP with ``emulator`` itself (stepping in the boxes' own coordinates,
            ``polish_map(..., space="unit")``; a given start polishes in z) -- a TransformerPayne MAP in about
            10-20 s per star on a CPU instead of ~8 minutes.  ``"auto"`` (default): ``"fast"``
            when the emulator names a fast path, else ``None``.  How the start was found is in
            ``diagnostics["init"]``.
        polish_steps: Levenberg-Marquardt iterations of the MAP (default 50 from the
            multi-start search, at most ``INIT_POLISH_STEPS`` = 20 from an ``init``).
        sample_with: which emulator the NUTS methods sample with.  ``"self"``: ``emulator``.
            ``"fast"``: its fast path (``emulator.metadata["fast_path"]``), re-centred on
            ``emulator``'s MAP: the chains sample the fast path's posterior and every draw is
            moved by the difference of the two MAPs in the unconstrained coordinates, so the
            location is ``emulator``'s and the shape (widths, correlations, skew near box edges)
            the fast path's (:func:`recentred_posterior`; docs/design/fast_path.md).  ``"auto"``
            (default): ``"fast"`` for a TransformerPayne with a fast path, on a CPU or a GPU
            (sampling it takes hours on a CPU, ~3 s per Jacobian, and minutes per star on an
            H200, against ~10 s batched through the fast path), else ``"self"``.  What was done
            is in ``diagnostics["posterior"]``.
        z_transform: the NUTS methods' map from the unconstrained coordinates z to each
            parameter's box: "logit" (default; theta = lower + width sigmoid(z)), "probit"
            (lower + width Phi(z), Phi the standard normal CDF: a parameter the data leave free
            is a standard normal in z, not a logistic) or "probit-labels" (probit for the labels,
            logistic for rv and vsini).  The posterior in theta is the same; the cost of sampling
            it is not (docs/validation/speed.md).  Recorded in
            ``diagnostics["posterior"]``.
        degrade: a spectrum sharper than the emulator (R > ``emulator.native_resolution`` at a
            pixel it reaches) is first degraded to the native R on the emulator's pixels
            (:func:`~stellarfit.spectra.degrade_resolution`; flag
            ``degraded_to_emulator_resolution``, numbers in ``diagnostics["degraded"]``, and the
            result's pixels are the degraded ones); False refuses it, as before (an error).
        map_settings, nuts_settings: the same settings as objects, :class:`MapSettings` (n_starts,
            adam_steps, polish_steps, init) and :class:`NutsSettings` (num_warmup, num_samples,
            num_chains, max_tree_depth, target_accept, mass_matrix, chain_method, sample_with,
            z_transform), to make once and pass to many fits; a setting given both as a keyword and
            in an object is a ValueError.  Bad values fail when the object is made, before any fit.

    Flags: besides the others, ``model_mismatch`` when chi^2 exceeds what the noise and the
    emulator's error allow (:mod:`stellarfit.inference._mismatch`; ``diagnostics["chi2_ratio"]``):
    the errors are then statistical only and too small.

    Returns a :class:`FitResult`; for the NUTS methods ``result.samples`` holds
    the draws and ``result.diagnostics`` R-hat, bulk/tail ESS, divergences,
    tree-depth hits, step sizes and gradient evaluations.
    """
    if method not in METHODS:
        raise ValueError(f"method {method!r} is not available yet; use one of {METHODS}")
    # the individual keywords by name (resolve_settings takes the settings' fields); bad settings fail
    # here, before the (slow) MAP fit
    map_settings, nuts_settings = resolve_settings(map_settings, nuts_settings, locals())
    start_time = time.perf_counter()
    continuum_degree = check_continuum_degree(continuum_degree)
    options = dict(priors=priors, rv_range=rv_range, rv_window=rv_window, vsini_max=vsini_max,
                   continuum_degree=continuum_degree, emulator_error=emulator_error,
                   physics_error=physics_error, degrade=degrade)
    surrogate = _resolve_sample_with(nuts_settings.sample_with, emulator, method)
    init, init_info = _resolve_init(map_settings.init, emulator)
    if isinstance(init, _FastPath):
        first = time.perf_counter()
        # the fast path's own multi-start search, with its default polish
        init = fit_star(spectrum, init.emulator, "map", seed=seed, error_floor=error_floor,
                        map_settings=dataclasses.replace(map_settings, init=None, polish_steps=None), **options)
        init_info.update(elapsed_s=time.perf_counter() - first, reduced_chi2=init.reduced_chi2, flags=init.flags)
    elif isinstance(init, EncoderStart):
        init, init_info = encoder_starts(init, [spectrum], emulator.label_spec)[0]
    start_values = _init_values(init, emulator.label_spec)
    prepared = _prepare(spectrum, emulator, start=start_values,
                        **{**options, "continuum_degree": start_degrees(continuum_degree, init)})
    problem = prepared.problem
    polish_steps = map_settings.polish_steps
    if start_values is None:
        starts = default_starts(problem, map_settings.n_starts, rv=prepared.rv0, seed=seed)
        result = fit_map(problem, starts, adam_steps=map_settings.adam_steps,
                         polish_steps=50 if polish_steps is None else polish_steps)
    elif init_info["source"].startswith("encoder"):  # one informed start, searched as one of the multi-start's
        start = _start_vector(problem, start_values, prepared.rv0)
        init_info["values"] = dict(zip(problem.names, start.tolist()))
        result = fit_map(problem, start[None], adam_steps=map_settings.adam_steps,
                         polish_steps=50 if polish_steps is None else polish_steps)
    else:
        init_info["values"] = dict(zip(problem.names, _start_vector(problem, start_values, prepared.rv0).tolist()))
        init_info["polish_space"] = _polish_space(init_info)
        result = polish_map(problem, _start_vector(problem, start_values, prepared.rv0),
                            max_steps=INIT_POLISH_STEPS if polish_steps is None else polish_steps,
                            space=init_info["polish_space"])
    result = _choose_continuum([prepared], [result], continuum_degree)[0]
    fast_map = None
    if method != "map" and surrogate is not None:
        fast_map = _surrogate_map(spectrum, surrogate, prepared, result.theta, options, nuts_settings.z_transform,
                                  curvature=_finite_curvature(getattr(result, "curvature", None)))
    return _finish(prepared, result, method, emulator, start_time,
                   n_starts=map_settings.n_starts if start_values is None else 1, seed=seed,
                   nuts=None if method == "map" else nuts_settings, surrogate=fast_map, error_floor=error_floor,
                   init_info=init_info)


def fit_stars(
    spectra: Sequence,
    emulator: FittableEmulator,
    *,
    batch_size: int = 32,
    priors: Mapping[str, GaussianPrior] | None = None,
    rv_range: tuple[float, float] = (-1000.0, 1000.0),
    rv_window: float = 50.0,
    vsini_max: float | str = "auto",
    continuum_degree: int | str = "auto",
    n_starts: int = _DEFAULT.n_starts,
    adam_steps: int = _DEFAULT.adam_steps,
    seed: int = 0,
    progress: bool = False,
    errors: str = "raise",
    emulator_error: bool = True,
    physics_error: bool = False,
    error_floor: bool = True,
    method: str = "map",
    num_warmup: int = _DEFAULT.num_warmup,
    num_samples: int = _DEFAULT.num_samples,
    num_chains: int = _DEFAULT.num_chains,
    max_tree_depth: int = _DEFAULT.max_tree_depth,
    target_accept: float = _DEFAULT.target_accept,
    mass_matrix: str = _DEFAULT.mass_matrix,
    init=_DEFAULT.init,
    polish_steps: int | None = _DEFAULT.polish_steps,
    sample_with: str = _DEFAULT.sample_with,
    z_transform: str = _DEFAULT.z_transform,
    degrade: bool = True,
    map_settings: MapSettings | None = None,
    nuts_settings: NutsSettings | None = None,
) -> list:
    """Fits of many spectra, vectorized: spectra on the same pixels (same wavelengths and
    resolution) are fitted ``batch_size`` at a time in one ``vmap``-ed program (all starts of all
    spectra at once), which is what fills a GPU; on a CPU it mainly saves the per-star overheads.

    Arguments as :func:`fit_star`.  ``method="map"`` (default) or ``"nuts"``: with ``"nuts"`` each
    batch is then sampled by :func:`~stellarfit.inference.sample_numpyro_batch` -- all chains of
    all its stars in one program, each star with its own Laplace whitening and each chain with its
    own adaptation, trajectories capped at ``max_tree_depth``; the per-draw leapfrog counts are in
    ``result.sample_stats["n_steps"]``.  On a CPU, batched NUTS is slower than
    ``fit_star(method="nuts")`` one star at a time (docs/guide/fitting.md); it is the GPU path.
    ``errors="raise"`` stops at the first spectrum that cannot be fitted; ``errors="collect"`` puts
    the exception in its place in the returned list and goes on.  ``init``: None, "auto" or
    "fast" as in :func:`fit_star` (the fast path fits all spectra first, batched), or one start
    per spectrum (each None, a FitResult, a mapping or an array).  ``sample_with`` as in
    :func:`fit_star` (with "fast", each batch samples the fast path's posteriors and moves them
    to the emulator's MAPs).  ``map_settings`` and ``nuts_settings`` as in :func:`fit_star`
    (``NutsSettings.chain_method`` is not used: each batch's chains run in one program).  Returns one
    :class:`FitResult` (or exception) per spectrum, in order.
    """
    if method not in ("map", "nuts"):
        raise ValueError(f"fit_stars fits method 'map' or 'nuts' (NumPyro, batched), got {method!r}; "
                         "use fit_star for 'blackjax'")
    map_settings, nuts_settings = resolve_settings(map_settings, nuts_settings, locals())  # as in fit_star
    if errors not in ("raise", "collect"):
        raise ValueError(f"errors must be 'raise' or 'collect', got {errors!r}")
    surrogate = _resolve_sample_with(nuts_settings.sample_with, emulator, method)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    from stellarfit.inference.map import fit_map_batch

    spectra = list(spectra)
    out: list = [None] * len(spectra)
    continuum_degree = check_continuum_degree(continuum_degree)
    options = dict(priors=priors, rv_range=rv_range, rv_window=rv_window, vsini_max=vsini_max,
                   continuum_degree=continuum_degree, emulator_error=emulator_error,
                   physics_error=physics_error, degrade=degrade)
    inits, infos = _batch_inits(map_settings, spectra, emulator, errors=errors, progress=progress,
                                batch_size=batch_size, seed=seed, error_floor=error_floor, **options)
    n_starts, polish_steps = map_settings.n_starts, map_settings.polish_steps
    prepared: dict[int, tuple[_Prepared, float]] = {}
    starts_of: dict[int, dict | None] = {}
    groups: dict[Any, list[int]] = collections.defaultdict(list)
    bar = _progress_bar(len(spectra), "fit", progress)
    label = str((getattr(emulator, "metadata", None) or {}).get("name", type(emulator).__name__))
    for i, spectrum in enumerate(spectra):
        start_time = time.perf_counter()
        try:
            if isinstance(inits[i], Exception):
                raise inits[i]
            starts_of[i] = _init_values(inits[i], emulator.label_spec)
            item = _prepare(spectrum, emulator, start=starts_of[i],
                            **{**options, "continuum_degree": start_degrees(continuum_degree, inits[i])})
        except Exception as error:  # noqa: BLE001 - recorded per spectrum on request
            if errors == "raise":
                raise
            out[i] = error
            bar.update(1)
            continue
        prepared[i] = (item, time.perf_counter() - start_time + infos[i].get("elapsed_s", 0.0))
        kind = "multi-start" if starts_of[i] is None else ("encoder" if infos[i]["source"].startswith("encoder") else "given")
        groups[(jax.tree_util.tree_structure(item.problem), item.problem.design.shape, kind)].append(i)
    for (_, _, kind), indices in groups.items():
        multi_start = kind == "multi-start"
        for first in range(0, len(indices), batch_size):
            chunk = indices[first : first + batch_size]
            start_time = time.perf_counter()
            if multi_start:
                starts = np.stack([default_starts(prepared[i][0].problem, n_starts, rv=prepared[i][0].rv0, seed=seed)
                                   for i in chunk])
                results = fit_map_batch([prepared[i][0].problem for i in chunk], starts, adam_steps=map_settings.adam_steps,
                                        polish_steps=50 if polish_steps is None else polish_steps)
            elif kind == "encoder":
                starts = np.stack([_start_vector(prepared[i][0].problem, starts_of[i], prepared[i][0].rv0)[None]
                                   for i in chunk])
                for i, row in zip(chunk, starts):
                    infos[i]["values"] = dict(zip(prepared[i][0].problem.names, row[0].tolist()))
                results = fit_map_batch([prepared[i][0].problem for i in chunk], starts, adam_steps=map_settings.adam_steps,
                                        polish_steps=50 if polish_steps is None else polish_steps)
            else:
                starts = np.stack([_start_vector(prepared[i][0].problem, starts_of[i], prepared[i][0].rv0)[None]
                                   for i in chunk])
                for i, row in zip(chunk, starts):
                    infos[i]["values"] = dict(zip(prepared[i][0].problem.names, row[0].tolist()))
                steps = INIT_POLISH_STEPS if polish_steps is None else polish_steps
                space = _polish_space(infos[chunk[0]])
                for i in chunk:
                    infos[i]["polish_space"] = space
                if len(chunk) == 1:  # alone: chord iterations (fewer Jacobians), as fit_star's polish
                    results = [polish_map(prepared[chunk[0]][0].problem, starts[0, 0], max_steps=steps, space=space)]
                else:
                    results = polish_map_batch([prepared[i][0].problem for i in chunk], starts[:, 0], max_steps=steps,
                                               space=space)
            _log.info("%s: batch of %d: MAP (%s) %.1f s", label, len(chunk),
                      kind if kind != "given" else "polish", time.perf_counter() - start_time)
            results = _choose_continuum([prepared[i][0] for i in chunk], results, continuum_degree, errors)
            mark = time.perf_counter()
            batch_draws, surrogates = [None] * len(chunk), [None] * len(chunk)
            if method == "nuts":
                # stars whose MAP failed (non-finite) stay out of the batch and are recorded as failed below
                good = [k for k, result in enumerate(results) if np.all(np.isfinite(result.theta))]
                if surrogate is not None:  # the fast path's MAP of each star, to sample its posterior
                    for k in list(good):
                        try:
                            # the polish's last curvature (one Jacobian through the emulator fewer per star)
                            surrogates[k] = _surrogate_map(spectra[chunk[k]], surrogate, prepared[chunk[k]][0],
                                                           results[k].theta, options, nuts_settings.z_transform,
                                                           curvature=_finite_curvature(results[k].curvature))
                        except Exception as error:  # noqa: BLE001 - recorded per spectrum on request
                            if errors == "raise":
                                raise
                            good.remove(k)
                            batch_draws[k] = error
                    _log.info("%s: batch of %d: fast-path MAPs and modes %.1f s", label, len(chunk),
                              time.perf_counter() - mark)
                if good:
                    mark = time.perf_counter()
                    targets = [(surrogates[k].problem, surrogates[k].map.theta, None) if surrogate is not None
                               else (prepared[chunk[k]][0].problem, results[k].theta, results[k].covariance) for k in good]
                    for k, draws in zip(good, _sample_batch(targets, nuts_settings, seed, errors)):
                        batch_draws[k] = draws
                    _log.info("%s: batch of %d: NUTS %.1f s", label, len(good), time.perf_counter() - mark)
                    mark = time.perf_counter()
            share = (time.perf_counter() - start_time) / len(chunk)
            for i, result, draws, fast_map in zip(chunk, results, batch_draws, surrogates):
                try:
                    # elapsed_s: this spectrum's preparation plus its share of the batch
                    begin = time.perf_counter() - prepared[i][1] - share
                    if isinstance(draws, Exception):
                        raise draws
                    if method == "nuts" and draws is None:
                        raise RuntimeError(f"the MAP fit failed (labels {result.theta}), so this spectrum was not sampled")
                    out[i] = _finish(prepared[i][0], result, method, emulator, begin,
                                     n_starts=n_starts if multi_start else 1, seed=seed,
                                     nuts=nuts_settings if method == "nuts" else None, surrogate=fast_map,
                                     error_floor=error_floor, draws=draws, init_info=infos[i])
                except Exception as error:  # noqa: BLE001
                    if errors == "raise":
                        raise
                    out[i] = error
                bar.update(1)
            _log.info("%s: batch of %d: results %.1f s (the batch %.1f s)", label, len(chunk), time.perf_counter() - mark,
                      time.perf_counter() - start_time)
    bar.close()
    return out


def _finite_curvature(array):
    return array if array is not None and np.all(np.isfinite(array)) else None


def _sample_batch(targets, nuts_settings: NutsSettings, seed: int, errors: str) -> list:
    """Batched NUTS of :func:`fit_stars`' chunk: one SamplerResult per (problem, MAP, covariance) target.
    If the batch fails (one star's numerics, say) and errors are collected, each star is sampled on its
    own, so that one star's failure is recorded as its exception and costs the others nothing."""
    from stellarfit.inference.nuts import sample_numpyro_batch

    def run(group):
        return sample_numpyro_batch(
            [problem.with_continuum("marginalize").with_transform(nuts_settings.z_transform) for problem, _, _ in group],
            [theta for _, theta, _ in group], [covariance for _, _, covariance in group], seed=seed,
            **nuts_settings.sampler_options())

    shapes = [problem.design.shape for problem, _, _ in targets]
    if len(set(shapes)) > 1:  # continuum_degree="auto" chose designs of several sizes: one batch per size
        out: list = [None] * len(targets)
        for shape in dict.fromkeys(shapes):
            members = [k for k, other in enumerate(shapes) if other == shape]
            for k, draws in zip(members, _sample_batch([targets[k] for k in members], nuts_settings, seed, errors)):
                out[k] = draws
        return out
    try:
        return run(targets)
    except Exception as error:  # noqa: BLE001 - recorded per spectrum on request
        if errors == "raise":
            raise
        if len(targets) == 1:
            return [error]
    out = []
    for target in targets:
        try:
            out.extend(run([target]))
        except Exception as error:  # noqa: BLE001
            out.append(error)
    return out


#: The batch entry point by the name of the design's API sketch (``sf.fit_batch(spectra, emulator)``):
#: :func:`fit_stars` itself.
fit_batch = fit_stars


def _batch_inits(map_settings: MapSettings, spectra, emulator, *, errors, progress, batch_size, seed, error_floor,
                 **options):
    """Per-spectrum starts for :func:`fit_stars` (None, FitResult, mapping, array, or the exception of a
    failed fast-path fit) and their diagnostics, from ``map_settings.init``."""
    init = map_settings.init
    encoder = resolve_encoder(init, emulator)
    if encoder is not None:  # the encoder's labels per spectrum (batched), multi-start where it cannot read one
        pairs = encoder_starts(encoder, spectra, emulator.label_spec)
        return [values for values, _ in pairs], [item for _, item in pairs]
    if init is None or isinstance(init, str):
        resolved, info = _resolve_init(init, emulator)
        if not isinstance(resolved, _FastPath):
            return [None] * len(spectra), [dict(info) for _ in spectra]
        first = time.perf_counter()
        # the fast path's own multi-start search, with its default polish
        inits = fit_stars(spectra, resolved.emulator, batch_size=batch_size, seed=seed, progress=progress, errors=errors,
                          error_floor=error_floor, map_settings=dataclasses.replace(map_settings, init=None, polish_steps=None),
                          **options)
        share = (time.perf_counter() - first) / max(len(spectra), 1)
        infos = []
        for fast in inits:
            item = dict(info, elapsed_s=share)
            if not isinstance(fast, Exception):
                item.update(reduced_chi2=fast.reduced_chi2, flags=fast.flags)
            infos.append(item)
        return inits, infos
    if isinstance(init, (np.ndarray, FitResult, Mapping)) or len(init) != len(spectra):
        raise ValueError(f"fit_stars: init must be None, 'auto', 'fast', 'encoder', an Encoder or one start per spectrum "
                         f"({len(spectra)})")
    return list(init), [{"source": "multi-start" if item is None else "given"} for item in init]


def _progress_bar(total: int, description: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit="spec", disable=not enabled)
