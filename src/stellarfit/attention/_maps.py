"""Attention weights and flux gradients, read from a TransformerPayne and from a spectrum encoder.

Neither network is changed: the functions here merge the models' own parameters and modules
and repeat their forward passes, keeping the softmax weights on the way.  Each also returns the
ordinary output of that pass (the TransformerPayne's normalized flux, the encoder's scaled
means), which the tests compare with ``Emulator.predict`` and ``Encoder.apply``: the weights
are those of the computation that makes the predictions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.nnx.nn.attention import dot_product_attention_weights

from stellarfit._precision import INFERENCE_MATMUL_PRECISION

__all__ = [
    "EncoderAttention",
    "TransformerPayneAttention",
    "encoder_attention",
    "flux_jacobian",
    "transformer_payne_attention",
]


class TransformerPayneAttention(NamedTuple):
    """Cross-attention of a TransformerPayne's wavelength queries over its parameter tokens.

    Attributes:
        weights: (n_layers, n_heads, n_wavelengths, n_tokens) float32 softmax weights; each
            (layer, head, pixel) row sums to 1 over the tokens.
        flux: (n_wavelengths,) normalized flux from the same pass (equals ``predict``).
        token_sensitivity: (n_tokens, n_labels) float64: the RMS over a token's ``dim`` entries of
            d token / d scaled label (labels scaled to [-0.5, 0.5] over their box).  A token that is
            a function of one label has one non-zero column; the TransformerPayne makes every
            token from all labels through a shared MLP, so they mix.
    """

    weights: np.ndarray
    flux: np.ndarray
    token_sensitivity: np.ndarray


def _label_vector(emulator, labels: Mapping[str, float] | np.ndarray) -> np.ndarray:
    """Physical labels (n_labels,) float64 in the emulator's order."""
    return np.asarray(emulator.label_spec.to_array(labels), np.float64).reshape(-1)[: emulator.n_labels]


def _transformer_payne_pass(net, scaled: jax.Array, features: jax.Array):
    """The TransformerPayneNet forward pass for one spectrum, keeping the attention weights.

    Repeats ``TransformerPayneNet._decode_all`` with ``CrossAttentionBlock.attend`` (no chunking:
    the result does not depend on it).  scaled (n_labels,), features (W, dim) ->
    (outputs (W, n_outputs), weights (n_layers, n_heads, W, n_tokens)).
    """
    tokens = net.tokens(scaled[None])
    h = features[None].astype(jnp.float32)
    all_weights = []
    for block, (k, v) in zip(net.blocks, net.keys_values(tokens)):
        h, weights = block.attend(h, k, v)  # the block's own pass, weights kept
        all_weights.append(jnp.transpose(weights[0], (1, 0, 2)))  # (heads, W, tokens)
    outputs = net.head_out(jax.nn.gelu(net.head_hidden(net.head_norm(h))))[0]
    return outputs, jnp.stack(all_weights)


def transformer_payne_attention(emulator, labels: Mapping[str, float] | np.ndarray, *,
                                pixels_per_call: int = 2048) -> TransformerPayneAttention:
    """Per-layer, per-head attention over the parameter tokens at every native pixel.

    Args:
        emulator: a :class:`stellarfit.emulators.TransformerPayneEmulator`.
        labels: physical labels (mapping or (n_labels,) array in the emulator's order).
        pixels_per_call: native pixels per compiled call (bounds the memory; no effect on values).
    Returns:
        :class:`TransformerPayneAttention` on ``emulator.wavelength``.
    """
    if getattr(emulator, "model_type", None) != "transformer_payne":
        raise ValueError(f"attention maps over parameter tokens need a TransformerPayne, got a "
                         f"{getattr(emulator, 'model_type', type(emulator).__name__)} emulator")
    physical = _label_vector(emulator, labels)
    scaled = emulator.scale_labels(jnp.asarray(physical, jnp.float32))
    features = np.asarray(emulator.native_features())
    graphdef, params = nnx.split(emulator.module())

    @jax.jit
    def run(params, scaled, chunk):
        return _transformer_payne_pass(nnx.merge(graphdef, params), scaled, chunk)

    @jax.jit
    def sensitivity(params, scaled):
        net = nnx.merge(graphdef, params)
        jac = jax.jacfwd(lambda s: net.tokens(s[None])[0])(scaled)  # (tokens, dim, labels)
        return jnp.sqrt(jnp.mean(jac**2, axis=1))

    size = max(1, int(pixels_per_call))
    n = features.shape[0]
    flux, weights = [], []
    with jax.default_matmul_precision(INFERENCE_MATMUL_PRECISION):
        for start in range(0, n, size):
            chunk = features[start:start + size]
            pad = size - chunk.shape[0] if n > size else 0
            if pad:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
            out, w = run(params, scaled, jnp.asarray(chunk))
            keep = chunk.shape[0] - pad
            flux.append(np.asarray(out[:keep, 0]))
            weights.append(np.asarray(w[:, :, :keep]))
        token_sensitivity = np.asarray(sensitivity(params, scaled), np.float64)
    return TransformerPayneAttention(np.concatenate(weights, axis=2), np.concatenate(flux), token_sensitivity)


