"""Gradients and batching of the JAX LTE synthesizer (shipped solar model, tiny line lists).

Gradients with respect to the iron abundance, vmic and the temperature scale
of the atmosphere, forward and reverse mode, against central finite
differences in float64; batched synthesis against single stars and jax.vmap.
"""

from __future__ import annotations

import jax
import pytest
import jax.numpy as jnp
import numpy as np

from stellarfit.synth.abundances import SOLAR_ABUNDANCES
from stellarfit.synth.jaxlte import JaxLTESynthesizer, WindowOptions, solar_reference_atmosphere

SUN = solar_reference_atmosphere()
STEP = 0.01
FE = 25


def _synth(centres, log_gf, wave, excitation=1.5):
    n = len(centres)
    linelist = {
        "wavelength_vacuum": np.asarray(centres, float),
        "excitation_potential": np.full(n, excitation),
        "log_gf": np.asarray(log_gf, float),
        "damping": np.full(n, -7.5),
        "gamma_radiative": np.full(n, 1e8),
        "atomic_number": np.full(n, 26),
        "ion": np.full(n, 1),
    }
    opts = WindowOptions(vmic_range=(1.0, 2.0))
    return JaxLTESynthesizer(linelist, wave, SUN[None], SOLAR_ABUNDANCES + 0.5, opts, coverage=(wave[0] - 50, wave[-1] + 50))


@pytest.mark.slow
def test_gradients_match_finite_differences():
    wave = np.arange(5219.0, 5222.0, STEP)
    synth = _synth([5220.0, 5221.0], [-2.0, -0.5], wave)
    pixels = np.searchsorted(wave, [5219.95, 5220.0, 5220.9, 5221.0, 5221.15])
    with jax.enable_x64(True):
        sun = jnp.asarray(SUN)

        def flux(params):
            fe, vmic, t_scale = params
            atm = sun.at[1].multiply(t_scale)
            ab = jnp.asarray(SOLAR_ABUNDANCES).at[FE].add(fe)
            return synth.synthesize(atm, ab, vmic)[0][pixels]

        # one compiled forward-mode function gives both values (finite differences) and tangents
        jvp = jax.jit(lambda p, t: jax.jvp(flux, (p,), (t,)))
        p0 = jnp.array([0.1, 1.3, 1.0])
        eye = np.eye(3)
        jac = np.stack([np.asarray(jvp(p0, jnp.asarray(eye[k]))[1]) for k in range(3)], axis=1)
        for k, h in enumerate([1e-4, 1e-4, 1e-5]):
            plus = np.asarray(jvp(p0 + h * eye[k], jnp.zeros(3))[0])
            minus = np.asarray(jvp(p0 - h * eye[k], jnp.zeros(3))[0])
            fd = (plus - minus) / (2 * h)
            np.testing.assert_allclose(jac[:, k], fd, rtol=2e-4, atol=1e-7 * np.abs(fd).max())
        assert np.abs(jac).max(axis=0).min() > 1e-3  # every parameter moves the lines
        # reverse mode agrees with forward mode
        grad_sum = np.asarray(jax.jit(jax.grad(lambda p: jnp.sum(flux(p))))(p0))
        np.testing.assert_allclose(grad_sum, jac.sum(axis=0), rtol=1e-8)


@pytest.mark.slow
def test_vmap_equals_single_stars():
    wave = np.arange(5229.0, 5232.0, STEP)
    synth = _synth([5230.0, 5231.0], [-1.0, -2.5], wave)
    atms = np.stack([SUN, SUN * np.array([1, 1.02, 1, 1])[:, None]]).astype(np.float32)
    ab = np.stack([SOLAR_ABUNDANCES - 0.3, SOLAR_ABUNDANCES + 0.2]).astype(np.float32)
    vmic = np.array([1.5, 0.8], np.float32)
    batch, cont = jax.vmap(synth.synthesize)(jnp.asarray(atms), jnp.asarray(ab), jnp.asarray(vmic))
    assert batch.shape == (2, wave.size) and cont.shape == (2, wave.size)
    single = synth.synthesize(atms[1], ab[1], vmic[1])[0]
    np.testing.assert_allclose(np.asarray(batch[1]), np.asarray(single), rtol=2e-5, atol=2e-6)
    assert np.abs(np.asarray(batch[0] - batch[1])).max() > 1e-2  # different stars, different spectra
