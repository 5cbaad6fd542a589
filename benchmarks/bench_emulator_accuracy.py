"""Emulator accuracy against training-set size on one realistic grid.

Trains The Payne (300x300), the scaled-up Payne and TransformerPayne (from
scratch, and pre-trained on a `simple` JAX-synthesis grid then fine-tuned) on
the first N training spectra of a realistic grid, for several N, and reports
the MAE / MSE of normalized flux on the same held-out test spectra (the grid's
10% test split).  Every trained emulator is saved under --work-dir and every
training checkpoints there (--work-dir/checkpoints, every 1,000 steps), so an
interrupted run resumes where it stopped, even mid-training; results go to
benchmarks/results/emulator_accuracy.{json,md}.

Example (the numbers quoted in docs/emulators.md):

    python benchmarks/bench_emulator_accuracy.py \\
        --grid ~/.cache/stellarfit/grids/ts_default_2000.h5 \\
        --simple-grid ~/.cache/stellarfit/grids/jax_simple_10000.h5 \\
        --n-train 500 1000 1600 --models payne payne-large tp tp-finetuned
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

MODELS = ("payne", "payne-large", "tp", "tp-finetuned")


def build(model: str, data, args):
    from stellarfit.emulators import PayneEmulator, TransformerPayneEmulator, scaled_payne_config, transformer_payne_config

    common = dict(with_continuum=data.log10_continuum is not None, resolution=args.resolution, seed=args.seed)
    if model == "payne":
        return PayneEmulator.create(data.label_spec, data.wavelength, **common)
    if model == "payne-large":
        return PayneEmulator.create(data.label_spec, data.wavelength, scaled_payne_config(), **common)
    config = transformer_payne_config(dim=args.tp_dim, n_layers=args.tp_layers, n_tokens=args.tp_tokens)
    return TransformerPayneEmulator.create(data.label_spec, data.wavelength, config, **common)


def train_config(model: str, args, n_steps: int | None = None):
    from stellarfit.emulators import TrainConfig

    steps = n_steps or (args.payne_steps if model.startswith("payne") else args.tp_steps)
    return TrainConfig(n_steps=steps, batch_size=args.batch_size, learning_rate=args.learning_rate,
                       warmup_steps=min(500, steps // 10), n_wavelengths=args.n_wavelengths, patience=args.patience,
                       eval_every=args.eval_every, seed=args.seed, progress=not args.no_progress,
                       val_max_spectra=args.val_max_spectra)


def pretrained(args, work: Path):
    """TransformerPayne trained on the simple grid (cached in work/pretrained_tp)."""
    from stellarfit.emulators import TrainingData, load_emulator, train_emulator
    from stellarfit.grids import SpectralGrid

    path = work / "pretrained_tp"
    if (path / "emulator.json").is_file():
        return load_emulator(str(path)), json.loads((work / "pretrained_tp.json").read_text())
    grid = SpectralGrid.read(os.path.expanduser(args.simple_grid))
    train_idx, val_idx, _ = grid.split((0.9, 0.05, 0.05), seed=args.split_seed)
    train, val = TrainingData.from_grid(grid, train_idx), TrainingData.from_grid(grid, val_idx)
    start = time.perf_counter()
    result = train_emulator(build("tp", train, args), train, val, train_config("tp", args, args.pretrain_steps),
                            extra_metadata={"grid": str(args.simple_grid), "n_train": int(train.n_spectra)},
                            checkpoint_dir=work / "checkpoints" / "pretrained_tp")
    info = {"n_simple": int(train.n_spectra), "steps": result.final_step, "best_val_mae_simple": result.best_val_mae,
            "train_s": time.perf_counter() - start}
    result.emulator.save(str(path), overwrite=True)
    (work / "pretrained_tp.json").write_text(json.dumps(info, indent=1))
    return result.emulator, info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", required=True, help="realistic SpectralGrid (e.g. the Turbospectrum default grid)")
    parser.add_argument("--simple-grid", default=None, help="simple-physics grid for pre-training (model tp-finetuned)")
    parser.add_argument("--n-train", type=int, nargs="+", default=[500, 1000, 1600])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--payne-steps", type=int, default=8000)
    parser.add_argument("--tp-steps", type=int, default=3000)
    parser.add_argument("--pretrain-steps", type=int, default=4000)
    parser.add_argument("--finetune-steps", type=int, default=1500)
    parser.add_argument("--tp-dim", type=int, default=64)
    parser.add_argument("--tp-layers", type=int, default=4)
    parser.add_argument("--tp-tokens", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--n-wavelengths", type=int, default=512)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--patience", type=int, default=None)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--val-max-spectra", type=int, default=None)
    parser.add_argument("--resolution", type=float, default=30_000.0)
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", default=os.path.expanduser("~/.cache/stellarfit/bench_emulator_accuracy"))
    parser.add_argument("--out", default=str(HERE / "results" / "emulator_accuracy"))
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()

    import jax

    from stellarfit.emulators import TrainingData, evaluate_emulator, finetune, load_emulator, train_emulator
    from stellarfit.grids import SpectralGrid

    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    grid = SpectralGrid.read(os.path.expanduser(args.grid))
    train_idx, val_idx, test_idx = grid.split((0.8, 0.1, 0.1), seed=args.split_seed)
    train_all = TrainingData.from_grid(grid, train_idx)
    val, test = TrainingData.from_grid(grid, val_idx), TrainingData.from_grid(grid, test_idx)
    records_path = work / "records.json"
    records = json.loads(records_path.read_text()) if records_path.is_file() else {}
    pretrain_info = None
    for n in args.n_train:
        if n > train_all.n_spectra:
            raise SystemExit(f"--n-train {n} exceeds the {train_all.n_spectra} training spectra of {args.grid}")
        train = train_all.subset(np.arange(n))
        for model in args.models:
            key = f"{model}/{n}"
            path = work / model / str(n)
            if key in records and (path / "emulator.json").is_file():
                print(f"{key}: done (MAE {records[key]['test_mae']:.5f})", flush=True)
                continue
            start = time.perf_counter()
            if model == "tp-finetuned":
                if args.simple_grid is None:
                    raise SystemExit("model tp-finetuned needs --simple-grid")
                parent, pretrain_info = pretrained(args, work)
                result = finetune(parent, train, val, train_config("tp", args, args.finetune_steps), mode="full",
                                  checkpoint_dir=work / "checkpoints" / model / str(n))
            else:
                result = train_emulator(build(model, train, args), train, val, train_config(model, args),
                                        extra_metadata={"grid": str(args.grid), "n_train": n},
                                        checkpoint_dir=work / "checkpoints" / model / str(n))
            elapsed = time.perf_counter() - start
            result.emulator.save(str(path), overwrite=True)
            evaluation = evaluate_emulator(result.emulator, test)
            summary = evaluation.to_dict()
            records[key] = {
                "model": model, "n_train": n, "n_parameters": int(result.emulator.n_parameters),
                "steps": int(result.final_step), "best_step": int(result.best_step), "train_s": elapsed,
                "val_mae": float(result.best_val_mae), "test_mae": float(summary["mae"]), "test_mse": float(summary["mse"]),
                "test_mae_p95_spectrum": float(np.percentile(evaluation.mae_per_spectrum, 95)), "n_test": int(test.n_spectra),
            }
            records_path.write_text(json.dumps(records, indent=1))
            print(f"{key}: test MAE {summary['mae']:.5f}, MSE {summary['mse']:.3e} ({elapsed:.0f} s)", flush=True)

    if pretrain_info is None and (work / "pretrained_tp.json").is_file():
        pretrain_info = json.loads((work / "pretrained_tp.json").read_text())
    document = {
        "benchmark": "bench_emulator_accuracy",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(jax.devices()[0]), "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "grid": str(args.grid), "training_grid_hash": train_all.hash(),
        "simple_grid": args.simple_grid, "pretraining": pretrain_info,
        "settings": {k: v for k, v in vars(args).items() if k not in ("grid", "simple_grid", "work_dir", "out")},
        "n_test": int(test.n_spectra), "records": records,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(document, indent=1))
    lines = ["| model | N train | parameters | steps | train [s] | test MAE | test MSE |", "|---|---|---|---|---|---|---|"]
    for record in sorted(records.values(), key=lambda r: (MODELS.index(r["model"]), r["n_train"])):
        lines.append(f"| {record['model']} | {record['n_train']} | {record['n_parameters']:,} | {record['steps']} | "
                     f"{record['train_s']:.0f} | {record['test_mae']:.5f} | {record['test_mse']:.2e} |")
    lines.append("")
    lines.append(f"Held-out test spectra: {test.n_spectra} of {args.grid}; device {document['device']}, "
                 f"{document['cpu_count']} cores, {document['date']}.")
    if pretrain_info:
        lines.append(f"tp-finetuned: pre-trained on {pretrain_info['n_simple']} simple (JAX LTE) spectra for "
                     f"{pretrain_info['steps']} steps (validation MAE on simple spectra {pretrain_info['best_val_mae_simple']:.5f}), "
                     f"then fully fine-tuned for {args.finetune_steps} steps.")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
