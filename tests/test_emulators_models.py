"""Shapes, pure functional API, label gradients, K/V caching and wavelength handling of the emulators."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stellarfit.emulators import PayneEmulator, TransformerPayneEmulator, encode_wavelength
from stellarfit.emulators.transformer_payne import wavelength_periods
from stellarfit.labels import default_label_spec

SPEC = default_label_spec()
WAVE = np.geomspace(5000.0, 5010.0, 40)
TP_CONFIG = {"dim": 32, "n_layers": 2, "n_tokens": 4, "head_dim": 16, "chunk_points": 64}  # chunking active in predict


@pytest.fixture(scope="module")
def payne():
    return PayneEmulator.create(SPEC, WAVE, {"hidden": [16, 16]}, with_continuum=True, seed=1)


@pytest.fixture(scope="module")
def tp():
    return TransformerPayneEmulator.create(SPEC, WAVE, TP_CONFIG, with_continuum=True, seed=2)


def _labels(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return SPEC.from_unit_cube(rng.uniform(size=(n, len(SPEC))))


@pytest.mark.parametrize("name", ["payne", "tp"])
def test_predict_shapes_and_label_forms(name, request):
    emu = request.getfixturevalue(name)
    labels = _labels(4)
    flux = emu.predict(labels)
    assert flux.shape == (4, WAVE.size) and flux.dtype == np.float32
    # mapping form, in a shuffled key order, gives the same spectra
    mapping = {n: labels[:, i] for i, n in reversed(list(enumerate(emu.label_names)))}
    np.testing.assert_array_equal(emu.predict(mapping), flux)
    # one label vector -> (1, n_wavelengths); (2, 2, n_labels) -> 4 spectra
    assert emu.predict(labels[0]).shape == (1, WAVE.size)
    np.testing.assert_array_equal(emu.predict(labels.reshape(2, 2, -1)), flux)
    sub = WAVE[5:25:3]
    f, c = emu.predict_with_continuum(labels, sub)
    assert f.shape == c.shape == (4, sub.size)
    # a batch size that does not divide n (padding path) gives the same result
    np.testing.assert_allclose(emu.predict(labels, batch_size=3), flux, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["payne", "tp"])
def test_label_and_wavelength_errors(name, request):
    emu = request.getfixturevalue(name)
    labels = _labels(1)
    with pytest.raises(KeyError, match="missing label"):
        emu.predict({"teff": 5000.0, "logg": 4.0})
    with pytest.raises(KeyError, match="unknown label"):
        emu.predict({**SPEC.to_dict(labels[0]), "bogus": 1.0})
    with pytest.raises(ValueError, match="expected"):
        emu.predict(labels[:, :5])
    bad = labels.copy()
    bad[0, 0] = 9000.0
    with pytest.raises(ValueError, match="check_bounds=False"):
        emu.predict(bad)
    assert np.all(np.isfinite(emu.predict(bad, check_bounds=False)))
    with pytest.raises(ValueError, match="coverage"):
        emu.predict(labels, np.array([4990.0, 5005.0]))
    with pytest.raises(ValueError, match="scaled_labels must have shape"):
        emu.apply_fn(emu.params, jnp.zeros(4))


@pytest.mark.parametrize("name", ["payne", "tp"])
def test_apply_fn_matches_predict_under_jit_and_vmap(name, request):
    emu = request.getfixturevalue(name)
    labels = _labels(4, seed=3)
    scaled = jnp.asarray(SPEC.scale(labels), jnp.float32)
    np.testing.assert_allclose(emu.scale_labels(jnp.asarray(labels)), SPEC.scale(labels), rtol=0, atol=1e-6)
    expected, cont_np = emu.predict_with_continuum(labels)

    @jax.jit
    def both(params, x):
        batched = emu.apply_fn(params, x)
        vmapped = jax.vmap(emu.apply_with_continuum_fn, in_axes=(None, 0))(params, x)
        return batched, vmapped

    batched, (vmapped, cont) = both(emu.params, scaled)
    assert batched.shape == vmapped.shape == cont.shape == (4, WAVE.size)
    np.testing.assert_allclose(batched, expected, rtol=0, atol=2e-6)
    np.testing.assert_allclose(vmapped, expected, rtol=0, atol=2e-6)
    np.testing.assert_allclose(cont, cont_np, rtol=0, atol=2e-5)


@pytest.mark.parametrize("name", ["payne", "tp"])
def test_label_gradient_matches_finite_differences(name, request):
    """Gradient of a chi2 and the Jacobian wrt physical labels, float64, against central differences."""
    emu = request.getfixturevalue(name)
    theta0 = _labels(1, seed=5)[0]
    target = np.asarray(emu.predict(_labels(1, seed=6))[0], np.float64)
    n = len(SPEC)
    steps = 1e-4 * (SPEC.upper - SPEC.lower)
    with jax.enable_x64(True):
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), emu.params)

        def model(theta):
            return emu.apply_fn(params, emu.scale_labels(theta))

        def chi2(theta):
            return jnp.sum((model(theta) - target) ** 2 / 0.01**2)

        @jax.jit
        def everything(theta):
            shifts = jnp.concatenate([jnp.diag(steps), -jnp.diag(steps)])  # (2n, n)
            shifted = theta + shifts
            return jax.grad(chi2)(theta), jax.jacfwd(model)(theta), jax.vmap(chi2)(shifted), jax.vmap(model)(shifted)

        grad, jac, chi_pm, model_pm = (np.asarray(a) for a in everything(jnp.asarray(theta0, jnp.float64)))
    assert jac.shape == (WAVE.size, n)
    fd_grad = (chi_pm[:n] - chi_pm[n:]) / (2 * steps)
    fd_jac = ((model_pm[:n] - model_pm[n:]) / (2 * steps)[:, None]).T
    assert np.all(np.abs(grad) > 0)
    np.testing.assert_allclose(grad, fd_grad, rtol=1e-5, atol=1e-8 * np.abs(grad).max())
    np.testing.assert_allclose(jac, fd_jac, rtol=1e-5, atol=1e-7 * np.abs(jac).max())


def test_kv_cache_equals_naive_per_wavelength(tp):
    net = tp.module()
    features = jnp.asarray(tp.native_features()[::4])
    scaled = jnp.asarray(SPEC.scale(_labels(2, seed=7)), jnp.float32)
    cached = jax.jit(net.__call__)(scaled, features)  # (2, W, 2): K/V computed once per spectrum
    naive = jax.jit(jax.vmap(jax.vmap(net.naive_single, in_axes=(None, 0)), in_axes=(0, None)))(scaled, features)
    assert naive.shape == cached.shape
    np.testing.assert_allclose(cached, naive, rtol=1e-5, atol=1e-5)
    # the check has teeth: the other spectrum's keys/values give different outputs

    @jax.jit
    def swapped_decode(scaled, features):
        kv = net.keys_values(net.tokens(scaled))
        return net.decode([(k[::-1], v[::-1]) for k, v in kv], features)

    assert np.abs(np.asarray(swapped_decode(scaled, features)[0] - cached[0])).max() > 1e-3


def test_chunked_decode_equals_unchunked(tp):
    """Chunking over wavelengths (lax.map + checkpoint, with padding) changes nothing, gradients included."""
    net = tp.module()
    features = jnp.asarray(tp.native_features()[:10])
    scaled = jnp.asarray(SPEC.scale(_labels(2, seed=11)), jnp.float32)

    @jax.jit
    def run(scaled):
        kv = net.keys_values(net.tokens(scaled))
        return net.decode(kv, features, chunk_points=0), net.decode(kv, features, chunk_points=6)  # 3 wavelengths x 2 spectra per chunk

    def loss(scaled, chunk):
        return jnp.sum(net.decode(net.keys_values(net.tokens(scaled)), features, chunk_points=chunk) ** 2)

    plain, chunked = run(scaled)
    np.testing.assert_allclose(chunked, plain, rtol=1e-6, atol=1e-6)
    g_plain, g_chunked = jax.jit(lambda s: (jax.grad(loss)(s, 0), jax.grad(loss)(s, 6)))(scaled)
    np.testing.assert_allclose(g_chunked, g_plain, rtol=1e-5, atol=1e-6)


def test_wavelengths_are_independent(tp):
    """Keys/values are functions of the labels only; each wavelength's stream is separate."""
    net = tp.module()
    scaled = jnp.asarray(SPEC.scale(_labels(1, seed=8)), jnp.float32)

    kv_of = jax.jit(lambda features: net(scaled, features))

    f = jnp.asarray(tp.native_features()[:3])
    # d(output)/d(features) flows only through the query stream: perturbing one
    # wavelength's features leaves the other wavelengths' outputs unchanged
    out1 = kv_of(f)
    out2 = kv_of(f.at[0].add(0.3))
    assert np.abs(np.asarray(out1[0, 0] - out2[0, 0])).max() > 1e-4
    np.testing.assert_array_equal(np.asarray(out1[0, 1:]), np.asarray(out2[0, 1:]))


