"""Distil a slow teacher (e.g. the shipped TransformerPayne) into a Payne student: the CPU fast path.

The teacher is evaluated at N labels drawn over its label box (scrambled Sobol',
:func:`stellarfit.emulators.teacher_data`); a Payne MLP (payne-default's size,
softplus-smoothed for NUTS) learns those spectra; both are then measured on an
independent held-out Turbospectrum grid, so the student's real error is known.

    python scripts/distill_emulator.py --teacher default --n-spectra 6000 --out ~/.cache/stellarfit/emulators/payne_from_tp \\
        --heldout ts_seed1_320.npz

``--heldout`` is a SpectralGrid file or the npz written by ``scripts/gpu_campaign.py pack``
(labels, wavelength, normalized flux).  Writes the student directory and ``<out>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np


def load_heldout(path: str):
    from stellarfit.emulators import TrainingData
    from stellarfit.labels import default_label_spec

    if path.endswith(".npz"):
        with np.load(path) as arrays:
            return TrainingData(arrays["labels"], arrays["flux"], arrays["wavelength"], None, default_label_spec())
    return TrainingData.from_grid(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="default", help="shipped name or emulator directory")
    parser.add_argument("--n-spectra", type=int, default=6000)
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--activation-sharpness", type=float, default=100.0)
    parser.add_argument("--heldout", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import jax

    from stellarfit.emulators import PayneEmulator, TrainConfig, distill, estimate_pixel_error, evaluate_emulator, load_emulator
    from stellarfit.emulators.distill import teacher_data

    teacher = load_emulator(args.teacher)
    heldout = load_heldout(os.path.expanduser(args.heldout))
    student = PayneEmulator.create(teacher.label_spec, teacher.wavelength, {"activation_sharpness": args.activation_sharpness},
                                   resolution=teacher.native_resolution, seed=args.seed)
    config = TrainConfig(n_steps=args.steps, batch_size=32, learning_rate=1e-3, warmup_steps=500, patience=40, seed=args.seed)
    start = time.perf_counter()
    out = Path(os.path.expanduser(args.out))
    result = distill(teacher, student, n_spectra=args.n_spectra, config=config, seed=args.seed, progress=True,
                     checkpoint_dir=str(out) + "_checkpoints")
    seconds = time.perf_counter() - start
    validation = teacher_data(teacher, 300, seed=args.seed + 7919)
    emulator = result.emulator
    # the student's own error against Turbospectrum is what fits must count: measured on real spectra, the
    # first half of the held-out grid (bench_calibration's heldout-a), leaving the second half (heldout-b) unused
    half = heldout.n_spectra // 2
    emulator = emulator.with_pixel_error(estimate_pixel_error(emulator, heldout.subset(np.arange(half))))
    emulator.save(str(out), overwrite=True)
    document = {
        "teacher": args.teacher, "n_spectra": args.n_spectra, "steps": args.steps, "seconds": seconds,
        "device": str(jax.devices()[0]), "cpu_count": os.cpu_count(), "best_step": result.best_step,
        "student_vs_teacher_mae": float(evaluate_emulator(emulator, validation).mae),
        "heldout": args.heldout, "n_heldout": heldout.n_spectra,
        "pixel_error_from": "first half of the held-out grid (heldout-a)",
        "heldout_b_mae": {"student": float(evaluate_emulator(emulator, heldout.subset(np.arange(half, heldout.n_spectra))).mae)},
        "heldout_mae": {"student": float(evaluate_emulator(emulator, heldout).mae),
                        "teacher": float(evaluate_emulator(teacher, heldout).mae),
                        "payne-default": float(evaluate_emulator(load_emulator("payne-default"), heldout).mae)},
    }
    Path(str(out) + ".json").write_text(json.dumps(document, indent=1))
    print(json.dumps(document, indent=1))


if __name__ == "__main__":
    main()
