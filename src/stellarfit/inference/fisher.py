"""Fisher information and Cramér-Rao bounds.

For a model flux f(theta) at n pixels with pixel covariance C,

    F = J^T C^-1 J,   J = d f / d theta  (n, p),

(diag(1/ivar) for independent pixels; a banded C is accepted as a dense
matrix).  Gaussian priors add 1/sigma^2 to the diagonal.  The bound on
parameter i is sigma_i = sqrt((F^-1)_ii); nuisance parameters (RV, vsini,
continuum coefficients) must be part of theta so that taking the block of F^-1
marginalizes over them — fixing them would make the bound optimistic.

Numerics: J is taken by forward-mode autodiff (``jax.jacfwd``) in the model's
own dtype (float32 emulators give J to ~1e-7 relative; run with JAX x64
enabled for a float64 J) and F is accumulated in float64, over pixel chunks so
that long spectra need little memory (as Chem-I-Calc does).  (Switching x64 on
only around the Jacobian is avoided: JAX may then reuse executables compiled
for the other precision.)  F is inverted after
scaling to unit diagonal; parameters whose Fisher diagonal is negligible are
reported as unconstrained (infinite bound) and removed before inversion, and
an ill-conditioned F is flagged.  Parameters held fixed (a zero scale: a
zero-width box such as ``vsini_max=0``) are removed too, with a bound of 0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["FisherResult", "fisher_matrix", "cramer_rao_from_fisher"]


@dataclasses.dataclass(frozen=True)
class FisherResult:
    """Fisher matrix and Cramér-Rao bounds.

    Attributes:
        names: parameter names, (p,).
        fisher: (p, p) float64 Fisher matrix (priors included).
        covariance: (p, p) inverse of ``fisher`` over the constrained parameters
            (rows/columns of unconstrained parameters are inf on the diagonal, 0 elsewhere;
            those of fixed parameters are 0).
        sigma: (p,) Cramér-Rao bounds, inf for unconstrained parameters, 0 for fixed ones.
        unconstrained: names whose Fisher information is negligible.
        condition_number: of the unit-diagonal-scaled Fisher matrix.
    """

    names: tuple[str, ...]
    fisher: np.ndarray
    covariance: np.ndarray
    sigma: np.ndarray
    unconstrained: tuple[str, ...]
    condition_number: float

    def as_dict(self) -> dict[str, float]:
        return {name: float(value) for name, value in zip(self.names, self.sigma)}

    @property
    def correlation(self) -> np.ndarray:
        """(p, p) correlation matrix from the covariance (0 for unconstrained parameters)."""
        good = np.isfinite(self.sigma) & (self.sigma > 0)
        correlation = np.zeros_like(self.covariance)
        index = np.flatnonzero(good)
        correlation[np.ix_(index, index)] = self.covariance[np.ix_(index, index)] / np.outer(self.sigma[index], self.sigma[index])
        return correlation

    @property
    def ill_conditioned(self) -> bool:
        return not np.isfinite(self.condition_number) or self.condition_number > 1e12


def fisher_matrix(
    model_fn: Callable,
    theta: np.ndarray,
    ivar: np.ndarray | None = None,
    *,
    covariance: np.ndarray | None = None,
    chunk_size: int | None = None,
) -> np.ndarray:
    """F = J^T C^-1 J for ``model_fn(theta (p,)) -> (n,)``, float64.

    Args:
        model_fn: pure JAX model; differentiated with ``jax.jacfwd``.
        theta: (p,) parameters at which to evaluate.
        ivar: (n,) inverse variances (independent pixels; 0 = masked).
        covariance: (n, n) pixel covariance instead of ``ivar`` (e.g. banded).
        chunk_size: accumulate over pixel chunks of this size (ivar only).
    Returns: (p, p) float64.
    """
    if (ivar is None) == (covariance is None):
        raise ValueError("give exactly one of ivar (independent pixels) or covariance (n x n)")
    theta = jnp.asarray(np.asarray(theta, dtype=np.float64), dtype=jnp.result_type(float))
    jacobian = np.asarray(jax.jit(jax.jacfwd(model_fn))(theta), dtype=np.float64)
    if jacobian.ndim != 2:
        raise ValueError(f"model_fn must return a 1-D array of pixels; the Jacobian has shape {jacobian.shape}")
    if not np.all(np.isfinite(jacobian)):
        raise FloatingPointError("the model's Jacobian has NaN or infinite entries at theta; check the parameters")
    if covariance is not None:
        covariance = np.asarray(covariance, dtype=np.float64)
        return jacobian.T @ np.linalg.solve(covariance, jacobian)
    ivar = np.asarray(ivar, dtype=np.float64)
    if ivar.shape != (jacobian.shape[0],):
        raise ValueError(f"ivar has shape {ivar.shape}; the model has {jacobian.shape[0]} pixels")
    if np.any(ivar < 0) or not np.all(np.isfinite(ivar)):
        raise ValueError("ivar must be finite and >= 0")
    step = chunk_size or jacobian.shape[0]
    fisher = np.zeros((jacobian.shape[1],) * 2)
    for start in range(0, jacobian.shape[0], step):
        block = jacobian[start : start + step]
        fisher += block.T @ (block * ivar[start : start + step, None])
    return fisher


def cramer_rao_from_fisher(
    fisher: np.ndarray,
    names: Sequence[str],
    *,
    prior_sigma: Sequence[float | None] | None = None,
    scales: Sequence[float] | None = None,
    unconstrained_threshold: float = 1e-6,
) -> FisherResult:
    """Cramér-Rao bounds from a Fisher matrix (priors added, unconstrained parameters detected).

    Args:
        fisher: (p, p).
        names: (p,) parameter names.
        prior_sigma: (p,) Gaussian prior widths (None entries: no prior).
        scales: (p,) a plausible range of each parameter (e.g. the label box
            width) in its units; default 1.  A scale of 0 marks a parameter
            held fixed (a zero-width box, e.g. ``vsini_max=0``): it is left
            out of the inversion, its bound and covariance are 0 and its
            Fisher row and column (which may be NaN) are set to 0.
        unconstrained_threshold: a parameter with F_ii * scale_i^2 below this
            (i.e. even alone its bound would exceed 1000 x its range, for the
            default 1e-6) is reported unconstrained, with an infinite bound.
    """
    fisher = np.array(fisher, dtype=np.float64)
    names = tuple(names)
    p = len(names)
    if fisher.shape != (p, p):
        raise ValueError(f"fisher has shape {fisher.shape}, expected ({p}, {p}) for {names}")
    scales = np.ones(p) if scales is None else np.asarray(scales, dtype=np.float64)
    if scales.shape != (p,) or not np.all(np.isfinite(scales)) or np.any(scales < 0):
        raise ValueError(f"scales must be {p} finite numbers >= 0 (0: a fixed parameter)")
    fixed = scales == 0
    fisher[fixed, :] = 0.0
    fisher[:, fixed] = 0.0
    if not np.all(np.isfinite(fisher)):
        bad = sorted({names[i] for i in np.argwhere(~np.isfinite(fisher)).ravel()})
        raise ValueError(f"the Fisher matrix has NaN or infinite entries for {', '.join(bad)}")
    if not np.allclose(fisher, fisher.T, rtol=1e-8, atol=1e-12 * np.abs(fisher).max()):
        raise ValueError("the Fisher matrix is not symmetric")
    if prior_sigma is not None:
        for i, sigma in enumerate(prior_sigma):
            if sigma is not None:
                if not sigma > 0:
                    raise ValueError(f"prior sigma for {names[i]} must be positive, got {sigma}")
                if not fixed[i]:
                    fisher[i, i] += 1.0 / sigma**2
    constrained = ~fixed & (np.diag(fisher) * scales**2 > unconstrained_threshold)
    unconstrained = ~fixed & ~constrained
    keep = np.flatnonzero(constrained)
    covariance = np.zeros((p, p))
    sigma = np.where(fixed, 0.0, np.inf)
    condition = np.inf
    if keep.size:
        sub = fisher[np.ix_(keep, keep)]
        scale = 1.0 / np.sqrt(np.diag(sub))
        scaled = sub * np.outer(scale, scale)
        condition = float(np.linalg.cond(scaled))
        inverse = np.linalg.pinv(scaled, rcond=1e-15, hermitian=True) * np.outer(scale, scale)
        covariance[np.ix_(keep, keep)] = inverse
        sigma[keep] = np.sqrt(np.clip(np.diag(inverse), 0.0, None))
    for i in np.flatnonzero(unconstrained):
        covariance[i, i] = np.inf
    return FisherResult(
        names=names,
        fisher=fisher,
        covariance=covariance,
        sigma=sigma,
        unconstrained=tuple(names[i] for i in np.flatnonzero(unconstrained)),
        condition_number=condition,
    )
