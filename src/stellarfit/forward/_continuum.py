"""The continuum: a polynomial per arm multiplying the normalized model.

flux_model = (B c) * m, with B (n_pixels, n_coefficients) a block-diagonal
Legendre design matrix (one block of ``degree + 1`` columns per arm, x scaled
to [-1, 1] over the arm) and m the normalized model.  The model is linear in c,
so for given labels the best c follows from weighted least squares
(:func:`profile_continuum`), and with a flat prior c can be integrated out
analytically: log L_marg = -chi2_min / 2 - log det(A) / 2 + const, with
A = (B*m)^T W (B*m).  Relative (unnormalized) fluxes and normalized fluxes
are handled alike: for a normalized spectrum c comes out close to (1, 0, ...).
Degree 0 is a constant scale per arm.  A design with no columns, shape
(n_pixels, 0), means no continuum at all: the model is compared with the flux
as it is (continuum fixed at 1, no coefficients, log det A = 0).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

__all__ = ["continuum_design_matrix", "profile_continuum"]


def continuum_design_matrix(wavelength: np.ndarray, arms: np.ndarray | None = None, degree: int = 2) -> np.ndarray:
    """Legendre design matrix, (n_pixels, n_arms * (degree + 1)), float64.

    Args:
        wavelength: (n_pixels,) [A].
        arms: (n_pixels,) integer arm ids (None: one arm).
        degree: polynomial degree per arm (0 = a constant scale).
    """
    wavelength = np.asarray(wavelength, dtype=np.float64)
    if isinstance(degree, bool) or not isinstance(degree, (int, np.integer)) or degree < 0:
        raise ValueError(f"continuum degree must be an integer >= 0 (0: a constant scale), got {degree!r}")
    arms = np.zeros(wavelength.size, dtype=int) if arms is None else np.asarray(arms)
    if arms.shape != wavelength.shape:
        raise ValueError(f"arms has shape {arms.shape}, wavelength {wavelength.shape}")
    arm_ids = np.unique(arms)
    design = np.zeros((wavelength.size, arm_ids.size * (degree + 1)))
    for block, arm in enumerate(arm_ids):
        pick = arms == arm
        lo, hi = wavelength[pick].min(), wavelength[pick].max()
        x = 2.0 * (wavelength[pick] - lo) / (hi - lo) - 1.0 if hi > lo else np.zeros(pick.sum())
        design[np.ix_(pick, block * (degree + 1) + np.arange(degree + 1))] = np.polynomial.legendre.legvander(x, degree)
    return design


def profile_continuum(model, flux, ivar, design, ridge: float = 1e-10):
    """Best continuum coefficients for a normalized model (pure JAX).

    Args:
        model: (n,) normalized model flux.
        flux, ivar: (n,) observed flux and inverse variance (0 for masked pixels).
        design: (n, k) from :func:`continuum_design_matrix`; k = 0: no continuum (fixed at 1).
        ridge: relative ridge added to the normal matrix for stability.
    Returns:
        (coefficients (k,), continuum (n,), chi2 at the best coefficients, log det A)
    """
    if design.shape[-1] == 0:  # static shape: no continuum, the model is the flux model
        chi2 = jnp.sum(ivar * (flux - model) ** 2)
        return jnp.zeros((0,), chi2.dtype), jnp.ones_like(model), chi2, jnp.zeros((), chi2.dtype)
    basis = design * model[:, None]
    weighted = basis * ivar[:, None]
    normal = basis.T @ weighted
    scale = jnp.trace(normal) / normal.shape[0]
    normal = normal + ridge * scale * jnp.eye(normal.shape[0], dtype=normal.dtype)
    coefficients = jnp.linalg.solve(normal, weighted.T @ flux)
    continuum = design @ coefficients
    residual = flux - continuum * model
    chi2 = jnp.sum(ivar * residual**2)
    _, logdet = jnp.linalg.slogdet(normal)
    return coefficients, continuum, chi2, logdet
