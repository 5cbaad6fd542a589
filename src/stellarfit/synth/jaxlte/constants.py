"""Physical constants (cgs) used by the JAX LTE synthesizer.

Values: CODATA 2018 (exact SI definitions for h, k, c, e); the Thomson cross
section and Bohr radius from CODATA 2018; the hydrogen ionization energy from
NIST (13.598434 eV).  Only plain Python floats live here, so that they can be
folded into float32 or float64 computations alike.
"""

from __future__ import annotations

import math

C_LIGHT = 2.99792458e10  #: speed of light [cm/s]
H_PLANCK = 6.62607015e-27  #: Planck constant [erg s]
K_BOLTZMANN = 1.380649e-16  #: Boltzmann constant [erg/K]
K_BOLTZMANN_EV = 8.617333262e-5  #: Boltzmann constant [eV/K]
M_ELECTRON = 9.1093837015e-28  #: electron mass [g]
E_CHARGE = 4.803204712570263e-10  #: elementary charge [esu]
AMU = 1.66053906660e-24  #: atomic mass unit [g]
BOHR_RADIUS = 5.29177210903e-9  #: Bohr radius [cm]
SIGMA_THOMSON = 6.6524587321e-25  #: Thomson cross section [cm^2]
CHI_HYDROGEN = 13.598434  #: ionization energy of H I [eV]
RYDBERG_EV = 13.605693  #: Rydberg energy (infinite nuclear mass) [eV]
H_MINUS_BINDING = 0.754195  #: electron affinity of H [eV]

#: hc/k in Angstrom K (for exp(-hc / (lambda k T)) with lambda in Angstrom)
HC_OVER_K_ANGSTROM = H_PLANCK * C_LIGHT / K_BOLTZMANN * 1e8

#: pi e^2 / (m_e c): integrated cross section per unit oscillator strength [cm^2 Hz]
PI_E2_OVER_MC = math.pi * E_CHARGE**2 / (M_ELECTRON * C_LIGHT)

#: (2 pi m_e k / h^2)^(3/2) [cm^-3 K^-3/2], the electron translational partition factor
SAHA_CONSTANT = (2.0 * math.pi * M_ELECTRON * K_BOLTZMANN / H_PLANCK**2) ** 1.5

#: 2 h c^2 in erg cm^2 / s, scaled so that B_lambda comes out per Angstrom with lambda in Angstrom:
#: B_lambda = PLANCK_PREFACTOR / lambda_A^5 / (exp(HC_OVER_K_ANGSTROM / (lambda_A T)) - 1)
#: in erg s^-1 cm^-2 A^-1 sr^-1.
PLANCK_PREFACTOR = 2.0 * H_PLANCK * C_LIGHT**2 * 1e40 * 1e-8
