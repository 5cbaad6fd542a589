"""Optical depth and the formal solution of the JAX LTE synthesizer.

Owns:

- ``optical_depth``: tau on the column-mass scale, tau(m) = integral kappa dm
  with kappa [cm^2/g] the opacity per unit mass; between layers f = kappa m
  is taken as a power law in m, so each step is exact for power-law opacities:
  d tau = (f_2 - f_1) / ln(f_2 / f_1) ln(m_2 / m_1); tau(m_top) = kappa_top
  m_top above the first layer (kappa constant above the model), as in ATLAS.
- ``emergent_flux``: surface flux F = 2 pi int_0^1 I(mu) mu dmu by
  Gauss-Legendre quadrature in mu, with I(mu) from a piecewise-linear (in
  tau) source function integrated exactly on every layer (short-characteristic
  weights), a constant source function above the top layer, and the diffusion
  approximation I = S + mu dS/dtau below the bottom one.  For S linear in tau
  this is exact: F = pi (S0 + 2/3 S1) (tested).

The source function is LTE, S = B_lambda(T): scattering opacity is treated as
absorption (no scattering term in S).  Arrays are laid out (..., n_depth) with
the top of the atmosphere first.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

__all__ = ["optical_depth", "emergent_flux", "gauss_legendre_mu"]

_SMALL_DTAU = 1e-2


def gauss_legendre_mu(n_mu: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes and weights on mu in [0, 1]."""
    x, w = np.polynomial.legendre.leggauss(n_mu)
    return 0.5 * (x + 1.0), 0.5 * w


def optical_depth(kappa, column_mass):
    """Optical depth on the column-mass scale.

    Args:
        kappa: (..., n_depth) opacity per unit mass [cm^2 g^-1].
        column_mass: (n_depth,) or broadcastable, increasing [g cm^-2].

    Returns:
        tau: (..., n_depth), tau[..., 0] = kappa[..., 0] * m[0].
    """
    km = kappa * column_mass
    dlnm = jnp.diff(jnp.log(column_mass), axis=-1)
    f1, f2 = km[..., :-1], km[..., 1:]
    r = jnp.log(f2) - jnp.log(f1)
    small = jnp.abs(r) < 1e-3
    r_safe = jnp.where(small, 1.0, r)
    # logarithmic mean of f1, f2 (series near f1 = f2)
    mean = jnp.where(small, f1 * (1.0 + r * (0.5 + r / 6.0)), (f2 - f1) / r_safe)
    increments = mean * dlnm
    tau0 = km[..., :1]
    return jnp.concatenate([tau0, tau0 + jnp.cumsum(increments, axis=-1)], axis=-1)


def _thin_series(d):
    """(int_0^d x e^-x dx) / d for small d: d/2 - d^2/3 + d^3/8 - d^4/30."""
    return d * (0.5 - d * (1.0 / 3.0 - d * (1.0 / 8.0 - d / 30.0)))


def emergent_flux(source, tau, n_mu: int = 6):
    """Surface flux from a piecewise-linear source function.

    Args:
        source: (..., n_depth) source function S (e.g. B_lambda), top first.
        tau: (..., n_depth) optical depth, increasing with depth, tau > 0.
        n_mu: number of Gauss-Legendre angles on mu in [0, 1].

    Returns:
        (...,) F = 2 pi int I(mu) mu dmu, in the units of ``source`` times sr.
    """
    mus, weights = gauss_legendre_mu(n_mu)
    dtau = jnp.diff(tau, axis=-1)
    dsource = jnp.diff(source, axis=-1)
    inv_dtau = 1.0 / jnp.where(dtau > 0, dtau, 1.0)
    slope_bottom = dsource[..., -1] * inv_dtau[..., -1]
    flux = jnp.zeros_like(source[..., 0])
    for mu, weight in zip(mus.tolist(), weights.tolist(), strict=True):
        # On layer i with d = dtau_i / mu and E_i = exp(-tau_i / mu):
        #   int S e^{-t/mu} dt/mu = S_i (E_i - E_{i+1}) + (S_{i+1} - S_i) B_i,
        #   B_i = (E_i - E_{i+1} - d E_{i+1}) / d  (series for thin layers).
        # The cancellation in B_i only multiplies the small dS of thin layers.
        e = jnp.exp(tau * (-1.0 / mu))
        e_top, e_bottom = e[..., :-1], e[..., 1:]
        d = dtau * (1.0 / mu)
        thin = d < _SMALL_DTAU
        b_direct = (e_top - e_bottom - d * e_bottom) * (inv_dtau * mu)
        b = jnp.where(thin, e_top * _thin_series(jnp.where(thin, d, 0.0)), b_direct)
        layers = source[..., :-1] * (e_top - e_bottom) + dsource * b
        intensity = (
            source[..., 0] * -jnp.expm1(-tau[..., 0] / mu)
            + jnp.sum(layers, axis=-1)
            + e[..., -1] * (source[..., -1] + mu * slope_bottom)
        )
        flux = flux + (2.0 * math.pi * weight * mu) * intensity
    return flux
