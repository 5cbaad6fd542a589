"""The ``jax`` grid engine: labels -> atmosnet atmosphere -> LTE synthesis -> pixels.

A 10 A window with the shipped line list and atmosphere network: spectrum
sanity (Mg b), label derivatives through the atmosphere network against
finite differences, batching, the pixel operator, and errors on bad labels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stellarfit.synth.jaxlte import JaxLteEngine, pixel_operator

SUN = {"teff": 5777.0, "logg": 4.44, "fe_h": 0.0}


@pytest.fixture(scope="module")
def engine():
    return JaxLteEngine(window=(5180.0, 5190.0))


def test_solar_spectrum_and_metadata(engine):
    normalized, continuum = engine.synthesize(SUN)
    assert normalized.shape == continuum.shape == engine.wavelength.shape
    assert np.all(np.isfinite(normalized)) and normalized.max() <= 1.0 + 1e-4 and normalized.min() > 0
    # Mg I b2 (5183.604 A air = 5185.048 A vacuum) is deep and broad at R = 30,000
    mg = np.searchsorted(engine.wavelength, 5185.048)
    assert normalized[mg] < 0.35
    assert normalized[np.searchsorted(engine.wavelength, 5187.0)] < 0.98  # its damping wings
    # solar continuum surface flux at 5185 A is ~1e7 erg/s/cm2/A (blanketing-free)
    assert 8e6 < continuum[mg] < 1.3e7
    meta = engine.metadata()
    assert meta["engine"] == "jax" and meta["physics"] == "simple" and meta["wavelength_medium"] == "vacuum"
    assert meta["n_lines_used"] > 50


def test_labels_change_the_spectrum_as_expected(engine):
    base = engine.synthesize(SUN)[0]
    poor = engine.synthesize({**SUN, "fe_h": -1.0})[0]
    mg_rich = engine.synthesize({**SUN, "mg_fe": 0.4})[0]
    assert np.mean(1 - poor) < 0.8 * np.mean(1 - base)  # weaker lines
    mg = np.searchsorted(engine.wavelength, 5187.0)  # Mg b wing
    assert mg_rich[mg] < base[mg] - 0.005


@pytest.mark.slow
def test_label_gradients_match_finite_differences(engine):
    """Forward-mode label derivatives through the atmosphere network (float32) against finite differences."""
    names = engine.label_names
    vector = engine.label_vector({**SUN, "vmic": 1.2}).astype(np.float32)
    pixels = np.searchsorted(engine.wavelength, [5183.0, 5185.0, 5185.3, 5187.0, 5188.0])
    jvp = jax.jit(lambda v, t: jax.jvp(lambda x: engine.spectrum(x)[0][pixels], (v,), (t,)))
    for name, h in [("teff", 20.0), ("logg", 0.05), ("fe_h", 0.05), ("mg_fe", 0.05)]:
        direction = np.zeros(len(names), np.float32)
        direction[names.index(name)] = 1.0
        derivative = np.asarray(jvp(jnp.asarray(vector), jnp.asarray(direction))[1])
        plus = np.asarray(engine.spectrum(jnp.asarray(vector + h * direction))[0], np.float64)[pixels]
        minus = np.asarray(engine.spectrum(jnp.asarray(vector - h * direction))[0], np.float64)[pixels]
        fd = (plus - minus) / (2 * h)
        assert np.abs(fd).max() > 1e-4 / h
        np.testing.assert_allclose(derivative, fd, rtol=0.05, atol=0.05 * np.abs(fd).max())


def test_batch_matches_single(engine):
    names = engine.label_names
    rows = np.array([engine.label_vector(SUN), engine.label_vector({"teff": 4800.0, "logg": 2.0, "fe_h": -1.5, "vmic": 1.5})])
    normalized, continuum = engine.synthesize_batch(rows)
    assert normalized.shape == (2, engine.wavelength.size)
    single = engine.synthesize(dict(zip(names, rows[1], strict=True)))[0]
    np.testing.assert_allclose(normalized[1], single, atol=5e-5)  # float32, batched vs single


def test_bad_labels_raise(engine):
    with pytest.raises(ValueError, match="teff"):
        engine.synthesize({**SUN, "teff": 9000.0})
    with pytest.raises(ValueError, match="fe_h"):
        engine.synthesize({**SUN, "fe_h": float("nan")})
    with pytest.raises(ValueError, match="unknown"):
        engine.synthesize({**SUN, "gravity": 4.0})
    with pytest.raises(ValueError, match="missing"):
        engine.synthesize({"teff": 5000.0})
    with pytest.raises(ValueError, match="beyond"):
        JaxLteEngine(window=(5500.0, 5600.0))


def test_pixel_operator_preserves_a_flat_spectrum_and_flux():
    native = np.arange(5000.0, 5010.0, 0.01)
    pixels = np.linspace(5002.0, 5008.0, 300)
    index, weight = pixel_operator(native, pixels, 30000.0)
    np.testing.assert_allclose(weight.sum(axis=1), 1.0)
    flat = np.ones(native.size)
    np.testing.assert_allclose((flat[index] * weight).sum(axis=1), 1.0)
    # a narrow absorption line keeps its equivalent width after LSF + pixel integration
    line = 1.0 - 0.5 * np.exp(-0.5 * ((native - 5005.0) / 0.02) ** 2)
    out = (line[index] * weight).sum(axis=1)
    ew_in = np.sum(1 - line) * 0.01
    ew_out = np.sum((1 - out) * np.gradient(pixels))
    assert ew_out == pytest.approx(ew_in, rel=1e-3)
    assert out.min() > 0.8  # broadened


def test_engine_pickles_as_configuration(engine):
    import pickle

    clone = pickle.loads(pickle.dumps(engine))
    np.testing.assert_array_equal(clone.wavelength, engine.wavelength)
    assert clone.metadata() == engine.metadata()
