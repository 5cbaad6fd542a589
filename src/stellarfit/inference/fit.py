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
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from stellarfit.forward import AUTO_DEGREE, check_continuum_degree, continuum_design_matrix
from stellarfit.inference._mismatch import chi2_mismatch
from stellarfit.inference._resolution import degrade_for_emulator
from stellarfit.inference.continuum import choose_continuum, fixed_info, start_degrees
from stellarfit.inference.fisher import cramer_rao_from_fisher
from stellarfit.inference._model_cache import forward_model_for
from stellarfit.inference.likelihood import FitProblem, GaussianPrior
from stellarfit.inference.map import (
    box_centre,
    covariance_is_proper,
    default_starts,
    estimate_rv,
    fit_map,
    gauss_newton_covariance,
    polish_map,
    polish_map_batch,
)
from stellarfit.results.fitfile import FLAGS, FitResult, _finite_or_none, _json_safe  # noqa: F401 - re-exported

#: phase timings of fit_stars' batches (INFO): logging.getLogger("stellarfit").setLevel("INFO")
_log = logging.getLogger(__name__)

__all__ = ["FitResult", "fit_star", "fit_stars", "forward_model_for", "modelled_pixels", "recentred_posterior", "FLAGS", "SAMPLE_WITH"]

#: fitting methods of :func:`fit_star`
METHODS = ("map", "nuts", "blackjax")
#: which emulator NUTS samples with (:func:`fit_star`'s ``sample_with``)
SAMPLE_WITH = ("auto", "self", "fast")
#: the NUTS methods' default map from z to the boxes (fit_star's z_transform; FitProblem.with_transform)
NUTS_Z_TRANSFORM = "logit"


def _check_z_transform(z_transform: str) -> None:
    from stellarfit.inference.likelihood import TRANSFORMS

    if z_transform not in TRANSFORMS:
        raise ValueError(f"z_transform must be one of {TRANSFORMS}, got {z_transform!r}")


@jax.jit
def _continuum_and_model(problem: FitProblem, theta):
    coefficients, continuum, _, _ = problem.continuum_fit(theta)
    return coefficients, continuum * problem.model_normalized(theta)


@jax.jit
def _full_model_jacobian(problem: FitProblem, parameters):
    """d(model flux)/d(theta, continuum coefficients), (n_obs, p + k).

    The continuum multiplies the normalized model, so its columns are the design times the model
    and only theta's p tangents go through the emulator (not p + k, of which k would be zeros)."""
    n_theta = problem.n_parameters
    theta, coefficients = parameters[:n_theta], parameters[n_theta:]
    model, tangents = jax.vmap(lambda v: jax.jvp(problem.model_normalized, (theta,), (v,)), out_axes=(None, 1))(
        jnp.eye(n_theta, dtype=theta.dtype))
    continuum = problem.design @ coefficients
    return jnp.concatenate([continuum[:, None] * tangents, problem.design * model[:, None]], axis=1)


