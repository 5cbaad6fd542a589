"""The fast path of :func:`~stellarfit.inference.fit_star`: NUTS on a fast surrogate emulator whose draws are
recentred on the full emulator's mode (``sample_with``), and the fit's starting point (``init``) from a fast
emulator or given labels."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from stellarfit.inference.likelihood import FitProblem
from stellarfit.inference.map import box_centre, polish_map
from stellarfit.results.fitfile import FitResult
from stellarfit.inference._encoder_start import resolve_encoder
from stellarfit.inference._fit_prepare import _prepare, _Prepared
from stellarfit.inference.settings import SAMPLE_WITH


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
#: (:func:`~stellarfit.inference.map.polish_map`; docs/design/sampling.md)
FAST_PATH_POLISH_SPACE = "unit"


def _polish_space(init_info: dict) -> str:
    """polish_map's ``space`` for a start of this source (``diagnostics["init"]``)."""
    return FAST_PATH_POLISH_SPACE if str(init_info.get("source", "")).startswith("fast path") else "z"


def _resolve_init(init, emulator):
    """init argument -> (None | FitResult | Mapping | array | _FastPath | EncoderStart, diagnostics dict)."""
    encoder = resolve_encoder(init, emulator)
    if encoder is not None:
        return encoder, {"source": f"encoder {encoder.name}"}
    if isinstance(init, str):
        if init not in ("auto", "fast"):
            raise ValueError("init must be None, 'auto', 'fast', 'encoder', a FitResult, a mapping, an array or an "
                             f"Encoder; got {init!r}")
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
