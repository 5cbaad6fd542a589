"""How flexible the continuum is: its Legendre degree per arm, chosen by the evidence.

The observed flux is f = (B c) * m + noise, with m (n,) the normalized model at given labels,
B (n, k) the Legendre design of :func:`~stellarfit.forward.continuum_design_matrix` and c (k,)
the coefficients (for one arm of degree d, k = d + 1).  With X = diag(m) B, the noise's inverse
variance W = diag(ivar) and a proper Gaussian prior c ~ N(0, S), S = diag(s_a^2) (s_a the flux
level of the coefficient's arm times ``prior_width``), the coefficients integrate out exactly:

    log Z(d) = -1/2 [ (f - X c*)^T W (f - X c*) + c*^T S^-1 c* ]
               - 1/2 log det(X^T W X + S^-1) - 1/2 log det S  + const,
    c* = (X^T W X + S^-1)^-1 X^T W f,

const = 1/2 log det W - n/2 log 2 pi, the same for every degree (left out).  The last two terms
are the Occam factor: each coefficient costs about log(prior width / posterior width) nats
(~9 at S/N 100 on 8,600 pixels), so a coefficient is kept when it lowers chi2 by more than about
twice that.  Without the prior's normalization (-1/2 log det S, i.e. a flat prior) the evidence
depends on the units of the flux: in units where the flux is large every further coefficient
looks cheap and the highest degree wins; with it, rescaling the flux moves every log Z by the
same constant and the choice does not change.

An emulator's error modes E (n, q) (``FitProblem.error_basis``, unit Gaussian amplitudes) enter
as q more linear parameters with prior N(0, I) next to c: the same formula with X -> [X E] and
S -> diag(S, I).  They couple the arms; without them the evidence is a sum over arms and each
arm's degree is chosen on its own (the coordinate ascent of :func:`choose_continuum_degree`
converges in one sweep).

Everything here is float64 numpy: a handful of (k + q)-sized solves per degree.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from stellarfit.forward._continuum import continuum_design_matrix

__all__ = [
    "AUTO_DEGREE",
    "MAX_AUTO_DEGREE",
    "PIXELS_PER_COEFFICIENT",
    "PRIOR_WIDTH",
    "ContinuumChoice",
    "check_continuum_degree",
    "choose_continuum_degree",
    "continuum_log_evidence",
    "continuum_prior_scale",
]

#: ``continuum_degree`` value that asks for the degree to be chosen by the evidence
AUTO_DEGREE = "auto"
#: highest degree :func:`choose_continuum_degree` tries per arm (fewer on arms with few pixels)
MAX_AUTO_DEGREE = 8
#: good pixels an arm needs per coefficient for a degree to be tried: degree <= n_good / 20 - 1
PIXELS_PER_COEFFICIENT = 20
#: the prior's standard deviation of every Legendre coefficient, in units of its arm's flux level
PRIOR_WIDTH = 1.0


def check_continuum_degree(degree) -> str | int | tuple[int, ...]:
    """``continuum_degree`` as given to ``fit_star`` / ``fit_stars`` / the CLI, validated.

    Returns "auto", an integer >= 0 (every arm) or a tuple of them (one per arm).  Strings of
    digits ("3", from a command line) become integers.  Raises ValueError naming the accepted
    values otherwise.
    """
    if isinstance(degree, str):
        text = degree.strip().lower()
        if text == AUTO_DEGREE:
            return AUTO_DEGREE
        if text.isdigit():
            return int(text)
    elif isinstance(degree, (int, np.integer)) and not isinstance(degree, bool) and degree >= 0:
        return int(degree)
    elif isinstance(degree, (list, tuple, np.ndarray)) and len(degree) > 0 and all(
            isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 0 for d in degree):
        return tuple(int(d) for d in degree)
    raise ValueError(f"continuum_degree must be 'auto' (chosen by the evidence), an integer >= 0 "
                     f"(0: a constant scale) or one such integer per arm; got {degree!r}")


def continuum_prior_scale(flux: np.ndarray, ivar: np.ndarray, arms: np.ndarray | None = None) -> np.ndarray:
    """Flux level of each arm, (n_arms,) in the flux's units: the median |flux| of its good pixels
    (ivar > 0), arms in sorted id order.  An arm whose median is 0 or not finite falls back to the
    largest |flux| of its good pixels, then to 1."""
    flux = np.asarray(flux, dtype=np.float64)
    ivar = np.asarray(ivar, dtype=np.float64)
    arms = np.zeros(flux.size, dtype=int) if arms is None else np.asarray(arms)
    scales = []
    for arm in np.unique(arms):
        values = np.abs(flux[(arms == arm) & (ivar > 0) & np.isfinite(flux)])
        level = float(np.median(values)) if values.size else 0.0
        if not (np.isfinite(level) and level > 0):
            level = float(values.max()) if values.size and np.isfinite(values.max()) and values.max() > 0 else 1.0
        scales.append(level)
    return np.asarray(scales)


def _columns(arm_ids: np.ndarray, max_degrees: Sequence[int], degrees: Sequence[int]) -> np.ndarray:
    """Columns of the design of ``max_degrees`` that make the design of ``degrees`` (nested Legendre blocks)."""
    columns, first = [], 0
    for top, degree in zip(max_degrees, degrees):
        columns.extend(range(first, first + degree + 1))
        first += top + 1
    return np.asarray(columns, dtype=int)


class _Evidence:
    """log Z for any degrees up to ``max_degrees``, from the normal equations of the largest design
    computed once (the lower degrees' designs are subsets of its columns)."""

    def __init__(self, model, flux, ivar, wavelength, arms, max_degrees, prior_scale, error_basis=None):
        good = np.asarray(ivar, dtype=np.float64) > 0
        self.weight = np.asarray(ivar, dtype=np.float64)[good]
        self.flux = np.asarray(flux, dtype=np.float64)[good]
        arms = np.zeros(good.size, dtype=int) if arms is None else np.asarray(arms)
        self.arm_ids = np.unique(arms)
        self.max_degrees = [int(d) for d in max_degrees]
        design = continuum_design_matrix(wavelength, arms, self.max_degrees)[good]
        # the prior's variance of every column: its arm's (flux level * prior width)^2
        self.prior_variance = np.concatenate([np.full(d + 1, float(s) ** 2) for d, s in zip(self.max_degrees, prior_scale)])
        columns = design * np.asarray(model, dtype=np.float64)[good, None]
        self.n_continuum = columns.shape[1]
        if error_basis is not None:
            columns = np.concatenate([columns, np.asarray(error_basis, dtype=np.float64)[good]], axis=1)
        self.columns = columns
        self.gram = columns.T @ (columns * self.weight[:, None])
        self.rhs = columns.T @ (self.weight * self.flux)

    def __call__(self, degrees: Sequence[int]) -> float:
        picked = _columns(self.arm_ids, self.max_degrees, degrees)
        modes = np.arange(self.n_continuum, self.columns.shape[1])
        every = np.concatenate([picked, modes])
        precision = np.concatenate([1.0 / self.prior_variance[picked], np.ones(modes.size)])
        matrix = self.gram[np.ix_(every, every)] + np.diag(precision)
        # Jacobi scaling: continuum and error-mode columns differ by many orders of magnitude
        scale = 1.0 / np.sqrt(np.diag(matrix))
        try:
            factor = np.linalg.cholesky(matrix * np.outer(scale, scale))
        except np.linalg.LinAlgError:
            return float("-inf")
        solution = scale * np.linalg.solve(factor.T, np.linalg.solve(factor, scale * self.rhs[every]))
        residual = self.flux - self.columns[:, every] @ solution
        quadratic = float(np.sum(self.weight * residual**2) + np.sum(precision * solution**2))
        log_det = 2.0 * float(np.sum(np.log(np.diag(factor)))) - 2.0 * float(np.sum(np.log(scale)))
        log_det_prior = float(np.sum(np.log(self.prior_variance[picked])))  # log det S (the modes' is 0)
        return -0.5 * quadratic - 0.5 * log_det - 0.5 * log_det_prior


def continuum_log_evidence(model: np.ndarray, flux: np.ndarray, ivar: np.ndarray, wavelength: np.ndarray,
                           arms: np.ndarray | None = None, degree=2, *, prior_scale: np.ndarray | None = None,
                           prior_width: float = PRIOR_WIDTH, error_basis: np.ndarray | None = None) -> float:
    """log Z of the continuum coefficients (module docstring), up to a constant common to all degrees.

    Args:
        model: (n,) normalized model at the labels the evidence is evaluated at.
        flux, ivar: (n,) observed flux and inverse variance (0: not used).
        wavelength: (n,) [A]; arms: (n,) integer arm ids (None: one arm).
        degree: one integer for every arm, or one per arm (sorted arm ids).
        prior_scale: (n_arms,) flux level of each arm (default :func:`continuum_prior_scale`);
            the prior's sigma is ``prior_width`` times it.
        error_basis: (n, q) the emulator's error modes (unit Gaussian amplitudes) or None.
    Returns log Z [nats] (float64).
    """
    arm_ids = np.unique(np.zeros(np.size(flux), dtype=int) if arms is None else np.asarray(arms))
    degrees = list(degree) if isinstance(degree, (list, tuple, np.ndarray)) else [int(degree)] * arm_ids.size
    scale = continuum_prior_scale(flux, ivar, arms) if prior_scale is None else np.asarray(prior_scale, np.float64)
    return _Evidence(model, flux, ivar, wavelength, arms, degrees, prior_width * scale, error_basis)(degrees)


@dataclasses.dataclass
class ContinuumChoice:
    """What :func:`choose_continuum_degree` found.

    Attributes:
        degrees: (n_arms,) the chosen degree of each arm (sorted arm ids).
        arm_ids: (n_arms,) the arm ids.
        log_evidence: per arm, degree -> log Z - log Z(chosen) [nats] (the other arms at their
            chosen degrees); 0 at the chosen degree, negative elsewhere.
        max_degrees: (n_arms,) the highest degree tried on each arm.
        prior_scale: (n_arms,) the prior's sigma of each arm's coefficients (flux units).
    """

    degrees: tuple[int, ...]
    arm_ids: tuple[int, ...]
    log_evidence: list[dict[int, float]]
    max_degrees: tuple[int, ...]
    prior_scale: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: ``degree`` (an integer when every arm has the same, else the list),
        ``degrees``, ``chosen_by``, ``log_evidence`` (degree -> value for one arm; arm id -> that
        for several), ``max_degree``, ``prior_sigma``."""
        single = len(set(self.degrees)) == 1
        table: Any = self.log_evidence[0] if len(self.arm_ids) == 1 else dict(zip(self.arm_ids, self.log_evidence))
        return {
            "degree": self.degrees[0] if single else list(self.degrees),
            "degrees": list(self.degrees),
            "chosen_by": "evidence",
            "log_evidence": table,
            "max_degree": list(self.max_degrees) if len(self.arm_ids) > 1 else self.max_degrees[0],
            "prior_sigma": list(self.prior_scale),
        }


def choose_continuum_degree(model: np.ndarray, flux: np.ndarray, ivar: np.ndarray, wavelength: np.ndarray,
                            arms: np.ndarray | None = None, *, max_degree: int = MAX_AUTO_DEGREE,
                            prior_width: float = PRIOR_WIDTH, error_basis: np.ndarray | None = None,
                            start: Sequence[int] | None = None) -> ContinuumChoice:
    """The continuum degree of each arm with the largest evidence (:func:`continuum_log_evidence`)
    for the normalized ``model`` (n,) at fixed labels.

    Degrees 0 .. min(``max_degree``, n_good / :data:`PIXELS_PER_COEFFICIENT` - 1) are tried on
    each arm; arms are chosen in turn, the others held, until none changes (one sweep plus a
    check without error modes, where the evidence is a sum over arms).  ``start``: the degrees
    the sweeps start from (default 2, or the arm's largest).  Arguments otherwise as
    :func:`continuum_log_evidence`.  Cost: one (max_degree + 1 + q)^2 n product, then one small
    Cholesky per degree tried.
    """
    if isinstance(max_degree, bool) or not isinstance(max_degree, (int, np.integer)) or max_degree < 0:
        raise ValueError(f"max_degree must be an integer >= 0, got {max_degree!r}")
    if not (np.isfinite(prior_width) and prior_width > 0):
        raise ValueError(f"prior_width must be a positive number (the prior's sigma in flux levels), got {prior_width!r}")
    flux = np.asarray(flux, dtype=np.float64)
    ivar = np.asarray(ivar, dtype=np.float64)
    arms = np.zeros(flux.size, dtype=int) if arms is None else np.asarray(arms)
    arm_ids = np.unique(arms)
    good = ivar > 0
    max_degrees = [int(min(max_degree, max(np.sum(good & (arms == arm)) // PIXELS_PER_COEFFICIENT - 1, 0)))
                   for arm in arm_ids]
    scale = prior_width * continuum_prior_scale(flux, ivar, arms)
    evidence = _Evidence(model, flux, ivar, wavelength, arms, max_degrees, scale, error_basis)
    degrees = [min(2, top) for top in max_degrees] if start is None else [min(int(d), top) for d, top in zip(start, max_degrees)]
    tables: list[dict[int, float]] = [{} for _ in arm_ids]
    for _ in range(4):  # coordinate ascent over the arms
        changed = False
        for a, top in enumerate(max_degrees):
            values = {d: evidence(degrees[:a] + [d] + degrees[a + 1:]) for d in range(top + 1)}
            best = max(values, key=lambda d: values[d])
            changed |= best != degrees[a]
            degrees[a] = best
            tables[a] = {d: float(v - values[best]) for d, v in values.items()}
        if not changed or len(arm_ids) == 1:
            break
    return ContinuumChoice(tuple(degrees), tuple(int(a) for a in arm_ids), tables, tuple(max_degrees),
                           tuple(float(s) for s in scale))
