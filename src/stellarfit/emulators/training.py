"""Training emulators with optax: AdamW, warm-up + cosine decay, gradient clipping.

- The Payne trains on whole spectra (``batch_size`` spectra per step).
- TransformerPayne trains on random (spectrum, wavelength-subset) batches:
  ``batch_size`` spectra x ``n_wavelengths`` random native pixels each.
- Loss: L1 (The Payne's choice, Ting et al. 2019) or MSE on normalized flux,
  plus ``continuum_weight`` x the same loss on the standardized log10
  continuum when both the emulator and the grid have one.
- Validation MAE/MSE of normalized flux on held-out spectra at step 0 and
  every ``eval_every`` steps; early stopping after ``patience`` evaluations
  without a relative improvement of ``min_delta``; the parameters with the
  lowest validation MAE are returned.
- Checkpoint and resume: ``checkpoint_dir`` holds ``current/`` and ``best/``
  (emulator directories, see :mod:`stellarfit.emulators.checkpoint`),
  ``opt_state.npz`` (optimizer state leaves) and ``train_state.json``
  (step, history, early-stopping state, grid hash).  Calling
  :func:`train_emulator` again with the same directory continues from the
  saved step; the batch drawn at step ``s`` uses ``fold_in(key(seed), s)``, so an
  interrupted and resumed run draws the same batches as an uninterrupted one.
- Progress bar with ETA (tqdm, on stderr).  The train step is one jitted
  function; the data live on the default JAX device, so the same code runs on
  CPU and GPU.

The training data are plain arrays (:class:`TrainingData`);
:meth:`TrainingData.from_grid` adapts a ``stellarfit.grids.SpectralGrid``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
from tqdm import tqdm

from stellarfit.emulators._params import flatten_params, hash_arrays, unflatten_params
from stellarfit.emulators.base import Emulator
from stellarfit._io import write_json_atomic
from stellarfit.emulators.checkpoint import load_arrays, read_emulator, save_arrays_atomic, save_emulator
from stellarfit.labels import LabelSpec

__all__ = ["TrainingData", "TrainConfig", "TrainResult", "train_emulator", "make_optimizer", "validation_metrics"]

TRAIN_STATE_FORMAT = "stellarfit-train-checkpoint"
TRAIN_STATE_VERSION = 1


@dataclasses.dataclass
class TrainingData:
    """Spectra for training or validation, on one wavelength grid.

    Attributes:
        labels: (n_spectra, n_labels) physical labels in label-spec order, float64.
        flux: (n_spectra, n_pixels) continuum-normalized flux, float32.
        wavelength: (n_pixels,) vacuum A, float64, strictly increasing.
        log10_continuum: (n_spectra, n_pixels) log10 of the continuum, or None.
        label_spec: the labels' spec (checked against the emulator's if given).
    """

    labels: np.ndarray
    flux: np.ndarray
    wavelength: np.ndarray
    log10_continuum: np.ndarray | None = None
    label_spec: LabelSpec | None = None

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, np.float64)
        self.flux = np.asarray(self.flux, np.float32)
        self.wavelength = np.asarray(self.wavelength, np.float64)
        if self.labels.ndim != 2:
            raise ValueError(f"labels must have shape (n_spectra, n_labels), got {self.labels.shape}")
        if self.flux.ndim != 2 or self.flux.shape[0] != self.labels.shape[0]:
            raise ValueError(f"flux must have shape (n_spectra={self.labels.shape[0]}, n_pixels), got {self.flux.shape}")
        if self.wavelength.shape != (self.flux.shape[1],):
            raise ValueError(f"wavelength must have shape ({self.flux.shape[1]},) to match flux, got {self.wavelength.shape}")
        if self.label_spec is not None and self.labels.shape[1] != len(self.label_spec):
            raise ValueError(f"labels have {self.labels.shape[1]} columns but the label spec has {len(self.label_spec)}: {self.label_spec.names}")
        if self.log10_continuum is not None:
            self.log10_continuum = np.asarray(self.log10_continuum, np.float32)
            if self.log10_continuum.shape != self.flux.shape:
                raise ValueError(f"log10_continuum must have the flux shape {self.flux.shape}, got {self.log10_continuum.shape}")
        for name in ("labels", "flux", "log10_continuum"):
            value = getattr(self, name)
            if value is not None and not np.all(np.isfinite(value)):
                raise ValueError(f"{name} contains NaN or infinite values; drop or repair those spectra before training")

    @property
    def n_spectra(self) -> int:
        return int(self.labels.shape[0])

    @property
    def n_pixels(self) -> int:
        return int(self.wavelength.size)

    def hash(self) -> str:
        """SHA-256 of labels, wavelength, flux and continuum (the training-grid hash)."""
        return hash_arrays(self.labels, self.wavelength, self.flux, self.log10_continuum)

    def subset(self, indices: Sequence[int] | np.ndarray) -> "TrainingData":
        """The spectra at ``indices`` (same wavelength grid)."""
        idx = np.asarray(indices)
        cont = None if self.log10_continuum is None else self.log10_continuum[idx]
        return TrainingData(self.labels[idx], self.flux[idx], self.wavelength, cont, self.label_spec)

    @classmethod
    def from_grid(cls, grid: Any, indices: Sequence[int] | np.ndarray | None = None) -> "TrainingData":
        """From a ``stellarfit.grids.SpectralGrid``, an open ``SpectralGridFile``,
        or the path of a grid file; ``indices`` selects spectra (e.g. one part
        of ``grid.split()``).

        The grid's continuum becomes ``log10_continuum`` (converted from an
        absolute continuum with ``grid.log10_continuum()``).  Other objects
        with ``labels``, ``flux``, ``wavelength``, ``label_spec`` and
        ``continuum`` (+ ``continuum_is_log10``) attributes also work.
        """
        if isinstance(grid, (str, os.PathLike)):
            from stellarfit.grids import SpectralGrid

            grid = SpectralGrid.read(grid)
        if indices is not None and hasattr(grid, "subset"):
            grid, indices = grid.subset(np.asarray(indices)), None
        elif hasattr(grid, "load") and not hasattr(grid, "flux"):
            grid = grid.load()  # an open SpectralGridFile: read everything
        labels = np.asarray(grid.labels)
        flux = np.asarray(grid.flux)
        if callable(getattr(grid, "log10_continuum", None)):
            continuum = grid.log10_continuum()
        else:
            continuum = getattr(grid, "continuum", None)
            if continuum is not None and getattr(grid, "continuum_is_log10", True) is False:
                continuum = np.log10(np.asarray(continuum, np.float64))
        if indices is not None:
            idx = np.asarray(indices)
            labels, flux = labels[idx], flux[idx]
            continuum = None if continuum is None else np.asarray(continuum)[idx]
        return cls(labels, flux, np.asarray(grid.wavelength), continuum, getattr(grid, "label_spec", None))


@dataclasses.dataclass
class TrainConfig:
    """Hyper-parameters of :func:`train_emulator` (all JSON-able).

    Attributes:
        n_steps: total optimizer steps (a resumed run continues up to this).
        batch_size: spectra per step.
        n_wavelengths: random pixels per spectrum per step (TransformerPayne
            only; ``None`` or >= n_pixels: whole spectra).
        learning_rate: peak learning rate after warm-up.
        warmup_steps: linear warm-up from 0.
        end_learning_rate_fraction: the cosine decays to this fraction of the peak.
        weight_decay: AdamW decoupled weight decay (kernels and adapters only).
        grad_clip_norm: global-norm gradient clipping.
        loss: ``"l1"`` or ``"mse"``.
        continuum_weight: weight of the log10-continuum term.
        eval_every: steps between validations.
        patience: validations without improvement before stopping (None: never).
        min_delta: relative improvement of validation MAE that counts.
        val_max_spectra: validate on at most this many held-out spectra.
        checkpoint_every: steps between checkpoints (when a directory is given).
        seed: seed of the batch sampling.
        progress: show a tqdm progress bar on stderr.
        init_output_bias: start the flux output bias at the grid's mean flux.
    """

    n_steps: int = 10_000
    batch_size: int = 32
    n_wavelengths: int | None = 512
    learning_rate: float = 1e-3
    warmup_steps: int = 500
    end_learning_rate_fraction: float = 0.01
    weight_decay: float = 1e-4
    grad_clip_norm: float = 1.0
    loss: str = "l1"
    continuum_weight: float = 1.0
    eval_every: int = 250
    patience: int | None = 10
    min_delta: float = 1e-3
    val_max_spectra: int | None = None
    checkpoint_every: int = 1000
    seed: int = 0
    progress: bool = True
    init_output_bias: bool = True

    def __post_init__(self) -> None:
        if self.loss not in ("l1", "mse"):
            raise ValueError(f"loss must be 'l1' or 'mse', got {self.loss!r}")
        for name in ("n_steps", "batch_size", "eval_every", "checkpoint_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")


@dataclasses.dataclass
class TrainResult:
    """Outcome of :func:`train_emulator`.

    Attributes:
        emulator: the emulator with the best validation parameters (the last
            ones without validation data), metrics in ``emulator.metadata``.
        history: one dict per validation (the first at step 0, before any
            update): step, train_loss (mean since the previous record; None
            at step 0), val_mae, val_mse, (val_continuum_mae), learning_rate, elapsed_s.
        best_step, best_val_mae: where the returned parameters come from.
        final_step: the step reached.
        stopped_early: True if early stopping ended the run.
        resumed_from: the step a checkpoint resumed from (None: fresh start).
    """

    emulator: Emulator
    history: list[dict[str, Any]]
    best_step: int
    best_val_mae: float | None
    final_step: int
    stopped_early: bool
    resumed_from: int | None = None


def _masked_weight_decay(weight_decay: float, mask: Any) -> optax.GradientTransformation:
    """Decoupled weight decay ``u + wd * mask * params`` (``mask`` broadcastable to params)."""

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("weight decay needs the parameters")
        return jax.tree.map(lambda u, p, m: u + weight_decay * m * p, updates, params, mask), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(config: TrainConfig, n_steps: int | None = None, decay_mask: Any = None) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(optimizer, learning-rate schedule): clip by global norm, then AdamW with
    linear warm-up from 0 and cosine decay over ``n_steps`` (default ``config.n_steps``).

    ``decay_mask`` (same tree as the parameters, 1 where weight decay applies)
    defaults to all ones; :func:`train_emulator` decays kernels and LoRA
    adapters, not biases or RMSNorm scales.  Training works on one raveled
    parameter vector (fewer, larger kernels: compiles ~3x faster on CPU).
    """
    total = int(n_steps or config.n_steps)
    warmup = int(min(config.warmup_steps, max(total - 1, 0)))
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.learning_rate,
        warmup_steps=warmup,
        decay_steps=max(total, warmup + 1),
        end_value=config.learning_rate * config.end_learning_rate_fraction,
    )
    decay: optax.GradientTransformation
    if decay_mask is None:
        decay = optax.add_decayed_weights(config.weight_decay)
    else:
        decay = _masked_weight_decay(config.weight_decay, decay_mask)
    return optax.chain(
        optax.clip_by_global_norm(config.grad_clip_norm),
        optax.scale_by_adam(),
        decay,
        optax.scale_by_learning_rate(schedule),
    ), schedule


