"""NUTS cost with a tree-depth cap on the pooled warm-up's first phase, star by star, in one run.

The default schedule (``mass_matrix="laplace-pooled"``) runs its first 200 warm-up iterations on
the Laplace metric; on metal-poor stars whose posterior is far from that Gaussian, those
iterations take ~100 leapfrog steps each and half the fit's gradients
(``bench_warmup_phases.py``).  This fits held-out stars (a ``bench_gpu_fits.py stars`` npz: the
S/N-100 heldout-b calibration set, same spectra and noise) with ``fit_star(method="nuts",
seed=k + offset, error_floor=False)``, after one untimed fit per cap that compiles, once per first-phase cap (``stellarfit.inference.nuts.
_FIRST_PHASE_DEPTH``; "none" is max_tree_depth, the schedule before the cap), the caps
alternating star by star.  Records per star and cap: gradients (warm-up + draws, 4 chains), the
smallest bulk ESS, the largest R-hat, divergences, whole-fit seconds, and the posterior medians
and 16-84% half-widths (the posterior must not depend on the cap).  Resumes from its JSON.

    python benchmarks/bench_first_phase_depth.py --stars .gpu/stars_snr100.npz --depths none 5 --seed-offset 0
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _stars import add_heldout_options, heldout_run  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_heldout_options(parser, str(HERE / "results" / "first_phase_depth_payne-default"))
    parser.add_argument("--depths", nargs="+", default=["none", "6"], help="first-phase caps: integers or 'none'")
    parser.add_argument("--seed-offsets", type=int, nargs="+", default=[0],
                        help="fit star k with seed k + each offset (a second seed measures the sampler's own randomness)")
    args = parser.parse_args()

    import stellarfit as sf
    from stellarfit.inference import nuts

    spectra, indices, path, document = heldout_run(args, "bench_first_phase_depth")
    done = {(run["star"], run["depth"], run["seed"]) for run in document["runs"]}
    emulator = sf.load_emulator(args.emulator)
    todo = [(k, d, k + o) for o in args.seed_offsets for k in indices for d in args.depths if (k, d, k + o) not in done]
    for depth in sorted({d for _, d, _ in todo}):  # untimed: compiles each cap's programs in the workers
        nuts._FIRST_PHASE_DEPTH = None if depth == "none" else int(depth)
        sf.fit_star(spectra[todo[0][0]], emulator, "nuts", seed=10_000, error_floor=False)
    for offset in args.seed_offsets:
        for k in indices:
            for depth in args.depths:  # star by star, the caps alternating
                if (k, depth, k + offset) in done:
                    continue
                nuts._FIRST_PHASE_DEPTH = None if depth == "none" else int(depth)
                start = time.perf_counter()
                result = sf.fit_star(spectra[k], emulator, "nuts", seed=k + offset, error_floor=False)
                d = result.diagnostics
                draws = np.asarray(result.samples).reshape(-1, len(result.names))
                run = {"star": k, "depth": depth, "seed": k + offset, "seconds": time.perf_counter() - start,
                       "load_average": os.getloadavg()[0],
                       "gradients": int(d["gradient_evaluations"]) + int(d["gradient_evaluations_warmup"]),
                       "gradients_warmup": int(d["gradient_evaluations_warmup"]),
                       "min_ess_bulk": float(min(d["ess_bulk"].values())), "max_r_hat": float(max(d["r_hat"].values())),
                       "divergences": int(d["divergences"]), "names": list(result.names),
                       "median": np.median(draws, axis=0).tolist(),
                       "half_width": (0.5 * (np.percentile(draws, 84, axis=0) - np.percentile(draws, 16, axis=0))).tolist()}
                document["runs"].append(run)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(document, indent=1))
                print(f"star {k} seed {k + offset} depth {depth}: {run['gradients']:,} gradients "
                      f"({run['gradients_warmup']:,} warm-up), min ESS {run['min_ess_bulk']:.0f}, R-hat {run['max_r_hat']:.3f}, "
                      f"{run['divergences']} divergences, {run['seconds']:.1f} s", flush=True)
    write_table(document, path.with_suffix(".md"))


def write_table(document: dict, out: Path) -> None:
    """Per (star, seed): each cap's gradients / min ESS / R-hat; then totals and posterior agreement against "none"."""
    rows: dict = {}
    for run in document["runs"]:
        rows.setdefault((run["star"], run["seed"]), {})[run["depth"]] = run
    depths = sorted({d for r in rows.values() for d in r}, key=lambda d: (d != "none", d))
    stars = document.get("stars_file") or document["settings"]["stars"]
    lines = [f"# NUTS cost per first-phase tree-depth cap ({document['emulator']}, {stars}; "
             "gradients = warm-up + draws of 4 chains x (500 + 500))", "",
             "| star | seed | " + " | ".join(f"cap {d}: gradients / min ESS / R-hat" for d in depths) + " |",
             "|---|---|" + "---|" * len(depths)]
    for star, seed in sorted(rows):
        r = rows[(star, seed)]
        cells = [f"{r[d]['gradients']:,} / {r[d]['min_ess_bulk']:.0f} / {r[d]['max_r_hat']:.3f}" if d in r else "" for d in depths]
        lines.append(f"| {star} | {seed} | " + " | ".join(cells) + " |")
    lines.append("")
    for d in depths:
        if d == "none":
            continue
        pair = [key for key in rows if d in rows[key] and "none" in rows[key]]
        if not pair:
            continue
        g = {u: np.array([rows[key][u]["gradients"] for key in pair], float) for u in ("none", d)}
        seconds = {u: np.array([rows[key][u]["seconds"] for key in pair], float) for u in ("none", d)}
        load = {u: np.array([rows[key][u]["load_average"] for key in pair], float) for u in ("none", d)}
        low = {u: int(sum(rows[key][u]["min_ess_bulk"] < 100 for key in pair)) for u in ("none", d)}
        # posterior agreement: |median difference| in units of the wider half-width, and the width ratio
        shift = np.concatenate([np.abs(np.subtract(rows[key][d]["median"], rows[key]["none"]["median"]))
                                / np.maximum(rows[key][d]["half_width"], rows[key]["none"]["half_width"]) for key in pair])
        ratio = np.concatenate([np.divide(rows[key][d]["half_width"], rows[key]["none"]["half_width"]) for key in pair])
        lines.append(
            f"- cap {d} against none on the same {len(pair)} fits: total gradients {g[d].sum():,.0f} against "
            f"{g['none'].sum():,.0f} ({g[d].sum() / g['none'].sum():.2f}x); median {np.median(g[d]):,.0f} against "
            f"{np.median(g['none']):,.0f}; median per-fit ratio {np.median(g[d] / g['none']):.2f}; largest {g[d].max():,.0f} "
            f"against {g['none'].max():,.0f}; fits with a minimum bulk ESS below 100: {low[d]} against {low['none']}; "
            f"whole-fit seconds median {np.median(seconds[d]):.1f} against {np.median(seconds['none']):.1f} (load average "
            f"{np.median(load[d]):.1f} against {np.median(load['none']):.1f}), largest "
            f"{seconds[d].max():.1f} against {seconds['none'].max():.1f}, fits over 30 s {int(np.sum(seconds[d] > 30))} "
            f"against {int(np.sum(seconds['none'] > 30))}; posterior medians apart by a median {np.median(shift):.3f} "
            f"(largest {shift.max():.2f}) half-widths, half-width ratios {np.percentile(ratio, 5):.2f}-"
            f"{np.percentile(ratio, 95):.2f} (5-95%)")
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
