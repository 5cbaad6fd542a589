"""The TransformerPayne's MAP polish and z-mode search on held-out stars, labels at box edges included.

``fit_star(spectrum, "default", "nuts")`` on a CPU takes the fast path's MAP, polishes it with the
TransformerPayne (``polish_map``, Levenberg-Marquardt in z, at most 8 iterations), then finds the
TransformerPayne's mode in z (``unconstrained_laplace(gauss_newton=True)``) to re-centre the fast
path's draws on.  A label the data barely constrain often sits at its box edge, in the sigmoid's
tail, where both steps have had trouble (see docs/fitting.md, "MAP" and "NUTS on a CPU").  Per star
this prints and saves:

- polish: -log posterior after the 8 iterations fit_star allows, above a 30-iteration reference;
  converged flag, iterations, Jacobians, seconds; labels at an edge;
- z-mode search, two variants from that MAP and its last curvature:
  ``plain`` (Gauss-Newton Hessian without the chain rule's second-order term, started at the MAP's z:
  what fit_star did before) and ``current`` (with the term's negative part, edge labels started at the
  fast path's mode: what fit_star does now); each: seconds, iterations, Jacobians, converged, log
  density below a tight reference (``curvature_refresh="always"``, tolerance 1e-3 nats, 30 iterations)
  and the largest distance to its mode in reference posterior widths.

Stars: an npz from ``bench_gpu_fits.py stars`` (the heldout-b observations of bench_calibration.py):

    python benchmarks/bench_gpu_fits.py stars --grid ~/.cache/stellarfit/grids/ts_seed1_320.h5 --n 64 --out .gpu/stars_snr100_64.npz
    python benchmarks/bench_edge_labels.py --stars .gpu/stars_snr100_64.npz --n 8

Results: benchmarks/results/edge_labels_default.{json,md}.  Timings want an idle machine; the
iteration and Jacobian counts and the log densities do not depend on load.
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
    parser.add_argument("--stars", required=True, help="npz from bench_gpu_fits.py stars")
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--emulator", default="default")
    parser.add_argument("--out", default=str(HERE / "results" / "edge_labels_default"))
    args = parser.parse_args()

    import stellarfit as sf
    from _stars import FIT_OPTIONS, second_stage
    from bench_gpu_fits import load_stars
    from stellarfit.inference import fit as fitting
    from stellarfit.inference.map import polish_map
    from stellarfit.inference.nuts import unconstrained_laplace

    spectra, _, _ = load_stars(args.stars)
    chosen = list(range(args.first, min(args.first + args.n, len(spectra))))
    emulator = sf.load_emulator(args.emulator)
    fast = fitting.fast_path_emulator(emulator)
    if fast is None:
        raise SystemExit(f"{args.emulator!r} names no fast path")
    options = FIT_OPTIONS
    document = {"benchmark": "bench_edge_labels", "emulator": args.emulator, "fast_path": emulator.metadata["fast_path"],
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "cpu_count": os.cpu_count(), "platform": platform.platform(),
                "load_average_before": list(os.getloadavg()), "settings": vars(args), "stars": []}
    for k in chosen:
        spectrum = spectra[k]
        fast_fit, prepared, start = second_stage(spectrum, emulator, fast)
        problem = prepared.problem
        clock = time.perf_counter()
        polished = polish_map(problem, start, max_steps=fitting.INIT_POLISH_STEPS)
        polish_s = time.perf_counter() - clock
        reference_map = polish_map(problem, start, max_steps=30)
        theta = polished.theta
        row = {"star": k, "edge_labels": [n for n, e in zip(problem.names, problem.near_edges(theta)) if e],
               "polish": {"seconds": polish_s, "iterations": polished.iterations, "jacobians": polished.jacobians,
                          "converged": bool(polished.converged),
                          "nats_above_30_iterations": float(reference_map.log_posterior - polished.log_posterior),
                          "reference_converged": bool(reference_map.converged),
                          "reference_iterations": reference_map.iterations, "reference_jacobians": reference_map.jacobians}}
        # the fast path's MAP and mode in z, as fit_star's _surrogate_map finds them
        centre = dict(zip(problem.names, theta.tolist()))
        centre["rv"] = prepared.rv0
        fast_problem = fitting._prepare(spectrum, fast, start=centre, **options).problem
        fast_map = polish_map(fast_problem, np.clip(theta, fast_problem.lower, fast_problem.upper), max_steps=20)
        fast_problem = fast_problem.with_transform("logit")
        fast_mode = unconstrained_laplace(fast_problem, fast_map.theta, gauss_newton=True).mode
        target = problem.with_transform("logit")
        hybrid = fitting._mode_search_start(target, theta, fast_mode)  # as fit_star starts it
        curvature = fitting._finite_curvature(polished.curvature)
        reference = unconstrained_laplace(target, theta, gauss_newton=True, curvature_refresh="always", tolerance=1e-3,
                                          max_iterations=30, start=hybrid)
        sigma = np.sqrt(np.diag(reference.covariance))
        row["z_reference"] = {"converged": bool(reference.converged), "iterations": reference.iterations,
                              "log_density": reference.log_density}
        variants = (("plain", dict(second_order=False)), ("current", dict(start=hybrid)))
        if k == chosen[0]:  # compile both variants' programs before timing either
            for _, keywords in variants:
                unconstrained_laplace(target, theta, gauss_newton=True, curvature=curvature, max_iterations=1, **keywords)
        for name, keywords in variants:
            clock = time.perf_counter()
            mode = unconstrained_laplace(target, theta, gauss_newton=True, curvature=curvature, **keywords)
            seconds = time.perf_counter() - clock
            offset = np.abs(mode.mode - reference.mode) / sigma
            row[name] = {"seconds": seconds, "iterations": mode.iterations, "jacobians": mode.curvature_evaluations,
                         "converged": bool(mode.converged),
                         "nats_below_reference": float(reference.log_density - mode.log_density),
                         "max_offset_sigma": float(np.max(offset)),
                         "worst_label": problem.names[int(np.argmax(offset))]}
        document["stars"].append(row)
        p, a, b = row["polish"], row["plain"], row["current"]
        print(f"star {k}: edges {','.join(row['edge_labels']) or '-'} | polish {p['seconds']:.1f} s it {p['iterations']} "
              f"J {p['jacobians']} {'C' if p['converged'] else 'n'} +{p['nats_above_30_iterations']:.2f} nats | "
              f"z plain {a['seconds']:.1f} s it {a['iterations']} J {a['jacobians']} {'C' if a['converged'] else 'n'} "
              f"-{a['nats_below_reference']:.3f} nats {a['max_offset_sigma']:.2f} sigma | "
              f"current {b['seconds']:.1f} s it {b['iterations']} J {b['jacobians']} {'C' if b['converged'] else 'n'} "
              f"-{b['nats_below_reference']:.3f} nats {b['max_offset_sigma']:.2f} sigma", flush=True)
        write(document, Path(args.out))


def write(document: dict, out: Path) -> None:
    document["load_average_after"] = list(os.getloadavg())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(document, indent=1, default=float))
    stars = document["stars"]
    lines = [f"TransformerPayne (`{document['emulator']}`) MAP polish and z-mode search from the fast path's MAP "
             f"({document['date']}, {document['cpu_count']} cores, load {document['load_average_before'][0]:.1f}).", "",
             "| star | labels at edges | polish s | it | J | converged | nats above 30 it "
             "| plain z s | it | J | conv | nats below ref | max off (sigma) "
             "| current z s | it | J | conv | nats below ref | max off (sigma) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in stars:
        p, a, b = row["polish"], row["plain"], row["current"]
        lines.append(f"| {row['star']} | {', '.join(row['edge_labels']) or '-'} | {p['seconds']:.1f} | {p['iterations']} "
                     f"| {p['jacobians']} | {p['converged']} | {p['nats_above_30_iterations']:.2f} "
                     f"| {a['seconds']:.1f} | {a['iterations']} | {a['jacobians']} | {a['converged']} "
                     f"| {a['nats_below_reference']:.3f} | {a['max_offset_sigma']:.2f} "
                     f"| {b['seconds']:.1f} | {b['iterations']} | {b['jacobians']} | {b['converged']} "
                     f"| {b['nats_below_reference']:.3f} | {b['max_offset_sigma']:.2f} |")
    if stars:
        total = {name: sum(row[name]["seconds"] for row in stars) for name in ("plain", "current")}
        jacobians = {name: sum(row[name]["jacobians"] for row in stars) for name in ("plain", "current")}
        lines += ["", f"z-mode search over {len(stars)} stars: plain {total['plain']:.1f} s ({jacobians['plain']} Jacobians), "
                      f"current {total['current']:.1f} s ({jacobians['current']} Jacobians); ratio "
                      f"{total['current'] / total['plain']:.2f}."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
