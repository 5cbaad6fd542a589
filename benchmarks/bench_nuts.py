"""Seconds per star for MAP and NUTS (NumPyro and BlackJAX) with a shipped emulator.

Fits the shipped example spectrum, then a second spectrum on the same pixels
(the example with an independent noise draw added), with each method of
``fit_star``: ``map``, ``nuts`` (NumPyro) and ``blackjax``, 4 chains x
(500 warm-up + 500 draws) by default.  The first fit of each method includes
XLA compilation; the second shows the cost per further star, since programs are
compiled once per forward model.  Reported per fit: wall time, sampler time,
gradient evaluations (warm-up + draws), min bulk ESS, gradient evaluations per
effective sample, max R-hat, divergences.  ``nuts:<chain_method>`` (and
``blackjax:<chain_method>``) compare how the chains run, e.g. ``processes``
(worker processes pinned one per core; their start-up and compilation are in
the first fit) against ``sequential`` (one after another in this process).

    python benchmarks/bench_nuts.py --emulator payne-default
    python benchmarks/bench_nuts.py --methods map nuts:processes nuts:sequential blackjax:processes blackjax:sequential

Results: benchmarks/results/nuts_speed_<emulator>.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from pathlib import Path

from _stars import two_stars
from _provenance import provenance

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--emulator", default="payne-default")
    parser.add_argument("--methods", nargs="+", default=["map", "nuts", "blackjax"],
                        help="map, nuts, blackjax; nuts:<chain_method> (e.g. nuts:vectorized) sets NumPyro's chain_method")
    parser.add_argument("--num-warmup", type=int, default=500)
    parser.add_argument("--num-samples", type=int, default=500)
    parser.add_argument("--num-chains", type=int, default=4)
    parser.add_argument("--max-tree-depth", type=int, default=8)
    parser.add_argument("--chain-method", default=None,
                        help="NumPyro's chain_method (fit_star's default when not given; BlackJAX uses its own default)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    import jax

    import stellarfit as sf

    emulator = sf.load_emulator(args.emulator)
    first, second = two_stars()
    stars = {"first (compiles)": first, "second (compiled)": second}
    document = {
        "benchmark": "bench_nuts", "emulator": args.emulator,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(jax.devices()[0]), "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "load_average_before": list(os.getloadavg()), "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "n_pixels": int(first.wavelength.size), "results": {},
    }
    rows = []
    for method in args.methods:
        for which, spectrum in stars.items():
            start = time.perf_counter()
            # "nuts:vectorized" is method "nuts" with chain_method "vectorized"
            method_name, _, chain_method = method.partition(":")
            chain_method = chain_method or (args.chain_method if method_name == "nuts" else None)
            extra = {} if chain_method is None else {"chain_method": chain_method}
            result = sf.fit_star(spectrum, emulator, method=method_name, num_warmup=args.num_warmup,
                                 num_samples=args.num_samples, num_chains=args.num_chains,
                                 max_tree_depth=args.max_tree_depth, **extra)
            wall = time.perf_counter() - start
            d = result.diagnostics or {}
            row = {
                "method": method, "star": which, "wall_s": wall, "sampler_s": d.get("sampler_elapsed_s", d.get("elapsed_s")),
                "gradient_evaluations_warmup": d.get("gradient_evaluations_warmup"),
                "gradient_evaluations": d.get("gradient_evaluations"),
                "min_ess_bulk": d.get("min_ess_bulk"),
                "gradient_evaluations_per_ess": d.get("gradient_evaluations_per_ess"),
                "max_r_hat": max(d["r_hat"].values()) if d.get("r_hat") else None,
                "divergences": d.get("divergences"),
                "chain_method": d.get("chain_method"), "step_size": d.get("step_size"),
                "ess_bulk": d.get("ess_bulk"), "load_average_after_fit": os.getloadavg()[0],
                "teff": [result.labels["teff"]["value"], result.labels["teff"]["error"]],
                "flags": result.flags,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    document["results"] = rows
    document["load_average_after"] = list(os.getloadavg())
    document["provenance"] = provenance()
    out = Path(args.out or HERE / "results" / f"nuts_speed_{Path(args.emulator).name}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(document, indent=1))

    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    lines = [f"`fit_star` with `{args.emulator}` on the shipped example spectrum ({first.wavelength.size} pixels) and a "
             f"second spectrum on the same pixels; {args.num_chains} chains x ({args.num_warmup} + {args.num_samples}); "
             f"{document['device']}, {document['cpu_count']} cores, 1-min load average {document['load_average_before'][0]:.1f} before and "
             f"{document['load_average_after'][0]:.1f} after, "
             f"{document['date']}.\n",
             "| method | chains run | star | whole fit [s] | sampler [s] | gradients (warm-up + draws) | min bulk ESS | gradients / ESS | max R-hat | divergences |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        grads = "-" if r["gradient_evaluations"] is None else f"{r['gradient_evaluations_warmup']:,} + {r['gradient_evaluations']:,}"
        lines.append(f"| {r['method'].partition(':')[0]} | {r['chain_method'] or '-'} | {r['star']} | {r['wall_s']:.1f} | "
                     f"{fmt(r['sampler_s'], '.1f')} | {grads} | "
                     f"{fmt(r['min_ess_bulk'], '.0f')} | {fmt(r['gradient_evaluations_per_ess'], '.0f')} | "
                     f"{fmt(r['max_r_hat'], '.3f')} | {fmt(r['divergences'], 'd')} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