def _check_data(emulator: Emulator, data: TrainingData, what: str) -> None:
    if data.labels.shape[1] != emulator.n_labels:
        raise ValueError(f"{what} labels have {data.labels.shape[1]} columns; the emulator takes {emulator.n_labels}: {emulator.label_names}")
    if data.label_spec is not None and data.label_spec != emulator.label_spec:
        raise ValueError(
            f"{what} label spec {data.label_spec} differs from the emulator's {emulator.label_spec}; "
            "create the emulator with the grid's label spec"
        )
    if not (data.wavelength.shape == emulator.wavelength.shape and np.allclose(data.wavelength, emulator.wavelength, rtol=1e-12, atol=0)):
        raise ValueError(
            f"{what} wavelength grid ({data.n_pixels} pixels, [{data.wavelength[0]:.3f}, {data.wavelength[-1]:.3f}] A) differs from "
            f"the emulator's native grid ({emulator.n_pixels} pixels); create the emulator on the grid's wavelengths"
        )
    if emulator.has_continuum and data.log10_continuum is None:
        raise ValueError(f"the emulator has a continuum output but the {what} data have no log10_continuum; create it with with_continuum=False")


def _device_data(emulator: Emulator, data: TrainingData, use_continuum: bool) -> dict[str, jax.Array]:
    scaled = (data.labels - np.asarray(emulator.label_spec.lower)) / (emulator.label_spec.upper - emulator.label_spec.lower) - 0.5
    arrays = {"scaled": jnp.asarray(scaled, jnp.float32), "flux": jnp.asarray(data.flux)}
    if use_continuum:
        c = emulator.config
        arrays["cont"] = jnp.asarray((data.log10_continuum - c["continuum_offset"]) / c["continuum_scale"], jnp.float32)
    plan = emulator._native_plan()
    if plan is not None:
        arrays["features"] = jnp.asarray(plan)
    return arrays


