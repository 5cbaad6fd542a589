"""Fine-tuning a pre-trained emulator on a new grid: full, head-only or LoRA.

The use case (Różański et al., arXiv 2407.05751): pre-train on many cheap
spectra (the ``simple`` JAX synthesizer), then fine-tune on a few expensive
``realistic`` ones; they report up to 10x fewer realistic spectra for the
same accuracy.

- ``mode="full"``: every parameter is trained (usually with a smaller
  learning rate than pre-training).
- ``mode="head"``: only the output head (TransformerPayne: ``head_norm``,
  ``head_hidden``, ``head_out``; The Payne: the last layer ``output``).
- ``mode="lora"``: low-rank adapters (Hu et al. 2021, arXiv 2106.09685) on the
  dense layers of attention and feed-forward blocks (TransformerPayne:
  query, key, value, out, ffn_in, ffn_out; The Payne: every layer).  Only the
  adapter arrays ``lora_a``/``lora_b`` change; :func:`merge_lora` folds them
  into the base kernels for inference at the original cost.

Frozen parameters are kept out of the optimizer entirely, so they stay
bit-for-bit equal to the pre-trained ones.  The continuum standardization of
the pre-trained emulator is kept.
"""

from __future__ import annotations

import os
from typing import Any

import jax.numpy as jnp
import numpy as np

from stellarfit.emulators._params import flatten_params, unflatten_params
from stellarfit.emulators.base import Emulator
from stellarfit.emulators.training import TrainConfig, TrainingData, TrainResult, train_emulator

__all__ = ["add_lora", "merge_lora", "finetune", "FINETUNE_MODES"]

FINETUNE_MODES = ("full", "head", "lora")


def add_lora(emulator: Emulator, rank: int = 8, alpha: float | None = None, *, seed: int = 0) -> Emulator:
    """A copy of ``emulator`` with LoRA adapters of ``rank`` (B = 0: same outputs).

    ``alpha`` sets the adapter scale alpha / rank (default: rank, i.e. 1).
    """
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    if emulator.config.get("lora_rank", 0):
        raise ValueError("this emulator already has LoRA adapters; merge them first with merge_lora()")
    config = {**emulator.config, "lora_rank": int(rank), "lora_alpha": None if alpha is None else float(alpha)}
    fresh = type(emulator)(emulator.label_spec, emulator.wavelength, config, resolution=emulator.native_resolution,
                           has_continuum=emulator.has_continuum, metadata=emulator.metadata, seed=seed)
    flat = flatten_params(fresh.params)
    base = flatten_params(emulator.params)
    for name, value in base.items():
        flat[name] = value
    return fresh.replace(params=unflatten_params(flat))


def merge_lora(emulator: Emulator) -> Emulator:
    """Fold LoRA adapters into the base kernels: kernel + (alpha / r) A @ B; returns an adapter-free copy."""
    rank = int(emulator.config.get("lora_rank", 0))
    if rank == 0:
        return emulator
    alpha = emulator.config.get("lora_alpha")
    scale = (alpha if alpha is not None else rank) / rank
    flat = flatten_params(emulator.params)
    merged = {}
    for name, value in flat.items():
        if name.endswith("/lora_a") or name.endswith("/lora_b"):
            continue
        if name.endswith("/kernel") and name[: -len("kernel")] + "lora_a" in flat:
            prefix = name[: -len("kernel")]
            value = jnp.asarray(value) + scale * (jnp.asarray(flat[prefix + "lora_a"]) @ jnp.asarray(flat[prefix + "lora_b"]))
        merged[name] = value
    config = {**emulator.config, "lora_rank": 0, "lora_alpha": None}
    return type(emulator)(emulator.label_spec, emulator.wavelength, config, unflatten_params(merged),
                          resolution=emulator.native_resolution, has_continuum=emulator.has_continuum, metadata=emulator.metadata)


def finetune(
    emulator: Emulator,
    train: TrainingData,
    val: TrainingData | None = None,
    config: TrainConfig | None = None,
    *,
    mode: str = "full",
    lora_rank: int = 8,
    lora_alpha: float | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = True,
    time_limit_s: float | None = None,
) -> TrainResult:
    """Fine-tune a pre-trained ``emulator`` on ``train`` (see the module docstring for modes).

    A TransformerPayne may be fine-tuned on a grid with other wavelengths (its
    native grid becomes the new one); The Payne needs the same pixel grid.
    The result's metadata records ``finetuned_from`` (the parent's grid hash
    and mode).  For LoRA the returned emulator still holds the adapters; call
    :func:`merge_lora` for inference at the original cost.  ``time_limit_s`` ends the call
    early with a checkpoint, as in :func:`train_emulator` (call again to continue).
    """
    if mode not in FINETUNE_MODES:
        raise ValueError(f"mode must be one of {FINETUNE_MODES}, got {mode!r}")
    config = config or TrainConfig()
    if not (train.wavelength.shape == emulator.wavelength.shape and np.allclose(train.wavelength, emulator.wavelength, rtol=1e-12, atol=0)):
        if not emulator.samples_wavelengths:
            raise ValueError(
                f"The {emulator.model_type} emulator is tied to its {emulator.n_pixels}-pixel grid; resample the fine-tuning grid "
                "onto emulator.wavelength first"
            )
        emulator = emulator.replace(wavelength=train.wavelength)
    parent: dict[str, Any] = {"training_grid_hash": emulator.metadata.get("training_grid_hash"), "mode": mode,
                              "metrics": emulator.metadata.get("metrics")}
    if mode == "lora":
        emulator = add_lora(emulator, lora_rank, lora_alpha, seed=config.seed)

        def trainable(name: str) -> bool:
            return name.endswith("/lora_a") or name.endswith("/lora_b")
    elif mode == "head":
        heads = tuple(emulator.head_modules)

        def trainable(name: str) -> bool:
            return name.split("/")[0] in heads
    else:
        trainable = None
    return train_emulator(
        emulator,
        train,
        val,
        config,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        trainable=trainable,
        initialize=False,
        extra_metadata={"finetuned_from": parent},
        time_limit_s=time_limit_s,
    )
