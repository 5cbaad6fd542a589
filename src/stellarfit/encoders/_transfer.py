"""Adapting a trained :class:`Encoder` to another survey or other physics with a few labelled spectra.

The use case (Zhao, Ting, Wyse et al. 2026, for an MLP; SpectraFM, Koblischke & Bovy 2024, for a
transformer): pre-train on many spectra of survey A (or on cheap simulations), then adapt to
survey B (another resolution, window, or the ``realistic`` Turbospectrum physics) from 100-1,000
labelled stars.  The labelled stars (a :class:`GridSpectra`, e.g. the rows of a Turbospectrum
grid) are observed afresh at every step through the encoder's forward model
(:class:`TrainingSimulator`: LSF, pixels, RV, vsini, continuum, noise, masks at survey B's
:class:`SimulationSettings`), so each star gets new noise, RV and continuum every epoch.

Modes (:data:`ADAPT_MODES`):

- ``"head"``: only the output head (``norm_out``, ``head_kernel``, ``head_bias``): a probe of the
  frozen features.
- ``"adapters"``: a residual bottleneck (LayerNorm, down to ``adapter_width``, GELU, up; the up
  projection starts at zero) after every self- and cross-attention block, trained with the head.
  Adapters are not linear, so they stay in the network: ``EncoderConfig.adapter_width`` records
  them and the adapted encoder saves and loads like any other (files without the field load as
  adapter-free).
- ``"lora"``: low-rank updates (Hu et al. 2021) ``kernel + (alpha / rank) A B`` of every dense
  kernel of the token embedding, the attention (query, key, value, out) and the feed-forward
  layers, with ``B`` starting at zero, trained with the head; folded into the kernels at the end,
  so the adapted encoder has the base architecture and cost.
- ``"full"``: every parameter.
- ``"scratch"``: a fresh encoder of the same architecture trained on the labelled stars only (the
  baseline that says what the pre-training is worth).

Frozen parameters are kept out of the optimizer, so they stay bit-for-bit equal to the base
encoder's.  With ``steps=0`` the adapters and LoRA modes give the base encoder's outputs: bit for
bit without ``jit``, to float32 rounding (~1e-8) under it (XLA fuses the extra zero terms into
other sums).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from stellarfit.emulators._params import count_parameters, flatten_params, unflatten_params
from stellarfit.encoders._encoder import Encoder
from stellarfit.encoders._simulate import SimulationSettings, TrainingSimulator
from stellarfit.encoders._sources import GridSpectra, as_spectra_source
from stellarfit.encoders._training import nll_train_step

__all__ = ["ADAPT_MODES", "AdaptSettings", "adapt_encoder", "lora_targets", "scaled_targets"]

ADAPT_MODES = ("head", "adapters", "lora", "full", "scratch")
#: peak learning rate of each mode when AdaptSettings.learning_rate is None
DEFAULT_LEARNING_RATES = {"head": 3e-3, "adapters": 1e-3, "lora": 1e-3, "full": 3e-4, "scratch": 1e-3}
#: the output head's parameters (trained in every mode)
HEAD_PARAMETERS = ("norm_out", "head_kernel", "head_bias")
_LORA_LAYERS = ("query", "key", "value", "out", "inner", "outer")


@dataclasses.dataclass(frozen=True)
class AdaptSettings:
    """How to adapt.

    Attributes:
        mode: one of :data:`ADAPT_MODES` (see the module docstring).
        steps: optimizer steps (one freshly observed batch of the labelled stars each).
        batch_size: spectra per step (stars drawn without replacement within a batch).
        learning_rate: peak AdamW learning rate (linear warm-up, cosine decay to 5%); None: the
            mode's default (:data:`DEFAULT_LEARNING_RATES`).
        warmup_steps: steps of the linear warm-up.
        weight_decay: AdamW weight decay (on the trained arrays only).
        gradient_clip: global-norm clipping of the gradients.
        lora_rank, lora_alpha: rank of the LoRA updates and their scale alpha / rank (alpha None: rank).
        adapter_width: hidden width of the residual adapters.
        seed: seeds the new arrays (adapters, LoRA factors, a scratch network) and every batch
            (batch i uses the generator seeded by (seed, i)).
        progress: tqdm progress bar on stderr.
    """

    mode: str = "lora"
    steps: int = 500
    batch_size: int = 32
    learning_rate: float | None = None
    warmup_steps: int = 50
    weight_decay: float = 1e-4
    gradient_clip: float = 1.0
    lora_rank: int = 4
    lora_alpha: float | None = None
    adapter_width: int = 16
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.mode not in ADAPT_MODES:
            raise ValueError(f"mode must be one of {ADAPT_MODES}, got {self.mode!r}")
        if self.steps < 0 or self.batch_size < 1:
            raise ValueError(f"steps >= 0 and batch_size >= 1 are required (got {self.steps}, {self.batch_size})")
        if self.lora_rank < 1 or self.adapter_width < 1:
            raise ValueError(f"lora_rank and adapter_width must be >= 1 (got {self.lora_rank}, {self.adapter_width})")

    @property
    def peak_learning_rate(self) -> float:
        return float(self.learning_rate if self.learning_rate is not None else DEFAULT_LEARNING_RATES[self.mode])


def scaled_targets(encoder: Encoder, labels: np.ndarray, rv: np.ndarray) -> np.ndarray:
    """(n, L + 1) float32 training targets of ``encoder``: labels scaled over its label box, RV over its ``rv_range``."""
    low, high = encoder.rv_range
    rv_scaled = (np.asarray(rv, np.float64) - low) / (high - low) - 0.5
    return np.concatenate([encoder.label_spec.scale(labels), rv_scaled[:, None]], axis=1).astype(np.float32)


def lora_targets(flat_params: dict) -> dict[str, int]:
    """The kernels LoRA updates: {flat name: number of input axes} (token embedding, attention, feed-forward)."""
    targets = {}
    for name in flat_params:
        parts = name.split("/")
        if parts[-1] != "kernel":
            continue
        if parts[0] in ("embed_inner", "embed_outer") and len(parts) == 2:
            targets[name] = 1
        elif len(parts) >= 3 and parts[-2] in _LORA_LAYERS and parts[0] in ("blocks", "cross"):
            targets[name] = 2 if parts[-2] == "out" and parts[-3] == "attention" else 1
    return targets


def _default_simulation(encoder: Encoder) -> SimulationSettings:
    recorded = encoder.metadata.get("simulation")
    if not isinstance(recorded, dict):
        return SimulationSettings()
    fields = {f.name for f in dataclasses.fields(SimulationSettings)}
    return SimulationSettings(**{k: tuple(v) if isinstance(v, list) else v for k, v in recorded.items() if k in fields})


def _check_labels(encoder: Encoder, source) -> None:
    if source.label_spec != encoder.label_spec:
        detail = encoder.label_spec.difference(source.label_spec)
        raise ValueError(f"the labelled spectra ({getattr(source, 'name', 'source')}) do not have the encoder's labels "
                         f"{list(encoder.label_spec.names)}: {detail}. "
                         "Adapt with spectra labelled in the encoder's label spec (a grid made with its labels), "
                         "or train a new encoder on them (train_encoder)")


def _setup(encoder: Encoder, settings: AdaptSettings):
    """(starting encoder, trainable tree, compose(trainable) -> its pure parameter dict)."""
    mode = settings.mode
    key = jax.random.PRNGKey(settings.seed)
    base = encoder
    if mode == "scratch":
        base = Encoder(dataclasses.replace(encoder.config), encoder.label_spec, None, rv_range=encoder.rv_range,
                       seed=settings.seed)
    elif mode == "adapters" and encoder.config.adapter_width == 0:  # new adapters: a fresh network, the base's arrays copied in
        config = dataclasses.replace(encoder.config, adapter_width=settings.adapter_width)
        fresh = Encoder(config, encoder.label_spec, None, rv_range=encoder.rv_range, seed=settings.seed)
        flat = flatten_params(nnx.to_pure_dict(fresh.params))
        flat.update(flatten_params(nnx.to_pure_dict(encoder.params)))
        base = fresh.replace_params(unflatten_params(flat))
    flat = {k: jnp.asarray(v) for k, v in flatten_params(nnx.to_pure_dict(base.params)).items()}
    head = {k for k in flat if k.split("/")[0] in HEAD_PARAMETERS}
    if mode in ("full", "scratch"):
        train_names = set(flat)
    elif mode == "adapters":
        train_names = head | {k for k in flat if "/adapter/" in k}
    else:  # head, lora
        train_names = head
    trainable = {"params": {k: flat[k] for k in sorted(train_names)}}
    frozen = {k: v for k, v in flat.items() if k not in train_names}
    lora = {}
    if mode == "lora":
        lora = lora_targets(flat)
        rank = settings.lora_rank
        trainable["lora_a"], trainable["lora_b"] = {}, {}
        for i, (name, n_in) in enumerate(sorted(lora.items())):
            shape = flat[name].shape
            fan_in, fan_out = int(np.prod(shape[:n_in])), int(np.prod(shape[n_in:]))
            trainable["lora_a"][name] = jax.random.normal(jax.random.fold_in(key, i), (fan_in, rank)) / np.sqrt(fan_in)
            trainable["lora_b"][name] = jnp.zeros((rank, fan_out))
    scale = (settings.lora_alpha if settings.lora_alpha is not None else settings.lora_rank) / settings.lora_rank

    def compose(trainable):
        merged = {**frozen, **trainable["params"]}
        for name in lora:
            kernel = merged[name]
            delta = trainable["lora_a"][name] @ trainable["lora_b"][name]
            merged[name] = kernel + scale * delta.reshape(kernel.shape)
        return unflatten_params(merged)

    return base, trainable, compose


def _optimizer(settings: AdaptSettings) -> optax.GradientTransformation:
    rate = settings.peak_learning_rate
    warmup = max(min(settings.warmup_steps, settings.steps - 1), 1)
    schedule = optax.warmup_cosine_decay_schedule(0.0, rate, warmup, max(settings.steps, warmup + 1), rate * 0.05)
    return optax.chain(optax.clip_by_global_norm(settings.gradient_clip), optax.adamw(schedule, weight_decay=settings.weight_decay))


def adapt_encoder(encoder: Encoder, source, settings: AdaptSettings | None = None, *,
                  simulation: SimulationSettings | None = None) -> tuple[Encoder, list[dict]]:
    """Adapt ``encoder`` to the labelled spectra of ``source`` observed as ``simulation`` says.

    Args:
        encoder: the pre-trained encoder (not changed).
        source: the labelled spectra: a :class:`GridSpectra`, a grid file made by ``stellarfit grid``
            (all its spectra), or an emulator; their label spec must be the encoder's.
        settings: mode, steps, batch, learning rate, LoRA rank, adapter width, seed (default ``AdaptSettings()``).
        simulation: survey B's observations (resolution, sampling, S/N, RV, masks); default: those the
            encoder was trained with.  Its ``rv_range`` must lie within the encoder's RV scale (``encoder.rv_range``).
    Returns:
        (the adapted Encoder, history: a list of {step, loss, seconds}).  The encoder's window and
        resolution range are survey B's (``predict`` reads B's spectra without degrading them); its
        metadata records the mode, the settings, the labelled spectra and the base encoder's training.
    Raises:
        ValueError: labels that differ from the encoder's, or an RV range beyond its scale.
    """
    settings = settings or AdaptSettings()
    if isinstance(source, (str, os.PathLike)):
        source = GridSpectra.from_grid(source)
    source = as_spectra_source(source)
    _check_labels(encoder, source)
    simulation = simulation or _default_simulation(encoder)
    if simulation.rv_range[0] < encoder.rv_range[0] or simulation.rv_range[1] > encoder.rv_range[1]:
        raise ValueError(f"simulation.rv_range {simulation.rv_range} goes beyond the encoder's RV scale {encoder.rv_range} km/s; "
                         "narrow it (the encoder cannot output RVs outside its scale)")
    base, trainable, compose = _setup(encoder, settings)
    simulator = TrainingSimulator(source, base.config, simulation)
    graphdef = base.graphdef
    tx = _optimizer(settings)
    opt_state = tx.init(trainable)

    _, train_step = nll_train_step(graphdef, tx, compose)

    history, running = [], None
    start = time.perf_counter()
    bar = tqdm(total=settings.steps, file=sys.stderr, disable=not settings.progress, dynamic_ncols=True, desc=f"adapt encoder ({settings.mode})")
    for step in range(settings.steps):
        batch = simulator.sample(np.random.default_rng([settings.seed, step]), settings.batch_size)
        targets = scaled_targets(base, batch.labels, batch.rv)
        trainable, opt_state, loss = train_step(trainable, opt_state, batch.features, batch.encoding, batch.token_mask, targets)
        loss = float(loss)
        if not np.isfinite(loss):
            raise FloatingPointError(f"adaptation loss became {loss} at step {step}; lower learning_rate "
                                     f"(now {settings.peak_learning_rate}) or gradient_clip")
        running = loss if running is None else 0.95 * running + 0.05 * loss
        history.append({"step": step + 1, "loss": loss, "seconds": time.perf_counter() - start})
        bar.update(1)
        bar.set_postfix(loss=f"{running:.3f}")
    bar.close()
    params = jax.device_get(compose(trainable))
    n_trained = count_parameters(jax.device_get(trainable))
    base_record = {k: encoder.metadata[k] for k in ("emulator", "training", "simulation", "metrics", "source", "adaptation")
                   if k in encoder.metadata}
    metadata = {
        "emulator": encoder.metadata.get("emulator") if settings.mode != "scratch" else None,
        "source": source.describe(),
        "simulation": dataclasses.asdict(simulation),
        "adaptation": {**dataclasses.asdict(settings), "learning_rate": settings.peak_learning_rate, "n_trained_parameters": n_trained,
                       "lora_merged": settings.mode == "lora"},
        "adapted_from": base_record if settings.mode != "scratch" else None,
        "metrics": {"steps": settings.steps, "final_loss": running},
    }
    adapted = Encoder(base.config, encoder.label_spec, params, rv_range=encoder.rv_range, wavelength_range=simulator.wavelength_range,
                      resolution_range=simulation.resolution_range, metadata=metadata)
    return adapted, history
