"""The Payne's linear last layer moved into Fourier space (ForwardModel.set_linear_readout).

The forward model with the readout must give the same model spectra and the
same derivatives as the forward model that evaluates the emulator's flux and
transforms it at each call (``linear_readout=False``).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stellarfit.emulators import PayneEmulator, TransformerPayneEmulator
from stellarfit.emulators.finetune import add_lora
from stellarfit.emulators._params import flatten_params, unflatten_params
from stellarfit.forward import ForwardModel
from stellarfit.labels import default_label_spec
from stellarfit.wavelengths import FWHM_TO_SIGMA, log_lambda_grid

NATIVE_R = 30_000.0
NATIVE = log_lambda_grid(5000.0, 5060.0, NATIVE_R, 3.0)
LINES = np.array([5012.0, 5020.5, 5031.0, 5040.2, 5049.0])


@pytest.fixture(scope="module")
def payne():
    """A small Payne with LoRA adapters whose flux is a line spectrum plus label-dependent structure."""
    spec = default_label_spec()
    base = PayneEmulator.create(spec, NATIVE, {"hidden": [16, 16], "activation_sharpness": 50.0}, resolution=NATIVE_R, seed=3)
    emulator = add_lora(base, rank=2, alpha=4.0, seed=1)
    sigma = LINES / NATIVE_R * FWHM_TO_SIGMA
    lines = 1.0 - 0.5 * np.exp(-0.5 * ((NATIVE[:, None] - LINES[None, :]) / sigma[None, :]) ** 2).sum(axis=1)
    flat = flatten_params(emulator.params)
    flat["output/bias"] = jnp.asarray(lines, jnp.float32)
    flat["output/kernel"] = 0.05 * flat["output/kernel"]
    flat["output/lora_b"] = 0.02 * jax.random.normal(jax.random.key(0), flat["output/lora_b"].shape)
    return emulator.replace(params=unflatten_params(flat))


def _labels(emulator, seed):
    spec = emulator.label_spec
    rng = np.random.default_rng(seed)
    return jnp.asarray(spec.lower + (spec.upper - spec.lower) * rng.uniform(0.2, 0.8, len(spec.names)), jnp.float32)


def test_readout_reproduces_the_payne_on_native_and_other_wavelengths(payne):
    labels = np.stack([np.asarray(_labels(payne, s)) for s in range(3)])
    for wavelength in (None, NATIVE[40:300], np.linspace(5003.0, 5055.0, 111)):
        features_fn, weight, bias = payne.linear_readout(wavelength)
        flux = np.asarray(features_fn(jnp.asarray(labels))) @ weight + bias
        expected = payne.predict(labels, wavelength=wavelength, check_bounds=False)
        np.testing.assert_allclose(flux, expected, atol=2e-6)
    # the LoRA term is part of the weight: without it the flux differs
    plain = payne.replace(config={**payne.config, "lora_rank": 0, "lora_alpha": None},
                          params=unflatten_params({k: v for k, v in flatten_params(payne.params).items() if "lora" not in k}))
    assert np.abs(plain.predict(labels, check_bounds=False) - payne.predict(labels, check_bounds=False)).max() > 1e-3
    features_fn, weight, bias = payne.linear_readout()
    assert np.abs(np.asarray(features_fn(jnp.asarray(labels))) @ weight + bias - plain.predict(labels, check_bounds=False)).max() > 1e-3


@pytest.mark.parametrize("resolution", ["scalar", "per-pixel"])
def test_forward_model_with_readout_equals_transforming_the_flux(payne, resolution):
    observed = log_lambda_grid(5008.0, 5052.0, 22_500.0, 2.5)
    if resolution == "scalar":
        observed_resolution = 22_500.0
    else:  # anchor LSFs: R from 15,000 to 25,000 across the range
        observed_resolution = np.linspace(15_000.0, 25_000.0, observed.size)
    options = dict(rv_range=(-400.0, 400.0), vsini_max=60.0)
    # every Fourier bin kept (readout_tolerance=0): the readout alone, exact up to float32 rounding
    fourier = ForwardModel.from_emulator(payne, observed, observed_resolution, readout_tolerance=0.0, **options)
    plain = ForwardModel.from_emulator(payne, observed, observed_resolution, linear_readout=False, **options)
    assert fourier._readout is not None and plain._readout is None
    assert fourier._n_bins == fourier._fused_fft_size // 2 + 1
    assert fourier.source[3]["linear_readout"] is True and fourier.source[3]["readout_tolerance"] == 0.0  # workers rebuild the same model
    for seed, rv, vsini in [(0, 0.0, 0.0), (1, -237.3, 4.2), (2, 311.9, 41.0)]:
        labels = _labels(payne, seed)
        a = np.asarray(fourier(labels, rv, vsini))
        b = np.asarray(plain(labels, rv, vsini))
        assert np.ptp(b) > 0.05  # lines, not a flat spectrum
        np.testing.assert_allclose(a, b, atol=3e-6)

        def jacobian(model, labels=labels, rv=rv, vsini=vsini):
            return jax.jacfwd(lambda p: model(p[:-2], p[-2], p[-1]))(jnp.concatenate([labels, jnp.asarray([rv, vsini + 5.0])]))

        ja, jb = np.asarray(jacobian(fourier)), np.asarray(jacobian(plain))
        scale = np.abs(jb).max(axis=0)
        assert np.all(scale > 0)
        np.testing.assert_allclose(ja / scale, jb / scale, atol=5e-5)  # float32 rounding differs between the paths


def test_readout_drops_fourier_bins_within_its_tolerance(payne_default, spectrum):
    """payne-default at the example's R = 22,500: the top Fourier bins, after the instrument kernel,
    carry < 1e-5 of flux (RMS) and are dropped; the model and its Jacobian barely move."""
    from stellarfit.forward._model import READOUT_TOLERANCE

    options = dict(rv_range=(-1000.0, 1000.0), vsini_max=100.0)
    models = {tolerance: ForwardModel.from_emulator(payne_default, spectrum.wavelength, spectrum.resolution,
                                                    readout_tolerance=tolerance, **options)
              for tolerance in (0.0, READOUT_TOLERANCE, 1e-4)}
    total = models[0.0]._fused_fft_size // 2 + 1
    assert models[0.0]._n_bins == total
    assert models[READOUT_TOLERANCE]._readout[1].shape[1] == 2 * models[READOUT_TOLERANCE]._n_bins
    # measured: 3,767 of 4,375 bins kept at 1e-5, fewer at 1e-4
    assert models[1e-4]._n_bins < models[READOUT_TOLERANCE]._n_bins < 0.95 * total
    full, cut = models[0.0], models[READOUT_TOLERANCE]
    spec = payne_default.label_spec
    rng = np.random.default_rng(7)
    rms = []
    for rv, vsini in [(0.0, 0.0), (-412.7, 2.0), (133.3, 12.0), (871.0, 0.5)]:
        labels = jnp.asarray(spec.lower + (spec.upper - spec.lower) * rng.uniform(0.1, 0.9, len(spec)), jnp.float32)
        a = np.asarray(cut(labels, rv, vsini), np.float64)
        b = np.asarray(full(labels, rv, vsini), np.float64)
        rms.append(np.sqrt(np.mean((a - b) ** 2)))
        assert np.abs(a - b).max() < READOUT_TOLERANCE  # measured <= 1.4e-6 (the tolerance is set by the box's worst corner)
        p = jnp.concatenate([labels, jnp.asarray([rv, vsini + 3.0])])
        ja, jb = (np.asarray(jax.jacfwd(lambda q, m=m: m(q[:-2], q[-2], q[-1]))(p)) for m in (cut, full))
        scale = np.abs(jb).max(axis=0)
        np.testing.assert_allclose(ja / scale, jb / scale, atol=2e-4)  # measured <= 4.5e-5
    assert max(rms) < READOUT_TOLERANCE / 5, rms  # measured <= 2.3e-7
    # the model without a readout keeps every bin; a per-pixel LSF whose sharpest anchor passes more of
    # the band keeps more bins than the scalar R
    per_pixel = ForwardModel.from_emulator(payne_default, spectrum.wavelength, np.linspace(20_000.0, 25_000.0, spectrum.wavelength.size), **options)
    assert per_pixel._n_bins > cut._n_bins
    assert ForwardModel.from_emulator(payne_default, spectrum.wavelength, spectrum.resolution, linear_readout=False, **options)._n_bins == total
    for bad in (-1e-5, float("nan")):
        with pytest.raises(ValueError, match="readout_tolerance must be a finite number >= 0"):
            ForwardModel.from_emulator(payne_default, spectrum.wavelength, spectrum.resolution, readout_tolerance=bad, **options)


@pytest.fixture(scope="module")
def payne_default():
    import stellarfit as sf

    return sf.load_emulator("payne-default")


def test_emulators_without_a_linear_last_layer_and_bad_readouts():
    tp = TransformerPayneEmulator.create(default_label_spec(), NATIVE, {"dim": 16, "n_layers": 1, "n_tokens": 2, "head_dim": 8},
                                         resolution=NATIVE_R, seed=0)
    assert tp.linear_readout() is None
    model = ForwardModel.from_emulator(tp, log_lambda_grid(5010.0, 5050.0, 22_500.0, 3.0), 22_500.0, vsini_max=20.0)
    assert model._readout is None
    assert np.all(np.isfinite(np.asarray(model(_labels(tp, 0), 10.0, 3.0))))
    with pytest.raises(ValueError, match="linear readout needs weight"):
        model.set_linear_readout(lambda labels: labels, np.zeros((4, model.n_native + 1)), np.zeros(model.n_native))
