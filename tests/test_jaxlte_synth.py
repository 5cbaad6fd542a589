"""The JAX LTE synthesizer on the shipped Kurucz solar model with tiny synthetic line lists.

Checks behaviour that could fail: curve of growth (weak-line equivalent width
proportional to gf, saturation), gf and abundance entering only as their
product, windowed/approximate opacity against brute force, gradients against
finite differences (float64), batching, and errors on bad input.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stellarfit.synth.abundances import SOLAR_ABUNDANCES
from stellarfit.synth.jaxlte import JaxLTESynthesizer, WindowOptions, solar_reference_atmosphere, synthesize

SUN = solar_reference_atmosphere()
STEP = 0.01
FE = 25  # index of iron in the abundance vector


def _lines(wavelengths, log_gf, excitation=2.0, z=26, ion=1, damping=-7.5):
    n = len(wavelengths)
    return {
        "wavelength_vacuum": np.asarray(wavelengths, float),
        "excitation_potential": np.full(n, excitation, float),
        "log_gf": np.asarray(log_gf, float),
        "damping": np.full(n, damping, float),
        "gamma_radiative": np.full(n, 1e8),
        "atomic_number": np.full(n, z),
        "ion": np.full(n, ion),
    }


def _synth(linelist, wave, reference_abundances=SOLAR_ABUNDANCES, **options):
    opts = WindowOptions(vmic_range=(1.0, 2.0), **options)
    return JaxLTESynthesizer(linelist, wave, SUN[None], reference_abundances, opts, coverage=(wave[0] - 50, wave[-1] + 50))


LOG_GF = np.array([-7.0, -6.0, -5.0, -1.0, 0.0, 0.5])
CENTRES = np.array([5100.0, 5110.0, 5120.0, 5160.0, 5200.0, 5250.0])
HALF_WIDTHS = np.array([0.5, 0.5, 0.5, 10.0, 10.0, 10.0])  # EW integration [A]


@pytest.fixture(scope="module")
def growth():
    """One Fe I line (chi = 2 eV) with log gf -7..+0.5, placed far apart."""
    wave = np.arange(5090.0, 5262.0, STEP)
    synth = _synth(_lines(CENTRES, LOG_GF), wave, reference_abundances=SOLAR_ABUNDANCES + 1.0)
    return synth, wave


def _ew(wave, flux):
    return np.array([np.sum(1.0 - flux[np.abs(wave - c) < h]) * STEP for c, h in zip(CENTRES, HALF_WIDTHS, strict=True)])


def test_curve_of_growth(growth):
    synth, wave = growth
    with jax.enable_x64(True):  # the weakest line is 1e-5 deep
        flux, continuum = (np.asarray(x) for x in synth.synthesize(SUN, SOLAR_ABUNDANCES, 1.0))
    assert np.all(np.isfinite(flux)) and np.all(continuum > 0)
    assert flux.max() <= 1.0 + 1e-6
    ew = _ew(wave, flux)
    assert np.all(np.diff(ew) > 0)
    # linear part: EW proportional to gf
    assert ew[1] / ew[0] == pytest.approx(10.0, rel=0.01)
    assert ew[2] / ew[1] == pytest.approx(10.0, rel=0.05)
    # saturation: far less than proportional for strong lines (damping part ~ sqrt(gf))
    assert ew[4] / ew[3] < 3.5
    assert ew[5] / ew[4] < 10**0.5 / 1.5
    centre_flux = flux[np.searchsorted(wave, CENTRES)]
    assert 0.999 < centre_flux[0] < 1.0
    assert centre_flux[-1] < 0.3


def test_gf_and_abundance_enter_as_a_product(growth):
    """Raising A(Fe) by 1 dex equals raising gf by 1 dex."""
    synth, wave = growth
    with jax.enable_x64(True):
        flux0 = np.asarray(synth.synthesize(SUN, SOLAR_ABUNDANCES, 1.0)[0])
        richer = SOLAR_ABUNDANCES.copy()
        richer[FE] += 1.0
        flux1 = np.asarray(synth.synthesize(SUN, richer, 1.0)[0])
    ew0, ew1 = _ew(wave, flux0), _ew(wave, flux1)
    np.testing.assert_allclose(ew1[[0, 1]], ew0[[1, 2]], rtol=0.01)
    assert ew1[3] == pytest.approx(ew0[4], rel=0.03)


def test_windowing_and_weak_line_approximation_match_brute_force():
    """Default windows, weak-line profiles and FFT wings against wide per-layer Voigt profiles."""
    rng = np.random.default_rng(1)
    centres = np.sort(rng.uniform(5202.0, 5238.0, 40))
    log_gf = rng.uniform(-4.0, 0.0, 40)
    excitation = rng.uniform(0.0, 5.0, 40)
    linelist = _lines(centres, log_gf)
    linelist["excitation_potential"] = excitation
    wave = np.arange(5200.0, 5240.0, STEP)
    default = _synth(linelist, wave)
    brute = _synth(linelist, wave, weak_ratio=0.0, cull_ratio=0.0, wing_ratio=1e-7)
    assert default.summary()["n_lines_weak"] > 0
    assert brute.summary()["n_lines_weak"] == 0
    f_default = np.asarray(default.synthesize(SUN, SOLAR_ABUNDANCES, 1.0)[0])
    f_brute = np.asarray(brute.synthesize(SUN, SOLAR_ABUNDANCES, 1.0)[0])
    assert np.abs(f_default - f_brute).max() < 3e-3
    assert np.sqrt(np.mean((f_default - f_brute) ** 2)) < 5e-4
    # the windows are far smaller than a dense (lines x wavelengths) evaluation
    pairs = default.summary()["pairs"]
    assert sum(pairs.values()) < 0.3 * len(centres) * wave.size


def test_fft_far_wings_match_pixel_by_pixel_wings():
    """A strong line's far wings by FFT (uniform grid) equal the Humlicek far-wing formula (non-uniform)."""
    linelist = _lines([5220.0], [0.5], excitation=0.5, damping=-7.0)
    uniform = np.arange(5205.0, 5235.0, STEP)
    jitter = uniform + 1e-4 * np.sin(np.arange(uniform.size))  # non-uniform: no FFT
    s_fft = _synth(linelist, uniform)
    s_pix = _synth(linelist, jitter)
    assert s_fft._fft is not None and s_pix._fft is None
    f_fft = np.asarray(s_fft.synthesize(SUN, SOLAR_ABUNDANCES, 1.0)[0])
    f_pix = np.asarray(s_pix.synthesize(SUN, SOLAR_ABUNDANCES, 1.0)[0])
    assert f_fft.min() < 0.2  # a strong line, with wide wings
    assert 1.0 - f_fft[np.searchsorted(uniform, 5216.0)] > 0.01
    np.testing.assert_allclose(f_fft, f_pix, atol=2e-3)


