"""Distillation: a fast student emulator trained on unlimited outputs of a slow teacher.

A TransformerPayne evaluates ~10 dim^2 multiply-adds per pixel and layer; on a
CPU that is far too slow for the ~1e4 label gradients of a NUTS run.  The
student (by default a Payne MLP, one matrix product per spectrum) learns the
teacher's spectra at labels drawn freshly over the whole label box, so the
training set is as large as the teacher's evaluation budget allows rather than
as large as the realistic grid.  The student can only be as accurate as its
teacher; :func:`distill` reports both its error against the teacher on
held-out draws and (through ``evaluate_emulator`` on a real grid) the error
that matters.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from stellarfit.emulators.base import Emulator
from stellarfit.emulators.training import TrainConfig, TrainingData, TrainResult, train_emulator

__all__ = ["teacher_data", "distill"]


def teacher_data(teacher: Emulator, n_spectra: int, *, seed: int = 0, design: str = "sobol",
                 batch_size: int = 64, progress: bool = False) -> TrainingData:
    """``n_spectra`` teacher spectra on its native pixels at labels drawn over its label box."""
    from tqdm.auto import tqdm

    from stellarfit.grids import sample_labels

    if n_spectra < 2:
        raise ValueError(f"n_spectra must be >= 2, got {n_spectra}")
    labels = sample_labels(teacher.label_spec, n_spectra, method=design, seed=seed)
    flux = np.empty((n_spectra, teacher.n_pixels), np.float32)
    continuum = np.empty_like(flux) if teacher.has_continuum else None
    for start in tqdm(range(0, n_spectra, batch_size), desc="teacher", unit="batch", disable=not progress):
        chunk = labels[start : start + batch_size]
        if continuum is not None:
            flux[start : start + len(chunk)], continuum[start : start + len(chunk)] = teacher.predict_with_continuum(chunk)
        else:
            flux[start : start + len(chunk)] = teacher.predict(chunk)
    return TrainingData(labels, flux, np.asarray(teacher.wavelength, np.float64), continuum, teacher.label_spec)


def distill(
    teacher: Emulator,
    student: Emulator | None = None,
    *,
    n_spectra: int = 20_000,
    n_validation: int = 500,
    config: TrainConfig | None = None,
    seed: int = 0,
    checkpoint_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> TrainResult:
    """Train ``student`` (default: a Payne MLP on the teacher's pixels, normalized flux only)
    on ``n_spectra`` teacher spectra, validating on ``n_validation`` other draws.

    Returns the :class:`TrainResult`; its emulator's metadata records
    ``distilled_from`` (teacher type, config, training-grid hash and metrics).
    """
    from stellarfit.emulators.payne import PayneEmulator

    if student is None:
        student = PayneEmulator.create(teacher.label_spec, teacher.wavelength, resolution=teacher.native_resolution, seed=seed)
    if student.label_spec != teacher.label_spec:
        raise ValueError(f"student labels {student.label_names} differ from the teacher's {teacher.label_names}")
    if student.n_pixels != teacher.n_pixels or not np.allclose(student.wavelength, teacher.wavelength, rtol=1e-12, atol=0):
        raise ValueError("the student must be created on the teacher's native wavelengths (teacher.wavelength)")
    train = teacher_data(teacher, n_spectra, seed=seed, progress=progress)
    # validation draws from another scrambling of the design, so they are not training points
    val = teacher_data(teacher, n_validation, seed=seed + 104_729, progress=progress)
    if not student.has_continuum:
        train = TrainingData(train.labels, train.flux, train.wavelength, None, train.label_spec)
        val = TrainingData(val.labels, val.flux, val.wavelength, None, val.label_spec)
    parent: dict[str, Any] = {
        "model_type": teacher.model_type, "config": teacher.config,
        "training_grid_hash": teacher.metadata.get("training_grid_hash"), "metrics": teacher.metadata.get("metrics"),
        "n_spectra": int(n_spectra), "seed": int(seed),
    }
    return train_emulator(student, train, val, config or TrainConfig(), checkpoint_dir=checkpoint_dir,
                          extra_metadata={"distilled_from": parent})
