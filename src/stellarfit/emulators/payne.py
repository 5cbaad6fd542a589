"""The Payne (Ting, Conroy, Rix & Cargile 2019, ApJ 879, 69) and a scaled-up variant.

A multilayer perceptron from labels to every pixel of one fixed wavelength
grid: labels min-max scaled to [-0.5, 0.5] -> 300 -> 300 -> n_pixels with
LeakyReLU(0.01) activations (Ting et al. 2019).  When the training grid has a
continuum, the last layer has 2 * n_pixels outputs (normalized flux and the
standardized log10 continuum).

With LeakyReLU the network is piecewise linear in the labels: its Jacobian
jumps wherever a hidden unit changes sign, and a posterior of a high-S/N
spectrum spans many such kinks, which forces NUTS into short leapfrog steps.
Config ``activation_sharpness`` = beta > 0 replaces each LeakyReLU(x; a) by its
softplus smoothing

    a x + (1 - a) softplus(beta x) / beta,

which tends to LeakyReLU as beta -> infinity (it differs from it by at most
(1 - a) log(2) / beta, at x = 0) and has a continuous Jacobian.  It can be set
on a network trained with LeakyReLU (the shipped ``payne-default`` uses
beta = 100, see its PROVENANCE.md and docs/validation/speed.md) or used in
training.  0 (the default of a new Payne) keeps the exact LeakyReLU.

The network is tied to its pixel grid: ``predict``/``apply_fn`` at other
wavelengths **linearly interpolate** the native-grid prediction (inside the
native coverage only).  Interpolation indices and weights of a concrete
wavelength array are computed in float64 NumPy; a traced wavelength array
(e.g. Doppler-shifted inside a model) is interpolated in float32 relative to
the first native pixel (error ~1e-4 of a pixel at 5000 A).

``scaled_payne_config()`` gives the wider and deeper MLP used as the strong
baseline of Różański et al. (arXiv 2407.05751), who report that scaling The
Payne up lowered its MAE from 1.2% to 0.3% on their full grid; the widths here
(3 x 512) are our choice, sized to ship (see docs/emulators.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from stellarfit.emulators.base import Emulator, is_concrete
from stellarfit.emulators.layers import Dense

__all__ = ["PayneNet", "PayneEmulator", "payne_config", "scaled_payne_config", "smooth_leaky_relu"]


def payne_config() -> dict[str, Any]:
    """The original Payne: two hidden layers of 300, LeakyReLU(0.01) (Ting et al. 2019)."""
    return {"hidden": [300, 300], "negative_slope": 0.01}


def smooth_leaky_relu(x: jax.Array, negative_slope: float, sharpness: float) -> jax.Array:
    """LeakyReLU(x; a) for ``sharpness`` 0, else a x + (1 - a) softplus(sharpness x) / sharpness."""
    if sharpness <= 0.0:
        return jax.nn.leaky_relu(x, negative_slope)
    return negative_slope * x + (1.0 - negative_slope) * jax.nn.softplus(sharpness * x) / sharpness


def scaled_payne_config(width: int = 512, depth: int = 3) -> dict[str, Any]:
    """A wider and deeper Payne (``depth`` hidden layers of ``width``), the scaled-up baseline."""
    return {"hidden": [int(width)] * int(depth), "negative_slope": 0.01}


class PayneNet(nnx.Module):
    """MLP labels -> pixels.

    Shapes: scaled labels (B, n_labels) -> (B, n_pixels, n_outputs), float32.
    Parameter groups: ``hidden/<i>`` (Dense) and ``output`` (Dense to n_outputs * n_pixels).
    """

    def __init__(
        self,
        n_labels: int,
        n_pixels: int,
        *,
        hidden: Sequence[int],
        n_outputs: int,
        negative_slope: float,
        rngs: nnx.Rngs,
        lora_rank: int = 0,
        lora_alpha: float | None = None,
        activation_sharpness: float = 0.0,
    ):
        sizes = [n_labels, *hidden]
        lora = {"lora_rank": lora_rank, "lora_alpha": lora_alpha}
        self.hidden = nnx.List([Dense(a, b, rngs=rngs, **lora) for a, b in zip(sizes[:-1], sizes[1:])])
        self.output = Dense(sizes[-1], n_outputs * n_pixels, rngs=rngs, **lora)
        self.n_pixels = int(n_pixels)
        self.n_outputs = int(n_outputs)
        self.negative_slope = float(negative_slope)
        self.activation_sharpness = float(activation_sharpness)

    def features(self, scaled: jax.Array) -> jax.Array:
        """The last hidden layer's activations, (B, hidden[-1]), for scaled labels (B, n_labels)."""
        x = scaled
        for layer in self.hidden:
            x = smooth_leaky_relu(layer(x), self.negative_slope, self.activation_sharpness)
        return x

    def __call__(self, scaled: jax.Array) -> jax.Array:
        x = self.features(scaled)
        out = self.output(x).reshape(x.shape[0], self.n_outputs, self.n_pixels)
        return jnp.swapaxes(out, 1, 2)


