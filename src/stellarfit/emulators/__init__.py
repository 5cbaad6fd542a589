"""Neural emulators of stellar spectra: TransformerPayne and The Payne, in Flax NNX.

Owns: the Emulator interface (``predict``, pure ``apply_fn`` for jit/vmap/grad),
the models (:mod:`.transformer_payne`, :mod:`.payne`), the checkpoint format
(:mod:`.checkpoint`: npz arrays + JSON metadata, no pickle; the model types it knows are
registered in :mod:`.model_types`, which also holds :class:`FittableEmulator`, what a fit needs), training with
optax (:mod:`.training`), fine-tuning (full / head / LoRA, :mod:`.finetune`),
evaluation (:mod:`.evaluation`) and the registry of shipped emulators
(:mod:`.registry`); one TransformerPayne over several windows and its split into a composite
(:mod:`.windows`).  See docs/emulators.md.
"""

from stellarfit.emulators.base import Emulator as Emulator
from stellarfit.emulators.checkpoint import CheckpointError as CheckpointError
from stellarfit.emulators.checkpoint import SCHEMA_VERSION as SCHEMA_VERSION
from stellarfit.emulators.checkpoint import read_emulator as read_emulator
from stellarfit.emulators.checkpoint import save_emulator as save_emulator
from stellarfit.emulators.composite import CompositeEmulator as CompositeEmulator
from stellarfit.emulators.evaluation import EmulatorEvaluation as EmulatorEvaluation
from stellarfit.emulators.evaluation import estimate_error_modes as estimate_error_modes
from stellarfit.emulators.evaluation import estimate_pixel_error as estimate_pixel_error
from stellarfit.emulators.evaluation import evaluate_emulator as evaluate_emulator
from stellarfit.emulators.evaluation import plot_evaluation as plot_evaluation
from stellarfit.emulators.distill import distill as distill
from stellarfit.emulators.distill import teacher_data as teacher_data
from stellarfit.emulators.finetune import add_lora as add_lora
from stellarfit.emulators.finetune import finetune as finetune
from stellarfit.emulators.finetune import merge_lora as merge_lora
from stellarfit.emulators.model_types import FittableEmulator as FittableEmulator
from stellarfit.emulators.model_types import available_model_types as available_model_types
from stellarfit.emulators.model_types import register_model_type as register_model_type
from stellarfit.emulators.payne import PayneEmulator as PayneEmulator
from stellarfit.emulators.payne import payne_config as payne_config
from stellarfit.emulators.payne import scaled_payne_config as scaled_payne_config
from stellarfit.emulators.registry import available_emulators as available_emulators
from stellarfit.emulators.registry import load_emulator as load_emulator
from stellarfit.emulators.training import TrainConfig as TrainConfig
from stellarfit.emulators.training import TrainingData as TrainingData
from stellarfit.emulators.training import TrainResult as TrainResult
from stellarfit.emulators.training import train_emulator as train_emulator
from stellarfit.emulators.training import validation_metrics as validation_metrics
from stellarfit.emulators.transformer_payne import TransformerPayneEmulator as TransformerPayneEmulator
from stellarfit.emulators.transformer_payne import encode_wavelength as encode_wavelength
from stellarfit.emulators.transformer_payne import transformer_payne_config as transformer_payne_config
from stellarfit.emulators.windows import join_windows as join_windows
from stellarfit.emulators.windows import match_rows as match_rows
from stellarfit.emulators.windows import split_by_design_row as split_by_design_row
from stellarfit.emulators.windows import split_windows as split_windows

__all__ = [
    "Emulator",
    "FittableEmulator",
    "available_model_types",
    "register_model_type",
    "PayneEmulator",
    "CompositeEmulator",
    "join_windows",
    "match_rows",
    "split_by_design_row",
    "split_windows",
    "TransformerPayneEmulator",
    "payne_config",
    "scaled_payne_config",
    "transformer_payne_config",
    "encode_wavelength",
    "save_emulator",
    "read_emulator",
    "load_emulator",
    "available_emulators",
    "CheckpointError",
    "SCHEMA_VERSION",
    "TrainingData",
    "TrainConfig",
    "TrainResult",
    "train_emulator",
    "validation_metrics",
    "finetune",
    "distill",
    "teacher_data",
    "add_lora",
    "merge_lora",
    "EmulatorEvaluation",
    "estimate_error_modes",
    "estimate_pixel_error",
    "evaluate_emulator",
    "plot_evaluation",
]
