"""fit_star(spectrum, "default", method) on held-out stars, one after another: wall time per star
(for NUTS also the sampler's share and its gradient evaluations, so that changes outside the sampler
can be compared apart from its run-to-run noise), the MAP polish's iterations and Jacobians, chi2,
medians, errors, MAPs and truths.

Stars: an npz from ``bench_gpu_fits.py stars``.  The first star is fitted once before timing
(compilation).  To compare two versions of stellarfit in the same hour, run it twice with
PYTHONPATH pointing at each version's ``src`` (a ``git worktree`` of the older commit):

    python benchmarks/bench_default_nuts_stars.py nuts benchmarks/results/default_nuts_stars.json 0 1 2 3 4 5 6 7
    PYTHONPATH=/tmp/old/src python benchmarks/bench_default_nuts_stars.py nuts OLD.json 0 1 2 3 4 5 6 7

Arguments: method, output JSON, star indices; ``--stars`` (default .gpu/stars_snr100_64.npz) first if needed.
``--polish-spaces z unit`` (first if needed) fits every star once with each coordinate system of the
polish from the fast path's MAP (``stellarfit.inference.fit.FAST_PATH_POLISH_SPACE``), in one
process, alternating which goes first from star to star, so that the machine's drift falls on both:

    python benchmarks/bench_default_nuts_stars.py --polish-spaces z unit nuts BOTH.json 0 1 2 3 4 5 6 7
"""
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gpu_fits import load_stars  # noqa: E402

import stellarfit as sf  # noqa: E402
from _provenance import provenance  # noqa: E402

args = sys.argv[1:]
stars = ".gpu/stars_snr100_64.npz"
spaces = [None]
while args[:1] in (["--stars"], ["--polish-spaces"]):
    if args[0] == "--stars":
        stars, args = args[1], args[2:]
    else:
        spaces, args = args[1:3], args[3:]
print("stellarfit from", sf.__file__, flush=True)
spectra, truth, names = load_stars(stars)
method, out = args[0], args[1]
indices = [int(a) for a in args[2:]]
emulator = sf.load_emulator("default")
for space in spaces:  # compile (each polish space its own programs)
    if space is not None:
        from stellarfit.inference import fit as _fit

        _fit.FAST_PATH_POLISH_SPACE = space
    sf.fit_star(spectra[indices[0]], emulator, method=method)
rows = []
runs = [(k, space) for n, k in enumerate(indices) for space in (spaces if n % 2 == 0 else spaces[::-1])]
for k, space in runs:
    if space is not None:
        _fit.FAST_PATH_POLISH_SPACE = space
    clock = time.perf_counter()
    result = sf.fit_star(spectra[k], emulator, method=method)
    wall = time.perf_counter() - clock
    info = result.diagnostics
    sampler = info.get("sampler_elapsed_s")
    rows.append(dict(k=k, polish_space=space, wall=wall, sampler_s=sampler, outside_sampler_s=None if sampler is None else wall - sampler,
                     gradients=(info.get("gradient_evaluations") or 0) + (info.get("gradient_evaluations_warmup") or 0),
                     chi2=result.chi2, map_jac=info.get("map_jacobians"), map_it=info.get("map_iterations"),
                     flags=result.flags, value={n: result.labels[n]["value"] for n in result.labels},
                     error={n: result.labels[n]["error"] for n in result.labels},
                     map={n: result.labels[n]["map"] for n in result.labels}, truth=dict(zip(names, map(float, truth[k])))))
    print(k, "" if space is None else f"[{space}]", f"wall {wall:.1f} s", "" if sampler is None else f"(sampler {sampler:.1f} s, {rows[-1]['gradients']} gradients)",
          f"chi2 {result.chi2:.1f} polish: {rows[-1]['map_jac']} Jacobians, {rows[-1]['map_it']} iterations", flush=True)
    Path(out).write_text(json.dumps({"stellarfit": sf.__file__, "provenance": provenance(), "stars": stars, "method": method, "rows": rows}, indent=1,
                                    default=float))
for space in spaces:
    part = [r for r in rows if r["polish_space"] == space]
    print("" if space is None else f"[{space}]", f"median wall {np.median([r['wall'] for r in part]):.1f} s, "
          f"mean {np.mean([r['wall'] for r in part]):.1f} s")
    if all(r["outside_sampler_s"] is not None for r in part):
        print(f"  outside the sampler: mean {np.mean([r['outside_sampler_s'] for r in part]):.1f} s")
