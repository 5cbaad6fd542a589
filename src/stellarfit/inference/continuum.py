"""``continuum_degree="auto"`` in the fits: the degree chosen by the evidence at a first MAP.

:func:`fit_star` / :func:`fit_stars` first fit with a starting degree (:data:`AUTO_START_DEGREE`
per arm, or the degree an ``init`` fit chose), then :func:`choose_continuum` evaluates the
evidence of every degree 0 .. :data:`~stellarfit.forward.MAX_AUTO_DEGREE` at that MAP's labels
(:func:`~stellarfit.forward.choose_continuum_degree`: one small float64 solve per degree); if the
best degree differs, the problem is rebuilt with it and the MAP polished from where it was
(Levenberg-Marquardt, a few iterations), and the evidence is evaluated once more at the new MAP
(at most :data:`MAX_REFITS` such polishes).  The choice and the evidence table go to
``FitResult.diagnostics["continuum"]``; docs/guide/continuum.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from stellarfit.forward import (
    AUTO_DEGREE,
    MAX_AUTO_DEGREE,
    check_continuum_degree,
    choose_continuum_degree,
    continuum_design_matrix,
)
from stellarfit.inference.likelihood import FitProblem
from stellarfit.inference import map as _map
from stellarfit.inference.map import polish_map, polish_map_batch

__all__ = ["AUTO_START_DEGREE", "MAX_REFITS", "choose_continuum", "start_degrees"]

#: the degree per arm of the first MAP of an "auto" fit (the fixed default before "auto")
AUTO_START_DEGREE = 2
#: most re-polishes after a change of degree (each followed by a new evidence table)
MAX_REFITS = 2
#: Levenberg-Marquardt iterations of a re-polish (from the previous degree's MAP: it usually stops after a few)
REFIT_STEPS = 20


def start_degrees(continuum_degree, init=None):
    """The design's degree(s) for :func:`~stellarfit.inference.fit._prepare`: ``continuum_degree``
    itself when fixed; for "auto" the degrees an ``init`` FitResult chose (its
    ``diagnostics["continuum"]["degrees"]``), else :data:`AUTO_START_DEGREE`."""
    degree = check_continuum_degree(continuum_degree)
    if degree != AUTO_DEGREE:
        return degree
    chosen = ((getattr(init, "diagnostics", None) or {}).get("continuum") or {}).get("degrees")
    return tuple(int(d) for d in chosen) if chosen else AUTO_START_DEGREE


def fixed_info(degree) -> dict[str, Any]:
    """``diagnostics["continuum"]`` of a fit with a given degree."""
    degrees = list(degree) if isinstance(degree, tuple) else degree
    return {"degree": degrees, "chosen_by": "fixed"}


@jax.jit
def _normalized_model(problem: FitProblem, theta):
    return problem.model_normalized(theta)


def choose_continuum(problems: Sequence[FitProblem], results: Sequence, wavelengths: Sequence[np.ndarray],
                     arms: Sequence[np.ndarray], degrees: Sequence, *, max_degree: int = MAX_AUTO_DEGREE,
                     space: str = "unit") -> tuple[list[FitProblem], list, list[dict[str, Any]]]:
    """The evidence's continuum degree for each (problem, MAP) pair, with the MAP re-polished where it changed.

    Args:
        problems: the FitProblems the MAPs were fitted on (their designs of ``degrees``).
        results: their :class:`~stellarfit.inference.MapResult`.
        wavelengths, arms: (n_obs,) each problem's pixels [A] and arm ids.
        degrees: the degree (int, or tuple per arm) of each problem's design.
        max_degree: highest degree tried per arm.
        space: the coordinates of the re-polish (:func:`~stellarfit.inference.polish_map`).
    Returns (problems, results, infos): the problems with the chosen designs, their MAPs (a
    re-polished MAP keeps the first one's ``all_objectives``; its covariance is the Hessian's
    again where the first had one), and each ``diagnostics["continuum"]`` dict (``path``: the
    degrees fitted, in order).
    The re-polishes of problems that end up with the same design are batched
    (:func:`~stellarfit.inference.polish_map_batch`).
    """
    problems, results = list(problems), list(results)
    n_arms = [np.unique(a).size for a in arms]
    current = [tuple(d) if isinstance(d, tuple) else (int(d),) * n for d, n in zip(degrees, n_arms)]
    infos: list[dict[str, Any]] = [{"start_degree": list(c) if n > 1 else c[0], "refits": 0, "path": [list(c) if n > 1 else c[0]]}
                                   for c, n in zip(current, n_arms)]
    pending = list(range(len(problems)))
    for round_ in range(MAX_REFITS + 1):
        moved: dict[tuple[int, ...], list[int]] = {}
        for i in pending:
            theta = np.asarray(results[i].theta, dtype=np.float64)
            if not np.all(np.isfinite(theta)):  # a failed MAP: keep its design, say so
                infos[i].update(degree=infos[i]["start_degree"], chosen_by="fixed (the first MAP failed)")
                continue
            problem = problems[i]
            model = np.asarray(_normalized_model(problem, jnp.asarray(theta, jnp.float32)), dtype=np.float64)
            error_basis = None if problem.error_basis is None else np.asarray(problem.error_basis, np.float64)
            choice = choose_continuum_degree(model, np.asarray(problem.flux, np.float64), np.asarray(problem.ivar, np.float64),
                                             wavelengths[i], arms[i], max_degree=max_degree, error_basis=error_basis,
                                             start=current[i])
            infos[i].update(choice.to_dict())
            infos[i]["settled"] = choice.degrees == current[i]
            if choice.degrees == current[i]:
                continue
            if round_ < MAX_REFITS:
                moved.setdefault(choice.degrees, []).append(i)
            else:  # out of re-polishes: the fit keeps the design it has; what the evidence wanted is recorded
                infos[i].update(degree=list(current[i]) if n_arms[i] > 1 else current[i][0], degrees=list(current[i]),
                                wanted=list(choice.degrees))
        if not moved:
            break
        pending = []
        for chosen, members in moved.items():
            new = [problems[i].with_design(continuum_design_matrix(wavelengths[i], arms[i], list(chosen))) for i in members]
            starts = np.stack([np.clip(results[i].theta, p.lower, p.upper) for i, p in zip(members, new)])
            if len(members) == 1:
                polished = [polish_map(new[0], starts[0], max_steps=REFIT_STEPS, space=space)]
            else:
                polished = polish_map_batch(new, starts, max_steps=REFIT_STEPS, space=space)
            for i, problem, result in zip(members, new, polished):
                first = results[i]
                if not np.all(np.isfinite(result.theta)):  # keep the MAP that was found, and its design
                    infos[i].update(degree=list(current[i]) if n_arms[i] > 1 else current[i][0], degrees=list(current[i]),
                                    wanted=list(chosen), settled=False)
                    continue
                covariance = None
                if first.covariance is not None:
                    covariance = _map.laplace_covariance(problem, result.theta)
                results[i] = dataclasses.replace(result, covariance=covariance, all_objectives=first.all_objectives)
                problems[i] = problem
                current[i] = chosen
                infos[i]["refits"] += 1
                infos[i]["path"].append(list(chosen) if n_arms[i] > 1 else chosen[0])
                pending.append(i)
    return problems, results, infos