def fit_star(
    spectrum,
    emulator,
    method: str = "map",
    *,
    priors: Mapping[str, GaussianPrior] | None = None,
    rv_range: tuple[float, float] = (-1000.0, 1000.0),
    rv_window: float = 50.0,
    vsini_max: float = 100.0,
    continuum_degree: int | str = "auto",
    n_starts: int = 8,
    adam_steps: int = 150,
    seed: int = 0,
    num_warmup: int = 500,
    num_samples: int = 500,
    num_chains: int = 4,
    max_tree_depth: int = 8,
    target_accept: float = 0.8,
    mass_matrix: str = "laplace-pooled",
    chain_method: str = "auto",
    emulator_error: bool = True,
    physics_error: bool = False,
    error_floor: bool = True,
    init="auto",
    polish_steps: int | None = None,
    sample_with: str = "auto",
    z_transform: str = NUTS_Z_TRANSFORM,
    degrade: bool = True,
) -> FitResult:
    """Fit one :class:`~stellarfit.spectra.ObservedSpectrum` with an emulator.

    Args:
        spectrum: the observation (vacuum wavelengths, flux, ivar, mask, resolution).
        emulator: a stellarfit emulator (``load_emulator(...)``).
        method: "map" (MAP + Laplace errors), "nuts" (NumPyro NUTS) or "blackjax" (BlackJAX NUTS).
        priors: optional Gaussian priors by parameter name, e.g. ``{"logg": GaussianPrior(4.4, 0.05)}``.
        rv_range: RV search range [km/s].
        rv_window: half-width [km/s] of the RV box around the search result.
        vsini_max: largest vsini [km/s] fitted.
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
            "parallel", one device per chain (see docs/fitting.md, NUTS settings).
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
            injection tests on held-out realistic spectra; see docs/fitting.md), add
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
            the fast path's (:func:`recentred_posterior`; docs/fitting.md).  ``"auto"``
            (default): ``"fast"`` for a TransformerPayne with a fast path, on a CPU or a GPU
            (sampling it takes hours on a CPU, ~3 s per Jacobian, and minutes per star on an
            H200, against ~10 s batched through the fast path), else ``"self"``.  What was done
            is in ``diagnostics["posterior"]``.
        z_transform: the NUTS methods' map from the unconstrained coordinates z to each
            parameter's box: "logit" (default; theta = lower + width sigmoid(z)), "probit"
            (lower + width Phi(z), Phi the standard normal CDF: a parameter the data leave free
            is a standard normal in z, not a logistic) or "probit-labels" (probit for the labels,
            logistic for rv and vsini).  The posterior in theta is the same; the cost of sampling
            it is not (docs/fitting.md, NUTS posteriors on held-out stars).  Recorded in
            ``diagnostics["posterior"]``.
        degrade: a spectrum sharper than the emulator (R > ``emulator.native_resolution`` at a
            pixel it reaches) is first degraded to the native R on the emulator's pixels
            (:func:`~stellarfit.spectra.degrade_resolution`; flag
            ``degraded_to_emulator_resolution``, numbers in ``diagnostics["degraded"]``, and the
            result's pixels are the degraded ones); False refuses it, as before (an error).

    Flags: besides the others, ``model_mismatch`` when chi^2 exceeds what the noise and the
    emulator's error allow (:mod:`stellarfit.inference._mismatch`; ``diagnostics["chi2_ratio"]``):
    the errors are then statistical only and too small.

    Returns a :class:`FitResult`; for the NUTS methods ``result.samples`` holds
    the draws and ``result.diagnostics`` R-hat, bulk/tail ESS, divergences,
    tree-depth hits, step sizes and gradient evaluations.
    """
    if method not in METHODS:
        raise ValueError(f"method {method!r} is not available yet; use one of {METHODS}")
    if method != "map":
        from stellarfit.inference.nuts import check_sampler_settings

        # fail on bad sampler settings before the (slow) MAP fit
        check_sampler_settings(None, num_warmup, num_samples, num_chains, max_tree_depth, target_accept, mass_matrix,
                               chain_method=chain_method)
        _check_z_transform(z_transform)
    start_time = time.perf_counter()
    continuum_degree = check_continuum_degree(continuum_degree)
    options = dict(priors=priors, rv_range=rv_range, rv_window=rv_window, vsini_max=vsini_max,
                   continuum_degree=continuum_degree, emulator_error=emulator_error,
                   physics_error=physics_error, degrade=degrade)
    surrogate = _resolve_sample_with(sample_with, emulator, method)
    init, init_info = _resolve_init(init, emulator)
    if isinstance(init, _FastPath):
        first = time.perf_counter()
        init = fit_star(spectrum, init.emulator, "map", n_starts=n_starts, adam_steps=adam_steps, seed=seed,
                        error_floor=error_floor, init=None, **options)
        init_info.update(elapsed_s=time.perf_counter() - first, reduced_chi2=init.reduced_chi2, flags=init.flags)
    start_values = _init_values(init, emulator.label_spec)
    prepared = _prepare(spectrum, emulator, start=start_values,
                        **{**options, "continuum_degree": start_degrees(continuum_degree, init)})
    problem = prepared.problem
    if start_values is None:
        starts = default_starts(problem, n_starts, rv=prepared.rv0, seed=seed)
        result = fit_map(problem, starts, adam_steps=adam_steps, polish_steps=50 if polish_steps is None else polish_steps)
    else:
        init_info["values"] = dict(zip(problem.names, _start_vector(problem, start_values, prepared.rv0).tolist()))
        init_info["polish_space"] = _polish_space(init_info)
        result = polish_map(problem, _start_vector(problem, start_values, prepared.rv0),
                            max_steps=INIT_POLISH_STEPS if polish_steps is None else polish_steps,
                            space=init_info["polish_space"])
    result = _choose_continuum([prepared], [result], continuum_degree)[0]
    sampling = None
    if method != "map":
        sampling = dict(num_warmup=num_warmup, num_samples=num_samples, num_chains=num_chains, seed=seed,
                        max_tree_depth=max_tree_depth, target_accept=target_accept, mass_matrix=mass_matrix,
                        chain_method=chain_method, z_transform=z_transform)
        if surrogate is not None:
            sampling["surrogate"] = _surrogate_map(spectrum, surrogate, prepared, result.theta, options, z_transform,
                                                   curvature=_finite_curvature(getattr(result, "curvature", None)))
    return _finish(prepared, result, method, emulator, start_time, n_starts=n_starts if start_values is None else 1,
                   seed=seed, sampling=sampling, error_floor=error_floor, init_info=init_info)


def _resolve_sample_with(sample_with: str, emulator, method: str):
    """sample_with -> the fast path (_FastPath) to sample with, or None for the emulator itself."""
    if sample_with not in SAMPLE_WITH:
        raise ValueError(f"sample_with must be one of {SAMPLE_WITH}, got {sample_with!r}")
    if method == "map" or sample_with == "self":
        return None
    fast = fast_path_emulator(emulator)
    if sample_with == "fast":
        if fast is None:
            raise ValueError("sample_with='fast': this emulator names no fast path (emulator.metadata['fast_path']); "
                             "use sample_with='self'")
    elif fast is None or getattr(emulator, "model_type", None) != "transformer_payne":
        return None  # "auto": the fast path on any backend (on an H200, ~10 s per star batched against minutes)
    return _FastPath(emulator.metadata["fast_path"], fast)


@dataclasses.dataclass
class _Surrogate:
    """The fast path's problem and MAP, and the two densities' modes in z (:func:`recentred_posterior`)."""

    name: str
    problem: FitProblem
    map: Any  # MapResult
    mode: np.ndarray  # (p,) z-mode of the fast path's density
    target_mode: np.ndarray  # (p,) z-mode of the emulator's density


#: |z| beyond which a label's MAP counts as pressed against its box edge (theta within ~0.25% of the
#: box width from it), where the emulator's z-mode search starts at the fast path's mode instead
EDGE_Z = 6.0


