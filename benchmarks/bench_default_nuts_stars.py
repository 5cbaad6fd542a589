"""fit_star(spectrum, "default", method) on held-out stars, one after another: wall time per star,
the MAP polish's iterations and Jacobians, chi2, medians, errors, MAPs and truths.

Stars: an npz from ``bench_gpu_fits.py stars``.  The first star is fitted once before timing
(compilation).  To compare two versions of stellarfit in the same hour, run it twice with
PYTHONPATH pointing at each version's ``src`` (a ``git worktree`` of the older commit):

    python benchmarks/bench_default_nuts_stars.py nuts benchmarks/results/default_nuts_stars.json 0 1 2 3 4 5 6 7
    PYTHONPATH=/tmp/old/src python benchmarks/bench_default_nuts_stars.py nuts OLD.json 0 1 2 3 4 5 6 7

Arguments: method, output JSON, star indices; ``--stars`` (default .gpu/stars_snr100_64.npz) first if needed.
"""
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gpu_fits import load_stars  # noqa: E402

import stellarfit as sf  # noqa: E402

args = sys.argv[1:]
stars = ".gpu/stars_snr100_64.npz"
if args[:1] == ["--stars"]:
    stars, args = args[1], args[2:]
print("stellarfit from", sf.__file__, flush=True)
spectra, truth, names = load_stars(stars)
method, out = args[0], args[1]
indices = [int(a) for a in args[2:]]
emulator = sf.load_emulator("default")
sf.fit_star(spectra[indices[0]], emulator, method=method)  # compile
rows = []
for k in indices:
    clock = time.perf_counter()
    result = sf.fit_star(spectra[k], emulator, method=method)
    wall = time.perf_counter() - clock
    info = result.diagnostics
    rows.append(dict(k=k, wall=wall, chi2=result.chi2, map_jac=info.get("map_jacobians"), map_it=info.get("map_iterations"),
                     flags=result.flags, value={n: result.labels[n]["value"] for n in result.labels},
                     error={n: result.labels[n]["error"] for n in result.labels},
                     map={n: result.labels[n]["map"] for n in result.labels}, truth=dict(zip(names, map(float, truth[k])))))
    print(k, f"wall {wall:.1f} s chi2 {result.chi2:.1f} polish: {rows[-1]['map_jac']} Jacobians, {rows[-1]['map_it']} iterations",
          flush=True)
    Path(out).write_text(json.dumps({"stellarfit": sf.__file__, "stars": stars, "method": method, "rows": rows}, indent=1,
                                    default=float))
print(f"median wall {np.median([r['wall'] for r in rows]):.1f} s, mean {np.mean([r['wall'] for r in rows]):.1f} s")
