"""Continuum opacity and the Planck function of the JAX LTE synthesizer.

Owns the continuous absorption and scattering coefficients, per unit volume
[cm^-1], stimulated emission included for the absorption terms:

- H- bound-free: John (1988, A&A 193, 189) fit to the Wishart (1979, MNRAS
  187, 59P) photodetachment cross sections, with the Saha factor
  n(H-)/(n(H I, ground) P_e) = 0.750 T^-5/2 exp(alpha / (lambda_0 T)).
- H- free-free: John (1988) fit (to Bell & Berrington 1987, J. Phys. B 20,
  801) for lambda > 0.3645 um, per neutral H atom and unit electron pressure.
- H I bound-free: hydrogenic Kramers cross sections 2.815e29 / (n^5 nu^3) cm^2
  with bound-free Gaunt factor 1, levels n = n0..8 summed and higher levels
  integrated (Gray 2005, "The Observation and Analysis of Stellar
  Photospheres", 3rd ed., eq. 8.8 and the integral below it).
- H I free-free: Kramers with free-free Gaunt factor 1,
  3.692e8 T^-1/2 nu^-3 n_e n(H II) (1 - exp(-h nu / kT)).
- Rayleigh scattering on H I: Dalgarno's fit as used by Kurucz (1970, SAO
  Special Report 309), sigma = 5.799e-13/l^4 + 1.422e-6/l^6 + 2.784/l^8 cm^2,
  l in Angstrom.
- Thomson scattering on free electrons.

Metal bound-free opacities, He- free-free, H2+ and molecules are not included
(a few per cent of the continuum at 5000 A in the Sun; more in the UV).
Scattering is returned separately so the caller can choose how to treat it.

Wavelengths here are in Angstrom (vacuum); temperatures in K.
"""

from __future__ import annotations

import math

import jax.numpy as jnp

from . import constants as const

__all__ = [
    "planck_lambda",
    "hminus_bf_cross_section",
    "hminus_bf_coefficient",
    "hminus_ff_coefficient",
    "hydrogen_bf_absorption",
    "hydrogen_ff_absorption",
    "rayleigh_h_cross_section",
    "continuum_opacity",
]

# John (1988) H- bound-free: lambda_0 threshold [um] and the C_n of
# sigma = 1e-18 lambda^3 (1/lambda - 1/lambda_0)^{3/2} sum_n C_n (1/lambda - 1/lambda_0)^{(n-1)/2}
_HMINUS_LAMBDA0_UM = 1.6419
_HMINUS_BF_C = (152.519, 49.534, -118.858, 92.536, -34.194, 4.982)
_HC_OVER_K_UM = const.HC_OVER_K_ANGSTROM * 1e-4  # 1.4388e4 um K

