"""Flax NNX building blocks of the emulators: a dense layer with optional LoRA adapters.

LoRA (Hu et al. 2021, arXiv 2106.09685): a frozen weight ``W`` (in, out) is
adapted as ``W + (alpha / r) * A @ B`` with ``A`` (in, r) random and ``B``
(r, out) zero at initialization, so adding adapters leaves the output
unchanged until ``B`` is trained.  Adapter arrays are named ``lora_a`` and
``lora_b``; fine-tuning selects them by name.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = ["Dense"]


class Dense(nnx.Module):
    """``y = x @ kernel + bias`` (+ the LoRA term when ``lora_rank > 0``).

    Args:
        in_features, out_features: sizes of the last axis of input and output.
        lora_rank: rank ``r`` of the adapters (0: none).
        lora_alpha: LoRA scale numerator (default ``r``, i.e. a scale of 1).
        rngs: NNX random streams (uses ``params``).

    Shapes: x (..., in_features) -> (..., out_features), float32.
    """

    def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs, lora_rank: int = 0, lora_alpha: float | None = None):
        init = jax.nn.initializers.lecun_normal()
        self.kernel = nnx.Param(init(rngs.params(), (in_features, out_features), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32))
        self.lora_rank = int(lora_rank)
        if self.lora_rank > 0:
            self.lora_scale = float(lora_alpha if lora_alpha is not None else lora_rank) / self.lora_rank
            a = jax.random.normal(rngs.params(), (in_features, self.lora_rank), jnp.float32) / np.sqrt(in_features)
            self.lora_a = nnx.LoRAParam(a)
            self.lora_b = nnx.LoRAParam(jnp.zeros((self.lora_rank, out_features), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        y = x @ self.kernel[...] + self.bias[...]
        if self.lora_rank > 0:
            y = y + self.lora_scale * ((x @ self.lora_a[...]) @ self.lora_b[...])
        return y
