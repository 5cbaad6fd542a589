"""Survey spectra on one wavelength lattice with per-spectrum first and last pixels (as BOSS
coadds and LAMOST spectra are: log10 steps from a start that differs from file to file), with a
per-pixel resolving power that differs from star to star (BOSS ``wdisp``): MAP fits one star
after another, with each spectrum cut to the pixels the emulator reaches (``modelled_pixels``,
the default since 2026-11-26) against the whole spectrum (the behaviour before, when every
such spectrum had its own pixels and compiled its own fit).

The spectra: held-out Turbospectrum spectra (the second half of the grid, as the calibration
benchmark's heldout-b) observed at S/N 50 on pixels k0 .. k0 + n of a log10 lattice
with step 1e-5 from 4,400 A (k0 and n random per star, every spectrum spanning 4,700-6,000 A
or more), R(lambda) = R0 (1 + 0.12 x)(1 + s_k) with s_k uniform in +-3%, random RV and vsini.
Outside the grid's wavelengths the flux is bare continuum with noise (pixels no emulator
reaches; inside them, pixels the grid cannot model at the star's RV get ivar 0).  For each mode: seconds per star, XLA compilation (``jax.monitoring``), distinct
forward models, and the labels of the two modes against each other.

    python benchmarks/bench_survey_lattice.py --n 6 --grid ~/.cache/stellarfit/grids/ts_seed1_320.h5
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from _stars import compile_counter, document_header

HERE = Path(__file__).resolve().parent


def make_spectra(grid, n: int, resolution: float, seed: int):
    """n ObservedSpectrum on one log10 lattice with their own ends and R(lambda), and their true labels."""
    from stellarfit.forward import simulate_observation
    from stellarfit.spectra import ObservedSpectrum

    rng = np.random.default_rng(seed)
    heldout = np.arange(len(grid) // 2, len(grid))
    picks = rng.choice(heldout, n, replace=False)
    lattice = 10.0 ** (np.log10(4400.0) + 1e-5 * np.arange(60_000))
    spectra, truths = [], []
    for index in picks:
        first = int(np.searchsorted(lattice, 4700.0)) - int(rng.integers(0, 2_000))
        last = int(np.searchsorted(lattice, 6000.0)) + int(rng.integers(0, 2_000))
        wavelength = lattice[first:last]
        x = 2.0 * (wavelength - wavelength[0]) / (wavelength[-1] - wavelength[0]) - 1.0
        r = resolution * (1.0 + 0.12 * x) * (1.0 + rng.uniform(-0.03, 0.03))
        # simulate_observation gives ivar 0 where the grid cannot model a pixel at this RV
        inside = (wavelength > grid.wavelength[0]) & (wavelength < grid.wavelength[-1])
        rv, vsini = rng.uniform(-150.0, 150.0), rng.uniform(0.0, 8.0)
        observed = simulate_observation(grid.wavelength, grid.flux[index], 30_000.0, wavelength[inside], r[inside],
                                        rv=rv, vsini=vsini, snr=50.0, rng=rng)
        flux = 1.0 + rng.normal(size=wavelength.size) / 50.0
        ivar = np.full(wavelength.size, 2_500.0)
        flux[inside], ivar[inside] = observed.flux, observed.ivar
        spectra.append(ObservedSpectrum.from_arrays(wavelength, flux, ivar=ivar, resolution=r))
        truths.append(dict(zip(grid.label_spec.names, grid.labels[index].tolist()), rv=rv, vsini=vsini))
    return spectra, truths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--emulator", default="payne-default")
    parser.add_argument("--grid", default=str(Path("~/.cache/stellarfit/grids/ts_seed1_320.h5").expanduser()))
    parser.add_argument("--n", type=int, default=6, help="stars")
    parser.add_argument("--resolution", type=float, default=22_500.0, help="R0, the mean resolving power")
    parser.add_argument("--modes", nargs="+", default=["whole", "cut"], choices=["whole", "cut"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(HERE / "results" / "survey_lattice_payne-default"))
    args = parser.parse_args()

    import jax

    import stellarfit as sf
    from stellarfit.grids import SpectralGrid
    from stellarfit.inference import fit as fit_module

    compiled = compile_counter()
    grid = SpectralGrid.read(args.grid)
    spectra, truths = make_spectra(grid, args.n, args.resolution, args.seed)
    emulator = sf.load_emulator(args.emulator)
    document = document_header("bench_survey_lattice", args)
    document["pixels_per_spectrum"] = [int(s.wavelength.size) for s in spectra]
    cut = fit_module.modelled_pixels
    labels = {}
    lines = []
    for mode in args.modes:
        fit_module.modelled_pixels = cut if mode == "cut" else (lambda spectrum, emulator, rv_range: spectrum)
        fit_module._FORWARD_MODEL_CACHE.clear()
        fit_module._SHARED_LSF_MODELS.clear()
        jax.clear_caches()
        rows = []
        for k, spectrum in enumerate(spectra):
            before = dict(compiled)
            start = time.perf_counter()
            result = sf.fit_star(spectrum, emulator, method="map", seed=k)
            rows.append({"star": k, "seconds": time.perf_counter() - start,
                         "compile_s": compiled["seconds"] - before["seconds"],
                         "programs": compiled["programs"] - before["programs"],
                         "pixels_fitted": int(result.wavelength.size), "n_pixels": int(result.n_pixels),
                         "labels": {name: [row["value"], row["error"]] for name, row in result.labels.items()},
                         "reduced_chi2": result.reduced_chi2})
            print(f"{mode} star {k}: {rows[-1]['seconds']:.1f} s, {rows[-1]['programs']} programs compiled "
                  f"({rows[-1]['compile_s']:.1f} s), {rows[-1]['pixels_fitted']} of {spectrum.wavelength.size} pixels",
                  flush=True)
        models = len({id(fit_module.forward_model_for(emulator, fit_module.modelled_pixels(s, emulator, (-1000.0, 1000.0)).wavelength,
                                                      fit_module.modelled_pixels(s, emulator, (-1000.0, 1000.0)).resolution,
                                                      rv_range=(-1000.0, 1000.0), vsini_max=100.0).shared) for s in spectra})
        labels[mode] = [r["labels"] for r in rows]
        run = {"mode": mode, "stars": rows, "shared_models": models,
               "seconds_per_star_after_first": float(np.mean([r["seconds"] for r in rows[1:]])),
               "compile_s_after_first": float(sum(r["compile_s"] for r in rows[1:]))}
        document["runs"].append(run)
        lines.append(f"| {mode} | {rows[0]['seconds']:.1f} | {run['seconds_per_star_after_first']:.1f} | "
                     f"{run['compile_s_after_first']:.1f} | {models} | {np.mean([r['pixels_fitted'] for r in rows]):.0f} |")
        print(lines[-1], flush=True)
    fit_module.modelled_pixels = cut
    if {"whole", "cut"} <= set(labels):
        # how far the two modes' labels are apart, in units of the (cut) fit's error, per label: the largest over stars
        names = list(labels["cut"][0])
        gaps = {name: max(abs(a[name][0] - b[name][0]) / max(b[name][1], 1e-12) for a, b in zip(labels["whole"], labels["cut"]))
                for name in names}
        document["max_label_gap_in_errors"] = gaps
        truth_z = {name: [abs(r[name][0] - t[name]) / max(r[name][1], 1e-12) for r, t in zip(labels["cut"], truths) if name in t]
                   for name in names}
        document["cut_abs_z_median"] = {name: float(np.median(v)) for name, v in truth_z.items() if v}
    document["truths"] = truths
    document["load_average_after"] = [float(v) for v in __import__("os").getloadavg()]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(document, indent=1))
    header = [f"# MAP fits of {args.n} spectra on one lattice with their own ends and R(lambda) ({args.emulator})\n",
              f"`benchmarks/bench_survey_lattice.py --n {args.n}`; {document['date']}; load average before "
              f"{document['load_average_before'][0]:.2f}, after {document['load_average_after'][0]:.2f}.\n",
              "| pixels | first star [s] | later stars, mean [s] | compilation after the first star [s] | forward models | pixels fitted (mean) |",
              "|---|---|---|---|---|---|"]
    extra = []
    if "max_label_gap_in_errors" in document:
        gaps = document["max_label_gap_in_errors"]
        extra = ["", "Largest |whole - cut| over the stars, in units of the cut fit's error: "
                 + ", ".join(f"{name} {gap:.2f}" for name, gap in gaps.items())]
    out.with_suffix(".md").write_text("\n".join(header + lines + extra) + "\n")
    print("\n".join(header + lines + extra))


if __name__ == "__main__":
    main()
