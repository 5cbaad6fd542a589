"""Distillation of a (slow) TransformerPayne teacher into a Payne student."""

from __future__ import annotations

import numpy as np
import pytest

from stellarfit.emulators import PayneEmulator, TrainConfig, TransformerPayneEmulator, distill, teacher_data, train_emulator
from stellarfit.emulators.toy import make_toy_grid
from stellarfit.grids import sample_labels

GRID = make_toy_grid(96, 48, seed=2)


@pytest.fixture(scope="module")
def teacher():
    emulator = TransformerPayneEmulator.create(GRID.label_spec, GRID.wavelength, {"dim": 32, "n_layers": 1, "n_tokens": 4},
                                               with_continuum=True, resolution=20_000.0, seed=0)
    config = TrainConfig(n_steps=150, batch_size=16, n_wavelengths=None, learning_rate=3e-3, warmup_steps=10, progress=False)
    return train_emulator(emulator, GRID, None, config).emulator


def test_teacher_data_are_teacher_predictions(teacher):
    data = teacher_data(teacher, 10, seed=3, batch_size=4)
    assert data.flux.shape == (10, teacher.n_pixels) and data.log10_continuum.shape == (10, teacher.n_pixels)
    np.testing.assert_allclose(data.flux, teacher.predict(data.labels), atol=1e-6)
    teacher.label_spec.validate(data.labels)  # every draw inside the box


def test_student_learns_the_teacher(teacher):
    config = TrainConfig(n_steps=400, batch_size=32, learning_rate=3e-3, warmup_steps=20, eval_every=100, patience=None, progress=False)
    result = distill(teacher, n_spectra=512, n_validation=64, config=config, seed=1)
    student = result.emulator
    assert student.model_type == "payne" and not student.has_continuum
    assert student.metadata["distilled_from"]["model_type"] == teacher.model_type
    labels = sample_labels(teacher.label_spec, 50, method="uniform", seed=9)
    target = teacher.predict(labels)
    student_error = np.mean(np.abs(student.predict(labels) - target))
    baseline = np.mean(np.abs(target - target.mean(axis=0)))  # predicting the mean spectrum
    assert student_error < 0.3 * baseline
    with pytest.raises(ValueError, match="teacher's native wavelengths"):
        distill(teacher, PayneEmulator.create(GRID.label_spec, GRID.wavelength[:-1]), n_spectra=8, config=config)
