"""Physics building blocks of the JAX LTE synthesizer against independent values.

References:
- Saha ionization of hydrogen: computed here from scipy.constants.
- H- bound-free: Wishart (1979, MNRAS 187, 59P) photodetachment cross sections.
- H- free-free: Bell & Berrington (1987, J. Phys. B 20, 801), Table 1.
- Planck function: the textbook formula with scipy.constants.
- Voigt: scipy.special.wofz.
- H I bound-free: an explicit sum over levels n <= 200 of the same Kramers
  cross sections (checks the integral approximation of the high levels).
- Formal solution: S = S0 + S1 tau gives F = pi (S0 + 2/3 S1) exactly.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import constants as sc
from scipy.special import wofz

from stellarfit.synth.jaxlte import atomic, continuum, transfer, voigt
from stellarfit.synth.jaxlte.lines import prepare_lines

K_CGS = sc.k * 1e7
H_CGS = sc.h * 1e7
C_CGS = sc.c * 1e2
ME_CGS = sc.m_e * 1e3
EV_ERG = sc.e * 1e7


def test_hydrogen_saha_fraction_matches_direct_formula():
    data = atomic.load_atomic_data()
    with jax.enable_x64(True):
        for temperature, ne in [(6000.0, 1e13), (8000.0, 1e14), (10000.0, 1e15)]:
            log_u = atomic.log_partition_function(data.partition_coefficients[0], temperature)
            frac = np.exp(np.asarray(atomic.ionization_log_fractions(log_u, data.ionization_energy[0], temperature, ne)))
            # n(H II) n_e / n(H I) = 2 (U_II / U_I) (2 pi m_e k T / h^2)^1.5 exp(-chi / kT), U_I = 2, U_II = 1
            phi = 2.0 * (1.0 / 2.0) * (2 * math.pi * ME_CGS * K_CGS * temperature / H_CGS**2) ** 1.5
            phi *= math.exp(-13.598434 * EV_ERG / (K_CGS * temperature))
            expected = (phi / ne) / (1.0 + phi / ne)
            assert frac[2] == 0.0
            assert frac.sum() == pytest.approx(1.0, abs=1e-12)
            # Irwin's U(H I) differs from 2 by < 0.3% below 10^4 K
            assert frac[1] == pytest.approx(expected, rel=5e-3)


def test_partition_functions_of_simple_species():
    """U from the lowest levels (NIST energies, eV) of species with few low levels."""
    data = atomic.load_atomic_data()
    u = lambda z, stage, t: float(np.exp(atomic.log_partition_function(data.partition_coefficients[z - 1, stage], t)))  # noqa: E731

    def level_sum(levels, t):
        kt = K_CGS * t / EV_ERG
        return sum(g * math.exp(-e / kt) for g, e in levels)

    assert u(1, 0, 5000.0) == pytest.approx(2.0, rel=5e-3)  # H I: 1s 2S, n=2 at 10.2 eV
    na_i = [(2, 0.0), (2, 2.102), (4, 2.104)]  # 3s 2S, 3p 2P
    assert u(11, 0, 4000.0) == pytest.approx(level_sum(na_i, 4000.0), rel=1e-2)
    ca_ii = [(2, 0.0), (4, 1.692), (6, 1.700), (2, 3.123), (4, 3.151)]  # 4s 2S, 3d 2D, 4p 2P
    assert u(20, 1, 4000.0) == pytest.approx(level_sum(ca_ii, 4000.0), rel=1e-2)
    assert u(20, 1, 6000.0) == pytest.approx(level_sum(ca_ii, 6000.0), rel=1e-2)
    assert u(2, 0, 8000.0) == pytest.approx(1.0, rel=1e-3)  # He I: 1S
    # Fe I has many low levels: U ~ 25-30 at 5000 K
    assert 20.0 < u(26, 0, 5000.0) < 35.0


def test_number_densities_conserve_nuclei_and_mass():
    abundances = np.full(92, -9.0)
    abundances[0], abundances[1], abundances[25] = 12.0, 10.93, 7.5
    with jax.enable_x64(True):
        t = jnp.array([5000.0, 7000.0])
        p = jnp.array([1e4, 1e5])
        ne = jnp.array([1e12, 1e14])
        nd = atomic.number_densities(t, p, ne, abundances)
        total = np.exp(np.asarray(nd["log_stage_density"])).sum(axis=-1).sum(axis=-1)  # all nuclei
        nuclei = np.asarray(p / (K_CGS * t) - ne)
        np.testing.assert_allclose(total, nuclei, rtol=1e-6)
        fe = np.exp(np.asarray(nd["log_stage_density"][:, 25])).sum(-1)
        np.testing.assert_allclose(fe / np.asarray(nd["hydrogen_density"]), 10 ** (7.5 - 12), rtol=1e-9)


# Wishart (1979) Table 1: lambda [A], sigma [1e-18 cm^2]
WISHART = [(3000, 16.19), (4000, 23.02), (5000, 29.23), (5500, 31.94), (6000, 34.32), (8500, 40.01), (12000, 28.87), (15000, 7.407)]
# Bell & Berrington (1987) Table 1: K [1e-26 cm^4 dyn^-1] at theta = 0.5, 1.0, 2.0
BELL_BERRINGTON = {
    4557.0: (0.0791, 0.161, 0.327),
    5063.0: (0.0965, 0.195, 0.390),
    5696.0: (0.121, 0.241, 0.475),
    9113.0: (0.293, 0.576, 1.06),
}


@pytest.mark.parametrize(("wavelength", "sigma"), WISHART)
def test_hminus_bound_free_cross_section_matches_wishart(wavelength, sigma):
    assert float(continuum.hminus_bf_cross_section(float(wavelength))) / 1e-18 == pytest.approx(sigma, rel=1e-2)


@pytest.mark.parametrize("wavelength", sorted(BELL_BERRINGTON))
def test_hminus_free_free_matches_bell_berrington(wavelength):
    theta = np.array([0.5, 1.0, 2.0])
    k = np.asarray(continuum.hminus_ff_coefficient(wavelength, 5040.0 / theta)) / 1e-26
    np.testing.assert_allclose(k, BELL_BERRINGTON[wavelength], rtol=1.5e-2)


def test_planck_function_matches_direct_formula():
    with jax.enable_x64(True):
        for wavelength, temperature in [(4000.0, 3500.0), (5500.0, 5777.0), (9000.0, 12000.0)]:
            lam = wavelength * 1e-8
            direct = 2 * H_CGS * C_CGS**2 / lam**5 / math.expm1(H_CGS * C_CGS / (lam * K_CGS * temperature)) * 1e-8
            assert float(continuum.planck_lambda(wavelength, temperature)) == pytest.approx(direct, rel=1e-9)


def test_hydrogen_bound_free_high_level_integral():
    """The n > 8 integral reproduces the explicit sum over levels (Gaunt factor 1)."""
    with jax.enable_x64(True):
        for wavelength, temperature in [(5000.0, 6000.0), (5000.0, 10000.0), (9000.0, 8000.0)]:
            value = float(continuum.hydrogen_bf_absorption(wavelength, temperature, 0.0))
            nu = C_CGS / (wavelength * 1e-8)
            photon = H_CGS * nu / EV_ERG
            kt = K_CGS * temperature / EV_ERG
            n = np.arange(1, 201)
            chi_n = 13.598434 * (1 - 1 / n**2)
            edge = 13.598434 / n**2
            terms = np.where(photon >= edge, 2 * n**2 * np.exp(-chi_n / kt) * 2.815e29 / (n**5 * nu**3), 0.0)
            expected = terms.sum() * -math.expm1(-photon / kt)
            assert value == pytest.approx(expected, rel=2e-2)


def test_rayleigh_and_thomson_scale():
    # Rayleigh on H at 5000 A is ~1e-27 cm^2 (Dalgarno); Thomson is exact
    assert 0.9e-27 < float(continuum.rayleigh_h_cross_section(5000.0)) < 1.2e-27
    absorption, scattering = continuum.continuum_opacity(
        jnp.array([5000.0]), jnp.array([20000.0]), jnp.array([1e14]), jnp.array([-50.0]), jnp.array([0.0]), jnp.array([-50.0])
    )
    assert float(scattering[0, 0]) == pytest.approx(6.6524587e-25 * 1e14, rel=1e-5)


def test_voigt_matches_wofz():
    x = np.concatenate([np.linspace(-30, 30, 3001), np.logspace(-3, 3, 200)])
    worst = 0.0
    for y in [1e-6, 1e-4, 1e-3, 1e-2, 0.05, 0.1, 0.3, 1.0, 3.0, 10.0]:
        ref = wofz(x + 1j * y)
        h = np.asarray(voigt.voigt_h(np.full_like(x, y), x))
        worst = max(worst, np.max(np.abs(h - ref.real) / ref.real))
        far = np.abs(x) + y >= 5.5
        wing = np.asarray(voigt.voigt_wing(np.full_like(x[far], y), x[far]))
        assert np.max(np.abs(wing - ref.real[far]) / ref.real[far]) < 1e-4
    assert worst < 1.5e-4


def test_voigt_gradient_is_finite_everywhere():
    grad = jax.grad(lambda a, v: voigt.voigt_h(a, v), argnums=(0, 1))
    for a, v in [(1e-6, 0.0), (0.01, 3.0), (0.01, 100.0), (2.0, 1.0), (0.1, 5.49), (0.1, 5.51)]:
        g = grad(a, v)
        assert all(np.isfinite(float(x)) for x in g)


def test_formal_solution_exact_for_linear_source():
    with jax.enable_x64(True):
        tau = jnp.logspace(-6, 2.5, 120)
        s0, s1 = 2.0, 3.0
        for n_mu in (3, 4, 6):
            flux = float(transfer.emergent_flux(s0 + s1 * tau, tau, n_mu))
            assert flux == pytest.approx(math.pi * (s0 + 2.0 / 3.0 * s1), rel=1e-8)


def test_optical_depth_of_constant_opacity():
    with jax.enable_x64(True):
        m = jnp.logspace(-3, 1, 50)
        tau = transfer.optical_depth(jnp.full((2, 50), 0.7), m)
        np.testing.assert_allclose(np.asarray(tau), 0.7 * np.asarray(m)[None, :].repeat(2, 0), rtol=1e-12)


def test_line_damping_constants():
    """ABO, log gamma6 and Unsold conventions of the damping column."""
    linelist = {
        "wavelength_vacuum": np.array([5250.0, 5250.0, 5250.0, 5250.0]),
        "excitation_potential": np.array([0.12, 0.12, 0.12, 0.12]),
        "log_gf": np.array([-4.9, -4.9, -4.9, -4.9]),
        "damping": np.array([207.253, -7.6, 1.0, 2.5]),
        "gamma_radiative": np.array([1e8, 0.0, 1e8, 1e8]),
        "atomic_number": np.array([26, 26, 26, 26]),
        "ion": np.array([1, 1, 1, 1]),
    }
    lines = prepare_lines(linelist)
    # ABO for sigma = 207 a0^2, alpha = 0.253 at 10^4 K: log gamma6/N_H ~ -7.8 (Barklem et al. 2000 scale)
    assert np.log10(lines.gamma6_ref[0]) == pytest.approx(-7.82, abs=0.03)
    assert lines.gamma6_exponent[0] == pytest.approx((1 - 0.253) / 2)
    assert lines.gamma6_ref[1] == pytest.approx(10**-7.6)
    assert lines.gamma6_ref[3] == pytest.approx(2.5 * lines.gamma6_ref[2])
    # Unsold is smaller than ABO for this low-excitation Fe I line
    assert lines.gamma6_ref[2] < lines.gamma6_ref[0]
    # missing radiative damping -> classical 2.2233e15 / lambda^2
    assert lines.gamma_rad[1] == pytest.approx(2.2233e15 / 5250.0**2)


def test_isotopic_components_are_scaled_by_natural_fractions():
    linelist = {
        "wavelength_vacuum": np.array([5250.0, 5250.1, 5250.2]),
        "excitation_potential": np.zeros(3),
        "log_gf": np.zeros(3),
        "damping": np.full(3, 2.5),
        "gamma_radiative": np.full(3, 1e8),
        "atomic_number": np.array([60, 60, 26]),
        "ion": np.array([2, 2, 1]),
        "isotope": np.array([142, 150, 0]),
    }
    lines = prepare_lines(linelist)
    np.testing.assert_allclose(lines.log_gf, np.log10([0.272, 0.056, 1.0]), atol=1e-3)


def test_bad_line_lists_raise():
    good = {
        "wavelength_vacuum": np.array([5250.0]),
        "excitation_potential": np.array([1.0]),
        "log_gf": np.array([-1.0]),
        "damping": np.array([2.5]),
        "gamma_radiative": np.array([1e8]),
        "atomic_number": np.array([26]),
        "ion": np.array([1]),
    }
    with pytest.raises(ValueError, match="ion"):
        prepare_lines({**good, "ion": np.array([3])})
    with pytest.raises(ValueError, match="non-finite"):
        prepare_lines({**good, "log_gf": np.array([np.nan])})
    with pytest.raises(KeyError, match="damping"):
        prepare_lines({k: v for k, v in good.items() if k != "damping"})
