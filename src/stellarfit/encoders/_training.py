"""Training an :class:`Encoder` on spectra simulated on the fly (Gaussian negative log-likelihood).

Every step draws a fresh batch (:class:`TrainingSimulator`) from a generator seeded by
``(seed, step)``, so a run is reproducible and resumes exactly from a checkpoint.
Checkpoints are the encoder directory (``encoder.json`` + ``arrays.npz``) plus
``training_state.npz`` (optimizer arrays) and ``training.json`` (step, settings, history).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from stellarfit._io import write_json_atomic
from stellarfit.emulators.checkpoint import load_arrays, save_arrays_atomic
from stellarfit.encoders._encoder import Encoder, load_encoder
from stellarfit.encoders._model import EncoderConfig
from stellarfit.encoders._simulate import SimulationSettings, TrainingSimulator
from stellarfit.encoders._sources import EmulatorSpectra

__all__ = ["TrainingSettings", "gaussian_nll", "train_encoder"]

_STATE_FILE = "training_state.npz"
_TRAINING_FILE = "training.json"


@dataclasses.dataclass(frozen=True)
class TrainingSettings:
    """How to train.

    Attributes:
        steps: optimizer steps (one fresh simulated batch each).
        batch_size: spectra per step.
        learning_rate: peak AdamW learning rate (linear warm-up, cosine decay to 5%).
        warmup_steps: steps of the linear warm-up.
        weight_decay: AdamW weight decay.
        gradient_clip: global-norm clipping of the gradients.
        seed: seeds the network and every batch (batch i uses the generator seeded by (seed, i)).
        validation_batches: fixed held-out batches for the validation loss.
        validate_every: steps between validations (0: only at the end).
        checkpoint_dir: directory for checkpoints (None: none); a run resumes from it.
        checkpoint_every: steps between checkpoints.
        progress: tqdm progress bar on stderr.
    """

    steps: int = 2000
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 1e-4
    gradient_clip: float = 1.0
    seed: int = 0
    validation_batches: int = 4
    validate_every: int = 250
    checkpoint_dir: str | None = None
    checkpoint_every: int = 250
    progress: bool = True


def gaussian_nll(mean, log_variance, targets):
    """Mean Gaussian negative log-likelihood (without ln 2 pi / 2) over (batch, n_outputs)."""
    return jnp.mean(0.5 * (log_variance + (targets - mean) ** 2 * jnp.exp(-log_variance)))


def nll_train_step(graphdef, tx: optax.GradientTransformation, compose=None):
    """(loss_fn, jitted train_step) of the Gaussian NLL of an encoder ``graphdef`` over the arrays an
    optimizer ``tx`` trains; ``compose`` turns those arrays into the network's full state (default: they
    are the state). ``train_step(arrays, opt_state, features, encoding, token_mask, targets)`` returns
    (arrays, opt_state, loss)."""

    def loss_fn(arrays, features, encoding, token_mask, targets):
        state = arrays if compose is None else compose(arrays)
        mean, log_variance = nnx.merge(graphdef, state)(features, encoding, token_mask)
        return gaussian_nll(mean, log_variance, targets)

    @jax.jit
    def train_step(arrays, opt_state, features, encoding, token_mask, targets):
        loss, grads = jax.value_and_grad(loss_fn)(arrays, features, encoding, token_mask, targets)
        updates, opt_state = tx.update(grads, opt_state, arrays)
        return optax.apply_updates(arrays, updates), opt_state, loss

    return loss_fn, train_step


def _optimizer(settings: TrainingSettings) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(0.0, settings.learning_rate, max(settings.warmup_steps, 1),
                                                  max(settings.steps, settings.warmup_steps + 1), settings.learning_rate * 0.05)
    return optax.chain(optax.clip_by_global_norm(settings.gradient_clip),
                       optax.adamw(schedule, weight_decay=settings.weight_decay))


def train_encoder(emulator, settings: TrainingSettings | None = None, *, config: EncoderConfig | None = None,
                  simulation: SimulationSettings | None = None, encoder: Encoder | None = None) -> tuple[Encoder, list[dict]]:
    """Train an encoder on observations of ``emulator`` simulated on the fly.

    Args:
        emulator: the simulator (e.g. ``stellarfit.load_emulator("payne-default")``), or a fixed
            set of labelled spectra (:class:`GridSpectra`, e.g. a Turbospectrum grid); its label
            spec is the encoder's.
        settings: steps, batch, learning rate, seed, checkpoints (default ``TrainingSettings()``).
        config: the architecture (default ``EncoderConfig()``; ignored when ``encoder`` is given).
        simulation: what the simulated observations span (default ``SimulationSettings()``).
        encoder: start from this encoder's parameters (fine-tuning) instead of a fresh one.
    Returns:
        (the trained Encoder, history: a list of {step, loss, validation_loss?, seconds}).
    """
    settings = settings or TrainingSettings()
    simulation = simulation or SimulationSettings()
    config = encoder.config if encoder is not None else (config or EncoderConfig())
    simulator = TrainingSimulator(emulator, config, simulation)
    window = simulator.wavelength_range
    metadata = {"emulator": simulator.source.name, "training": dataclasses.asdict(settings),
                "simulation": dataclasses.asdict(simulation)}
    if not isinstance(simulator.source, EmulatorSpectra):
        metadata["source"] = simulator.source.describe()
    if encoder is None:
        encoder = Encoder(config, simulator.label_spec, None, rv_range=simulation.rv_range, wavelength_range=window,
                          resolution_range=simulation.resolution_range, metadata=metadata, seed=settings.seed)
    else:  # continued training (on a copy): the new settings, and what the network was trained with before
        encoder = encoder.replace_params(encoder.params)
        previous = {k: encoder.metadata[k] for k in ("training", "simulation", "metrics") if k in encoder.metadata}
        encoder.metadata = {**encoder.metadata, **metadata, "previous_training": previous}
    tx = _optimizer(settings)
    params = encoder.params
    opt_state = tx.init(params)
    step, history = 0, []
    if settings.checkpoint_dir and os.path.isfile(os.path.join(settings.checkpoint_dir, _TRAINING_FILE)):
        encoder, params, opt_state, step, history = _resume(settings.checkpoint_dir, tx, encoder)
    graphdef = encoder.graphdef

    loss_fn, train_step = nll_train_step(graphdef, tx)
    evaluate = jax.jit(loss_fn)
    validation = [simulator.sample(np.random.default_rng([settings.seed, 10**9, i]), settings.batch_size)
                  for i in range(settings.validation_batches)]

    def validation_loss(params) -> float:
        return float(np.mean([evaluate(params, b.features, b.encoding, b.token_mask, b.targets) for b in validation]))

    bar = tqdm(total=settings.steps, initial=step, file=sys.stderr, disable=not settings.progress, dynamic_ncols=True, desc="train encoder")
    start = time.perf_counter()
    running = None
    while step < settings.steps:
        batch = simulator.sample(np.random.default_rng([settings.seed, step]), settings.batch_size)
        params, opt_state, loss = train_step(params, opt_state, batch.features, batch.encoding, batch.token_mask, batch.targets)
        loss = float(loss)
        if not np.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss} at step {step}; lower learning_rate (now {settings.learning_rate}) "
                                     "or gradient_clip")
        running = loss if running is None else 0.98 * running + 0.02 * loss
        step += 1
        record = {"step": step, "loss": loss, "seconds": time.perf_counter() - start}
        if step == settings.steps or (settings.validate_every and step % settings.validate_every == 0):
            record["validation_loss"] = validation_loss(params)
        history.append(record)
        bar.update(1)
        bar.set_postfix(loss=f"{running:.3f}", **({"val": f"{record['validation_loss']:.3f}"} if "validation_loss" in record else {}))
        if settings.checkpoint_dir and (step % settings.checkpoint_every == 0 or step == settings.steps):
            _save_checkpoint(settings.checkpoint_dir, encoder.replace_params(params), opt_state, step, history, settings)
    bar.close()
    trained = encoder.replace_params(params)
    trained.metadata["metrics"] = {"steps": step, "final_validation_loss": history[-1].get("validation_loss") if history else None}
    return trained, history


def _save_checkpoint(directory: str, encoder: Encoder, opt_state, step: int, history: list[dict], settings: TrainingSettings) -> None:
    encoder.save(directory, overwrite=True)
    leaves = jax.tree_util.tree_leaves(opt_state)
    save_arrays_atomic(os.path.join(directory, _STATE_FILE), {f"optimizer/{i}": np.asarray(v) for i, v in enumerate(leaves)})
    write_json_atomic(os.path.join(directory, _TRAINING_FILE), {"step": step, "settings": dataclasses.asdict(settings), "history": history})


def _resume(directory: str, tx, encoder: Encoder):
    """(encoder, params, optimizer state, step, history) of the checkpoint in ``directory``."""
    saved = load_encoder(directory)
    if saved.config != encoder.config or saved.label_spec != encoder.label_spec:
        raise ValueError(f"the checkpoint in {directory} has another architecture or labels than this run; "
                         "use another checkpoint_dir or the same config")
    with open(os.path.join(directory, _TRAINING_FILE)) as handle:
        training = json.load(handle)
    arrays = load_arrays(os.path.join(directory, _STATE_FILE))
    template = tx.init(saved.params)
    leaves = jax.tree_util.tree_leaves(template)
    restored = [jnp.asarray(arrays[f"optimizer/{i}"], dtype=jnp.asarray(leaf).dtype) for i, leaf in enumerate(leaves)]
    opt_state = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template), restored)
    saved.metadata = encoder.metadata | {k: v for k, v in saved.metadata.items() if k == "metrics"}
    return saved, saved.params, opt_state, int(training["step"]), list(training["history"])