def _mode_search_start(problem: FitProblem, theta: np.ndarray, fast_mode: np.ndarray) -> np.ndarray | None:
    """Where the emulator's z-mode search starts: a label at a box edge has its MAP's z far in the
    sigmoid's tail (clipped to -+8), while its mode in z is about one posterior width inside the box,
    so such labels (|z| > EDGE_Z) start at the fast path's mode, the others at the MAP's z; None
    (start at the MAP) where that is not finite."""
    z_map = np.asarray(problem.to_unconstrained(jnp.asarray(theta, jnp.float32)), np.float64)
    start = np.where(np.abs(z_map) > EDGE_Z, np.asarray(fast_mode, np.float64), np.clip(z_map, -8.0, 8.0))
    return start if np.all(np.isfinite(start)) else None


def _surrogate_map(spectrum, surrogate: _FastPath, prepared: _Prepared, theta: np.ndarray, options: dict,
                   z_transform: str = "logit", curvature: np.ndarray | None = None) -> _Surrogate:
    """The fast path's FitProblem on the same spectrum and boxes as ``prepared`` (its RV box is
    centred on the same rv), its MAP polished from ``theta`` (the emulator's MAP), and the modes in
    z of both densities (Gauss-Newton, :func:`~stellarfit.inference.nuts.unconstrained_laplace`).
    ``curvature``: the emulator's data curvature from its MAP's polish (``MapResult.curvature``),
    where its mode search starts instead of taking a Jacobian."""
    from stellarfit.inference.nuts import unconstrained_laplace

    problem = prepared.problem
    theta = np.asarray(theta, dtype=np.float64)
    start = dict(zip(problem.names, theta.tolist()))
    start["rv"] = prepared.rv0  # the same RV box, so that z means the same in both problems
    # the design of the emulator's fit (the degree continuum_degree="auto" chose)
    fast_problem = _prepare(spectrum, surrogate.emulator, start=start, **{**options, "continuum_degree": prepared.degree}).problem
    fast_map = polish_map(fast_problem, np.clip(theta, fast_problem.lower, fast_problem.upper), max_steps=20,
                          space=FAST_PATH_POLISH_SPACE)
    if not np.all(np.isfinite(fast_map.theta)):
        raise RuntimeError(f"the fast path {surrogate.name!r} found no MAP near the emulator's; use sample_with='self'")
    # the modes in the coordinates the chains sample (z_transform), where the draws are moved
    fast_problem = fast_problem.with_transform(z_transform)
    fast_mode = unconstrained_laplace(fast_problem, fast_map.theta, gauss_newton=True).mode
    target_problem = problem.with_transform(z_transform)
    target_mode = unconstrained_laplace(target_problem, theta, gauss_newton=True, curvature=curvature,
                                        start=_mode_search_start(target_problem, theta, fast_mode)).mode
    if not (np.all(np.isfinite(fast_mode)) and np.all(np.isfinite(target_mode))):
        raise RuntimeError("the modes of the densities in z are not finite; use sample_with='self'")
    return _Surrogate(surrogate.name, fast_problem, fast_map, fast_mode, target_mode)


def recentred_posterior(problem: FitProblem, samples: np.ndarray, source_mode: np.ndarray, target_mode: np.ndarray) -> np.ndarray:
    """Draws of one posterior moved to another's mode in the unconstrained coordinates:
    z -> z + target_mode - source_mode.

    ``samples`` (..., p): physical draws of ``problem``'s posterior (e.g. a fast path's);
    ``source_mode`` and ``target_mode`` (p,): the modes in z (the coordinates of ``problem``:
    the sigmoid of each box) of that density and of the one to move to.  In z a parameter
    pressed against a box edge has an interior mode, so shifted draws stay inside the boxes and
    a posterior squeezed against an edge stays squeezed.  Exact when the two log densities
    differ by a linear term in z near the mode; otherwise the draws keep the sampled posterior's
    shape (widths, correlations, skew) around the target's mode.
    """
    samples = np.asarray(samples, dtype=np.float64)
    shift = np.asarray(target_mode, np.float64) - np.asarray(source_mode, np.float64)
    if shift.shape != (samples.shape[-1],) or not np.all(np.isfinite(shift)):
        raise ValueError(f"source_mode and target_mode must be finite with shape ({samples.shape[-1]},)")
    flat = samples.reshape(-1, samples.shape[-1])
    z = np.asarray(jax.vmap(problem.to_unconstrained)(jnp.asarray(flat, jnp.float32)), np.float64) + shift
    moved = np.asarray(jax.vmap(problem.to_theta)(jnp.asarray(z, jnp.float32)), np.float64)
    return moved.reshape(samples.shape)


#: most Levenberg-Marquardt iterations of a MAP started from ``init`` (a close start: it usually
#: stops after 4-7, see :func:`~stellarfit.inference.polish_map`).  The TransformerPayne from
#: ``default-fast``'s MAP needed up to 18 on held-out stars (benchmarks/bench_edge_labels.py): 8,
#: the limit until 2026-11-27, left 2 of 8 stars 27 and 48 nats of -log posterior short (logg
#: 0.16 dex off on one)
INIT_POLISH_STEPS = 20


@dataclasses.dataclass
class _FastPath:
    name: str
    emulator: Any


_FAST_PATH_CACHE: dict[str, Any] = {}


