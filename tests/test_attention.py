"""stellarfit.attention: attention weights, pixel elements, enrichment ratios, the command."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stellarfit.attention import (
    assign_pixel_elements,
    enrichment,
    encoder_attention,
    pixel_correlation,
    shift_baseline,
    transformer_payne_attention,
)
from stellarfit.emulators.transformer_payne import TransformerPayneEmulator
from stellarfit.labels import default_label_spec
from stellarfit.wavelengths import air_to_vacuum

#: a tiny TransformerPayne with the default labels over Mg b (vacuum), R 30,000 at 3 pixels per FWHM
WAVE = np.exp(np.arange(np.log(5160.0), np.log(5200.0), 1.0 / 90_000.0))
SUN = {"teff": 5772.0, "logg": 4.44, "vmic": 1.0, "fe_h": 0.0, "alpha_fe": 0.0, "mg_fe": 0.0, "si_fe": 0.0,
       "ca_fe": 0.0, "ti_fe": 0.0, "na_fe": 0.0, "ni_fe": 0.0, "cr_fe": 0.0, "mn_fe": 0.0}


@pytest.fixture(scope="module")
def tiny():
    return TransformerPayneEmulator.create(default_label_spec(), WAVE, {"dim": 32, "n_layers": 2, "n_tokens": 4, "head_dim": 16},
                                           with_continuum=True, resolution=30000, seed=1)


def test_weights_sum_to_one_and_flux_equals_predict(tiny):
    attention = transformer_payne_attention(tiny, SUN, pixels_per_call=100)  # several calls, the last one padded
    assert attention.weights.shape == (2, 2, WAVE.size, 4)
    np.testing.assert_allclose(attention.weights.sum(axis=-1), 1.0, atol=1e-5)
    assert np.all(attention.weights >= 0)
    np.testing.assert_allclose(attention.flux, tiny.predict(SUN)[0], atol=1e-5)
    assert attention.token_sensitivity.shape == (4, len(SUN))
    # every token is made from every label (a shared MLP), so no column is zero
    assert np.all(attention.token_sensitivity > 0)


def test_weights_change_with_wavelength_and_labels(tiny):
    sun = transformer_payne_attention(tiny, SUN)
    giant = transformer_payne_attention(tiny, {**SUN, "teff": 4300.0, "logg": 1.7})
    assert np.ptp(sun.weights, axis=2).max() > 1e-4
    assert np.abs(sun.weights - giant.weights).max() > 1e-4


def test_mg_b_lines_are_mg():
    elements = assign_pixel_elements(WAVE, 30000.0)
    for air in (5172.684, 5183.604):
        pixel = int(np.argmin(np.abs(WAVE - air_to_vacuum(np.array([air]))[0])))
        assert elements.atomic_number[pixel] == 12, elements.line_wavelength[pixel]
    assert elements.mask("Mg").sum() >= 5
    assert elements.counts()["continuum"] > 0
    # a higher threshold leaves fewer line pixels; wavelengths must be vacuum and increasing
    assert assign_pixel_elements(WAVE, 30000.0, threshold=4.0).mask("lines").sum() < elements.mask("lines").sum()
    with pytest.raises(ValueError, match="increasing"):
        assign_pixel_elements(WAVE[::-1], 30000.0)


def test_enrichment_of_uniform_and_concentrated_maps():
    rng = np.random.default_rng(0)
    mask = rng.random(500) < 0.2
    assert enrichment(np.full(500, 0.3), mask) == pytest.approx(1.0)
    concentrated = np.where(mask, 1.0, 0.0)
    assert enrichment(concentrated, mask) == pytest.approx(500 / mask.sum())
    assert enrichment(np.ones(500), np.zeros(500, bool)) is None  # too few pixels
    base = shift_baseline(np.ones((3, 500)), mask, n_shifts=20)
    assert base["observed"] == pytest.approx(1.0) and base["random_p95"] == pytest.approx(1.0)
    peaked = shift_baseline(concentrated, mask, n_shifts=50)
    assert peaked["observed"] > peaked["random_p95"]


def test_pixel_correlation():
    x = np.linspace(0, 1, 50)
    c = pixel_correlation(np.stack([x, -x]), np.stack([2 * x + 1, np.ones(50)]))
    np.testing.assert_allclose(c[:, 0], [1.0, -1.0])
    assert np.all(np.isnan(c[:, 1]))


def test_encoder_attention_matches_apply(tiny):
    from stellarfit.attention import simulate_spectrum
    from stellarfit.encoders import Encoder, EncoderConfig
    from stellarfit.encoders._predict import _token_arrays, prepare_pixels

    encoder = Encoder(EncoderConfig(patch_size=8, dim=16, heads=2, blocks=1, cross_blocks=2), default_label_spec(),
                      wavelength_range=(WAVE[0], WAVE[-1]), seed=0)
    spectrum = simulate_spectrum(tiny, SUN)
    attention = encoder_attention(encoder, spectrum)
    real = attention.token_mask
    np.testing.assert_allclose(attention.weights[:, real].sum(axis=1), 1.0, atol=1e-5)
    assert np.all(attention.weights[:, ~real] < 1e-6)
    mean, _ = encoder.apply(*_token_arrays(encoder, [prepare_pixels(encoder, spectrum)]))
    np.testing.assert_allclose(attention.mean, np.asarray(mean)[0], atol=1e-5)
    assert attention.output_names[-1] == "rv"


def test_command_writes_json_and_figures(tiny, tmp_path, capsys):
    from stellarfit.cli.main import main
    from stellarfit.encoders import Encoder, EncoderConfig

    checkpoint = tmp_path / "tiny_tp"
    tiny.save(str(checkpoint))
    encoder_dir = tmp_path / "encoder"
    Encoder(EncoderConfig(patch_size=8, dim=16, heads=2, blocks=1, cross_blocks=1), default_label_spec(),
            wavelength_range=(WAVE[0], WAVE[-1]), seed=0).save(encoder_dir)
    out = tmp_path / "maps"
    code = main(["attention", "--emulator", str(checkpoint), "--encoder", str(encoder_dir), "--spectrum-emulator",
                 str(checkpoint), "--labels", "teff=4300,logg=1.7", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    document = json.loads((out / "attention.json").read_text())
    assert document["labels"]["teff"] == 4300.0 and document["labels"]["mg_fe"] == 0.0
    tp = document["transformer_payne"]
    assert tp["flux_max_abs_difference_from_predict"] < 1e-5
    assert tp["gradient_own_element"]["mg_fe"]["element"] == "Mg"
    assert set(tp["attention_enrichment_per_map"]["axes"]) == {"layer", "head", "token"}
    assert "mg_fe" in document["encoder"]["queries"]
    for name in document["figures"].values():
        assert (out / name).stat().st_size > 1000 and name.endswith(".png")


def test_command_errors(tmp_path, capsys):
    from stellarfit.cli.main import main

    assert main(["attention", "--encoder", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    assert "docs/guide/encoder.md" in capsys.readouterr().err
    assert main(["attention", "--labels", "teff", "--out", str(tmp_path / "o")]) == 2
    assert "NAME=VALUE" in capsys.readouterr().err


def test_shipped_transformer_payne_weights_reproduce_predict():
    import stellarfit as sf

    emulator = sf.load_emulator("default")
    attention = transformer_payne_attention(emulator, SUN)
    n_layers, n_heads = emulator.config["n_layers"], emulator.config["dim"] // emulator.config["head_dim"]
    assert attention.weights.shape == (n_layers, n_heads, emulator.n_pixels, emulator.config["n_tokens"])
    np.testing.assert_allclose(attention.weights.sum(axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(attention.flux, emulator.predict(SUN)[0], atol=1e-5)


@pytest.mark.slow
def test_shipped_gradient_concentrates_on_its_element():
    import stellarfit as sf
    from stellarfit.attention import flux_jacobian

    emulator = sf.load_emulator("default")
    jacobian = flux_jacobian(emulator, SUN)
    elements = assign_pixel_elements(emulator.wavelength, 30000.0, labels=SUN)
    for name, element in (("ni_fe", "Ni"), ("cr_fe", "Cr"), ("ti_fe", "Ti")):
        assert enrichment(np.abs(jacobian[emulator.label_names.index(name)]), elements.mask(element)) > 3.0
