"""The TransformerPayne's MAP polish: a Jacobian every Levenberg-Marquardt iteration against chord
iterations (the last Jacobian's curvature kept once the steps lower the objective by little).

``fit_star(spectrum, load_emulator("default"))`` on a CPU fits with ``default-fast`` first and then
polishes that MAP with the TransformerPayne (:func:`stellarfit.inference.polish_map`), where each
Jacobian costs seconds and a gradient a fraction of that.  For the shipped example star and
``--n-stars`` stars of a held-out Turbospectrum grid (rows from ``--first``, observed by
:func:`stellarfit.inference.observe_grid` at R 22,500 and ``--snr``), this runs the first stage,
then times ``polish_map(chord=False)`` and ``polish_map(chord=True)`` on the same problem from the
same start (order alternating from star to star; on the first star of each pixel grid each setting
is called once untimed, to compile), and records iterations, Jacobians, -log posterior and the largest difference
of the two MAPs in Gauss-Newton sigmas.

    python benchmarks/bench_polish_chord.py --grid ~/.cache/stellarfit/grids/ts_seed1_320.h5

Results: benchmarks/results/polish_chord_<emulator>.{json,md}.
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
    parser.add_argument("--emulator", default="default")
    parser.add_argument("--grid", required=True, help="a held-out Turbospectrum grid (e.g. stellarfit grid --seed 1)")
    parser.add_argument("--first", type=int, default=160, help="first grid row (160: in heldout-b of a 317-star grid)")
    parser.add_argument("--n-stars", type=int, default=5)
    parser.add_argument("--stride", type=int, default=10)
    parser.add_argument("--snr", type=float, default=100.0)
    parser.add_argument("--max-steps", type=int, default=8, help="polish iterations at most (fit_star's default from an init)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    import stellarfit as sf
    from stellarfit.grids import SpectralGrid
    from stellarfit.inference import observe_grid
    from stellarfit.inference.fit import fast_path_emulator
    from stellarfit.inference.map import gauss_newton_covariance, polish_map

    from _stars import second_stage

    emulator = sf.load_emulator(args.emulator)
    fast = fast_path_emulator(emulator)
    if fast is None:
        raise SystemExit(f"{args.emulator} names no fast path: this benchmark needs a two-stage emulator")
    grid = SpectralGrid.read(args.grid)
    rows = np.arange(args.first, args.first + args.n_stars * args.stride, args.stride)
    observed, _, _ = observe_grid(grid, rows, snr=args.snr, resolution=22_500.0, seed=3)
    stars = [("example", sf.example_spectrum())] + [(f"{Path(args.grid).name} row {r}", s) for r, s in zip(rows, observed)]
    document = {"benchmark": "bench_polish_chord", "emulator": args.emulator,
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "cpu_count": os.cpu_count(), "platform": platform.platform(), "load_average_before": list(os.getloadavg()),
                "settings": {k: v for k, v in vars(args).items() if k != "out"}, "runs": []}
    for index, (name, spectrum) in enumerate(stars):
        _, prepared, start = second_stage(spectrum, emulator, fast)
        problem = prepared.problem
        order = (False, True) if index % 2 == 0 else (True, False)
        results = {}
        for chord in order:
            if index < 2:  # the example's pixels, then the grid's: compile untimed
                polish_map(problem, start, max_steps=args.max_steps, chord=chord)
            began = time.perf_counter()
            result = polish_map(problem, start, max_steps=args.max_steps, chord=chord)
            results[chord] = (result, time.perf_counter() - began)
        sigma = np.sqrt(np.clip(np.diag(gauss_newton_covariance(problem, results[False][0].theta)), 1e-30, None))
        difference = float(np.max(np.abs(results[True][0].theta - results[False][0].theta) / sigma))
        run = {"star": name, "max_difference_sigma": difference}
        for chord, (result, seconds) in results.items():
            key = "chord" if chord else "plain"
            run[key] = {"seconds": seconds, "iterations": result.iterations, "jacobians": result.jacobians,
                        "neg_log_posterior": -result.log_posterior, "converged": result.converged}
        document["runs"].append(run)
        print(json.dumps(run), flush=True)
    document["load_average_after"] = list(os.getloadavg())
    runs = document["runs"]
    total = {key: sum(r[key]["seconds"] for r in runs) for key in ("plain", "chord")}
    jacobians = {key: sum(r[key]["jacobians"] for r in runs) for key in ("plain", "chord")}
    document["summary"] = {"seconds": total, "jacobians": jacobians, "time_ratio": total["chord"] / total["plain"]}
    out = Path(args.out or HERE / "results" / f"polish_chord_{Path(args.emulator).name}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(document, indent=1))
    lines = [f"`polish_map` with `{args.emulator}` from `{emulator.metadata['fast_path']}`'s MAP, "
             f"S/N {args.snr:g} for the grid stars; {document['cpu_count']} cores, 1-min load average "
             f"{document['load_average_before'][0]:.1f} before and {document['load_average_after'][0]:.1f} after, "
             f"{document['date']}.\n",
             "| star | plain: s / iterations / Jacobians | chord: s / iterations / Jacobians | -log posterior plain / chord | max difference [sigma] |",
             "|---|---|---|---|---|"]
    for r in runs:
        p, c = r["plain"], r["chord"]
        lines.append(f"| {r['star']} | {p['seconds']:.1f} / {p['iterations']} / {p['jacobians']} | "
                     f"{c['seconds']:.1f} / {c['iterations']} / {c['jacobians']} | "
                     f"{p['neg_log_posterior']:.3f} / {c['neg_log_posterior']:.3f} | {r['max_difference_sigma']:.3f} |")
    lines.append(f"\nTotal: plain {total['plain']:.1f} s ({jacobians['plain']} Jacobians), chord {total['chord']:.1f} s "
                 f"({jacobians['chord']}): {document['summary']['time_ratio']:.2f} of the time.")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
