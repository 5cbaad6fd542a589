"""Where a NUTS fit's warm-up gradients go: leapfrog steps per iteration in each phase of the warm-up.

For held-out stars (a ``bench_gpu_fits.py stars`` npz, the S/N-100 heldout-b set of the
calibration runs) this runs ``fit_star(spectrum, emulator, "nuts", seed=k, error_floor=False)``
as ``bench_calibration.py --method nuts`` does (4 chains x (500 + 500), the default
``mass_matrix="laplace-pooled"``) and reads the ``SamplerResult`` that ``sample_numpyro``
returned inside it: ``warmup_n_steps``, the leapfrog steps of every warm-up iteration.  The
pooled schedule's phases (``stellarfit.inference.nuts.pooled_phases``): a buffer that adapts
the step size on the Laplace metric, iterations at that step size whose positions estimate the
pooled metric, and the rest, which adapts the step size again on the pooled metric; the rest is
split into its first 50 iterations (the step-size search restarting) and the others.  Printed
and saved per star: mean steps per iteration in each phase and in the draws, and the warm-up
gradients above what the same iterations would cost at the draws' rate.  Gradient counts do not
depend on the machine's load.  Resumes from its JSON.

    python benchmarks/bench_warmup_phases.py --stars .gpu/stars_snr100.npz --star-indices 0 6 7 8 11
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _stars import add_heldout_options, heldout_run  # noqa: E402


def phase_table(warmup: np.ndarray, draws: np.ndarray, num_warmup: int) -> dict:
    """Mean leapfrog steps per iteration per phase, and the warm-up's excess over the draws' rate."""
    from stellarfit.inference.nuts import pooled_phases

    buffer, collect, rest = pooled_phases(num_warmup)
    edges = {"buffer": (0, buffer), "collect": (buffer, buffer + collect),
             "rest_first_50": (buffer + collect, buffer + collect + min(50, rest)),
             "rest_after": (buffer + collect + min(50, rest), num_warmup)}
    rate = float(np.mean(draws))
    phases = {name: float(np.mean(warmup[:, a:b])) for name, (a, b) in edges.items() if b > a}
    excess = {name: float(np.sum(warmup[:, a:b]) - rate * warmup.shape[0] * (b - a)) for name, (a, b) in edges.items() if b > a}
    return {"steps_per_iteration": {**phases, "draws": rate}, "excess_gradients": excess,
            "warmup_gradients": int(np.sum(warmup)), "draw_gradients": int(np.sum(draws))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_heldout_options(parser, str(HERE / "results" / "warmup_phases_payne-default"))
    parser.add_argument("--first-phase-depth", default=None,
                        help="tree-depth cap of the pooled schedule's first phase: an integer, or 'none' for "
                             "max_tree_depth throughout (default: stellarfit's, see first_phase_depth)")
    args = parser.parse_args()

    import stellarfit as sf
    from stellarfit.inference import nuts

    returned = []
    sample_numpyro = nuts.sample_numpyro

    def keeping(*arguments, **options):  # fit_star imports sample_numpyro from nuts when it samples
        returned.append(sample_numpyro(*arguments, **options))
        return returned[-1]

    nuts.sample_numpyro = keeping
    if args.first_phase_depth is not None:
        nuts._FIRST_PHASE_DEPTH = None if args.first_phase_depth == "none" else int(args.first_phase_depth)

    spectra, indices, path, document = heldout_run(args, "bench_warmup_phases")
    done = {run["star"] for run in document["runs"]}
    emulator = sf.load_emulator(args.emulator)
    for k in indices:
        if k in done:
            continue
        start = time.perf_counter()
        sf.fit_star(spectra[k], emulator, "nuts", seed=k, error_floor=False)
        result = returned[-1]
        d = result.diagnostics
        run = {"star": k, "seconds": time.perf_counter() - start, **phase_table(result.warmup_n_steps, result.sample_stats["n_steps"],
                                                                                d["num_warmup"]),
               "step_size": d["step_size"], "min_ess_bulk": d["min_ess_bulk"], "max_r_hat": max(d["r_hat"].values())}
        document["runs"].append(run)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document, indent=1))
        s = run["steps_per_iteration"]
        print(f"star {k}: " + ", ".join(f"{name} {value:.1f}" for name, value in s.items())
              + f"; warm-up excess {sum(run['excess_gradients'].values()):,.0f} of "
              f"{run['warmup_gradients'] + run['draw_gradients']:,} gradients", flush=True)
    rows = document["runs"]
    if rows:
        lines = ["# Leapfrog steps per iteration in each warm-up phase (NumPyro, laplace-pooled, 4 x (500 + 500))", "",
                 "| star | buffer (0-74) | collect (75-199) | rest, first 50 | rest, after | draws | warm-up excess / all gradients | step sizes | min bulk ESS |",
                 "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            s = r["steps_per_iteration"]
            total = r["warmup_gradients"] + r["draw_gradients"]
            excess = sum(r["excess_gradients"].values())
            lines.append(f"| {r['star']} | {s.get('buffer', float('nan')):.1f} | {s.get('collect', float('nan')):.1f} | "
                         f"{s.get('rest_first_50', float('nan')):.1f} | {s.get('rest_after', float('nan')):.1f} | {s['draws']:.1f} | "
                         f"{excess:,.0f} / {total:,} ({100 * excess / total:.0f}%) | "
                         f"{min(r['step_size']):.2f}-{max(r['step_size']):.2f} | {r['min_ess_bulk']:.0f} |")
        path.with_suffix(".md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))


if __name__ == "__main__":
    main()
