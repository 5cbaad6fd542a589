"""Fits of spectra whose resolving power varies per pixel and differs a little from star to star
(as BOSS fibres' and DESI exposures' do): compiled programs shared through the anchor ladder
(``lsf_anchors="ladder"``, the default) against anchors spanning each star's own R ("span",
the behaviour before 2026-11-26, when every such star compiled its own fit).

The spectra: the shipped example star's held-out Turbospectrum spectrum (5,147 pixels,
S/N 60) with its flux and noise as they are, each star given its own R(lambda) =
R0 (1 + 0.12 x) (1 + s_k) with x from -1 to 1 across the window (a 27% variation of R along
the spectrum) and a per-star scale s_k drawn uniformly in +-3%.  (The flux itself was
observed at R = 22,500: this measures cost and program sharing, not accuracy.)
For each anchor mode, ``fit_star(method="map")`` one star after another, then
``fit_stars`` on all of them in one batch: seconds per star, XLA compilation (counted
through ``jax.monitoring``) and the number of distinct shared models.

    python benchmarks/bench_varying_lsf.py --n 8
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

from _stars import compile_counter

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--emulator", default="payne-default")
    parser.add_argument("--n", type=int, default=8, help="stars (each with its own R(lambda))")
    parser.add_argument("--resolution", type=float, default=20_000.0, help="R0, the mean resolving power")
    parser.add_argument("--modes", nargs="+", default=["span", "ladder"], choices=["span", "ladder"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(HERE / "results" / "varying_lsf_payne-default"))
    args = parser.parse_args()

    import jax

    import stellarfit as sf
    from stellarfit.forward import _model
    from stellarfit.inference import fit as fit_module
    from stellarfit.spectra import example_spectrum

    compile_s = compile_counter()
    example = example_spectrum()
    w = example.wavelength
    x = 2.0 * (w - w[0]) / (w[-1] - w[0]) - 1.0
    scales = np.random.default_rng(args.seed).uniform(-0.03, 0.03, args.n)
    spectra = [example.replace(resolution=args.resolution * (1.0 + 0.12 * x) * (1.0 + s)) for s in scales]
    emulator = sf.load_emulator(args.emulator)
    document = {"benchmark": "bench_varying_lsf", "emulator": args.emulator, "settings": vars(args),
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "platform": platform.platform(), "cpu_count": os.cpu_count(),
                "load_average_before": list(os.getloadavg()), "scales": scales.tolist(), "runs": []}
    default_anchors = _model.ForwardModel.__init__.__kwdefaults__["lsf_anchors"]
    lines = []
    for mode in args.modes:
        _model.ForwardModel.__init__.__kwdefaults__["lsf_anchors"] = mode
        fit_module._FORWARD_MODEL_CACHE.clear()
        fit_module._SHARED_LSF_MODELS.clear()
        jax.clear_caches()
        rows = []
        for k, spectrum in enumerate(spectra):
            before = dict(compile_s)
            start = time.perf_counter()
            result = sf.fit_star(spectrum, emulator, method="map", seed=k)
            rows.append({"star": k, "seconds": time.perf_counter() - start,
                         "compile_s": compile_s["seconds"] - before["seconds"],
                         "programs": compile_s["programs"] - before["programs"],
                         "teff": result.labels["teff"]["value"], "reduced_chi2": result.reduced_chi2})
            print(f"{mode} star {k}: {rows[-1]['seconds']:.1f} s, {rows[-1]['programs']} programs compiled "
                  f"({rows[-1]['compile_s']:.1f} s)", flush=True)
        shared = len({id(fit_module.forward_model_for(emulator, s.wavelength, s.resolution, rv_range=(-1000.0, 1000.0),
                                                      vsini_max=100.0).shared) for s in spectra})
        before = dict(compile_s)
        start = time.perf_counter()
        batch = sf.fit_stars(spectra, emulator, method="map", batch_size=len(spectra))
        batch_s = time.perf_counter() - start
        run = {"anchors": mode, "stars": rows, "shared_models": shared,
               "seconds_per_star_after_first": float(np.mean([r["seconds"] for r in rows[1:]])),
               "compile_s_after_first": float(sum(r["compile_s"] for r in rows[1:])),
               "fit_stars_seconds": batch_s, "fit_stars_compile_s": compile_s["seconds"] - before["seconds"],
               "fit_stars_programs": compile_s["programs"] - before["programs"],
               "max_teff_difference_fit_stars_vs_fit_star": float(max(abs(b.labels["teff"]["value"] - r["teff"])
                                                                      for b, r in zip(batch, rows)))}
        document["runs"].append(run)
        lines.append(f"| {mode} | {rows[0]['seconds']:.1f} | {run['seconds_per_star_after_first']:.1f} | "
                     f"{run['compile_s_after_first']:.1f} | {shared} | {batch_s:.1f} | {run['fit_stars_compile_s']:.1f} |")
        print(lines[-1], flush=True)
    _model.ForwardModel.__init__.__kwdefaults__["lsf_anchors"] = default_anchors
    document["load_average_after"] = list(os.getloadavg())
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(document, indent=1))
    header = [f"# MAP fits of {args.n} stars with per-pixel R differing from star to star ({args.emulator})\n",
              f"`benchmarks/bench_varying_lsf.py --n {args.n}`; R(lambda) = {args.resolution:g} (1 + 0.12 x)(1 + s), "
              f"s in +-3% per star; load average before {document['load_average_before'][0]:.2f}, after "
              f"{document['load_average_after'][0]:.2f} ({os.cpu_count()} cores).\n",
              "| anchors | first star [s] | later stars, mean [s] | compilation after the first star [s] | "
              "shared models | fit_stars, all in one batch [s] | its compilation [s] |",
              "|---|---|---|---|---|---|---|"]
    out.with_suffix(".md").write_text("\n".join(header + lines) + "\n")
    print(f"wrote {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
