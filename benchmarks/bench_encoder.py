"""Train the spectrum encoder on payne-default simulations and measure it on held-out simulated spectra.

Trains (or resumes, or reuses when finished) an encoder in the user cache
(``$STELLARFIT_CACHE`` or ``$XDG_CACHE_HOME/stellarfit`` or ``~/.cache/stellarfit``,
under ``encoders/NAME``), then predicts ``--n`` held-out spectra at each S/N (full
window, resolution log-uniform over the training range, fresh seeds) and writes
bias, scatter (robust: 1.4826 MAD) and the coverage of the 1-sigma errors per label,
and throughput (spectra per second on this machine) to
``benchmarks/results/encoder_simulated.json``.  Public API only.

    python benchmarks/bench_encoder.py --train-only    # 1,500 steps (~20 min on 2 busy cores)
    python benchmarks/bench_encoder.py --name payne-default-sim-v2 --init payne-default-sim-v1 \
        --steps 2500 --learning-rate 1e-3 --sun /work/shared/real/Sun_HARPS_GBS.fits   # 2,500 more + measure
(the committed results file comes from the second command)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np
from _provenance import provenance

import stellarfit as sf
from stellarfit.encoders import (
    EncoderConfig,
    SimulationSettings,
    TrainingSettings,
    TrainingSimulator,
    load_encoder,
    predict,
    predict_tokens,
    train_encoder,
)

CONFIG = EncoderConfig(patch_size=32, dim=64, heads=4, blocks=3, cross_blocks=2, mlp_ratio=2)
SIMULATION = SimulationSettings(token_buckets=(16, 32, 64, 128, 192, 288))
TRAINING = TrainingSettings(steps=1500, batch_size=32, learning_rate=1.5e-3, warmup_steps=100, seed=0,
                            validate_every=250, checkpoint_every=100)


def cache_directory(name: str) -> Path:
    root = os.environ.get("STELLARFIT_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "stellarfit")
    return Path(root) / "encoders" / name


def measure(encoder, emulator, n: int, snr: float, seed: int, batch_size: int = 50) -> dict:
    """Bias, robust scatter, mean |z|<1 coverage per output on n held-out spectra at this S/N."""
    simulator = TrainingSimulator(emulator, encoder.config, SIMULATION)
    rng = np.random.default_rng([seed, int(snr)])
    values, errors, truths, seconds = [], [], [], 0.0
    for start in range(0, n, batch_size):
        size = min(batch_size, n - start)
        resolution = float(np.exp(rng.uniform(*np.log(SIMULATION.resolution_range))))
        batch = simulator.sample(rng, size, resolution=resolution, snr=snr, masks=False)
        t0 = time.perf_counter()
        value, error = predict_tokens(encoder, batch.features, batch.encoding, batch.token_mask)
        seconds += time.perf_counter() - t0
        values.append(value)
        errors.append(error)
        truths.append(np.column_stack([batch.labels, batch.rv]))
    value, error, truth = (np.concatenate(a) for a in (values, errors, truths))
    residual = value - truth
    rows = {}
    for i, name in enumerate(encoder.output_names):
        r = residual[:, i]
        rows[name] = {
            "bias": float(np.median(r)),
            "scatter": float(1.4826 * np.median(np.abs(r - np.median(r)))),
            "rms": float(np.sqrt(np.mean(r**2))),
            "coverage_1sigma": float(np.mean(np.abs(r) <= error[:, i])),
            "median_error": float(np.median(error[:, i])),
            "box_centre_scatter": float(np.std(truth[:, i])),
        }
    return {"snr": snr, "n_spectra": n, "labels": rows, "network_seconds": seconds}


def throughput(encoder, emulator, n: int = 200) -> dict:
    """Spectra per second of predict() on ObservedSpectrum objects (tokenization included), R = 22,500, 3 pixels per FWHM."""
    rng = np.random.default_rng(7)
    resolution = 22500.0
    wavelength = np.exp(np.arange(np.log(5015.0), np.log(5485.0), 1.0 / (3 * resolution)))
    native = emulator.predict(emulator.label_spec.from_unit_cube(rng.uniform(size=(n, len(emulator.label_spec)))))
    step = np.log(emulator.wavelength[1] / emulator.wavelength[0])
    width = np.sqrt(1 / resolution**2 - 1 / emulator.native_resolution**2) / (2.3548 * step)
    taps = np.arange(-int(5 * width), int(5 * width) + 1)
    kernel = np.exp(-0.5 * (taps / width) ** 2)
    spectra = []
    for flux in native:
        smooth = np.convolve(flux, kernel / kernel.sum(), mode="same")
        observed = np.interp(wavelength, emulator.wavelength, smooth) + 0.02 * rng.normal(size=wavelength.size)
        spectra.append(sf.ObservedSpectrum.from_arrays(wavelength, observed, ivar=np.full(wavelength.size, 2500.0), resolution=resolution))
    predict(encoder, spectra[:64])  # compile
    t0 = time.perf_counter()
    predict(encoder, spectra)
    seconds = time.perf_counter() - t0
    return {"n_spectra": n, "n_pixels": int(wavelength.size), "resolution": resolution, "batch_size": 64, "seconds": seconds,
            "spectra_per_second": n / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default="payne-default-sim-v1", help="cache directory name of the encoder")
    parser.add_argument("--steps", type=int, default=TRAINING.steps)
    parser.add_argument("--learning-rate", type=float, default=TRAINING.learning_rate)
    parser.add_argument("--init", default=None, help="continue training from this cached encoder (a name under encoders/)")
    parser.add_argument("--n", type=int, default=200, help="held-out spectra per S/N")
    parser.add_argument("--train-only", action="store_true")
    parser.add_argument("--sun", default=None, help="also predict this HARPS solar spectrum (R 115,000, air wavelengths)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "encoder_simulated.json"))
    args = parser.parse_args()
    emulator = sf.load_emulator("payne-default")
    directory = cache_directory(args.name)
    settings = dataclasses.replace(TRAINING, steps=args.steps, learning_rate=args.learning_rate, checkpoint_dir=str(directory))
    start = load_encoder(cache_directory(args.init)) if args.init else None
    t0 = time.perf_counter()
    encoder, history = train_encoder(emulator, settings, config=CONFIG, simulation=SIMULATION, encoder=start)
    print(f"encoder in {directory}: {encoder}; {time.perf_counter() - t0:.0f} s in this run")
    if args.train_only:
        return
    result = {
        "encoder": str(directory.name), "config": dataclasses.asdict(CONFIG), "simulation": dataclasses.asdict(SIMULATION),
        "training": dataclasses.asdict(settings) | {"checkpoint_dir": "<user cache>/encoders/" + directory.name},
        "initialized_from": args.init, "n_parameters": encoder.n_parameters,
        "training_seconds": history[-1]["seconds"] if history else None,
        "final_validation_loss": next((h["validation_loss"] for h in reversed(history) if "validation_loss" in h), None),
        "heldout": [measure(encoder, emulator, args.n, snr, seed=12345) for snr in (30.0, 100.0)],
        "throughput": throughput(encoder, emulator),
        "load_average": os.getloadavg(), "cpu_count": os.cpu_count(),
    }
    if args.sun:
        sun = sf.read_spectrum(args.sun, resolution=115000, air=True)
        result["sun"] = {"file": os.path.basename(args.sun), "labels": {k: {"value": v, "error": e} for k, (v, e) in predict(encoder, sun).items()},
                         "reference": {"teff": 5771.0, "logg": 4.44, "fe_h": 0.0}}
    result["provenance"] = provenance()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    for block in result["heldout"]:
        print(f"S/N {block['snr']:.0f}: " + ", ".join(f"{k} {v['bias']:+.3g}/{v['scatter']:.3g}/{v['coverage_1sigma']:.2f}" for k, v in block["labels"].items()))
    print(f"throughput {result['throughput']['spectra_per_second']:.1f} spectra/s; wrote {args.out}")


if __name__ == "__main__":
    main()