def _make_step(
    emulator: Emulator, optimizer: optax.GradientTransformation, unravel: Callable, config: TrainConfig, use_continuum: bool, n_spectra: int, n_pixels: int
) -> Callable:
    base_key = jax.random.key(config.seed)
    sample_pixels = emulator.samples_wavelengths and config.n_wavelengths is not None and config.n_wavelengths < n_pixels
    batch_size = int(config.batch_size)
    n_wave = int(config.n_wavelengths) if sample_pixels else n_pixels
    distance = (lambda e: jnp.abs(e)) if config.loss == "l1" else (lambda e: e * e)
    continuum_weight = float(config.continuum_weight)

    def sample(key: jax.Array, data: dict[str, jax.Array]) -> dict[str, Any]:
        key_spectra, key_pixels = jax.random.split(key)
        sidx = jax.random.randint(key_spectra, (batch_size,), 0, n_spectra)
        batch = {"scaled": data["scaled"][sidx]}
        if sample_pixels:
            widx = jax.random.randint(key_pixels, (batch_size, n_wave), 0, n_pixels)
            batch["plan"] = data["features"][widx]
            batch["flux"] = data["flux"][sidx[:, None], widx]
            if use_continuum:
                batch["cont"] = data["cont"][sidx[:, None], widx]
        else:
            batch["plan"] = data.get("features")
            batch["flux"] = data["flux"][sidx]
            if use_continuum:
                batch["cont"] = data["cont"][sidx]
        return batch

    def loss_fn(params: Any, batch: dict[str, Any]) -> jax.Array:
        raw = emulator._forward_raw(params, batch["scaled"], batch["plan"])
        loss = jnp.mean(distance(raw[..., 0] - batch["flux"]))
        if use_continuum:
            loss = loss + continuum_weight * jnp.mean(distance(raw[..., 1] - batch["cont"]))
        return loss

    def step(trainable: jax.Array, frozen: dict, opt_state: Any, data: dict, step_index: jax.Array):
        """trainable: raveled vector of the trained parameters; frozen: flat dict of the rest."""
        batch = sample(jax.random.fold_in(base_key, step_index), data)

        def objective(vector: jax.Array) -> jax.Array:
            return loss_fn(unflatten_params({**unravel(vector), **frozen}), batch)

        loss, grads = jax.value_and_grad(objective)(trainable)
        updates, opt_state = optimizer.update(grads, opt_state, trainable)
        return optax.apply_updates(trainable, updates), opt_state, loss

    donate = (0, 2) if jax.default_backend() != "cpu" else ()
    return jax.jit(step, donate_argnums=donate)


