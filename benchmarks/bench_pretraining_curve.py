"""The pre-training claim: held-out MAE against the number of realistic spectra, from scratch vs pre-trained.

For each model (The Payne, a TransformerPayne at a stated reduced scale):

1. pre-train once on a ``simple`` (JAX LTE engine) grid: ``stellarfit train --grid SIMPLE``;
2. for each N in ``--sizes``: train from scratch on the first N training spectra of the realistic
   (Turbospectrum) grid, and fine-tune the pre-trained model on the same N spectra
   (``stellarfit train --init PRETRAINED --finetune full``), with the same steps, batch, learning
   rate and schedule;
3. measure every model on the same held-out spectra: the realistic grid's test split
   (``stellarfit evaluate --part test``), never seen in training or validation.

The pre-trained model before fine-tuning is measured too (``n_realistic`` 0: how far the simple
physics is from Turbospectrum). Every run is appended to ``--out`` as soon as it ends and skipped
when rerun, so an interrupted campaign resumes. ``--figure`` draws MAE against N and reads off the
saving: how many times fewer realistic spectra the pre-trained model needs for the scratch model's
MAE at the largest N (log-log interpolation of the pre-trained curve).

    python benchmarks/bench_pretraining_curve.py --realistic ts.h5 --simple simple.h5 \\
        --sizes 50 120 240 479 --out benchmarks/results/pretraining_curve.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provenance import provenance  # noqa: E402

STELLARFIT = [sys.executable, "-m", "stellarfit.cli.main"]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def model_settings(args, model: str) -> tuple[list[str], str]:
    """The `stellarfit train` options shared by every run of ``model``, and the scale they describe."""
    if model == "payne":
        steps = args.payne_steps
        options = ["--model", "payne", "--steps", str(steps), "--batch-size", str(args.payne_batch_size),
                   "--learning-rate", str(args.payne_learning_rate)]
        scale = f"Payne default size, {steps} steps x {args.payne_batch_size} spectra, lr {args.payne_learning_rate}"
    else:
        steps = args.tp_steps
        options = ["--model", "transformer-payne", "--dim", str(args.tp_dim), "--layers", str(args.tp_layers),
                   "--tokens", str(args.tp_tokens), "--n-wavelengths", str(args.tp_wavelengths),
                   "--steps", str(steps), "--batch-size", str(args.tp_batch_size),
                   "--learning-rate", str(args.tp_learning_rate)]
        scale = (f"d={args.tp_dim}, {args.tp_layers} layers, {args.tp_tokens} tokens, {steps} steps x "
                 f"{args.tp_batch_size} spectra x {args.tp_wavelengths} wavelengths, lr {args.tp_learning_rate}")
    # the same schedule for every run: no early stopping (the best validation checkpoint is kept)
    return options + ["--no-continuum", "--patience", "1000000", "--seed", str(args.seed), "--no-progress",
                      "--json", "--overwrite"], scale


def run_json(command: list[str]) -> dict:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def evaluate(emulator: Path, grid: str) -> dict:
    return run_json([*STELLARFIT, "evaluate", "--emulator", str(emulator), "--grid", grid, "--part", "test", "--json"])


def load_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return json.loads(path.read_text())["runs"]


def save_rows(path: Path, rows: list[dict], meta: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({**meta, "runs": rows}, indent=1))
    os.replace(tmp, path)


def saving(rows: list[dict], model: str) -> dict | None:
    """How many times fewer realistic spectra the pre-trained ``model`` needs for the scratch MAE at the largest N."""
    scratch = sorted((r["n_realistic"], r["mae"]) for r in rows if r["model"] == model and r["init"] == "scratch")
    pre = sorted((r["n_realistic"], r["mae"]) for r in rows
                 if r["model"] == model and r["init"] == "pretrained" and r["n_realistic"] > 0)
    if not scratch or len(pre) < 2:
        return None
    n_max, target = scratch[-1]
    n, mae = np.log([p[0] for p in pre]), np.log([p[1] for p in pre])
    out = {"scratch_n": n_max, "scratch_mae": target}
    if mae[0] <= np.log(target):  # already better with the fewest spectra: a lower bound
        out.update(pretrained_n_needed=f"<= {round(float(np.exp(n[0])))}", saving=f">= {n_max / np.exp(n[0]):.1f}")
        return out
    if np.all(mae > np.log(target)):
        out.update(pretrained_n_needed=None, saving="< 1 (the pre-trained curve stays above the scratch MAE)")
        return out
    k = int(np.argmax(mae <= np.log(target)))  # the first size where pre-training reaches the target
    t = (np.log(target) - mae[k - 1]) / (mae[k] - mae[k - 1])
    needed = float(np.exp(n[k - 1] + t * (n[k] - n[k - 1])))
    out.update(pretrained_n_needed=round(needed, 1), saving=round(n_max / needed, 2))
    return out


def figure(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    styles = {"payne": ("tab:blue", "The Payne"), "transformer-payne": ("tab:red", "TransformerPayne (reduced)")}
    for model, (color, label) in styles.items():
        for init, line in (("scratch", "--"), ("pretrained", "-")):
            pts = sorted((r["n_realistic"], r["mae"]) for r in rows
                         if r["model"] == model and r["init"] == init and r["n_realistic"] > 0)
            if pts:
                ax.plot(*zip(*pts), line, marker="o", color=color, label=f"{label}, {init}")
        zero = [r["mae"] for r in rows if r["model"] == model and r["n_realistic"] == 0]
        if zero:
            ax.axhline(zero[0], color=color, lw=0.8, ls=":", label=f"{label}, pre-trained only (N = 0)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("realistic (Turbospectrum) training spectra N")
    ax.set_ylabel("held-out MAE (normalized flux)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    log(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--realistic", required=True, help="Turbospectrum grid (train on its first N, test on its test split)")
    p.add_argument("--simple", required=True, help="simple-physics grid for pre-training")
    p.add_argument("--sizes", type=int, nargs="+", default=[50, 120, 240, 479])
    p.add_argument("--models", nargs="+", default=["payne", "transformer-payne"], choices=["payne", "transformer-payne"])
    p.add_argument("--workdir", default=str(Path.home() / ".cache/stellarfit/pretraining_curve"))
    p.add_argument("--out", default="benchmarks/results/pretraining_curve.json")
    p.add_argument("--figure", default="docs/images/pretraining_curve.png")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--payne-steps", type=int, default=4000)
    p.add_argument("--payne-batch-size", type=int, default=32)
    p.add_argument("--payne-learning-rate", type=float, default=1e-3)
    p.add_argument("--pretrain-factor", type=float, default=2.0, help="pre-training steps = this x the run's steps")
    p.add_argument("--tp-steps", type=int, default=3000)
    p.add_argument("--tp-dim", type=int, default=32)
    p.add_argument("--tp-layers", type=int, default=2)
    p.add_argument("--tp-tokens", type=int, default=16)
    p.add_argument("--tp-wavelengths", type=int, default=128)
    p.add_argument("--tp-batch-size", type=int, default=16)
    p.add_argument("--tp-learning-rate", type=float, default=1e-3)
    p.add_argument("--inits", nargs="+", default=["scratch", "pretrained"], choices=["scratch", "pretrained"],
                   help="which runs to make (scratch runs need no simple grid)")
    p.add_argument("--plot-only", action="store_true")
    args = p.parse_args(argv)

    out, work = Path(args.out), Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    rows = load_rows(out)
    meta = {"realistic_grid": args.realistic, "simple_grid": args.simple, "heldout": "test split of the realistic grid",
            "command": "python benchmarks/bench_pretraining_curve.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "provenance": provenance(), "cpu_count": os.cpu_count()}
    if not args.plot_only:
        for model in args.models:
            options, scale = model_settings(args, model)
            done = {(r["init"], r["n_realistic"]) for r in rows if r["model"] == model and r["scale"] == scale}
            parent = work / f"{model}_pretrained"
            if "pretrained" in args.inits and (("pretrained", 0) not in done or not parent.exists()):
                steps_index = options.index("--steps") + 1
                pre_options = list(options)
                pre_options[steps_index] = str(int(round(args.pretrain_factor * int(options[steps_index]))))
                log(f"{model}: pre-training on {args.simple}")
                t0 = time.perf_counter()
                summary = run_json([*STELLARFIT, "train", "--grid", args.simple, "--out", str(parent), *pre_options])
                seconds = time.perf_counter() - t0
                result = evaluate(parent, args.realistic)
                rows = [r for r in rows if not (r["model"] == model and r["scale"] == scale and r["n_realistic"] == 0)]
                rows.append({"model": model, "init": "pretrained", "n_realistic": 0, "mae": result["mae"],
                             "steps": int(pre_options[steps_index]), "scale": scale, "pretrain_steps": int(pre_options[steps_index]),
                             "train_seconds": round(seconds, 1), "best_val_mae": summary["best_val_mae"],
                             "n_heldout": result["n_spectra"], "load_average": list(os.getloadavg())})
                save_rows(out, rows, meta)
                log(f"{model}: pre-trained, MAE on the realistic test split {result['mae']:.5f}")
            for n in args.sizes:
                for init in args.inits:
                    if (init, n) in done:
                        continue
                    target = work / f"{model}_{init}_{n}"
                    extra = ["--init", str(parent), "--finetune", "full"] if init == "pretrained" else []
                    log(f"{model}: {init}, N = {n}")
                    t0 = time.perf_counter()
                    summary = run_json([*STELLARFIT, "train", "--grid", args.realistic, "--out", str(target),
                                        "--n-train", str(n), *options, *extra])
                    seconds = time.perf_counter() - t0
                    result = evaluate(target, args.realistic)
                    rows.append({"model": model, "init": init, "n_realistic": n, "mae": result["mae"],
                                 "steps": int(options[options.index("--steps") + 1]), "scale": scale,
                                 "train_seconds": round(seconds, 1), "best_step": summary["best_step"],
                                 "best_val_mae": summary["best_val_mae"], "n_heldout": result["n_spectra"],
                                 "load_average": list(os.getloadavg())})
                    save_rows(out, rows, meta)
                    log(f"{model}: {init}, N = {n}: MAE {result['mae']:.5f} ({seconds:.0f} s)")
    savings = {model: saving(rows, model) for model in ("payne", "transformer-payne")}
    save_rows(out, rows, {**meta, "savings": savings})
    for r in sorted(rows, key=lambda r: (r["model"], r["init"], r["n_realistic"])):
        print(f"{r['model']:<18} {r['init']:<10} N={r['n_realistic']:<5} MAE {r['mae']:.5f}")
    print(json.dumps(savings, indent=1))
    if args.figure:
        figure(rows, Path(args.figure))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
