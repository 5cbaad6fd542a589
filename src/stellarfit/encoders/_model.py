"""The spectrum encoder network: patch tokens + wavelength encoding -> self-attention ->
label queries cross-attending to the tokens -> a Gaussian (mean, log variance) per output.

Design (facts from SpectraFM, Koblischke & Bovy 2024; the code is our own): a token is a
short run of ``patch_size`` consecutive pixels rather than one pixel, so a whole
R = 30,000 window (8.6k pixels) is ~540 tokens and CPU training stays cheap.  A token
embeds the patch's normalized flux, log uncertainty and good-pixel flags, plus the log of
its pixel step (the sampling, which tells resolutions apart), and adds a sinusoidal
encoding of the patch's mean ln(wavelength) computed in float64 (ln lambda ~ 8.6 has a
float32 spacing of 9.5e-7: rounding moves the finest period, 1e-4, by up to 0.03 rad).
Only the wavelength encoding tells tokens apart: the network works on any pixel grid.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = ["N_PIXEL_FEATURES", "EncoderConfig", "SpectrumEncoder", "patch_features", "wavelength_encoding"]

#: features per pixel in a token: normalized flux, scaled log10 uncertainty, good flag
N_PIXEL_FEATURES = 3
#: bounds of the predicted log variance (in scaled units): variances from ~1e-7 to e^2
LOG_VARIANCE_RANGE = (-16.0, 2.0)


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """Architecture of a :class:`SpectrumEncoder` (recorded in checkpoints).

    Attributes:
        patch_size: consecutive pixels per token.
        dim: token width.
        heads: attention heads (``dim`` must be divisible by it).
        blocks: self-attention blocks over the tokens.
        cross_blocks: cross-attention blocks of the label queries over the tokens.
        mlp_ratio: hidden width of the feed-forward layers, in units of ``dim``.
        min_period, max_period: shortest and longest period of the wavelength encoding,
            in ln(lambda) (1e-4 ~ 30 km/s, below one patch at R = 30,000; 4 spans any optical/IR range).
        adapter_width: hidden width of the residual adapter after every block (0: none).  Adapters
            are added by :func:`stellarfit.encoders.adapt_encoder` (``mode="adapters"``); an
            ``encoder.json`` without this field (older files) has none.
    """

    patch_size: int = 16
    dim: int = 96
    heads: int = 4
    blocks: int = 3
    cross_blocks: int = 2
    mlp_ratio: int = 2
    min_period: float = 1e-4
    max_period: float = 4.0
    adapter_width: int = 0

    def __post_init__(self) -> None:
        if self.dim % self.heads or self.dim % 2:
            raise ValueError(f"dim ({self.dim}) must be even and divisible by heads ({self.heads})")
        if self.patch_size < 1 or self.blocks < 0 or self.cross_blocks < 1:
            raise ValueError("patch_size >= 1, blocks >= 0 and cross_blocks >= 1 are required")
        if self.adapter_width < 0:
            raise ValueError(f"adapter_width must be >= 0 (0: no adapters), got {self.adapter_width}")


def wavelength_encoding(log_wavelength: np.ndarray, dim: int, min_period: float, max_period: float) -> np.ndarray:
    """Sinusoidal encoding of ln(wavelength), computed in float64 and returned as float32.

    Args:
        log_wavelength: (...,) ln(lambda [A]) per token, float64.
        dim: encoding width (even): dim / 2 periods spaced geometrically from
            ``min_period`` to ``max_period`` [in ln lambda], a sine and a cosine each.
    Returns:
        (..., dim) float32.
    """
    # float64 on purpose: the phase 2 pi ln(lambda) / 1e-4 ~ 5e5 rad needs ~1e-11 relative precision
    log_wavelength = np.asarray(log_wavelength, dtype=np.float64)
    periods = np.geomspace(min_period, max_period, dim // 2)
    phase = (2.0 * np.pi) * log_wavelength[..., None] / periods
    phase = np.mod(phase, 2.0 * np.pi)
    return np.concatenate([np.sin(phase), np.cos(phase)], axis=-1).astype(np.float32)


def patch_features(flux, sigma, good, log_step, patch_size: int):
    """Token features from pixel arrays (jnp or numpy; float32 is enough here).

    Args:
        flux: (batch, n_tokens * patch_size) flux in any units.
        sigma: (batch, n_tokens * patch_size) 1-sigma uncertainty, same units.
        good: (batch, n_tokens * patch_size) bool, False = missing/masked/padding.
        log_step: (batch, n_tokens) ln(lambda) step per pixel of each token.
    Returns:
        features (batch, n_tokens, N_PIXEL_FEATURES * patch_size + 2) float32 and
        token_mask (batch, n_tokens) bool (a token with at least one good pixel).
    Per pixel: flux / (token's pseudo-continuum) - 1, log10(sigma / pseudo-continuum) + 2 and a
    good flag; per token: log10 of the pixel step + 4.5 and ln(pseudo-continuum / the spectrum's
    median flux).  The pseudo-continuum is the 90th percentile of the token's good pixels, so the
    features depend neither on the flux units nor on the continuum's shape; masked pixels are
    zeros with flag 0.
    """
    flux = jnp.asarray(flux, jnp.float32)
    sigma = jnp.asarray(sigma, jnp.float32)
    good = jnp.asarray(good, bool) & jnp.isfinite(flux) & jnp.isfinite(sigma) & (sigma > 0)
    batch, n = flux.shape
    n_tokens = n // patch_size
    scale = jnp.nanmedian(jnp.where(good, flux, jnp.nan), axis=1, keepdims=True)
    scale = jnp.where(jnp.isfinite(scale) & (scale > 0), scale, 1.0)
    # each token is divided by its own pseudo-continuum (the 90th percentile of its good pixels,
    # so line depths do not depend on the continuum's shape); its level relative to the spectrum's median is a feature
    shaped = (jnp.where(good, flux / scale, jnp.nan)).reshape(batch, n_tokens, patch_size)
    level = jnp.nanpercentile(shaped, 90.0, axis=-1)
    level = jnp.where(jnp.isfinite(level) & (level > 0), level, 1.0)
    local = jnp.repeat(level, patch_size, axis=1) * scale
    normalized = jnp.where(good, flux / local - 1.0, 0.0)
    log_sigma = jnp.where(good, jnp.log10(jnp.where(good, sigma, 1.0) / local) + 2.0, 0.0)  # S/N 100 -> 0
    pixels = jnp.stack([jnp.clip(normalized, -3.0, 3.0), jnp.clip(log_sigma, -3.0, 3.0), good.astype(jnp.float32)], axis=-1)
    pixels = pixels.reshape(batch, n_tokens, patch_size * N_PIXEL_FEATURES)
    step = jnp.log10(jnp.maximum(jnp.asarray(log_step, jnp.float32), 1e-9)) + 4.5  # 1/(3 R) at R 30,000 -> -0.45
    features = jnp.concatenate([pixels, step[..., None], jnp.clip(jnp.log(level), -3.0, 3.0)[..., None]], axis=-1)
    token_mask = jnp.any(good.reshape(batch, n_tokens, patch_size), axis=-1)
    return features, token_mask


class _FeedForward(nnx.Module):
    def __init__(self, dim: int, hidden: int, rngs: nnx.Rngs):
        self.inner = nnx.Linear(dim, hidden, rngs=rngs)
        self.outer = nnx.Linear(hidden, dim, rngs=rngs)

    def __call__(self, x):
        return self.outer(jax.nn.gelu(self.inner(x)))


class _Adapter(nnx.Module):
    """Residual bottleneck (Houlsby et al. 2019): x + up(gelu(down(norm(x)))); ``up`` starts at zero,
    so a new adapter leaves its block's output unchanged (bit for bit)."""

    def __init__(self, dim: int, width: int, rngs: nnx.Rngs):
        self.norm = nnx.LayerNorm(dim, rngs=rngs)
        self.down = nnx.Linear(dim, width, rngs=rngs)
        self.up = nnx.Linear(width, dim, kernel_init=nnx.initializers.zeros, rngs=rngs)

    def __call__(self, x):
        return x + self.up(jax.nn.gelu(self.down(self.norm(x))))


class _Block(nnx.Module):
    """Pre-norm attention block: x + attention(norm(x), memory) then x + mlp(norm(x)) (then the adapter, if any)."""

    def __init__(self, config: EncoderConfig, rngs: nnx.Rngs):
        dim = config.dim
        self.norm_query = nnx.LayerNorm(dim, rngs=rngs)
        self.norm_memory = nnx.LayerNorm(dim, rngs=rngs)
        self.attention = nnx.MultiHeadAttention(config.heads, dim, decode=False, rngs=rngs)
        self.norm_mlp = nnx.LayerNorm(dim, rngs=rngs)
        self.mlp = _FeedForward(dim, config.mlp_ratio * dim, rngs)
        self.adapter = _Adapter(dim, config.adapter_width, rngs) if config.adapter_width else None

    def __call__(self, x, memory, mask):
        """x: (batch, n_query, dim); memory: (batch, n_key, dim); mask: (batch, 1, n_query, n_key) bool."""
        x = x + self.attention(self.norm_query(x), self.norm_memory(memory), mask=mask)
        x = x + self.mlp(self.norm_mlp(x))
        return x if self.adapter is None else self.adapter(x)


class SpectrumEncoder(nnx.Module):
    """Tokens of a spectrum -> (mean, log variance) of each output, in scaled units.

    Args:
        config: the architecture.
        n_outputs: outputs (the labels, then RV); one learned query each.
        rngs: initialization keys.
    """

    def __init__(self, config: EncoderConfig, n_outputs: int, rngs: nnx.Rngs):
        self.config = config
        n_features = N_PIXEL_FEATURES * config.patch_size + 2
        self.embed_inner = nnx.Linear(n_features, 2 * config.dim, rngs=rngs)
        self.embed_outer = nnx.Linear(2 * config.dim, config.dim, rngs=rngs)
        self.position = nnx.Linear(config.dim, config.dim, rngs=rngs)
        self.blocks = nnx.List([_Block(config, rngs) for _ in range(config.blocks)])
        self.queries = nnx.Param(0.02 * jax.random.normal(rngs.params(), (n_outputs, config.dim)))
        self.cross = nnx.List([_Block(config, rngs) for _ in range(config.cross_blocks)])
        self.norm_out = nnx.LayerNorm(config.dim, rngs=rngs)
        self.head_kernel = nnx.Param(0.01 * jax.random.normal(rngs.params(), (n_outputs, config.dim, 2)))
        self.head_bias = nnx.Param(jnp.zeros((n_outputs, 2)))

    def __call__(self, features, encoding, token_mask):
        """Predict.

        Args:
            features: (batch, n_tokens, n_features) float32 from :func:`patch_features`.
            encoding: (batch, n_tokens, dim) float32 from :func:`wavelength_encoding`.
            token_mask: (batch, n_tokens) bool, True = a real token.  Masked tokens are
                never attended to, so their content cannot change the output.
        Returns:
            mean (batch, n_outputs), log_variance (batch, n_outputs), scaled units.
        """
        tokens = self.embed_outer(jax.nn.gelu(self.embed_inner(features))) + self.position(encoding)
        self_mask = token_mask[:, None, None, :] & token_mask[:, None, :, None]
        # a masked query row sees only itself: no fully masked softmax rows (NaN-free), no effect on others
        diagonal = jnp.eye(token_mask.shape[1], dtype=bool)[None, None]
        self_mask = self_mask | diagonal
        for block in self.blocks:
            tokens = block(tokens, tokens, self_mask)
        batch = tokens.shape[0]
        queries = jnp.broadcast_to(self.queries[...][None], (batch, *self.queries.shape))
        cross_mask = jnp.broadcast_to(token_mask[:, None, None, :], (batch, 1, queries.shape[1], token_mask.shape[1]))
        for block in self.cross:
            queries = block(queries, tokens, cross_mask)
        out = jnp.einsum("bqd,qdk->bqk", self.norm_out(queries), self.head_kernel[...]) + self.head_bias[...]
        low, high = LOG_VARIANCE_RANGE
        log_variance = low + (high - low) * jax.nn.sigmoid(out[..., 1] + 1.1)  # starts near log(0.3^2)
        return out[..., 0], log_variance
