"""NUTS with several ``target_accept`` values: wall time, gradients, step sizes, ESS, R-hat, divergences.

Fits the shipped example spectrum and a second star on the same pixels (the
example with an independent noise draw added, ivar halved, as in
``bench_nuts.py``) with ``fit_star(method="nuts")``, 4 chains x (500 + 500),
the default chain method, for each target acceptance probability.  A short
fit first starts the workers and compiles, so every timed fit is a further
star.

    python benchmarks/bench_target_accept.py --targets 0.8 0.7 0.65

Results: benchmarks/results/target_accept_<emulator>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from _stars import add_sampler_options, document_header, two_stars

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_sampler_options(parser)
    parser.add_argument("--targets", nargs="+", type=float, default=[0.8, 0.7, 0.65])
    args = parser.parse_args()

    from stellarfit import fit_star, load_emulator

    emulator = load_emulator(args.emulator)
    first, second = two_stars()
    options = dict(method="nuts", num_warmup=args.num_warmup, num_samples=args.num_samples, num_chains=args.num_chains)
    fit_star(first, emulator, **{**options, "num_warmup": 20, "num_samples": 20})  # start-up and compilation
    document = document_header("bench_target_accept", args)
    for target in args.targets:
        for name, star in (("example", first), ("second", second)):
            t0 = time.perf_counter()
            result = fit_star(star, emulator, target_accept=target, **options)
            wall = time.perf_counter() - t0
            d = result.diagnostics
            run = {
                "target_accept": target, "star": name, "wall_s": wall, "chain_method": d["chain_method"],
                "gradients": d["gradient_evaluations_warmup"] + d["gradient_evaluations"],
                "step_size": [float(s) for s in d["step_size"]],
                "min_ess_bulk": float(min(d["ess_bulk"].values())), "min_ess_tail": float(min(d["ess_tail"].values())),
                "gradients_per_ess": float(d["gradient_evaluations_per_ess"]), "max_r_hat": float(max(d["r_hat"].values())),
                "divergences": int(d["divergences"]),
                "teff": [result.labels["teff"]["value"], result.labels["teff"]["error"]],
            }
            document["runs"].append(run)
            print(json.dumps(run), flush=True)
    document["load_average_after"] = list(os.getloadavg())
    stem = Path(args.out) if args.out else HERE / "results" / f"target_accept_{args.emulator}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(document, indent=1) + "\n")
    lines = [f"`fit_star(method='nuts')` with `{args.emulator}`, {args.num_chains} chains x ({args.num_warmup} + "
             f"{args.num_samples}), chains run as `{document['runs'][0]['chain_method']}`; {document['date']}.", "",
             "| target_accept | star | whole fit [s] | gradients | step sizes | min bulk / tail ESS | gradients per ESS | "
             "max R-hat | divergences |", "|---|---|---|---|---|---|---|---|---|"]
    for r in document["runs"]:
        lines.append(f"| {r['target_accept']} | {r['star']} | {r['wall_s']:.1f} | {r['gradients']:,} | "
                     f"{min(r['step_size']):.2f}-{max(r['step_size']):.2f} | {r['min_ess_bulk']:,.0f} / {r['min_ess_tail']:,.0f} | "
                     f"{r['gradients_per_ess']:.0f} | {r['max_r_hat']:.3f} | {r['divergences']} |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"saved {stem.with_suffix('.json')}")


if __name__ == "__main__":
    main()