class PayneEmulator(Emulator):
    """The Payne on a fixed pixel grid (see the module docstring).

    Create one with :meth:`create`; config keys: ``hidden`` (list of widths),
    ``negative_slope``, ``lora_rank``, ``lora_alpha``, ``continuum_offset``,
    ``continuum_scale`` (standardization of the log10 continuum output).
    """

    model_type = "payne"
    default_config = {
        "hidden": [300, 300],
        "negative_slope": 0.01,
        "activation_sharpness": 0.0,
        "lora_rank": 0,
        "lora_alpha": None,
        "continuum_offset": 0.0,
        "continuum_scale": 1.0,
    }
    head_modules = ("output",)

    def _complete_config(self, config: dict[str, Any]) -> dict[str, Any]:
        hidden = [int(h) for h in config["hidden"]]
        if not hidden or min(hidden) < 1:
            raise ValueError(f"hidden must be a non-empty list of positive widths, got {config['hidden']}")
        config["hidden"] = hidden
        config["negative_slope"] = float(config["negative_slope"])
        sharpness = float(config["activation_sharpness"])
        if not (np.isfinite(sharpness) and sharpness >= 0.0):
            raise ValueError(f"activation_sharpness must be 0 (LeakyReLU) or a positive softplus sharpness, got {config['activation_sharpness']!r}")
        config["activation_sharpness"] = sharpness
        config["lora_rank"] = int(config["lora_rank"])
        config["continuum_offset"] = float(config["continuum_offset"])
        config["continuum_scale"] = float(config["continuum_scale"])
        return config

    def _build_module(self, rngs: nnx.Rngs) -> nnx.Module:
        return PayneNet(
            self.n_labels,
            self.n_pixels,
            hidden=self.config["hidden"],
            n_outputs=2 if self.has_continuum else 1,
            negative_slope=self.config["negative_slope"],
            rngs=rngs,
            lora_rank=self.config["lora_rank"],
            lora_alpha=self.config["lora_alpha"],
            activation_sharpness=self.config["activation_sharpness"],
        )

    def default_batch_size(self, n_wavelengths: int) -> int:
        return 1024

    def _prepare_wavelength(self, wavelength: Any) -> Any:
        """``None`` for the native grid, else ``{"index", "weight"}`` for linear interpolation."""
        if wavelength is None:
            return None
        origin = self._wavelength[0]
        if is_concrete(wavelength):
            wavelength = self._check_coverage(np.asarray(wavelength, np.float64))
            if self._is_native(wavelength):
                return None
            grid = self._wavelength
            index = np.clip(np.searchsorted(grid, wavelength, side="right") - 1, 0, grid.size - 2)
            weight = np.clip((wavelength - grid[index]) / (grid[index + 1] - grid[index]), 0.0, 1.0)
            return {"index": index.astype(np.int32), "weight": weight.astype(np.float32)}
        # traced: float32 arithmetic relative to the first pixel (keeps ~1e-4 A precision)
        grid = jnp.asarray(self._wavelength - origin, jnp.float32)
        x = jnp.asarray(wavelength) - jnp.asarray(origin, jnp.asarray(wavelength).dtype)
        x = x.astype(jnp.float32)
        index = jnp.clip(jnp.searchsorted(grid, x, side="right") - 1, 0, grid.size - 2)
        weight = jnp.clip((x - grid[index]) / (grid[index + 1] - grid[index]), 0.0, 1.0)
        return {"index": index, "weight": weight}

    def initialize_output_bias(self, params: Any, mean_flux: np.ndarray) -> Any:
        """Params with the flux output bias set to the per-pixel mean flux (n_pixels,) (a better start)."""
        bias = np.zeros_like(np.asarray(params["output"]["bias"]))
        bias[: self.n_pixels] = np.asarray(mean_flux, np.float32)
        params = dict(params)
        params["output"] = {**params["output"], "bias": jnp.asarray(bias)}
        return params

    def linear_readout(self, wavelength: Any = None):
        """(features_fn, weight, bias): the last hidden layer's activations and the flux part of the
        (linear) output layer, LoRA adapters included; at other wavelengths than the native ones the
        weight's columns are linearly interpolated as :meth:`predict` interpolates the flux."""
        if wavelength is not None and not is_concrete(wavelength):
            return None
        plan = self._prepare_wavelength(wavelength)
        output = nnx.merge(self._graphdef, self.params).output
        weight = np.asarray(output.kernel[...], np.float64)
        if output.lora_rank > 0:
            weight = weight + output.lora_scale * (np.asarray(output.lora_a[...], np.float64) @ np.asarray(output.lora_b[...], np.float64))
        weight = weight[:, : self.n_pixels]
        bias = np.asarray(output.bias[...], np.float64)[: self.n_pixels]
        if plan is not None:
            index, fraction = np.asarray(plan["index"]), np.asarray(plan["weight"], np.float64)
            weight = weight[:, index] * (1.0 - fraction) + weight[:, index + 1] * fraction
            bias = bias[index] * (1.0 - fraction) + bias[index + 1] * fraction
        graphdef, params = self._graphdef, self.params

        def features_fn(labels: jax.Array) -> jax.Array:
            scaled = self.scale_labels(jnp.asarray(labels))
            batch_shape = scaled.shape[:-1]
            dtype = jnp.promote_types(scaled.dtype, jnp.float32)
            x = nnx.merge(graphdef, params).features(scaled.reshape(-1, self.n_labels).astype(dtype))
            return x.reshape(*batch_shape, x.shape[-1])

        return features_fn, weight, bias

    @staticmethod
    def _raw(graphdef: Any, params: Any, scaled: jax.Array, plan: Any) -> jax.Array:
        out = nnx.merge(graphdef, params)(scaled)
        if plan is None:
            return out
        index, weight = plan["index"], plan["weight"][None, :, None]
        return out[:, index] * (1.0 - weight) + out[:, index + 1] * weight
