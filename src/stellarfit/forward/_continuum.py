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

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

__all__ = ["continuum_design_matrix", "profile_continuum", "continuum_chi2"]


def continuum_design_matrix(wavelength: np.ndarray, arms: np.ndarray | None = None, degree=2) -> np.ndarray:
    """Legendre design matrix, (n_pixels, sum over arms of (degree + 1)), float64.

    Args:
        wavelength: (n_pixels,) [A].
        arms: (n_pixels,) integer arm ids (None: one arm).
        degree: polynomial degree per arm (0 = a constant scale): one integer for every arm, or
            a sequence with one per arm, in the order of the sorted arm ids (what
            :func:`~stellarfit.forward.choose_continuum_degree` picks).
    Block ``a`` holds arm ``a``'s columns P_0 .. P_degree, so a lower degree's design is the
    first columns of each block of a higher one's.
    """
    wavelength = np.asarray(wavelength, dtype=np.float64)
    arms = np.zeros(wavelength.size, dtype=int) if arms is None else np.asarray(arms)
    if arms.shape != wavelength.shape:
        raise ValueError(f"arms has shape {arms.shape}, wavelength {wavelength.shape}")
    arm_ids = np.unique(arms)
    degrees = list(degree) if isinstance(degree, (list, tuple, np.ndarray)) else [degree] * arm_ids.size
    for value in degrees:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"continuum degree must be an integer >= 0 (0: a constant scale), got {degree!r}")
    if len(degrees) != arm_ids.size:
        raise ValueError(f"{len(degrees)} continuum degrees given for {arm_ids.size} arms ({arm_ids.tolist()}); "
                         "give one integer, or one per arm")
    design = np.zeros((wavelength.size, sum(int(d) + 1 for d in degrees)))
    first = 0
    for arm, value in zip(arm_ids, degrees):
        pick = arms == arm
        lo, hi = wavelength[pick].min(), wavelength[pick].max()
        x = 2.0 * (wavelength[pick] - lo) / (hi - lo) - 1.0 if hi > lo else np.zeros(pick.sum())
        design[np.ix_(pick, first + np.arange(int(value) + 1))] = np.polynomial.legendre.legvander(x, int(value))
        first += int(value) + 1
    return design


# Products over the pixels with a small continuum (k <= _SMALL_DESIGN coefficients: one arm of degree
# <= 3) are written so that XLA's CPU backend runs them as fused loops or a matrix-vector product with
# the pixels along rows: its matrix products with an inner or outer dimension of 2-4 pixels' columns,
# and its library fusions of such reductions, cost 5-20x their arithmetic (the normal matrix and the
# leverages of the likelihood's gradient took a tenth of a payne-default gradient; docs/validation/speed.md).
_SMALL_DESIGN = 4


def _weighted_gram(design, weight):
    """sum_i weight_i B_ia B_ib, (k, k)."""
    k = design.shape[-1]
    if k > _SMALL_DESIGN:
        return design.T @ (design * weight[:, None])
    columns = design.T  # (k, n)
    products = (columns[:, None, :] * columns[None, :, :]).reshape(k * k, -1)  # constant when the design is
    return (products @ weight).reshape(k, k)


def _times_design(design, matrix):
    """B @ ``matrix`` for (k, m) ``matrix``: (n, m)."""
    if design.shape[-1] > _SMALL_DESIGN:
        return design @ matrix
    columns = design.T
    return sum(columns[a][:, None] * matrix[a][None, :] for a in range(design.shape[-1]))


def _leverage(design, inverse):
    """q_i = B_i^T A^-1 B_i for the symmetric (k, k) ``inverse``, (n,)."""
    k = design.shape[-1]
    if k > _SMALL_DESIGN:
        return jnp.sum((design @ inverse) * design, axis=1)
    columns = design.T
    return sum(columns[a] * columns[b] * inverse[a, b] for a in range(k) for b in range(k))


def _normal_matrix(model, ivar, design, ridge):
    """(A = (B m)^T W (B m) plus the ridge, B^T W m f's weights W m)."""
    weight = ivar * model
    normal = _weighted_gram(design, weight * model)
    scale = jnp.trace(normal) / normal.shape[0]
    return normal + ridge * scale * jnp.eye(normal.shape[0], dtype=normal.dtype), weight


