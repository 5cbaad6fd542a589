"""NUTS warm-up schedules: one metric pooled over the chains, one long window per chain, Stan's windows.

All start from the Laplace-whitened coordinates: ``mass_matrix="laplace-pooled"``
(the default: one dense metric from the positions of all chains at warm-up
iterations 75-199, see ``stellarfit.inference.nuts.pooled_phases``),
``"laplace"`` (each chain its own metric from one window, 75-449, between the
75- and 50-iteration buffers), ``"laplace-windows"`` (Stan's windows 75-99,
100-149, 150-249, 250-449; see ``stellarfit.inference.nuts.adaptation_windows``)
and ``"laplace-fixed"`` (the Laplace metric kept).  Fits the shipped example
spectrum and the second star of ``bench_nuts.py`` with ``fit_star``, 4 chains x
(500 + 500), the default chain method, for each schedule, sampler and seed, the
schedules interleaved so that machine noise hits both alike.  An untimed fit per
program first starts the workers and compiles it, so every timed fit is a further
star.  Reported per fit: wall time, warm-up and draw gradients, min bulk ESS,
gradients per ESS, max R-hat, divergences; and per schedule the totals.

    python benchmarks/bench_adaptation.py --methods nuts blackjax --seeds 0 1

Results: benchmarks/results/adaptation_<emulator>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from _stars import add_sampler_options, document_header, two_stars

HERE = Path(__file__).resolve().parent
SCHEDULES = ("laplace-pooled", "laplace", "laplace-windows", "laplace-fixed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_sampler_options(parser)
    parser.add_argument("--methods", nargs="+", default=["nuts", "blackjax"], choices=["nuts", "blackjax"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--schedules", nargs="+", default=list(SCHEDULES), choices=SCHEDULES)
    args = parser.parse_args()

    from stellarfit import fit_star, load_emulator

    emulator = load_emulator(args.emulator)
    stars = dict(zip(("example", "second"), two_stars()))
    options = dict(num_warmup=args.num_warmup, num_samples=args.num_samples, num_chains=args.num_chains)
    for method in args.methods:  # start-up and compilation: one untimed fit per program (the settings are static)
        for schedule in args.schedules:
            fit_star(stars["example"], emulator, method=method, mass_matrix=schedule, seed=99, **options)
    document = document_header("bench_adaptation", args)
    for method in args.methods:
        for seed in args.seeds:
            for name, star in stars.items():
                for schedule in args.schedules:
                    t0 = time.perf_counter()
                    result = fit_star(star, emulator, method=method, mass_matrix=schedule, seed=seed, **options)
                    wall = time.perf_counter() - t0
                    d = result.diagnostics
                    run = {
                        "method": method, "mass_matrix": schedule, "seed": seed, "star": name, "wall_s": wall,
                        "sampler_s": d.get("sampler_elapsed_s", d.get("elapsed_s")), "chain_method": d["chain_method"],
                        "gradients_warmup": int(d["gradient_evaluations_warmup"]), "gradients_draws": int(d["gradient_evaluations"]),
                        "step_size": [float(s) for s in d["step_size"]],
                        "min_ess_bulk": float(min(d["ess_bulk"].values())), "min_ess_tail": float(min(d["ess_tail"].values())),
                        "gradients_per_ess": float(d["gradient_evaluations_per_ess"]),
                        "max_r_hat": float(max(d["r_hat"].values())), "divergences": int(d["divergences"]),
                        "teff": [result.labels["teff"]["value"], result.labels["teff"]["error"]],
                    }
                    document["runs"].append(run)
                    print(json.dumps(run), flush=True)
    document["load_average_after"] = list(os.getloadavg())
    totals = {}
    for method in args.methods:
        for schedule in args.schedules:
            runs = [r for r in document["runs"] if r["method"] == method and r["mass_matrix"] == schedule]
            gradients = sum(r["gradients_warmup"] + r["gradients_draws"] for r in runs)
            totals[f"{method}/{schedule}"] = {
                "fits": len(runs), "wall_s_mean": sum(r["wall_s"] for r in runs) / len(runs),
                "gradients_warmup_mean": sum(r["gradients_warmup"] for r in runs) / len(runs),
                "gradients_mean": gradients / len(runs),
                "gradients_per_ess_pooled": gradients / sum(r["min_ess_bulk"] for r in runs),
                "divergences": sum(r["divergences"] for r in runs), "max_r_hat": max(r["max_r_hat"] for r in runs),
            }
    document["totals"] = totals
    stem = Path(args.out) if args.out else HERE / "results" / f"adaptation_{args.emulator}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(document, indent=1) + "\n")
    lines = [f"`fit_star` with `{args.emulator}`, {args.num_chains} chains x ({args.num_warmup} + {args.num_samples}), "
             f"chains run as `{document['runs'][0]['chain_method']}`, {document['cpu_count']} cores; {document['date']}.", "",
             "| sampler | mass_matrix (schedule) | seed | star | whole fit [s] | gradients warm-up + draws | min bulk / tail ESS | "
             "gradients per ESS | max R-hat | divergences |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in document["runs"]:
        lines.append(f"| {r['method']} | {r['mass_matrix']} | {r['seed']} | {r['star']} | {r['wall_s']:.1f} | "
                     f"{r['gradients_warmup']:,} + {r['gradients_draws']:,} | {r['min_ess_bulk']:,.0f} / {r['min_ess_tail']:,.0f} | "
                     f"{r['gradients_per_ess']:.0f} | {r['max_r_hat']:.3f} | {r['divergences']} |")
    lines += ["", "| sampler / mass_matrix | fits | mean whole fit [s] | mean warm-up gradients | mean gradients | "
              "pooled gradients per ESS | divergences | max R-hat |", "|---|---|---|---|---|---|---|---|"]
    for key, t in totals.items():
        lines.append(f"| {key} | {t['fits']} | {t['wall_s_mean']:.1f} | {t['gradients_warmup_mean']:,.0f} | "
                     f"{t['gradients_mean']:,.0f} | {t['gradients_per_ess_pooled']:.1f} | {t['divergences']} | {t['max_r_hat']:.3f} |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"saved {stem.with_suffix('.json')}")


if __name__ == "__main__":
    main()