def test_wavelength_encoding_float64_and_traced_float32():
    periods = wavelength_periods(64)
    assert periods[0] == pytest.approx(1e-6) and periods[-1] == pytest.approx(10.0)
    lam = np.geomspace(5000.0, 5500.0, 257)
    enc = encode_wavelength(lam, periods, 5250.0)
    assert enc.shape == (257, 64) and enc.dtype == np.float32
    # reference in extended precision: the float64 phase is correct to ~1e-9 cycles
    x = np.log10(lam.astype(np.longdouble))
    ref = np.sin(2 * np.pi * np.mod(x[:, None] / periods.astype(np.longdouble), 1))
    np.testing.assert_allclose(enc, ref.astype(np.float64), atol=1e-6)
    # a naive float32 computation is badly wrong for the short periods (why float64 is needed)
    naive32 = np.sin(np.float32(2 * np.pi) * np.log10(lam.astype(np.float32))[:, None] / periods.astype(np.float32))
    assert np.abs(naive32[:, :8] - ref[:, :8].astype(np.float64)).max() > 0.5
    # traced float32 input (x64 off) uses the reference-offset path: close to the exact features
    traced = np.asarray(jax.jit(lambda w: encode_wavelength(w, periods, 5250.0))(jnp.asarray(lam, jnp.float32)))
    exact32 = encode_wavelength(lam.astype(np.float32).astype(np.float64), periods, 5250.0)
    assert np.abs(traced - exact32).max() < 0.03
    # traced float64 input (x64 on) is exact
    with jax.enable_x64(True):
        traced64 = np.asarray(jax.jit(lambda w: encode_wavelength(w, periods, 5250.0))(jnp.asarray(lam, jnp.float64)))
    np.testing.assert_allclose(traced64, enc, atol=1e-6)


