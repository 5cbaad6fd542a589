"""BlackJAX NUTS with the warm-up's dense metric shrunk toward the Laplace metric, against no shrinkage.

With ``mass_matrix="laplace"`` the chains move in Laplace-whitened coordinates
and re-estimate a dense metric in one long warm-up window.  BlackJAX's
``window_adaptation(..., imm_shrinkage_to_previous=k)`` shrinks that estimate
toward the previous metric (here the identity: the Laplace whitening) with a
pseudo-count of k draws.  This script runs the two stars of the NUTS speed
benchmarks (``_stars.two_stars``) with 4 chains x (500 + 500), chains one after
another in this process (gradient counts, step sizes and ESS do not depend on
how the chains are run), for each seed, and prints one JSON line per fit.

    taskset -c 0 python benchmarks/bench_metric_shrinkage.py 0 &
    taskset -c 1 python benchmarks/bench_metric_shrinkage.py 100 &

Results (one JSON line per fit): benchmarks/results/metric_shrinkage_k<k>.jsonl.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _stars import two_stars

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pseudo_count", type=float, help="imm_shrinkage_to_previous (0: Stan's formula, the default)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--emulator", default="payne-default")
    args = parser.parse_args()

    import blackjax

    original = blackjax.window_adaptation

    def shrunk(*positional, **keywords):
        keywords.setdefault("imm_shrinkage_to_previous", args.pseudo_count)
        return original(*positional, **keywords)

    blackjax.window_adaptation = shrunk  # stellarfit.inference.nuts looks it up at each fit
    import stellarfit as sf

    emulator = sf.load_emulator(args.emulator)
    out = HERE / "results" / f"metric_shrinkage_k{args.pseudo_count:g}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as handle:
        for seed in args.seeds:
            for name, spectrum in zip(("example", "second"), two_stars()):
                start = time.perf_counter()
                result = sf.fit_star(spectrum, emulator, method="blackjax", chain_method="sequential", seed=seed)
                d = result.diagnostics
                row = {"pseudo_count": args.pseudo_count, "seed": seed, "star": name,
                       "wall_s": round(time.perf_counter() - start, 1),
                       "gradient_evaluations_warmup": d["gradient_evaluations_warmup"],
                       "gradient_evaluations": d["gradient_evaluations"], "min_ess_bulk": round(d["min_ess_bulk"]),
                       "step_size": [round(s, 3) for s in d["step_size"]], "divergences": d["divergences"],
                       "max_r_hat": round(max(d["r_hat"].values()), 4),
                       "teff": [round(result.labels["teff"]["value"], 1), round(result.labels["teff"]["error"], 1)]}
                print(json.dumps(row), flush=True)
                handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
