"""The Voigt function for the JAX LTE synthesizer.

Owns the Faddeeva function w(z) = exp(-z^2) erfc(-i z) for Im z >= 0 and the
Voigt-Hjerting function H(a, v) = Re w(v + i a), by the W4 rational
approximation of Humlicek (1982, JQSRT 27, 437): four regions in
s = |x| + y, relative accuracy ~1e-4 (checked against scipy.special.wofz in
the tests).  The line profile normalized to unit area in Doppler units is
phi(v) = H(a, v) / sqrt(pi).

Every region is evaluated on inputs clipped into that region's domain before
``jnp.where`` picks one, so values and gradients stay finite everywhere (the
exp(u) of region 4 would overflow outside its domain).

``voigt_wing`` is the region-1/2 expression alone: the far-wing form used for
pixels that are known beforehand to lie more than 5.5 Doppler widths from the
line centre, at a fraction of the cost.
"""

from __future__ import annotations

import jax.numpy as jnp

__all__ = ["faddeeva_w4", "voigt_h", "voigt_wing"]

_SQRT_PI_INV = 0.5641896


def _region12(t, u):
    """Humlicek regions 1-2 (s >= 5.5): one-pole-pair rational form."""
    return t * (1.410474 + u * _SQRT_PI_INV) / (0.75 + u * (3.0 + u))


def _region3(t):
    num = 16.4955 + t * (20.20933 + t * (11.96482 + t * (3.778987 + t * 0.5642236)))
    den = 16.4955 + t * (38.82363 + t * (39.27121 + t * (21.69274 + t * (6.699398 + t))))
    return num / den


def _region4(t, u):
    num = t * (
        36183.31 - u * (3321.9905 - u * (1540.787 - u * (219.0313 - u * (35.76683 - u * (1.320522 - u * 0.56419)))))
    )
    den = 32066.6 - u * (24322.84 - u * (9022.228 - u * (2186.181 - u * (364.2191 - u * (61.57037 - u * (1.841439 - u))))))
    return jnp.exp(u) - num / den


def faddeeva_w4(x, y):
    """Faddeeva function w(x + i y) for y >= 0 (Humlicek 1982, W4).

    Args:
        x, y: real arrays (broadcastable), y >= 0.

    Returns:
        complex array w.
    """
    x = jnp.asarray(x)
    y = jnp.asarray(y)
    ax = jnp.abs(x)
    s = ax + y
    in12 = s >= 5.5
    in3 = (~in12) & (y >= 0.195 * ax - 0.176)
    in4 = ~(in12 | in3)
    # region-safe inputs
    x12 = jnp.where(in12, x, 10.0)
    y12 = jnp.where(in12, y, 0.0)
    t12 = y12 - 1j * x12
    region12 = _region12(t12, t12 * t12)
    x3 = jnp.where(in3, x, 0.0)
    y3 = jnp.where(in3, y, 1.0)
    region3 = _region3(y3 - 1j * x3)
    x4 = jnp.where(in4, x, 1.0)
    y4 = jnp.where(in4, y, 0.0)
    t4 = y4 - 1j * x4
    region4 = _region4(t4, t4 * t4)
    return jnp.where(in12, region12, jnp.where(in3, region3, region4))


def voigt_h(a, v):
    """Voigt-Hjerting function H(a, v) = Re w(v + i a), a >= 0.

    Normalization: integral of H dv over the real line is sqrt(pi).
    """
    return jnp.real(faddeeva_w4(v, a))


def voigt_wing(a, v):
    """H(a, v) from the Humlicek region-1/2 formula, valid for |v| + a >= 5.5.

    Real arithmetic only: with t = a - i v, Re[t (A + B t^2) / (C + 3 t^2 + t^4)].
    """
    a2 = a * a
    v2 = v * v
    # t^2 = (a^2 - v^2) - 2 i a v
    ur = a2 - v2
    ui = -2.0 * a * v
    # numerator t (1.410474 + 0.5641896 u)
    pr = 1.410474 + _SQRT_PI_INV * ur
    pi_ = _SQRT_PI_INV * ui
    num_r = a * pr + v * pi_
    num_i = a * pi_ - v * pr
    # denominator 0.75 + u (3 + u)
    qr = 3.0 + ur
    den_r = 0.75 + ur * qr - ui * ui
    den_i = ur * ui + ui * qr
    return (num_r * den_r + num_i * den_i) / (den_r * den_r + den_i * den_i)