def test_tp_predicts_at_arbitrary_wavelengths(tp):
    labels = _labels(2, seed=9)
    native = tp.predict(labels)
    sub = tp.predict(labels, WAVE[[3, 17, 30]])
    np.testing.assert_allclose(sub, native[:, [3, 17, 30]], rtol=0, atol=1e-5)
    # traced float32 wavelengths inside jit (e.g. Doppler-shifted) agree with the concrete
    # path at the same (float32-rounded) wavelengths, up to the float32 encoding error
    wave32 = WAVE.astype(np.float32)
    traced = jax.jit(lambda w: tp.apply_fn(tp.params, tp.scale_labels(jnp.asarray(labels, jnp.float32)), w))(jnp.asarray(wave32))
    concrete = tp.predict(labels, wave32.astype(np.float64))
    assert np.abs(np.asarray(traced) - concrete).max() < 1e-2


def test_payne_interpolates_linearly_between_pixels(payne):
    labels = _labels(2, seed=10)
    native = payne.predict(labels)
    mid = np.sqrt(WAVE[:-1] * WAVE[1:])  # between pixels (geometric mid: not exactly the linear midpoint)
    weight = (mid - WAVE[:-1]) / (WAVE[1:] - WAVE[:-1])
    expected = native[:, :-1] * (1 - weight) + native[:, 1:] * weight
    np.testing.assert_allclose(payne.predict(labels, mid), expected, rtol=0, atol=1e-6)
    # traced float32 wavelengths: same interpolation at the float32-rounded wavelengths
    mid32 = mid.astype(np.float32)
    traced = jax.jit(lambda w: payne.apply_fn(payne.params, payne.scale_labels(jnp.asarray(labels, jnp.float32)), w))(jnp.asarray(mid32))
    np.testing.assert_allclose(traced, payne.predict(labels, mid32.astype(np.float64)), rtol=0, atol=2e-5)


