"""The TransformerPayne's mode in z for NUTS through the fast path: the data's curvature at every
Gauss-Newton iteration against only after a shortened step.

``fit_star(default, method="nuts")`` on a CPU samples ``default-fast`` and moves the draws by the
difference of the two densities' modes in z (``sample_with="fast"``, docs/fitting.md), found by
:func:`stellarfit.inference.nuts.unconstrained_laplace` with ``gauss_newton=True``.  Each
recomputation of the data's curvature is a Jacobian through the TransformerPayne (seconds on a
CPU); the other iterations take a gradient.  For the two stars of the NUTS benchmarks (the
shipped example and a noisier copy), after the two-stage MAP with ``default``, this times both
settings of ``curvature_refresh`` on the same problem, alternating (always, shortened, always,
shortened; the first call of each compiles and is not timed), and records iterations,
Jacobians and how far each mode is from a reference mode (full Gauss-Newton iterations to a
Newton decrement of 1e-4 nats instead of 0.05) in units of the posterior width in z.

    python benchmarks/bench_gauss_newton_mode.py
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--emulator", default="default")
    parser.add_argument("--rounds", type=int, default=2, help="timed calls of each setting per star, alternating")
    parser.add_argument("--out", default=str(HERE / "results" / "gauss_newton_mode_default"))
    args = parser.parse_args()

    import jax.numpy as jnp

    import stellarfit as sf
    from _stars import document_header, two_stars
    from stellarfit.inference.fit import _prepare
    from stellarfit.inference.nuts import unconstrained_laplace

    emulator = sf.load_emulator(args.emulator)
    defaults = {name: p.default for name, p in inspect.signature(sf.fit_star).parameters.items()}
    options = {k: defaults[k] for k in ("priors", "rv_range", "rv_window", "vsini_max", "continuum_degree")}
    document = document_header("bench_gauss_newton_mode", args)
    lines = [f"TransformerPayne (`{args.emulator}`) mode in z by Gauss-Newton, the data's curvature recomputed at "
             "every iteration (`always`) or only after a shortened step (`shortened`, the default); "
             f"{args.rounds} alternating timed calls each after one untimed (compiling) call; one run, "
             f"{document['date']}, {document['cpu_count']} CPUs, load {document['load_average_before'][0]:.1f}.\n",
             "| star | refresh | seconds (each call) | iterations | Jacobians | largest distance from the reference mode / width in z |",
             "|---|---|---|---|---|---|"]
    for star_name, spectrum in zip(("example", "second"), two_stars()):
        fit = sf.fit_star(spectrum, emulator)
        theta = np.array([fit.labels[name]["map"] for name in fit.names])
        start = dict(zip(fit.names, theta.tolist()))
        problem = _prepare(spectrum, emulator, start=start, **options).problem.with_transform("logit")
        runs = {"always": [], "shortened": []}
        for refresh in runs:  # compile both
            unconstrained_laplace(problem, theta, gauss_newton=True, curvature_refresh=refresh)
        for _ in range(args.rounds):
            for refresh in runs:
                began = time.perf_counter()
                result = unconstrained_laplace(problem, theta, gauss_newton=True, curvature_refresh=refresh)
                runs[refresh].append((time.perf_counter() - began, result))
        reference = unconstrained_laplace(problem, theta, gauss_newton=True, curvature_refresh="always",
                                          tolerance=1e-4, max_iterations=30)
        width = np.sqrt(np.diag(reference.covariance))
        document["runs"].append({"star": star_name, "refresh": "reference", "iterations": reference.iterations,
                                 "converged": reference.converged, "mode": reference.mode.tolist()})
        for refresh, calls in runs.items():
            seconds = [s for s, _ in calls]
            result = calls[0][1]
            difference = float(np.max(np.abs(result.mode - reference.mode) / width))
            document["runs"].append({"star": star_name, "refresh": refresh, "seconds": seconds,
                                     "iterations": result.iterations, "jacobians": result.curvature_evaluations,
                                     "converged": result.converged, "max_mode_difference_in_widths": difference,
                                     "mode": result.mode.tolist(),
                                     "theta_at_mode": np.asarray(problem.to_theta(jnp.asarray(result.mode, jnp.float32)),
                                                                 np.float64).tolist()})
            lines.append(f"| {star_name} | {refresh} | {' / '.join(f'{s:.1f}' for s in seconds)} | {result.iterations} | "
                         f"{result.curvature_evaluations} | {difference:.3f} |")
            print(lines[-1], flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(document, indent=1))
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
