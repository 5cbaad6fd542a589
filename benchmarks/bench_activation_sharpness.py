"""NUTS cost and emulator accuracy of a Payne as its LeakyReLU is smoothed (``activation_sharpness``).

The Payne with LeakyReLU is piecewise linear in the labels; its softplus
smoothing a x + (1 - a) softplus(beta x) / beta (``activation_sharpness`` =
beta, see :mod:`stellarfit.emulators.payne`) keeps the trained weights and
makes the label Jacobian continuous.  For each beta this prints and saves:

- the emulator's error against an independent Turbospectrum grid (MAE and
  RMS of normalized flux; never emulator output);
- a NUTS fit (``fit_star``, 4 chains x (500 + 500) by default) of the shipped
  example spectrum and of a second noise draw of it: wall time, gradient
  evaluations per draw and in warm-up, adapted step sizes, min bulk ESS,
  gradient evaluations per effective sample, and the Teff/logg/[Fe/H]
  medians against the example's true labels.

All betas run in one process, one after another, so their times compare.

    python benchmarks/bench_activation_sharpness.py --grid ~/.cache/stellarfit/grids/ts_default_seed1_320.h5 \\
        --sharpness 0 100 300

Results: benchmarks/results/activation_sharpness_<emulator>.{json,md}.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--emulator", default="payne-default")
    parser.add_argument("--grid", required=True, help="an independent Turbospectrum grid (HDF5) on the emulator's labels")
    parser.add_argument("--sharpness", type=float, nargs="+", default=[0.0, 100.0, 300.0])
    parser.add_argument("--num-warmup", type=int, default=500)
    parser.add_argument("--num-samples", type=int, default=500)
    parser.add_argument("--num-chains", type=int, default=4)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    import jax

    import stellarfit as sf
    from stellarfit.emulators import TrainingData, evaluate_emulator
    from stellarfit.grids import SpectralGridFile
    from stellarfit.spectra import ObservedSpectrum, example_spectrum
    from stellarfit.data import example_truth

    base = sf.load_emulator(args.emulator)
    if base.model_type != "payne":
        raise SystemExit(f"{args.emulator} is a {base.model_type} emulator; activation_sharpness is a Payne setting")
    with SpectralGridFile(args.grid) as grid:
        data = TrainingData.from_grid(grid)
    first = example_spectrum()
    truth = example_truth()
    rng = np.random.default_rng(1)
    sigma = np.where(first.ivar > 0, 1.0 / np.sqrt(np.where(first.ivar > 0, first.ivar, 1.0)), 0.0)
    second = ObservedSpectrum.from_arrays(first.wavelength, first.flux + rng.normal(size=first.flux.size) * sigma,
                                          ivar=first.ivar / 2.0, resolution=first.resolution)
    document = {
        "benchmark": "bench_activation_sharpness", "emulator": args.emulator, "grid": str(args.grid),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(jax.devices()[0]), "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "load_average_before": list(os.getloadavg()), "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "truth": truth, "results": [],
    }
    rows = []
    for beta in args.sharpness:
        emulator = base.replace(config={**base.config, "activation_sharpness": float(beta)})
        evaluation = evaluate_emulator(emulator, data)
        for which, spectrum in (("example", first), ("second noise draw", second)):
            start = time.perf_counter()
            result = sf.fit_star(spectrum, emulator, method="nuts", num_warmup=args.num_warmup,
                                 num_samples=args.num_samples, num_chains=args.num_chains)
            wall = time.perf_counter() - start
            d = result.diagnostics
            draws = args.num_chains * args.num_samples
            row = {
                "sharpness": float(beta), "star": which, "mae": evaluation.mae, "rms": float(np.sqrt(evaluation.mse)),
                "wall_s": wall, "sampler_s": d.get("sampler_elapsed_s", d.get("elapsed_s")),
                "gradients_per_draw": d["gradient_evaluations"] / draws,
                "gradients_per_warmup_iteration": d["gradient_evaluations_warmup"] / (args.num_chains * args.num_warmup),
                "step_size": d["step_size"], "min_ess_bulk": d["min_ess_bulk"],
                "worst_parameter": min(d["ess_bulk"], key=d["ess_bulk"].get),
                "gradient_evaluations_per_ess": d["gradient_evaluations_per_ess"],
                "max_r_hat": max(d["r_hat"].values()), "divergences": d["divergences"],
                "labels": {n: [result.labels[n]["value"], result.labels[n]["error"]] for n in ("teff", "logg", "fe_h")},
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    document["results"] = rows
    document["load_average_after"] = list(os.getloadavg())
    out = Path(args.out or HERE / "results" / f"activation_sharpness_{Path(args.emulator).name}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(document, indent=1))

    lines = [f"`{args.emulator}` with its LeakyReLU smoothed (`activation_sharpness` beta; 0 = LeakyReLU). Emulator error "
             f"against {data.n_spectra} spectra of `{Path(args.grid).name}` (independent Turbospectrum grid); NUTS with "
             f"`fit_star`, {args.num_chains} chains x ({args.num_warmup} + {args.num_samples}), on the shipped example "
             f"spectrum (true Teff {truth['teff']:.0f} K, logg {truth['logg']:.2f}, [Fe/H] {truth['fe_h']:.2f}) and a second "
             f"noise draw of it; {document['device']}, {document['cpu_count']} cores, 1-min load average "
             f"{document['load_average_before'][0]:.1f} before and {document['load_average_after'][0]:.1f} after, {document['date']}.\n",
             "| beta | flux MAE | flux RMS | star | whole fit [s] | gradients per draw | per warm-up iteration | step sizes | "
             "min bulk ESS (parameter) | gradients / ESS | max R-hat | divergences | Teff | logg | [Fe/H] |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lab = r["labels"]
        lines.append(
            f"| {r['sharpness']:g} | {r['mae']:.5f} | {r['rms']:.5f} | {r['star']} | {r['wall_s']:.1f} | "
            f"{r['gradients_per_draw']:.1f} | {r['gradients_per_warmup_iteration']:.1f} | "
            f"{', '.join(f'{s:.2f}' for s in r['step_size'])} | {r['min_ess_bulk']:.0f} ({r['worst_parameter']}) | "
            f"{r['gradient_evaluations_per_ess']:.0f} | {r['max_r_hat']:.3f} | {r['divergences']} | "
            f"{lab['teff'][0]:.0f} +- {lab['teff'][1]:.0f} | {lab['logg'][0]:.3f} +- {lab['logg'][1]:.3f} | "
            f"{lab['fe_h'][0]:.3f} +- {lab['fe_h'][1]:.3f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
