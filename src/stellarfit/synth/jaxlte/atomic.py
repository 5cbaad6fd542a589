"""Atomic data and the LTE equation of state of the JAX synthesizer.

Owns: partition functions, Saha ionization balance (stages I, II, III of
Z = 1..92) and the molecule-free equation of state that turns an atmosphere
layer (T, P_gas, n_e) and an abundance vector into number densities.

Data (``stellarfit/data/jaxlte_atomic.npz``, provenance in
``jaxlte_atomic.md``): Irwin (1981, ApJS 45, 621) polynomial partition
functions ln U = sum_i a_i (ln T)^i, valid 1000-16000 K (T is clipped to that
range before evaluating them); NIST ionization energies; NIST atomic weights
and natural isotopic compositions (for line lists that list isotopes
separately with the gf of the whole element).

Equation of state (no molecules, no H2, no pressure ionization):

- nuclei number density N_nuc = P_gas / (k T) - n_e;
- N_H = N_nuc / sum_X eps_X with eps_X = 10^(A(X) - 12);
- N_X = eps_X N_H, split over stages with the Saha equation at the
  atmosphere's own n_e (so the electron density is an input, as in MARCS-type
  models, not re-solved):
  n_{j+1} n_e / n_j = 2 (U_{j+1}/U_j) (2 pi m_e k T / h^2)^{3/2} exp(-chi_j / kT);
- mass density rho = N_H sum_X eps_X m_X.

All functions are pure JAX, work in the dtype of their inputs, broadcast over
leading axes and are differentiable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import jax.numpy as jnp
import numpy as np

from . import constants as const

__all__ = [
    "AtomicData",
    "load_atomic_data",
    "log_partition_function",
    "ionization_log_fractions",
    "number_densities",
    "N_ELEMENTS",
]

N_ELEMENTS = 92
_T_MIN_FIT, _T_MAX_FIT = 1000.0, 16000.0


@dataclass(frozen=True)
class AtomicData:
    """Atomic constants for Z = 1..92 (index Z-1), NumPy float64.

    Attributes:
        partition_coefficients: (92, 3, 6) Irwin (1981) coefficients, stages I-III.
        ionization_energy: (92, 2) eV, chi(I->II), chi(II->III); +inf where absent.
        atomic_mass: (92,) atomic mass units.
        isotope_fraction: {(Z, A): natural number fraction} (NIST).
    """

    partition_coefficients: np.ndarray
    ionization_energy: np.ndarray
    atomic_mass: np.ndarray
    isotope_fraction: dict

    def isotope_fractions(self, atomic_number: np.ndarray, mass_number: np.ndarray) -> np.ndarray:
        """Natural fraction of each (Z, A); 1 where A == 0 (natural mixture), 0 if unknown."""
        return np.array(
            [1.0 if a == 0 else self.isotope_fraction.get((int(z), int(a)), 0.0) for z, a in zip(atomic_number, mass_number, strict=True)]
        )


@lru_cache(maxsize=1)
def load_atomic_data() -> AtomicData:
    """Load the shipped atomic data table (cached)."""
    path = resources.files("stellarfit") / "data" / "jaxlte_atomic.npz"
    with resources.as_file(path) as file, np.load(file) as data:
        energy = np.array(data["ionization_energy"], dtype=np.float64)
        energy = np.where(np.isfinite(energy), energy, np.inf)
        return AtomicData(
            partition_coefficients=np.array(data["partition_coefficients"], dtype=np.float64),
            ionization_energy=energy,
            atomic_mass=np.array(data["atomic_mass"], dtype=np.float64),
            isotope_fraction={
                (int(z), int(a)): float(f)
                for z, a, f in zip(data["isotope_z"], data["isotope_a"], data["isotope_fraction"], strict=True)
            },
        )


def log_partition_function(coefficients, temperature):
    """Natural log of partition functions from Irwin-type polynomial fits.

    Args:
        coefficients: (..., 6) a_i of ln U = sum_i a_i (ln T)^i.
        temperature: temperatures [K], any shape broadcastable against
            ``coefficients[..., 0]``; clipped to the 1000-16000 K range of the fits.

    Returns:
        ln U with the broadcast shape.
    """
    coefficients = jnp.asarray(coefficients)
    log_t = jnp.log(jnp.clip(temperature, _T_MIN_FIT, _T_MAX_FIT))
    result = jnp.zeros_like(log_t * coefficients[..., -1])
    for i in range(coefficients.shape[-1] - 1, -1, -1):  # Horner in ln T
        result = result * log_t + coefficients[..., i]
    return result


def _log_saha_ratio(log_u_lower, log_u_upper, chi_ev, temperature, electron_density):
    """ln(n_{j+1}/n_j) from the Saha equation at a given n_e."""
    log_phi = (
        math.log(2.0 * const.SAHA_CONSTANT)
        + 1.5 * jnp.log(temperature)
        + log_u_upper
        - log_u_lower
        - chi_ev / (const.K_BOLTZMANN_EV * temperature)
    )
    return log_phi - jnp.log(electron_density)


def ionization_log_fractions(log_u, chi_ev, temperature, electron_density):
    """Log fractions of an element in stages I, II and III (Saha, fixed n_e).

    Args:
        log_u: (..., 3) ln U of stages I, II, III, broadcastable with the
            temperature shape on the leading axes.
        chi_ev: (..., 2) ionization energies chi(I->II), chi(II->III) [eV];
            +inf for a stage that does not exist.
        temperature: [K], shape broadcastable to ``log_u[..., 0]``.
        electron_density: n_e [cm^-3], same shape as ``temperature``.

    Returns:
        (..., 3) natural-log fractions ln(n_j / N_X); they sum (in linear space) to 1.
    """
    chi1 = chi_ev[..., 0]
    chi2 = chi_ev[..., 1]
    # +inf energies (no such stage) -> ratio 0; guard them so gradients stay finite
    finite2 = jnp.isfinite(chi2)
    chi2_safe = jnp.where(finite2, chi2, 0.0)
    log_r1 = _log_saha_ratio(log_u[..., 0], log_u[..., 1], chi1, temperature, electron_density)
    log_r2 = _log_saha_ratio(log_u[..., 1], log_u[..., 2], chi2_safe, temperature, electron_density)
    log_r2 = jnp.where(finite2, log_r2, -jnp.inf)
    terms = jnp.stack([jnp.zeros_like(log_r1), log_r1, log_r1 + log_r2], axis=-1)
    # logsumexp with a -inf-safe maximum
    top = jnp.max(terms[..., :2], axis=-1, keepdims=True)
    norm = top[..., 0] + jnp.log(jnp.sum(jnp.exp(terms - top), axis=-1))
    return terms - norm[..., None]


def number_densities(temperature, gas_pressure, electron_density, abundances, atomic_data=None):
    """Molecule-free LTE number densities of every element and stage.

    Args:
        temperature: (..., n_depth) [K].
        gas_pressure: (..., n_depth) [dyn cm^-2].
        electron_density: (..., n_depth) [cm^-3].
        abundances: (..., 92) A(X) = log10(N_X/N_H) + 12 (A(H) is taken as 12
            whatever the vector says).
        atomic_data: an :class:`AtomicData`; the shipped table when None.

    Returns:
        dict with
          ``log_stage_density``: (..., n_depth, 92, 3) ln n(X, stage) [cm^-3];
          ``log_u``: (..., n_depth, 92, 3) ln partition functions;
          ``hydrogen_density``: (..., n_depth) N_H (all stages) [cm^-3];
          ``mass_density``: (..., n_depth) rho [g cm^-3].
    """
    data = load_atomic_data() if atomic_data is None else atomic_data
    temperature = jnp.asarray(temperature)
    dtype = temperature.dtype
    abundances = jnp.asarray(abundances, dtype)
    log_eps = (abundances - 12.0) * math.log(10.0)
    log_eps = log_eps.at[..., 0].set(0.0)
    eps = jnp.exp(log_eps)  # (..., 92)
    n_nuclei = gas_pressure / (const.K_BOLTZMANN * temperature) - electron_density
    n_hydrogen = n_nuclei / jnp.sum(eps, axis=-1)[..., None]
    mean_mass = jnp.sum(eps * jnp.asarray(data.atomic_mass, dtype), axis=-1) * const.AMU
    rho = n_hydrogen * mean_mass[..., None]

    coefficients = jnp.asarray(data.partition_coefficients, dtype)  # (92, 3, 6)
    log_u = log_partition_function(coefficients, temperature[..., None, None])  # (..., D, 92, 3)
    chi = jnp.asarray(data.ionization_energy, dtype)  # (92, 2)
    log_frac = ionization_log_fractions(
        log_u, chi, temperature[..., None], electron_density[..., None]
    )  # (..., D, 92, 3)
    log_element = jnp.log(n_hydrogen)[..., None] + log_eps[..., None, :]  # (..., D, 92)
    return {
        "log_stage_density": log_element[..., None] + log_frac,
        "log_u": log_u,
        "hydrogen_density": n_hydrogen,
        "mass_density": rho,
    }