def _right_hand_side(design, weight, flux):
    """(B m)^T W f = B^T (W m f), (k,)."""
    return design.T @ (weight * flux)


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
    normal, weight = _normal_matrix(model, ivar, design, ridge)
    coefficients = jnp.linalg.solve(normal, _right_hand_side(design, weight, flux))
    continuum = _times_design(design, coefficients[:, None])[:, 0]
    residual = flux - continuum * model
    chi2 = jnp.sum(ivar * residual**2)
    _, logdet = jnp.linalg.slogdet(normal)
    return coefficients, continuum, chi2, logdet


@jax.custom_jvp
def continuum_chi2(model, flux, ivar, design):
    """(chi2 at the best continuum, log det A): what a likelihood needs of :func:`profile_continuum`.

    The same values, with derivatives from the envelope theorem instead of through the solve:
    the coefficients minimize chi2, so d chi2 = (partial derivative at fixed coefficients),
    i.e. -2 ivar r (B c) dm + 2 ivar r df + r^2 divar - 2 ivar r m (dB c) with r the residual;
    and d log det A = tr(A^-1 dA) = sum_i q_i (m_i^2 divar_i + 2 ivar_i m_i dm_i)
    + 2 sum_i ivar_i m_i^2 B_i^T A^-1 dB_i, q_i = B_i^T A^-1 B_i.  (The ridge of
    :func:`profile_continuum`, 1e-10 of the matrix's scale, is left out of the derivatives.)
    Forward and reverse mode, to any order (the rule is itself differentiable), vmap and jit.
    """
    _, _, chi2, logdet = profile_continuum(model, flux, ivar, design)
    return chi2, logdet


def _continuum_chi2_jvp(primals, tangents):
    model, flux, ivar, design = primals
    # symbolic zeros: a likelihood differentiates the model only; flux, ivar and design are constants
    # there, and their terms are left out instead of computed from zeros
    d_model, d_flux, d_ivar, d_design = (None if type(t) is SymbolicZero else t for t in tangents)
    if design.shape[-1] == 0:
        residual = flux - model
        chi2 = jnp.sum(ivar * residual**2)
        d_chi2 = jnp.zeros((), chi2.dtype)
        if d_flux is not None or d_model is not None:
            d_difference = (0.0 if d_flux is None else d_flux) - (0.0 if d_model is None else d_model)
            d_chi2 = d_chi2 + jnp.sum(2.0 * ivar * residual * d_difference)
        if d_ivar is not None:
            d_chi2 = d_chi2 + jnp.sum(residual**2 * d_ivar)
        zero = jnp.zeros((), chi2.dtype)
        return (chi2, zero), (d_chi2, zero)
    normal, weight = _normal_matrix(model, ivar, design, 1e-10)
    # A^-1 itself (k x k) next to the coefficients: the leverages need B_i^T A^-1 B_i, not A^-1 B^T (k x n)
    k = normal.shape[0]
    solved = jnp.linalg.solve(normal, jnp.concatenate([_right_hand_side(design, weight, flux)[:, None],
                                                      jnp.eye(k, dtype=normal.dtype)], axis=1))
    coefficients, inverse = solved[:, 0], solved[:, 1:]
    continuum = _times_design(design, coefficients[:, None])[:, 0]
    residual = flux - continuum * model
    chi2 = jnp.sum(ivar * residual**2)
    _, logdet = jnp.linalg.slogdet(normal)
    weighted_residual = 2.0 * ivar * residual
    leverage = _leverage(design, inverse)  # q_i = B_i^T A^-1 B_i
    d_chi2 = jnp.zeros((), chi2.dtype)
    d_logdet = jnp.zeros((), chi2.dtype)
    if d_model is not None:
        d_chi2 = d_chi2 - jnp.sum(weighted_residual * continuum * d_model)
        d_logdet = d_logdet + jnp.sum(leverage * 2.0 * ivar * model * d_model)
    if d_flux is not None:
        d_chi2 = d_chi2 + jnp.sum(weighted_residual * d_flux)
    if d_ivar is not None:
        d_chi2 = d_chi2 + jnp.sum(residual**2 * d_ivar)
        d_logdet = d_logdet + jnp.sum(leverage * model**2 * d_ivar)
    if d_design is not None:
        d_chi2 = d_chi2 - jnp.sum(weighted_residual * model * (d_design @ coefficients))
        design_inverse = _times_design(design, inverse)  # (n, k): row i is B_i^T A^-1
        d_logdet = d_logdet + 2.0 * jnp.sum(ivar * model**2 * jnp.sum(design_inverse * d_design, axis=1))
    return (chi2, logdet), (d_chi2, d_logdet)


continuum_chi2.defjvp(_continuum_chi2_jvp, symbolic_zeros=True)