def validation_metrics(emulator: Emulator, params: Any, data: TrainingData, *, batch_size: int | None = None) -> dict[str, float]:
    """MAE and MSE of normalized flux (and log10-continuum MAE) on ``data`` at the native grid."""
    scaled = ((data.labels - emulator.label_spec.lower) / (emulator.label_spec.upper - emulator.label_spec.lower) - 0.5).astype(np.float32)
    raw = emulator._predict_raw(params, scaled, emulator._native_plan(), batch_size, emulator.n_pixels)
    err = raw[..., 0].astype(np.float64) - data.flux
    metrics = {"val_mae": float(np.mean(np.abs(err))), "val_mse": float(np.mean(err**2))}
    if emulator.has_continuum and data.log10_continuum is not None:
        cont = raw[..., 1] * emulator.config["continuum_scale"] + emulator.config["continuum_offset"]
        metrics["val_continuum_mae"] = float(np.mean(np.abs(cont - data.log10_continuum)))
    return metrics


def _architecture(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in ("continuum_offset", "continuum_scale", "chunk_points")}


def train_emulator(
    emulator: Emulator,
    train: TrainingData,
    val: TrainingData | None = None,
    config: TrainConfig | None = None,
    *,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = True,
    trainable: Callable[[str], bool] | None = None,
    initialize: bool = True,
    extra_metadata: dict[str, Any] | None = None,
    stop_at_step: int | None = None,
    time_limit_s: float | None = None,
) -> TrainResult:
    """Train ``emulator`` on ``train``, validating on ``val``.

    Args:
        emulator: a (randomly initialized or pre-trained) emulator whose native
            grid is ``train.wavelength``.
        train, val: training and held-out spectra (same wavelength grid).
        config: hyper-parameters (:class:`TrainConfig`).
        checkpoint_dir: directory for checkpoints; with ``resume=True`` an
            existing checkpoint there is continued (it must come from the
            same grid and architecture, else a ValueError says so).
        trainable: predicate on flat parameter names (``blocks/0/query/kernel``)
            selecting what is trained; the rest is frozen bit-for-bit (used by
            head-only and LoRA fine-tuning).  Default: everything.
        initialize: on a fresh start set the continuum standardization and the
            output bias from the training data (off for fine-tuning).
        extra_metadata: merged into the returned emulator's metadata.
        stop_at_step, time_limit_s: end this call early (at that step, or after
            that many seconds) with a checkpoint, for time-limited jobs; a later
            call with the same ``checkpoint_dir`` continues the same schedule.

    Returns: :class:`TrainResult`.
    """
    config = config or TrainConfig()
    _check_data(emulator, train, "training")
    if val is not None:
        _check_data(emulator, val, "validation")
        if config.val_max_spectra is not None and val.n_spectra > config.val_max_spectra:
            val = val.subset(np.arange(config.val_max_spectra))
    use_continuum = emulator.has_continuum and train.log10_continuum is not None
    grid_hash = train.hash()
    start_time = time.time()

    state_path = None if checkpoint_dir is None else os.path.join(os.fspath(checkpoint_dir), "train_state.json")
    resumed_from = None
    history: list[dict[str, Any]] = []
    best_val, best_step, bad_evals, step = math.inf, 0, 0, 0
    reference_val = math.inf  # early stopping: last value that improved by min_delta
    opt_leaves = None
    if state_path is not None and resume and os.path.isfile(state_path):
        with open(state_path) as handle:
            saved = json.load(handle)
        if saved.get("format") != TRAIN_STATE_FORMAT or saved.get("schema_version") != TRAIN_STATE_VERSION:
            raise ValueError(f"{state_path} is not a version-{TRAIN_STATE_VERSION} stellarfit training checkpoint; use another checkpoint_dir or resume=False")
        if saved["grid_hash"] != grid_hash:
            raise ValueError(f"the checkpoint in {checkpoint_dir} was trained on a different grid (hash mismatch); use another checkpoint_dir or resume=False")
        current = read_emulator(os.path.join(os.fspath(checkpoint_dir), "current"), label_spec=emulator.label_spec)
        if current.model_type != emulator.model_type or _architecture(current.config) != _architecture(emulator.config):
            raise ValueError(f"the checkpoint in {checkpoint_dir} holds a different architecture ({current.model_type} {current.config}); use another checkpoint_dir or resume=False")
        emulator = current
        step = int(saved["step"])
        history = list(saved["history"])
        best_val = math.inf if saved["best_val_mae"] is None else float(saved["best_val_mae"])
        best_step, bad_evals = int(saved["best_step"]), int(saved["bad_evals"])
        reference_val = math.inf if saved["reference_val_mae"] is None else float(saved["reference_val_mae"])
        opt_leaves = load_arrays(os.path.join(os.fspath(checkpoint_dir), "opt_state.npz"))
        resumed_from = step
        trainable_names = list(saved["trainable"])
    elif initialize:
        cfg = dict(emulator.config)
        if use_continuum:
            cfg["continuum_offset"] = float(np.mean(train.log10_continuum))
            cfg["continuum_scale"] = float(np.std(train.log10_continuum)) or 1.0
        emulator = emulator.replace(config=cfg)
        if config.init_output_bias:
            emulator = emulator.replace(params=emulator.initialize_output_bias(emulator.params, train.flux.mean(axis=0)))
        trainable_names = None
    else:
        trainable_names = None

    flat = flatten_params(emulator.params)
    if trainable_names is None:
        trainable_names = [name for name in flat if trainable is None or trainable(name)]
    if not trainable_names:
        raise ValueError("no parameters selected for training (the trainable filter matched nothing)")
    frozen = {name: value for name, value in flat.items() if name not in trainable_names}
    train_vec, unravel = ravel_pytree({name: flat[name] for name in trainable_names})
    decay_mask, _ = ravel_pytree({name: jnp.full(np.shape(flat[name]), float(np.ndim(flat[name]) >= 2), jnp.float32) for name in trainable_names})

    def full_params(vector: jax.Array) -> dict:
        return unflatten_params({**unravel(vector), **frozen})

    optimizer, schedule = make_optimizer(config, decay_mask=decay_mask)
    opt_state = optimizer.init(train_vec)
    if opt_leaves is not None:
        leaves, treedef = jax.tree.flatten(opt_state)
        if len(opt_leaves) != len(leaves) or any(opt_leaves[f"leaf_{i:05d}"].shape != np.shape(leaf) for i, leaf in enumerate(leaves)):
            raise ValueError(f"the optimizer state in {checkpoint_dir} does not fit this optimizer; use another checkpoint_dir or resume=False")
        opt_state = jax.tree.unflatten(treedef, [jnp.asarray(opt_leaves[f"leaf_{i:05d}"], dtype=np.asarray(leaf).dtype) for i, leaf in enumerate(leaves)])

    data = _device_data(emulator, train, use_continuum)
    step_fn = _make_step(emulator, optimizer, unravel, config, use_continuum, train.n_spectra, train.n_pixels)
    best_vec = jnp.array(train_vec, copy=True)  # a copy: train_vec's buffer is donated to the step on GPU
    if resumed_from is not None and val is not None and os.path.isdir(os.path.join(os.fspath(checkpoint_dir), "best")):
        best_flat = flatten_params(read_emulator(os.path.join(os.fspath(checkpoint_dir), "best")).params)
        best_vec, _ = ravel_pytree({name: jnp.asarray(best_flat[name]) for name in trainable_names})

    def save_checkpoint() -> None:
        if checkpoint_dir is None:
            return
        directory = os.fspath(checkpoint_dir)
        os.makedirs(directory, exist_ok=True)
        current_emu = emulator.replace(params=full_params(train_vec))
        save_emulator(current_emu, os.path.join(directory, "current"), overwrite=True)
        if val is not None and math.isfinite(best_val):
            save_emulator(emulator.replace(params=full_params(best_vec)), os.path.join(directory, "best"), overwrite=True)
        leaves = jax.tree.leaves(opt_state)
        save_arrays_atomic(os.path.join(directory, "opt_state.npz"), {f"leaf_{i:05d}": np.asarray(leaf) for i, leaf in enumerate(leaves)})
        write_json_atomic(
            state_path,
            {
                "format": TRAIN_STATE_FORMAT,
                "schema_version": TRAIN_STATE_VERSION,
                "step": step,
                "grid_hash": grid_hash,
                "best_val_mae": None if not math.isfinite(best_val) else best_val,
                "best_step": best_step,
                "bad_evals": bad_evals,
                "reference_val_mae": None if not math.isfinite(reference_val) else reference_val,
                "history": history,
                "trainable": trainable_names,
                "train_config": dataclasses.asdict(config),
            },
        )

    stopped_early = False
    losses: list[jax.Array] = []
    if val is not None and resumed_from is None and step < config.n_steps:
        # the starting point, so that history shows how far training moved
        record = {"step": 0, "train_loss": None, "learning_rate": 0.0, **validation_metrics(emulator, full_params(train_vec), val)}
        best_val, best_step = record["val_mae"], 0
        reference_val = best_val
        record["elapsed_s"] = round(time.time() - start_time, 3)
        history.append(record)
    bar = tqdm(total=config.n_steps, initial=step, file=sys.stderr, disable=not config.progress, dynamic_ncols=True, desc=f"train {emulator.model_type}")
    try:
        while step < config.n_steps:
            train_vec, opt_state, loss = step_fn(train_vec, frozen, opt_state, data, jnp.asarray(step, jnp.int32))
            losses.append(loss)
            step += 1
            bar.update(1)
            last = step == config.n_steps
            if step % config.eval_every == 0 or last:
                record: dict[str, Any] = {"step": step, "train_loss": float(jnp.mean(jnp.stack(losses))), "learning_rate": float(schedule(step))}
                losses = []
                if val is not None:
                    record.update(validation_metrics(emulator, full_params(train_vec), val))
                    if record["val_mae"] < best_val:
                        best_val, best_step, best_vec = record["val_mae"], step, jnp.array(train_vec, copy=True)
                    if record["val_mae"] < reference_val * (1.0 - config.min_delta):
                        reference_val, bad_evals = record["val_mae"], 0
                    else:
                        bad_evals += 1
                        if config.patience is not None and bad_evals >= config.patience:
                            stopped_early = True
                record["elapsed_s"] = round(time.time() - start_time, 3)
                history.append(record)
                bar.set_postfix({k: f"{v:.3g}" for k, v in record.items() if k in ("train_loss", "val_mae")})
            paused = (stop_at_step is not None and step >= stop_at_step) or (
                time_limit_s is not None and time.time() - start_time > time_limit_s
            )
            if step % config.checkpoint_every == 0 or last or stopped_early or paused:
                save_checkpoint()
            if stopped_early or paused:
                break
    except KeyboardInterrupt:
        save_checkpoint()
        raise
    finally:
        bar.close()

    if val is None:
        best_vec, best_step = train_vec, step
    final_params = full_params(best_vec)
    metrics: dict[str, Any] = {"best_step": best_step, "final_step": step, "n_train": train.n_spectra, "n_val": 0 if val is None else val.n_spectra}
    if val is not None:
        metrics.update(validation_metrics(emulator, final_params, val))
    metadata = dict(emulator.metadata)
    metadata.update(
        {
            "training_grid_hash": grid_hash,
            "metrics": metrics,
            "training": {"config": dataclasses.asdict(config), "n_trainable": int(best_vec.size)},
        }
    )
    metadata.update(extra_metadata or {})
    result_emulator = emulator.replace(params=final_params, metadata=metadata)
    return TrainResult(
        emulator=result_emulator,
        history=history,
        best_step=best_step,
        best_val_mae=None if val is None else metrics["val_mae"],
        final_step=step,
        stopped_early=stopped_early,
        resumed_from=resumed_from,
    )