def test_one_shot_function_and_bad_inputs():
    linelist = _lines([5240.0], [-1.0])
    wave = np.arange(5238.0, 5242.0, STEP)
    norm, cont = synthesize(SUN, SOLAR_ABUNDANCES, 1.0, wave, linelist)
    assert norm.shape == wave.shape and float(jnp.min(norm)) < 0.9
    synth = _synth(linelist, wave)
    bad = SUN.copy()
    bad[1, 10] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        synth(bad, SOLAR_ABUNDANCES, 1.0)
    with pytest.raises(ValueError, match="vmic"):
        synth(SUN, SOLAR_ABUNDANCES, -1.0)
    with pytest.raises(ValueError, match="abundances"):
        synth(SUN, SOLAR_ABUNDANCES[:50], 1.0)
    with pytest.raises(ValueError, match="shape"):
        synth(SUN[:2], SOLAR_ABUNDANCES, 1.0)
    with pytest.raises(ValueError, match="increasing"):
        JaxLTESynthesizer(linelist, wave[::-1], SUN[None], SOLAR_ABUNDANCES)
    with pytest.raises(ValueError, match="line list coverage"):
        JaxLTESynthesizer(linelist, np.arange(5300.0, 5310.0, STEP), SUN[None], SOLAR_ABUNDANCES)