def flux_jacobian(emulator, labels: Mapping[str, float] | np.ndarray) -> np.ndarray:
    """d flux / d label at ``labels`` on the native grid: (n_labels, n_pixels) float64, per physical
    label unit (K, dex, km/s), by forward-mode differentiation of ``emulator.flux_fn()``."""
    physical = jnp.asarray(_label_vector(emulator, labels), jnp.float32)
    fn = emulator.flux_fn()
    jacobian = jax.jit(jax.jacfwd(fn))(physical)  # (n_pixels, n_labels)
    return np.asarray(jacobian, np.float64).T


class EncoderAttention(NamedTuple):
    """Cross-attention of an encoder's output queries over the patch tokens (last cross block).

    Attributes:
        weights: (n_outputs, n_tokens) float32, averaged over heads; sums to 1 over the real tokens.
        weights_per_head: (n_heads, n_outputs, n_tokens) float32.
        token_wavelength: (n_tokens,) vacuum A at each token's mean ln(lambda).
        token_mask: (n_tokens,) bool, True = a real token (padding tokens get no weight).
        mean: (n_outputs,) scaled means from the same pass (equal ``Encoder.apply``'s).
        pixel_token: (n_pixels,) the token each prepared pixel belongs to.
        pixel_wavelength: (n_pixels,) vacuum A of the prepared pixels.
        output_names: the encoder's outputs (labels, then ``rv``).
        info: what was done to the spectrum (``stellarfit.encoders.prepare_pixels``).
    """

    weights: np.ndarray
    weights_per_head: np.ndarray
    token_wavelength: np.ndarray
    token_mask: np.ndarray
    mean: np.ndarray
    pixel_token: np.ndarray
    pixel_wavelength: np.ndarray
    output_names: tuple[str, ...]
    info: dict


def _encoder_pass(model, features, encoding, token_mask):
    """``SpectrumEncoder.__call__`` repeated, keeping each cross block's weights (batch, heads, queries, tokens)."""
    tokens = model.embed_outer(jax.nn.gelu(model.embed_inner(features))) + model.position(encoding)
    self_mask = token_mask[:, None, None, :] & token_mask[:, None, :, None]
    self_mask = self_mask | jnp.eye(token_mask.shape[1], dtype=bool)[None, None]
    for block in model.blocks:
        tokens = block(tokens, tokens, self_mask)
    batch = tokens.shape[0]
    queries = jnp.broadcast_to(model.queries[...][None], (batch, *model.queries.shape))
    cross_mask = jnp.broadcast_to(token_mask[:, None, None, :], (batch, 1, queries.shape[1], token_mask.shape[1]))
    weights = []
    for block in model.cross:
        attention = block.attention
        memory = block.norm_memory(tokens)
        query = attention.query(block.norm_query(queries))
        key = attention.key(memory)
        weights.append(dot_product_attention_weights(query, key, mask=cross_mask))
        queries = block(queries, tokens, cross_mask)
    out = jnp.einsum("bqd,qdk->bqk", model.norm_out(queries), model.head_kernel[...]) + model.head_bias[...]
    return out[..., 0], weights


def encoder_attention(encoder, spectrum) -> EncoderAttention:
    """The last cross block's attention of each output query over the tokens of ``spectrum``.

    Args:
        encoder: a :class:`stellarfit.encoders.Encoder`.
        spectrum: an ObservedSpectrum; prepared as ``stellarfit.encoders.predict`` prepares it
            (window, degradation of a sharper spectrum, S/N cap).
    """
    from stellarfit.encoders._predict import _token_arrays, prepare_pixels

    prepared = prepare_pixels(encoder, spectrum)
    features, encoding, token_mask = _token_arrays(encoder, [prepared])
    model = nnx.merge(encoder.graphdef, encoder.params)
    with jax.default_matmul_precision(INFERENCE_MATMUL_PRECISION):
        mean, weights = _encoder_pass(model, features, encoding, token_mask)
    last = np.asarray(weights[-1][0])  # (heads, outputs, tokens)
    patch = encoder.config.patch_size
    n_pixels = prepared.log_wavelength.size
    pixel_token = np.arange(n_pixels) // patch
    n_tokens = token_mask.shape[1]
    token_log = np.full(n_tokens, np.nan)
    sums = np.bincount(pixel_token, weights=prepared.log_wavelength, minlength=n_tokens)
    counts = np.bincount(pixel_token, minlength=n_tokens)
    token_log[counts > 0] = sums[counts > 0] / counts[counts > 0]
    return EncoderAttention(last.mean(axis=0), last, np.exp(token_log), np.asarray(token_mask[0]), np.asarray(mean[0]),
                            pixel_token, np.exp(prepared.log_wavelength), tuple(encoder.output_names), prepared.info)