def test_description_and_sizes(tp, payne):
    assert tp.wavelength_range == (WAVE[0], WAVE[-1])
    assert tp.label_names == SPEC.names
    # Payne size: 13*16+16 + 16*16+16 + 16*(2*40)+2*40
    assert payne.n_parameters == 13 * 16 + 16 + 16 * 16 + 16 + 16 * 80 + 80
    # TransformerPayne at the public v2 size (d=128, 8 layers, 16 tokens): ~1.86 M parameters
    from flax import nnx

    from stellarfit.emulators.transformer_payne import TransformerPayneNet

    abstract = nnx.eval_shape(
        lambda: TransformerPayneNet(13, dim=128, n_layers=8, n_tokens=16, head_dim=32, ffn_mult=4, reference_depth=1.0, rngs=nnx.Rngs(0))
    )
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(abstract)))
    assert 1.7e6 < n < 2.0e6


def test_smooth_leaky_relu_tends_to_leaky_relu():
    from stellarfit.emulators.payne import smooth_leaky_relu

    x = jnp.linspace(-3.0, 3.0, 601)
    exact = jax.nn.leaky_relu(x, 0.01)
    np.testing.assert_array_equal(smooth_leaky_relu(x, 0.01, 0.0), exact)
    gaps = [float(jnp.max(jnp.abs(smooth_leaky_relu(x, 0.01, beta) - exact))) for beta in (10.0, 100.0, 1000.0)]
    # largest gap (1 - a) log 2 / beta, at x = 0
    np.testing.assert_allclose(gaps, [0.99 * np.log(2.0) / b for b in (10.0, 100.0, 1000.0)], rtol=1e-3)


def test_payne_activation_sharpness_smooths_the_label_jacobian(tmp_path):
    sharp = PayneEmulator.create(SPEC, WAVE, {"hidden": [16, 16]}, seed=3)
    labels = sharp.scale_labels(jnp.asarray(_labels(1, seed=4), jnp.float32))

    def second_derivative(emulator):
        def line(t):
            return emulator.apply_fn(emulator.params, labels + t * jnp.ones_like(labels))[0]
        return np.asarray(jax.jacfwd(jax.jacfwd(line))(0.0))

    # LeakyReLU: piecewise linear in the labels, no curvature anywhere but at kinks
    assert np.all(second_derivative(sharp) == 0.0)
    smooth = sharp.replace(config={**sharp.config, "activation_sharpness": 30.0})
    curvature = second_derivative(smooth)
    assert np.max(np.abs(curvature)) > 1e-4
    # the second derivative is the derivative of the (now continuous) first derivative
    def slope(t):
        return jax.jacfwd(lambda s: smooth.apply_fn(smooth.params, labels + s * jnp.ones_like(labels))[0])(t)
    finite = (np.asarray(slope(1e-3)) - np.asarray(slope(-1e-3))) / 2e-3
    np.testing.assert_allclose(curvature, finite, rtol=0, atol=2e-3 * np.max(np.abs(curvature)) + 1e-4)
    # close to the LeakyReLU network, closer as the sharpness grows
    base = sharp.predict(_labels(5, seed=5))
    gaps = [np.max(np.abs(sharp.replace(config={**sharp.config, "activation_sharpness": b}).predict(_labels(5, seed=5)) - base))
            for b in (10.0, 1000.0)]
    assert gaps[1] < gaps[0] / 10
    # the setting survives save and load
    smooth.save(str(tmp_path / "smooth"))
    loaded = PayneEmulator.load(str(tmp_path / "smooth"))
    assert loaded.config["activation_sharpness"] == 30.0
    np.testing.assert_allclose(loaded.predict(_labels(3)), smooth.predict(_labels(3)), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="activation_sharpness"):
        sharp.replace(config={**sharp.config, "activation_sharpness": -1.0})