def fast_path_emulator(emulator):
    """The emulator's fast path (``emulator.metadata["fast_path"]``: a shipped name or a directory),
    loaded once per process (so its compiled fits are reused), or None when it names none."""
    name = (getattr(emulator, "metadata", {}) or {}).get("fast_path")
    if not name:
        return None
    # the fast path sees the emulator's physics error (one copy per physics error, so that its
    # compiled forward models are reused from fit to fit)
    physics = getattr(emulator, "physics_error", None)
    cached = _FAST_PATH_CACHE.get(name)
    if cached is None or cached.physics_error is not physics:
        from stellarfit.emulators import load_emulator

        try:
            fast = load_emulator(name)
        except (FileNotFoundError, KeyError, ValueError) as error:
            raise ValueError(f"the emulator's fast path {name!r} cannot be loaded ({error}); pass init=None to fit "
                             "without it") from None
        if list(fast.label_names) != list(emulator.label_names):
            raise ValueError(f"the fast path {name!r} has labels {fast.label_names}, the emulator {emulator.label_names}")
        _FAST_PATH_CACHE[name] = fast.with_physics_error(physics)
    return _FAST_PATH_CACHE[name]


#: the coordinates of a MAP polish that starts from another emulator's MAP (the fast path's, or the
#: emulator's own for the fast path): "unit", where labels whose MAP is at a box edge reach it in a
#: step or two; a start given by the user polishes in z, which copes better with distant starts
#: (:func:`~stellarfit.inference.map.polish_map`; docs/fitting.md)
FAST_PATH_POLISH_SPACE = "unit"


def _polish_space(init_info: dict) -> str:
    """polish_map's ``space`` for a start of this source (``diagnostics["init"]``)."""
    return FAST_PATH_POLISH_SPACE if str(init_info.get("source", "")).startswith("fast path") else "z"


def _resolve_init(init, emulator):
    """init argument -> (None | FitResult | Mapping | array | _FastPath, diagnostics dict)."""
    if isinstance(init, str):
        if init not in ("auto", "fast"):
            raise ValueError(f"init must be None, 'auto', 'fast', a FitResult, a mapping or an array; got {init!r}")
        fast = fast_path_emulator(emulator)
        if fast is None:
            if init == "fast":
                raise ValueError("init='fast': this emulator names no fast path (emulator.metadata['fast_path']); "
                                 "use init=None (multi-start) or a previous fit")
            return None, {"source": "multi-start"}
        name = emulator.metadata["fast_path"]
        return _FastPath(name, fast), {"source": f"fast path {name}"}
    if init is None:
        return None, {"source": "multi-start"}
    return init, {"source": "given"}


def _init_values(init, spec) -> dict[str, float] | None:
    """A start as name -> value (labels, and rv / vsini when known), validated against ``spec``."""
    if init is None:
        return None
    names = list(spec.names) + ["rv", "vsini"]
    if isinstance(init, FitResult):
        values = {name: row.get("map", row["value"]) for name, row in init.labels.items()}
    elif isinstance(init, Mapping):
        values = dict(init)
    else:
        array = np.asarray(init, dtype=np.float64)
        if array.ndim != 1 or array.size != len(names):
            raise ValueError(f"init as an array needs {len(names)} values ({names}), got shape {array.shape}")
        values = dict(zip(names, array))
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(f"init has unknown parameters {unknown}; the parameters are {names}")
    values = {name: float(value) for name, value in values.items()}
    bad = [name for name, value in values.items() if not np.isfinite(value)]
    if bad:
        raise ValueError(f"init has non-finite values for {bad}")
    return values


def _start_vector(problem: FitProblem, values: dict[str, float], rv0: float) -> np.ndarray:
    """(p,) start in problem order: given values, box centres for missing labels, rv0, vsini 5 km/s."""
    spec = problem.label_spec
    centre = box_centre(spec)
    start = [values.get(name, centre[i]) for i, name in enumerate(spec.names)]
    start += [rv0, values.get("vsini", 5.0)]
    return np.clip(np.asarray(start, dtype=np.float64), problem.lower, problem.upper)


