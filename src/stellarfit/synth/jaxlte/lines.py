"""Atomic line data and line opacity of the JAX LTE synthesizer.

Owns the static, per-line preprocessing of a line list (species, damping
constants at a reference temperature) and the per-depth line quantities
(opacity scale, Doppler width, damping parameter) that the synthesizer
evaluates inside ``jit``.

Line opacity per unit volume at wavelength lambda (vacuum, Angstrom):

    alpha = (pi e^2 / m_e c) gf  n(X, stage) / U  exp(-E_low / kT)
            (1 - exp(-h c / lambda_0 k T))  lambda_0 / (sqrt(pi) b)  H(a, v),

with b = sqrt(2 k T / m_X + xi^2) (thermal + microturbulent), Doppler width
Delta lambda_D = lambda_0 b / c, v = (lambda - lambda_0) / Delta lambda_D and
a = Gamma lambda_0 / (4 pi b); Gamma [rad/s, FWHM] = gamma_rad
+ gamma_4 n_e + gamma_6 (n(H I) + 0.41336 n(He I)).

Damping (per perturber, FWHM, at T_ref = 10^4 K, scaled with T):

- radiative: the line list's ``gamma_radiative`` [s^-1]; the classical
  2.2233e15 / lambda^2 [A] when it is missing (<= 0).
- quadratic Stark: the line list's ``gamma_stark`` when it has one (< 0:
  log10 of gamma_4 / n_e at 10^4 K; > 0: the value itself), scaled as
  (T/T_ref)^{1/6}; otherwise (missing, NaN or 0) Cowley's (1971, The
  Observatory 91, 139) modification of the Unsold approximation, in the form
  Turbospectrum uses: gamma_4 / n_e = 2.26e-7 E for neutrals and
  5.42e-7 E / (z+1)^2 for ions [rad s^-1 cm^3], E = 13.598 z^2 /
  (chi_ion - E_up)^2 [eV^-1], z the ionization stage (binding energy floored
  at z^2 Ry / 49, i.e. n* <= 7), no temperature dependence.
- van der Waals (collisions with H I; He I adds 0.41336 n(He I)/n(H I) in
  relative terms, its polarizability and velocity relative to H), from the
  Turbospectrum damping column:
  * >= 20: Anstee-Barklem-O'Mara (ABO) theory, packed ``sigma.alpha``
    (sigma in a0^2 at v0 = 1e4 m/s): gamma_6 = 2 (4/pi)^{alpha/2}
    Gamma((4 - alpha)/2) v0 sigma a0^2 (vbar/v0)^{1 - alpha}
    (Anstee & O'Mara 1995, MNRAS 276, 859; Barklem et al. 2000, A&AS 142,
    467), vbar = sqrt(8 k T / (pi mu)) with mu the atom-H reduced mass;
    scales as T^{(1 - alpha)/2}.
  * < 0: log10 gamma_6 at 10^4 K, scaled as T^0.3.
  * 0-20: Unsold (1955) approximation times that enhancement factor (1 when
    0): gamma_6 = 17 vbar^{3/5} C6^{2/5}, C6 = 0.3e-30 z^2 [1/(chi_ion -
    E_up)^2 - 1/(chi_ion - E_low)^2] (energies in eV; Gray 2005 eq. 11.29,
    with the hydrogenic z^2 scaling for ions); scales as T^0.3.

  Unlike Turbospectrum, which for lines without ABO data first looks up ABO
  cross sections in its own tables (from the levels' orbital letters), the
  line list's log gamma_6 or Unsold value is used as given.

Isotopic components (``isotope`` > 0) have their gf scaled by the natural
isotopic fraction, as Turbospectrum does.

Hydrogen lines are not part of the line list and are not modelled (no Balmer
line lies in 5000-5500 A; the far wing of H-beta at 4861 A is neglected).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jax.numpy as jnp
import numpy as np
from scipy.special import gamma as gamma_function

from . import constants as const
from .atomic import AtomicData, load_atomic_data

__all__ = ["LineData", "prepare_lines", "line_depth_quantities", "LINELIST_FIELDS"]

T_REF = 1.0e4
#: fields read from a line list (object attributes or mapping keys)
LINELIST_FIELDS = (
    "wavelength_vacuum",
    "excitation_potential",
    "log_gf",
    "damping",
    "gamma_radiative",
    "atomic_number",
    "ion",
)
_HC_EV_ANGSTROM = const.H_PLANCK * const.C_LIGHT * 1e8 / (const.K_BOLTZMANN / const.K_BOLTZMANN_EV)
_MAX_N_STAR = 7.0
_HELIUM_VDW = 0.41336  # He I vdW width per atom relative to H I (polarizability x velocity)
_MASS_H = 1.00794


@dataclass(frozen=True)
class LineData:
    """Static per-line data (NumPy), sorted by wavelength.

    Attributes (all shape (n_lines,)):
        wavelength: vacuum wavelength [A] (float64).
        log_gf: log10 of the oscillator strength times g_lower.
        excitation: lower-level excitation energy [eV].
        element: Z - 1 (index into the 92-element arrays).
        stage: 0 for neutral, 1 for singly ionized.
        mass: atomic mass [u].
        gamma_rad: radiative damping [rad/s].
        gamma4_ref: quadratic Stark damping per electron at 10^4 K [rad s^-1 cm^3].
        gamma4_exponent: its temperature exponent (1/6 for given values, 0 for Cowley's).
        gamma6_ref: van der Waals damping per H atom at 10^4 K [rad s^-1 cm^3].
        gamma6_exponent: temperature exponent of gamma6.
    """

    wavelength: np.ndarray
    log_gf: np.ndarray
    excitation: np.ndarray
    element: np.ndarray
    stage: np.ndarray
    mass: np.ndarray
    gamma_rad: np.ndarray
    gamma4_ref: np.ndarray
    gamma4_exponent: np.ndarray
    gamma6_ref: np.ndarray
    gamma6_exponent: np.ndarray

    def __len__(self) -> int:
        return int(self.wavelength.shape[0])

    def subset(self, index) -> LineData:
        """A LineData with only the lines ``index`` (mask or integer array)."""
        return LineData(**{name: getattr(self, name)[index] for name in self.__dataclass_fields__})

    def species(self) -> np.ndarray:
        """(n_lines,) integer species code 100 Z + ion (ion = 1 neutral, 2 singly ionized)."""
        return 100 * (self.element + 1) + self.stage + 1


def _field(linelist: Any, name: str) -> np.ndarray:
    if isinstance(linelist, Mapping):
        if name not in linelist:
            raise KeyError(f"line list has no field {name!r}; needed fields: {', '.join(LINELIST_FIELDS)}")
        value = linelist[name]
    else:
        if not hasattr(linelist, name):
            raise AttributeError(
                f"line list has no attribute {name!r}; needed: {', '.join(LINELIST_FIELDS)}"
            )
        value = getattr(linelist, name)
    return np.asarray(value)


def prepare_lines(
    linelist: Any,
    wavelength_range: tuple[float, float] | None = None,
    atomic_data: AtomicData | None = None,
) -> LineData:
    """Pre-process a line list into :class:`LineData`.

    Args:
        linelist: an object or mapping with the arrays ``wavelength_vacuum``
            [A], ``excitation_potential`` [eV], ``log_gf``, ``damping`` (raw
            Turbospectrum column), ``gamma_radiative`` [s^-1, 0 = classical],
            ``atomic_number`` and ``ion`` (1 neutral, 2 singly ionized), and
            optionally ``gamma_stark`` (NaN/0 = Cowley's approximation) and
            ``isotope`` (mass number; 0 = natural mixture; > 0 scales gf by
            the natural isotopic fraction); e.g. a
            ``stellarfit.synth.linelist.LineList``.
        wavelength_range: keep only lines with vacuum wavelength in [lo, hi] A.
        atomic_data: atomic data; the shipped table when None.

    Raises:
        ValueError: non-finite values, unknown elements or ionization stages.
    """
    data = load_atomic_data() if atomic_data is None else atomic_data
    wavelength = _field(linelist, "wavelength_vacuum").astype(np.float64)
    excitation = _field(linelist, "excitation_potential").astype(np.float64)
    log_gf = _field(linelist, "log_gf").astype(np.float64)
    damping = _field(linelist, "damping").astype(np.float64)
    gamma_rad = _field(linelist, "gamma_radiative").astype(np.float64)
    z = _field(linelist, "atomic_number").astype(np.int64)
    ion = _field(linelist, "ion").astype(np.int64)
    def optional(name):
        present = (linelist.get(name) is not None) if isinstance(linelist, Mapping) else hasattr(linelist, name)
        return _field(linelist, name) if present else None

    gamma_stark = optional("gamma_stark")
    gamma_stark = None if gamma_stark is None else gamma_stark.astype(np.float64)
    isotope = optional("isotope")
    isotope = np.zeros_like(z) if isotope is None else isotope.astype(np.int64)
    n = wavelength.shape[0]
    extra = [("gamma_stark", gamma_stark)] if gamma_stark is not None else []
    extra.append(("isotope", isotope))
    for name, arr in [("excitation_potential", excitation), ("log_gf", log_gf), ("damping", damping),
                      ("gamma_radiative", gamma_rad), ("atomic_number", z), ("ion", ion), *extra]:
        if arr.shape != (n,):
            raise ValueError(f"line list field {name!r} has shape {arr.shape}, expected ({n},)")
    for name, arr in [("wavelength_vacuum", wavelength), ("excitation_potential", excitation),
                      ("log_gf", log_gf), ("damping", damping)]:
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"line list field {name!r} has non-finite values; drop or fix those lines")
    if np.any((z < 1) | (z > 92)):
        raise ValueError("line list atomic_number must be 1..92 (atomic lines only; no molecules)")
    if np.any((ion < 1) | (ion > 2)):
        raise ValueError("line list ion must be 1 (neutral) or 2 (singly ionized)")
    # isotopic components carry the gf of the whole element: scale by the
    # natural isotopic fraction (as Turbospectrum does); unknown isotopes drop out
    fraction = data.isotope_fractions(z, isotope)
    log_gf = log_gf + np.log10(np.where(fraction > 0, fraction, 1.0))
    keep = fraction > 0
    if wavelength_range is not None:
        lo, hi = wavelength_range
        keep &= (wavelength >= lo) & (wavelength <= hi)
    keep &= z > 1  # hydrogen lines are not modelled (see module docstring)
    order = np.argsort(wavelength[keep], kind="stable")
    idx = np.nonzero(keep)[0][order]
    wavelength, excitation, log_gf, damping, gamma_rad, z, ion = (
        a[idx] for a in (wavelength, excitation, log_gf, damping, gamma_rad, z, ion)
    )
    element = z - 1
    stage = ion - 1
    mass = data.atomic_mass[element]
    chi_ion = data.ionization_energy[element, stage]
    photon = _HC_EV_ANGSTROM / wavelength
    e_upper = excitation + photon
    charge = stage + 1.0
    # n* <= 7 for Stark / Unsold estimates (levels at or above the limit get that floor)
    bind_upper = np.maximum(chi_ion - e_upper, charge**2 * const.RYDBERG_EV / _MAX_N_STAR**2)
    bind_lower = np.maximum(chi_ion - excitation, bind_upper + 1e-3)

    gamma_rad = np.where(np.isfinite(gamma_rad) & (gamma_rad > 0), gamma_rad, 2.2233e15 / wavelength**2)

    cowley = 13.598 * charge**2 / bind_upper**2
    gamma4_ref = np.where(charge == 1, 2.26e-7 * cowley, 5.42e-7 * cowley / (charge + 1.0) ** 2)
    gamma4_exponent = np.zeros_like(gamma4_ref)
    if gamma_stark is not None:
        stark = gamma_stark[idx]
        given = np.isfinite(stark) & (stark != 0)
        gamma4_ref = np.where(given, np.where(stark < 0, 10.0 ** np.minimum(stark, 0.0), stark), gamma4_ref)
        gamma4_exponent = np.where(given, 1.0 / 6.0, 0.0)

    mu = mass * _MASS_H / (mass + _MASS_H) * const.AMU
    vbar_ref = np.sqrt(8.0 * const.K_BOLTZMANN * T_REF / (math.pi * mu))
    # ABO
    sigma = np.floor(damping)
    alpha = damping - sigma
    v0 = 1.0e6
    abo = (
        2.0 * (4.0 / math.pi) ** (alpha / 2.0) * gamma_function((4.0 - alpha) / 2.0)
        * v0 * sigma * const.BOHR_RADIUS**2 * (vbar_ref / v0) ** (1.0 - alpha)
    )
    # Unsold
    c6 = 0.3e-30 * charge**2 * (1.0 / bind_upper**2 - 1.0 / bind_lower**2)
    factor = np.where(damping > 0, damping, 1.0)
    unsold = factor * 17.0 * vbar_ref**0.6 * c6**0.4
    is_abo = damping >= 20.0
    is_log = damping < 0.0
    gamma6_ref = np.where(is_abo, abo, np.where(is_log, 10.0**np.minimum(damping, 0.0), unsold))
    gamma6_exponent = np.where(is_abo, (1.0 - alpha) / 2.0, 0.3)
    return LineData(
        wavelength=wavelength,
        log_gf=log_gf,
        excitation=excitation,
        element=element.astype(np.int32),
        stage=stage.astype(np.int32),
        mass=mass,
        gamma_rad=gamma_rad,
        gamma4_ref=gamma4_ref,
        gamma4_exponent=gamma4_exponent,
        gamma6_ref=gamma6_ref,
        gamma6_exponent=gamma6_exponent,
    )


def line_depth_quantities(lines: LineData, temperature, electron_density, log_stage_density, log_u,
                          n_hi, vmic, n_hei=None):
    """Per-line, per-depth opacity scale, Doppler width and damping parameter.

    Args:
        lines: static line data (n_lines).
        temperature, electron_density: (n_depth,) [K], [cm^-3].
        log_stage_density: (n_depth, 92, 3) ln n(X, stage) [cm^-3].
        log_u: (n_depth, 92, 3) ln partition functions.
        n_hi: (n_depth,) neutral hydrogen density [cm^-3].
        vmic: microturbulence [km/s], scalar.
        n_hei: (n_depth,) neutral helium density [cm^-3]; when given, He I
            perturbers add 0.41336 n(He I) to n(H I) in the van der Waals width.

    Returns:
        log_scale: (n_lines, n_depth) ln of the opacity scale K [cm^-1] such
            that alpha(lambda) = K H(a, v);
        doppler_width: (n_lines, n_depth) Delta lambda_D [A];
        damping: (n_lines, n_depth) Voigt parameter a.
    """
    dtype = jnp.asarray(temperature).dtype
    t = temperature[None, :]
    element = jnp.asarray(lines.element)
    stage = jnp.asarray(lines.stage)
    lam = jnp.asarray(lines.wavelength, dtype)[:, None]
    mass = jnp.asarray(lines.mass, dtype)[:, None]
    # (D, 92, 3) -> (L, D)
    log_n = jnp.moveaxis(log_stage_density[:, element, stage], 0, 1)
    log_u_l = jnp.moveaxis(log_u[:, element, stage], 0, 1)
    beta = 1.0 / (const.K_BOLTZMANN_EV * t)
    vth2 = 2.0 * const.K_BOLTZMANN * t / (mass * const.AMU)
    b = jnp.sqrt(vth2 + (vmic * 1e5) ** 2)  # cm/s
    stim = -jnp.expm1(-const.HC_OVER_K_ANGSTROM / (lam * t))
    log_scale = (
        math.log(const.PI_E2_OVER_MC / math.sqrt(math.pi) * 1e-8)
        + jnp.asarray(lines.log_gf * math.log(10.0), dtype)[:, None]
        + log_n
        - log_u_l
        - jnp.asarray(lines.excitation, dtype)[:, None] * beta
        + jnp.log(stim)
        + jnp.log(lam)
        - jnp.log(b)
    )
    t_rel = t / T_REF
    perturbers = n_hi if n_hei is None else n_hi + _HELIUM_VDW * n_hei
    gamma = (
        jnp.asarray(lines.gamma_rad, dtype)[:, None]
        + jnp.asarray(lines.gamma4_ref, dtype)[:, None]
        * t_rel ** jnp.asarray(lines.gamma4_exponent, dtype)[:, None]
        * electron_density[None, :]
        + jnp.asarray(lines.gamma6_ref, dtype)[:, None]
        * t_rel ** jnp.asarray(lines.gamma6_exponent, dtype)[:, None]
        * perturbers[None, :]
    )
    doppler_width = lam * b / const.C_LIGHT
    damping = gamma * lam * 1e-8 / (4.0 * math.pi * b)
    return log_scale, doppler_width, damping
