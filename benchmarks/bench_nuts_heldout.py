"""Seconds per star for NUTS fits of held-out stars on this CPU, compiling excluded.

The NUTS speed target (4 chains x (500 + 500) in <= 30 s per star on the 2-core CPU) is
quoted for the example star by ``bench_nuts.py``; typical held-out stars need more gradients.
This fits held-out stars (a ``bench_gpu_fits.py stars`` npz: the S/N-100 heldout-b set of the
calibration runs, same spectra and noise) with ``fit_star(spectrum, emulator, "nuts", seed=k,
error_floor=False)``, the defaults otherwise (chains on the pinned worker processes), after one
untimed fit that compiles every program.  Per star: whole-fit seconds, the sampler's seconds,
gradients (warm-up + draws, 4 chains), sampler milliseconds per gradient per core, minimum bulk
ESS.  Gradient counts do not depend on the machine's load; the seconds do, so the load average
is recorded before and after.  Resumes from its JSON.

    python benchmarks/bench_nuts_heldout.py --stars .gpu/stars_snr100.npz --star-indices 0 6 7 8 9 11 12 13
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
    add_heldout_options(parser, str(HERE / "results" / "nuts_heldout_payne-default"))
    args = parser.parse_args()

    import stellarfit as sf

    spectra, indices, path, document = heldout_run(args, "bench_nuts_heldout")
    done = {run["star"] for run in document["runs"]}
    emulator = sf.load_emulator(args.emulator)
    todo = [k for k in indices if k not in done]
    if todo:  # compiles every program (same pixels and settings for every star), not timed
        sf.fit_star(spectra[todo[0]], emulator, "nuts", seed=10_000, error_floor=False)
    for k in todo:
        load_before = os.getloadavg()[0]
        start = time.perf_counter()
        result = sf.fit_star(spectra[k], emulator, "nuts", seed=k, error_floor=False)
        seconds = time.perf_counter() - start
        d = result.diagnostics
        gradients = int(d["gradient_evaluations"]) + int(d["gradient_evaluations_warmup"])
        sampler_s = float(d["sampler_elapsed_s"])
        cores = max(1, min(d.get("num_chains", 4), len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1))
        run = {"star": k, "seconds": seconds, "sampler_s": sampler_s, "gradients": gradients,
               "ms_per_gradient_per_core": 1e3 * sampler_s * cores / gradients, "min_ess_bulk": float(d["min_ess_bulk"]),
               "max_r_hat": float(max(d["r_hat"].values())), "load_average_before": load_before,
               "load_average_after": os.getloadavg()[0]}
        document["runs"].append(run)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document, indent=1))
        print(json.dumps(run), flush=True)
    runs = document["runs"]
    if runs:
        seconds = np.array([r["seconds"] for r in runs])
        summary = (f"{len(runs)} stars: whole fit median {np.median(seconds):.1f} s (range {seconds.min():.1f}-{seconds.max():.1f}); "
                   f"median {np.median([r['gradients'] for r in runs]):,.0f} gradients; sampler "
                   f"{np.median([r['ms_per_gradient_per_core'] for r in runs]):.2f} ms per gradient per core; "
                   f"{int(np.sum(seconds <= 30.0))} of {len(runs)} within 30 s")
        document["summary"] = summary
        path.write_text(json.dumps(document, indent=1))
        print(summary)


if __name__ == "__main__":
    main()
