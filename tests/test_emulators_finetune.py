"""Fine-tuning: LoRA and head-only change only what they should; LoRA merge; new grids."""

from __future__ import annotations

import numpy as np
import pytest

from stellarfit.emulators import PayneEmulator, TrainConfig, TransformerPayneEmulator, add_lora, finetune, merge_lora
from stellarfit.emulators._params import flatten_params
from stellarfit.emulators.toy import make_toy_grid

PRE = make_toy_grid(64, 64, seed=1)
NEW = make_toy_grid(32, 64, seed=4)
CFG = TrainConfig(n_steps=12, batch_size=8, n_wavelengths=32, learning_rate=1e-2, warmup_steps=2, eval_every=6, progress=False)


@pytest.fixture(scope="module")
def tp():
    return TransformerPayneEmulator.create(PRE.label_spec, PRE.wavelength, {"dim": 32, "n_layers": 1, "n_tokens": 2, "head_dim": 16}, with_continuum=True, seed=0)


def _changed(before: dict, after: dict) -> set[str]:
    return {name for name in after if name not in before or not np.array_equal(np.asarray(before[name]), np.asarray(after[name]))}


def test_add_lora_keeps_outputs_and_targets_attention_and_ffn(tp):
    lora = add_lora(tp, rank=2, alpha=4.0)
    names = flatten_params(lora.params)
    adapters = sorted(n for n in names if "lora_" in n)
    layers = {n.split("/")[2] for n in adapters}
    assert layers == {"query", "key", "value", "out", "ffn_in", "ffn_out"}
    assert all(n.startswith("blocks/") for n in adapters)
    np.testing.assert_array_equal(lora.predict(PRE.labels[:3]), tp.predict(PRE.labels[:3]))
    with pytest.raises(ValueError, match="already has LoRA"):
        add_lora(lora)


def test_lora_finetune_changes_only_adapters(tp):
    result = finetune(tp, NEW, None, CFG, mode="lora", lora_rank=2)
    before, after = flatten_params(tp.params), flatten_params(result.emulator.params)
    changed = _changed(before, after)
    assert changed, "LoRA fine-tuning changed nothing"
    assert all(name.endswith(("/lora_a", "/lora_b")) for name in changed)
    # every non-adapter array is bit-for-bit the pre-trained one
    for name, value in before.items():
        np.testing.assert_array_equal(np.asarray(after[name]), np.asarray(value), err_msg=name)
    assert result.emulator.metadata["finetuned_from"]["mode"] == "lora"
    assert result.emulator.metadata["training"]["n_trainable"] == sum(np.size(after[n]) for n in after if "lora_" in n)
    # merging folds the adapters into the kernels: same predictions, no adapter arrays
    merged = merge_lora(result.emulator)
    assert not any("lora_" in n for n in flatten_params(merged.params))
    np.testing.assert_allclose(merged.predict(NEW.labels[:4]), result.emulator.predict(NEW.labels[:4]), rtol=0, atol=2e-5)
    assert np.abs(merged.predict(NEW.labels[:4]) - tp.predict(NEW.labels[:4])).max() > 1e-4


def test_head_only_finetune_payne():
    payne = PayneEmulator.create(PRE.label_spec, PRE.wavelength, {"hidden": [16, 16]}, seed=0)
    data = make_toy_grid(32, 64, seed=4, with_continuum=False)
    result = finetune(payne, data, None, CFG, mode="head")
    changed = _changed(flatten_params(payne.params), flatten_params(result.emulator.params))
    assert changed == {"output/kernel", "output/bias"}
    full = finetune(payne, data, None, CFG, mode="full")
    assert _changed(flatten_params(payne.params), flatten_params(full.emulator.params)) == set(flatten_params(payne.params))


def test_tp_finetunes_on_a_new_wavelength_grid_payne_refuses(tp):
    other = make_toy_grid(16, 48, seed=5, window=(5010.0, 5040.0))
    config = TrainConfig(**{**CFG.__dict__, "n_steps": 2, "eval_every": 2})
    result = finetune(tp, other, None, config, mode="head")
    np.testing.assert_array_equal(result.emulator.wavelength, other.wavelength)
    assert result.emulator.predict(other.labels[:2]).shape == (2, 48)
    payne = PayneEmulator.create(PRE.label_spec, PRE.wavelength, {"hidden": [8]}, seed=0)
    with pytest.raises(ValueError, match="tied to its 64-pixel grid"):
        finetune(payne, make_toy_grid(8, 48, seed=5, with_continuum=False), None, config)
    with pytest.raises(ValueError, match="mode must be one of"):
        finetune(tp, PRE, None, config, mode="bias-only")