# John (1988) H- free-free, lambda > 0.3645 um; rows n = 1..6, columns A..F of
# 1e-29 sum_n theta^{(n+1)/2} (A l^2 + B + C/l + D/l^2 + E/l^3 + F/l^4), l in um.
_HMINUS_FF = (
    (0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
    (2483.346, 285.827, -2054.291, 2827.776, -1341.537, 208.952),
    (-3449.889, -1158.382, 8746.523, -11485.632, 5303.609, -812.939),
    (2200.040, 2427.719, -13651.105, 16755.524, -7510.494, 1132.738),
    (-696.271, -1841.400, 8624.970, -10051.530, 4400.067, -655.020),
    (88.283, 444.517, -1863.865, 2095.288, -901.788, 132.985),
)

_KRAMERS_BF = 2.815e29  # cm^2 Hz^3: hydrogenic bound-free cross section times n^5 nu^3
_KRAMERS_FF = 3.692e8  # cgs: free-free coefficient, see module docstring
# the same with 1/nu^3 written as (lambda_A 1e-8 / c)^3, as logs (float32 would under/overflow)
_LOG_KRAMERS_BF_A = math.log(_KRAMERS_BF * 1e-24 / const.C_LIGHT**3)
_LOG_KRAMERS_FF_A = math.log(_KRAMERS_FF * 1e-24 / const.C_LIGHT**3)
_N_EXPLICIT = 8  # H I levels summed explicitly in the bound-free opacity


def planck_lambda(wavelength, temperature):
    """Planck function B_lambda(T) [erg s^-1 cm^-2 A^-1 sr^-1].

    Args:
        wavelength: [Angstrom], broadcastable against ``temperature``.
        temperature: [K].
    """
    x = const.HC_OVER_K_ANGSTROM / (wavelength * temperature)
    return const.PLANCK_PREFACTOR / wavelength**5 / jnp.expm1(x)


def hminus_bf_cross_section(wavelength):
    """H- photodetachment cross section [cm^2 per H- ion], no stimulated emission.

    John (1988) fit to Wishart (1979); valid 1250 A < lambda < 16419 A, zero
    beyond the threshold.
    """
    lam = wavelength * 1e-4
    x = jnp.clip(1.0 / lam - 1.0 / _HMINUS_LAMBDA0_UM, 0.0, None)
    root = jnp.sqrt(x)
    series = jnp.zeros_like(x)
    for c in reversed(_HMINUS_BF_C):  # Horner in sqrt(x)
        series = series * root + c
    return 1e-18 * lam**3 * x * root * series


def hminus_bf_coefficient(wavelength, temperature):
    """H- bound-free absorption per neutral ground-state H atom per unit P_e.

    [cm^4 dyn^-1], stimulated emission included (John 1988, eq. 4).
    """
    lam = wavelength * 1e-4
    saha = 0.750 * temperature**-2.5 * jnp.exp(_HC_OVER_K_UM / (_HMINUS_LAMBDA0_UM * temperature))
    stim = -jnp.expm1(-_HC_OVER_K_UM / (lam * temperature))
    return saha * stim * hminus_bf_cross_section(wavelength)


def hminus_ff_coefficient(wavelength, temperature):
    """H- free-free absorption per neutral ground-state H atom per unit P_e.

    [cm^4 dyn^-1], stimulated emission included; John (1988) fit, valid for
    lambda > 3645 A and 1400 K < T < 10080 K (used beyond that as is).
    """
    lam = wavelength * 1e-4
    theta = 5040.0 / temperature
    total = jnp.zeros_like(lam * theta)
    for n, (a, b, c, d, e, f) in enumerate(_HMINUS_FF, start=1):
        if a == b == c == d == e == f == 0.0:
            continue
        poly = a * lam**2 + b + (c + (d + (e + f / lam) / lam) / lam) / lam
        total = total + theta ** ((n + 1) / 2.0) * poly
    return 1e-29 * total


def hydrogen_bf_absorption(wavelength, temperature, log_n_hi_over_u):
    """H I bound-free absorption [cm^-1], hydrogenic, Gaunt factor 1.

    Args:
        wavelength: [A].
        temperature: [K].
        log_n_hi_over_u: ln(n(H I) / U(H I)).
    """
    photon_ev = const.HC_OVER_K_ANGSTROM * const.K_BOLTZMANN_EV / wavelength
    beta = 1.0 / (const.K_BOLTZMANN_EV * temperature)
    total = jnp.zeros_like(photon_ev * beta)
    for n in range(1, _N_EXPLICIT + 1):
        chi_n = const.CHI_HYDROGEN * (1.0 - 1.0 / n**2)
        edge = const.CHI_HYDROGEN / n**2
        total = total + jnp.where(photon_ev >= edge, jnp.exp(-chi_n * beta) / n**3, 0.0)
    # levels above n = 8 as an integral (all of them are ionizable in the optical)
    chi_next = const.CHI_HYDROGEN * (1.0 - 1.0 / (_N_EXPLICIT + 1) ** 2)
    tail = (jnp.exp(-chi_next * beta) - jnp.exp(-const.CHI_HYDROGEN * beta)) / (
        2.0 * const.CHI_HYDROGEN * beta
    )
    total = total + tail
    stim = -jnp.expm1(-photon_ev * beta)
    # n(H I, n) sigma_n = n(H I)/U * 2 n^2 exp(-chi_n/kT) * K / (n^5 nu^3)
    log_prefactor = log_n_hi_over_u + math.log(2.0) + _LOG_KRAMERS_BF_A + 3.0 * jnp.log(wavelength)
    return jnp.exp(log_prefactor) * total * stim


def hydrogen_ff_absorption(wavelength, temperature, log_electron_density, log_proton_density):
    """H I free-free (H II + e-) absorption [cm^-1], Gaunt factor 1 (densities as ln)."""
    stim = -jnp.expm1(-const.HC_OVER_K_ANGSTROM / (wavelength * temperature))
    log_value = (
        _LOG_KRAMERS_FF_A + 3.0 * jnp.log(wavelength) - 0.5 * jnp.log(temperature)
        + log_electron_density + log_proton_density
    )
    return jnp.exp(log_value) * stim


def rayleigh_h_cross_section(wavelength):
    """Rayleigh scattering cross section of ground-state H I [cm^2] (lambda in A)."""
    inv2 = 1.0 / wavelength**2
    return inv2 * inv2 * (5.799e-13 + inv2 * (1.422e-6 + inv2 * 2.784))


def continuum_opacity(wavelength, temperature, electron_density, log_n_hi, log_u_hi, log_n_hii):
    """Continuous absorption and scattering coefficients [cm^-1].

    Args:
        wavelength: (n_wave,) [A].
        temperature, electron_density: (n_depth,) [K], [cm^-3].
        log_n_hi: (n_depth,) ln n(H I) (all levels) [cm^-3].
        log_u_hi: (n_depth,) ln U(H I).
        log_n_hii: (n_depth,) ln n(H II) [cm^-3].

    Returns:
        (absorption, scattering), each (n_wave, n_depth).
    """
    lam = wavelength[:, None]
    t = temperature[None, :]
    ne = electron_density[None, :]
    electron_pressure = ne * const.K_BOLTZMANN * t
    n_hi_ground = jnp.exp(log_n_hi + math.log(2.0) - log_u_hi)[None, :]  # g_1 = 2, E_1 = 0
    hminus = (hminus_bf_coefficient(lam, t) + hminus_ff_coefficient(lam, t)) * electron_pressure * n_hi_ground
    h_bf = hydrogen_bf_absorption(lam, t, (log_n_hi - log_u_hi)[None, :])
    h_ff = hydrogen_ff_absorption(lam, t, jnp.log(ne), log_n_hii[None, :])
    absorption = hminus + h_bf + h_ff
    scattering = rayleigh_h_cross_section(lam) * n_hi_ground + const.SIGMA_THOMSON * ne
    return absorption, scattering