def fit_stars(
    spectra: Sequence,
    emulator,
    *,
    batch_size: int = 32,
    priors: Mapping[str, GaussianPrior] | None = None,
    rv_range: tuple[float, float] = (-1000.0, 1000.0),
    rv_window: float = 50.0,
    vsini_max: float = 100.0,
    continuum_degree: int | str = "auto",
    n_starts: int = 8,
    adam_steps: int = 150,
    seed: int = 0,
    progress: bool = False,
    errors: str = "raise",
    emulator_error: bool = True,
    physics_error: bool = False,
    error_floor: bool = True,
    method: str = "map",
    num_warmup: int = 500,
    num_samples: int = 500,
    num_chains: int = 4,
    max_tree_depth: int = 8,
    target_accept: float = 0.8,
    mass_matrix: str = "laplace-pooled",
    init="auto",
    polish_steps: int | None = None,
    sample_with: str = "auto",
    z_transform: str = NUTS_Z_TRANSFORM,
    degrade: bool = True,
) -> list:
    """Fits of many spectra, vectorized: spectra on the same pixels (same wavelengths and
    resolution) are fitted ``batch_size`` at a time in one ``vmap``-ed program (all starts of all
    spectra at once), which is what fills a GPU; on a CPU it mainly saves the per-star overheads.

    Arguments as :func:`fit_star`.  ``method="map"`` (default) or ``"nuts"``: with ``"nuts"`` each
    batch is then sampled by :func:`~stellarfit.inference.sample_numpyro_batch` -- all chains of
    all its stars in one program, each star with its own Laplace whitening and each chain with its
    own adaptation, trajectories capped at ``max_tree_depth``; the per-draw leapfrog counts are in
    ``result.sample_stats["n_steps"]``.  On a CPU, batched NUTS is slower than
    ``fit_star(method="nuts")`` one star at a time (docs/fitting.md); it is the GPU path.
    ``errors="raise"`` stops at the first spectrum that cannot be fitted; ``errors="collect"`` puts
    the exception in its place in the returned list and goes on.  ``init``: None, "auto" or
    "fast" as in :func:`fit_star` (the fast path fits all spectra first, batched), or one start
    per spectrum (each None, a FitResult, a mapping or an array).  ``sample_with`` as in
    :func:`fit_star` (with "fast", each batch samples the fast path's posteriors and moves them
    to the emulator's MAPs).  Returns one :class:`FitResult` (or exception) per spectrum, in order.
    """
    if method not in ("map", "nuts"):
        raise ValueError(f"fit_stars fits method 'map' or 'nuts' (NumPyro, batched), got {method!r}; "
                         "use fit_star for 'blackjax'")
    if method == "nuts":
        from stellarfit.inference.nuts import check_sampler_settings

        check_sampler_settings(None, num_warmup, num_samples, num_chains, max_tree_depth, target_accept, mass_matrix,
                               chain_method="vectorized")
        _check_z_transform(z_transform)
    if errors not in ("raise", "collect"):
        raise ValueError(f"errors must be 'raise' or 'collect', got {errors!r}")
    surrogate = _resolve_sample_with(sample_with, emulator, method)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    from stellarfit.inference.map import fit_map_batch

    spectra = list(spectra)
    out: list = [None] * len(spectra)
    continuum_degree = check_continuum_degree(continuum_degree)
    options = dict(priors=priors, rv_range=rv_range, rv_window=rv_window, vsini_max=vsini_max,
                   continuum_degree=continuum_degree, emulator_error=emulator_error,
                   physics_error=physics_error, degrade=degrade)
    inits, infos = _batch_inits(init, spectra, emulator, errors=errors, progress=progress, batch_size=batch_size,
                                n_starts=n_starts, adam_steps=adam_steps, seed=seed, error_floor=error_floor, **options)
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
        groups[(jax.tree_util.tree_structure(item.problem), item.problem.design.shape, starts_of[i] is None)].append(i)
    for (_, _, multi_start), indices in groups.items():
        for first in range(0, len(indices), batch_size):
            chunk = indices[first : first + batch_size]
            start_time = time.perf_counter()
            if multi_start:
                starts = np.stack([default_starts(prepared[i][0].problem, n_starts, rv=prepared[i][0].rv0, seed=seed)
                                   for i in chunk])
                results = fit_map_batch([prepared[i][0].problem for i in chunk], starts, adam_steps=adam_steps,
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
                      "multi-start" if multi_start else "polish", time.perf_counter() - start_time)
            results = _choose_continuum([prepared[i][0] for i in chunk], results, continuum_degree, errors)
            mark = time.perf_counter()
            sampling, batch_draws, surrogates = None, [None] * len(chunk), [None] * len(chunk)
            if method == "nuts":
                sampling = dict(num_warmup=num_warmup, num_samples=num_samples, num_chains=num_chains, seed=seed,
                                max_tree_depth=max_tree_depth, target_accept=target_accept, mass_matrix=mass_matrix,
                                chain_method="batched", z_transform=z_transform)
                # stars whose MAP failed (non-finite) stay out of the batch and are recorded as failed below
                good = [k for k, result in enumerate(results) if np.all(np.isfinite(result.theta))]
                if surrogate is not None:  # the fast path's MAP of each star, to sample its posterior
                    for k in list(good):
                        try:
                            # the polish's last curvature (one Jacobian through the emulator fewer per star)
                            surrogates[k] = _surrogate_map(spectra[chunk[k]], surrogate, prepared[chunk[k]][0],
                                                           results[k].theta, options, z_transform,
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
                    for k, draws in zip(good, _sample_batch(targets, sampling, z_transform, errors)):
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
                                     sampling=sampling if fast_map is None else {**sampling, "surrogate": fast_map},
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


def _sample_batch(targets, sampling: dict, z_transform: str, errors: str) -> list:
    """Batched NUTS of :func:`fit_stars`' chunk: one SamplerResult per (problem, MAP, covariance) target.
    If the batch fails (one star's numerics, say) and errors are collected, each star is sampled on its
    own, so that one star's failure is recorded as its exception and costs the others nothing."""
    from stellarfit.inference.nuts import sample_numpyro_batch

    options = {k: v for k, v in sampling.items() if k not in ("chain_method", "z_transform")}

    def run(group):
        return sample_numpyro_batch(
            [problem.with_continuum("marginalize").with_transform(z_transform) for problem, _, _ in group],
            [theta for _, theta, _ in group], [covariance for _, _, covariance in group], **options)

    shapes = [problem.design.shape for problem, _, _ in targets]
    if len(set(shapes)) > 1:  # continuum_degree="auto" chose designs of several sizes: one batch per size
        out: list = [None] * len(targets)
        for shape in dict.fromkeys(shapes):
            members = [k for k, other in enumerate(shapes) if other == shape]
            for k, draws in zip(members, _sample_batch([targets[k] for k in members], sampling, z_transform, errors)):
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


def _batch_inits(init, spectra, emulator, *, errors, progress, batch_size, n_starts, adam_steps, seed, error_floor,
                 **options):
    """Per-spectrum starts for :func:`fit_stars` (None, FitResult, mapping, array, or the exception of a
    failed fast-path fit) and their diagnostics."""
    if init is None or isinstance(init, str):
        resolved, info = _resolve_init(init, emulator)
        if not isinstance(resolved, _FastPath):
            return [None] * len(spectra), [dict(info) for _ in spectra]
        first = time.perf_counter()
        inits = fit_stars(spectra, resolved.emulator, batch_size=batch_size, n_starts=n_starts, adam_steps=adam_steps,
                          seed=seed, progress=progress, errors=errors, error_floor=error_floor, init=None, **options)
        share = (time.perf_counter() - first) / max(len(spectra), 1)
        infos = []
        for fast in inits:
            item = dict(info, elapsed_s=share)
            if not isinstance(fast, Exception):
                item.update(reduced_chi2=fast.reduced_chi2, flags=fast.flags)
            infos.append(item)
        return inits, infos
    if isinstance(init, (np.ndarray, FitResult, Mapping)) or len(init) != len(spectra):
        raise ValueError(f"fit_stars: init must be None, 'auto', 'fast' or one start per spectrum ({len(spectra)})")
    return list(init), [{"source": "multi-start" if item is None else "given"} for item in init]


def _progress_bar(total: int, description: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit="spec", disable=not enabled)


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
    forward model and its compiled programs (docs/fitting.md, "Spectra on one wavelength
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
    spectrum = modelled_pixels(spectrum, emulator, rv_range)
    spectrum, degraded = degrade_for_emulator(spectrum, emulator) if degrade else (spectrum, None)
    resolution = spectrum.require_resolution() if hasattr(spectrum, "require_resolution") else spectrum.resolution
    wavelength = np.asarray(spectrum.wavelength, dtype=np.float64)
    good = ~np.asarray(spectrum.mask) & (np.asarray(spectrum.ivar) > 0)
    ivar = np.where(good, spectrum.ivar, 0.0)
    flux = np.where(good, spectrum.flux, 0.0)
    arms = np.asarray(getattr(spectrum, "arm", np.zeros(wavelength.size, dtype=int)))
    degree = start_degrees(continuum_degree)
    design = continuum_design_matrix(wavelength, arms, list(degree) if isinstance(degree, tuple) else degree)
    spec = emulator.label_spec
    centre = box_centre(spec)
    # one forward model over the whole RV range (cached per pixel grid): the fit's RV box around
    # the search result is data of the FitProblem, so nothing recompiles from star to star
    model = forward_model_for(emulator, wavelength, resolution, rv_range=tuple(rv_range), vsini_max=vsini_max)
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
    if pixel_error is not None or error_modes is not None or physics is not None:
        template_continuum = _template_continuum(model, centre, rv0, flux, ivar, design)
        if pixel_error is not None or physics is not None:
            fit_ivar = _with_emulator_error(model, emulator, rv0, ivar, pixel_error, template_continuum, physics)
        if error_modes is not None:
            error_basis = _observed_error_modes(model, error_modes, rv0, template_continuum)
    problem = FitProblem(model, spec, flux, fit_ivar, design, priors=priors, vsini_max=vsini_max, rv_range=(low, high),
                         error_basis=error_basis)
    return _Prepared(spectrum, problem, float(rv0), wavelength, flux, np.where(np.asarray(problem.ivar) > 0, ivar, 0.0),
                     None if physics is None else physics.describe(), degraded,
                     arms=arms, degree=degree, continuum=fixed_info(degree))


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


def _hold_vsini_near_zero(covariance, theta, index):
    """``covariance`` with the other parameters conditioned on vsini (held at its value) when vsini's
    standard deviation exceeds vsini itself, i.e. its posterior reaches 0.

    Near vsini = 0 the model changes as vsini^2: a linearization at a small vsini sees a direction that
    mimics line-width changes of the labels over a range of vsini the posterior does not have (it stops
    at 0), and inflates their errors. The Cramér-Rao bounds of a planned observation hold vsini fixed
    below 3 km/s for the same reason (:func:`~stellarfit.inference.crb.cramer_rao`). vsini keeps its own
    variance; its covariances with the rest become 0.
    """
    if index is None or covariance is None:
        return covariance
    covariance = np.asarray(covariance, dtype=np.float64)
    variance = covariance[index, index]
    if not (np.isfinite(variance) and variance > 0 and np.sqrt(variance) > theta[index]):
        return covariance
    others = np.arange(covariance.shape[0]) != index
    column = covariance[others, index]
    column = np.where(np.isfinite(column), column, 0.0)
    held = covariance.copy()
    held[np.ix_(others, others)] = covariance[np.ix_(others, others)] - np.outer(column, column) / variance
    held[others, index] = 0.0
    held[index, others] = 0.0
    return held


def _gauss_newton_from_jacobian(problem: FitProblem, jacobian: np.ndarray, names, prior_sigma, scales) -> np.ndarray:
    """The Gauss-Newton covariance of theta, J^T W J with the fit's weights W (noise plus emulator
    pixel error) from the Jacobian in theta and the continuum coefficients that the Cramér-Rao bounds
    use, the continuum marginalized and the priors added; an unconstrained direction gets NaN.

    The same matrix as :func:`stellarfit.inference.map.gauss_newton_covariance` (which profiles
    the continuum out of the residuals: for a continuum linear in its coefficients that is the
    same Schur complement) for a problem without error modes, with no further program to compile.
    """
    fit_weights = np.asarray(problem.ivar, dtype=np.float64)
    bound = cramer_rao_from_fisher(jacobian.T @ (jacobian * fit_weights[:, None]), names,
                                   prior_sigma=prior_sigma, scales=scales)
    n_theta = problem.n_parameters
    covariance = np.array(bound.covariance[:n_theta, :n_theta])
    covariance[np.isinf(bound.sigma[:n_theta]), :] = np.nan
    return covariance


def _finish(prepared: _Prepared, result, method: str, emulator, start_time: float, *, n_starts: int, seed: int,
            sampling: dict | None, error_floor: bool = True, draws=None, init_info: dict | None = None) -> FitResult:
    """Cramér-Rao bounds, optional NUTS, flags and the FitResult from a MAP result."""
    problem = prepared.problem
    spec = problem.label_spec
    flux, ivar, wavelength, rv0 = prepared.flux, prepared.ivar, prepared.wavelength, prepared.rv0
    spectrum = prepared.spectrum
    theta = result.theta
    theta_jax = jnp.asarray(theta, jnp.float32)
    coefficients, model_flux = (np.asarray(v, dtype=np.float64) for v in _continuum_and_model(problem, theta_jax))

    # Cramér-Rao bounds at the MAP, continuum coefficients as nuisance parameters
    jacobian = np.asarray(_full_model_jacobian(problem, jnp.concatenate([theta_jax, jnp.asarray(coefficients, jnp.float32)])),
                          dtype=np.float64)
    fisher = jacobian.T @ (jacobian * ivar[:, None])
    names = list(problem.names) + [f"continuum_{i}" for i in range(coefficients.size)]
    prior_sigma = problem.prior_sigmas() + [None] * coefficients.size
    scales = np.concatenate([problem.box_widths(), np.maximum(np.abs(coefficients), 1e-30)])
    crb = cramer_rao_from_fisher(fisher, names, prior_sigma=prior_sigma, scales=scales)
    laplace = "hessian"

    def gauss_newton() -> np.ndarray:
        if problem.error_basis is not None:  # error modes are not in W: the residuals hold them
            return gauss_newton_covariance(problem, theta)
        return _gauss_newton_from_jacobian(problem, jacobian, names, prior_sigma, scales)

    if result.covariance is None and problem.error_basis is not None:  # error modes: the full Hessian
        from stellarfit.inference.map import laplace_covariance

        result = dataclasses.replace(result, covariance=laplace_covariance(problem, theta))
    elif result.covariance is None:
        # a MAP polished from an init (polish_map) has no Hessian: the Laplace covariance is the
        # Gauss-Newton one (exact for a model linear near the MAP; it omits the residual-weighted
        # curvature, small when the fit is good)
        result = dataclasses.replace(result, covariance=gauss_newton())
        laplace = "gauss-newton"
    elif not covariance_is_proper(result.covariance, problem.box_widths()):
        # a MAP pressed against a box edge (or an [alpha/Fe]-relative abundance against the interval
        # its reference leaves it) is no stationary point: the Hessian there can be indefinite, and
        # its inverse gave negative variances, which read as errors of 0; J^T W J cannot
        result = dataclasses.replace(result, covariance=gauss_newton())
        laplace = "gauss-newton-indefinite-hessian"
    # a vsini consistent with 0 is far from Gaussian (the model changes as vsini^2): hold it at the MAP
    # for the other parameters' errors and bounds instead of letting its linearized coupling inflate them
    vsini_index = problem.names.index("vsini") if "vsini" in problem.names else None
    result = dataclasses.replace(result, covariance=_hold_vsini_near_zero(result.covariance, theta, vsini_index))
    crb_sigma = np.array(crb.sigma, dtype=np.float64)
    if vsini_index is not None and np.isfinite(crb_sigma[vsini_index]) and crb_sigma[vsini_index] > 0:
        constrained = np.isfinite(crb.sigma) & (crb.sigma > 0)
        held = _hold_vsini_near_zero(np.where(np.outer(constrained, constrained), crb.covariance, 0.0),
                                     np.concatenate([theta, coefficients]), vsini_index)
        crb_sigma = np.where(constrained, np.sqrt(np.clip(np.diag(held), 0.0, None)), crb_sigma)
    sigma = result.sigma
    labels = {}
    for i, name in enumerate(problem.names):
        error = float(sigma[i]) if np.isfinite(sigma[i]) else float("nan")
        labels[name] = {
            "value": float(theta[i]), "error": error, "lower": float(theta[i] - error), "upper": float(theta[i] + error),
            "map": float(theta[i]), "crb": float(crb_sigma[i]),
        }
    samples = None
    covariance = result.covariance
    sampler_diagnostics: dict = {}
    if method != "map":
        from stellarfit.inference.nuts import sample_blackjax, sample_numpyro, summarize_samples

        options = dict(sampling)
        chain_method = options.pop("chain_method")
        z_transform = options.pop("z_transform", "logit")
        sampling_problem = problem.with_continuum("marginalize").with_transform(z_transform)
        surrogate = options.pop("surrogate", None)
        num_chains, num_samples = options["num_chains"], options["num_samples"]
        start_theta, start_covariance = theta, result.covariance
        if surrogate is not None:  # sample the fast path's posterior, then move it to this MAP
            sampling_problem = surrogate.problem.with_continuum("marginalize")
            start_theta, start_covariance = surrogate.map.theta, None
        if draws is not None:  # sampled already, in a batch of stars (fit_stars)
            pass
        elif method == "nuts":
            draws = sample_numpyro(sampling_problem, start_theta, start_covariance, chain_method=chain_method, **options)
        else:
            draws = sample_blackjax(sampling_problem, start_theta, start_covariance, chain_method=chain_method, **options)
        if surrogate is not None:
            draws = dataclasses.replace(draws, samples=recentred_posterior(surrogate.problem, draws.samples,
                                                                           surrogate.mode, surrogate.target_mode))
            posterior_info = {
                "sampled_with": surrogate.name, "recentred_on": "mode in z", "z_transform": z_transform,
                "shift_z": dict(zip(problem.names, map(float, surrogate.target_mode - surrogate.mode))),
                "sampled_map": dict(zip(problem.names, map(float, surrogate.map.theta))),
            }
        else:
            posterior_info = {"sampled_with": "self", "z_transform": z_transform}
        samples = draws.samples
        covariance = np.cov(samples.reshape(-1, samples.shape[-1]), rowvar=False)
        for name, row in summarize_samples(samples, problem.names).items():
            labels[name].update(value=row["value"], error=row["error"], lower=row["lower"], upper=row["upper"])
        sampler_diagnostics = dict(draws.diagnostics)
        sampler_diagnostics["posterior"] = posterior_info
        ess = min(sampler_diagnostics["ess_bulk"].values())
        sampler_diagnostics["gradient_evaluations_per_effective_sample"] = sampler_diagnostics["gradient_evaluations_per_ess"]
        sampler_warning = (
            max(sampler_diagnostics["r_hat"].values()) > 1.05 or not np.isfinite(ess) or ess < 100
            or sampler_diagnostics["divergences"] > 0.01 * num_chains * num_samples
        )
    floors = (getattr(emulator, "metadata", {}) or {}).get("label_error_floor") if error_floor else None
    for name, floor in (floors or {}).items():
        # a parameter held fixed (error 0, e.g. vsini with vsini_max=0) gets no floor
        if name in labels and floor and np.isfinite(labels[name]["error"]) and labels[name]["error"] > 0:
            row = labels[name]
            statistical = row["error"]
            row["error_statistical"] = statistical
            row["error"] = float(np.hypot(statistical, floor))
            row["lower"] = float(row["value"] - np.hypot(row["value"] - row["lower"], floor))
            row["upper"] = float(row["value"] + np.hypot(row["upper"] - row["value"], floor))
            if name == "vsini":  # a floor widens the interval, but vsini stays >= 0
                row["lower"] = max(row["lower"], 0.0)
    n_pixels = problem.n_good
    dof = max(n_pixels - theta.size - coefficients.size, 1)
    snr = float(np.median((np.abs(flux) * np.sqrt(ivar))[ivar > 0]))
    flags = 0
    # label boxes, and the +-h interval of a label bounded relative to another (the grid's edge too)
    near_edge = problem.near_edges(theta)
    if np.any(near_edge[: len(spec)]):
        flags |= FLAGS["grid_edge"]
    if near_edge[len(spec)]:
        flags |= FLAGS["rv_edge"]
    if snr < 10:
        flags |= FLAGS["low_snr"]
    if result.chi2 / dof > 3:
        flags |= FLAGS["high_chi2"]
    if not np.all(np.isfinite(theta)):
        flags |= FLAGS["fit_failed"]
    if not result.converged:
        flags |= FLAGS["not_converged"]
    if method != "map" and sampler_warning:
        flags |= FLAGS["sampler_warning"]
    factor = (prepared.degraded or {}).get("ivar_correlation_factor", 1.0)
    mismatch = chi2_mismatch(result.chi2, dof, problem.ivar, ivar, factor)
    flags |= FLAGS["model_mismatch"] if mismatch.pop("model_mismatch") else 0
    flags |= FLAGS["degraded_to_emulator_resolution"] if prepared.degraded else 0
    return FitResult(
        method=method,
        labels=labels,
        chi2=result.chi2,
        reduced_chi2=result.chi2 / dof,
        snr=snr,
        n_pixels=n_pixels,
        flags=flags,
        diagnostics={
            "rv_search": float(rv0),
            "n_starts": int(n_starts),
            "start_objectives": [float(v) for v in result.all_objectives],
            "converged": bool(result.converged),
            "crb_unconstrained": list(crb.unconstrained),
            "fisher_condition_number": crb.condition_number,
            "seed": seed,
            "init": init_info or {"source": "multi-start"},
            "laplace": laplace,
            "map_iterations": result.iterations,
            "map_jacobians": result.jacobians,
            "physics_error": prepared.physics_error,
            # NaN/inf pixels the reader masked (ObservedSpectrum.from_arrays); catalogs copy it
            "n_nonfinite_masked": int(spectrum.metadata.get("n_nonfinite_masked", 0)),
            **mismatch, **({"degraded": prepared.degraded} if prepared.degraded else {}),
            "continuum": prepared.continuum or fixed_info(prepared.degree),
            **{("sampler_" + k if k in ("seed", "elapsed_s") else k): v for k, v in sampler_diagnostics.items()},
        },
        wavelength=wavelength,
        flux=np.asarray(spectrum.flux, dtype=np.float64),
        ivar=ivar,
        model_flux=model_flux,
        covariance=covariance,
        emulator=str(emulator.metadata.get("name", type(emulator).__name__)),
        elapsed_s=time.perf_counter() - start_time,
        samples=samples,
        sample_stats=None if method == "map" else draws.sample_stats,
    )
