"""Calibration of fits on held-out realistic spectra: bias, scatter, error calibration, CRB, speed.

Takes the first --n-stars spectra of the default grid's held-out test split
(Turbospectrum spectra the emulator never saw), observes each with
:func:`stellarfit.forward.simulate_observation` (random RV in +-150 km/s,
vsini 0-8 km/s, R = --resolution, a tilted continuum, Gaussian noise at each
--snr), fits them with :func:`stellarfit.fit_stars` (multi-start MAP + Laplace
errors + Cramér-Rao bounds, batched) and reports per parameter:

- bias = median(fit - truth), scatter = 1.4826 * MAD(fit - truth);
- z = (fit - truth) / error: its robust width (1 for calibrated errors; >1:
  errors too small, e.g. from emulator error that the likelihood ignores);
- median reported error and median CRB;
- wall time per star (after the first batch's compilation) and the compile time.

Results: benchmarks/results/calibration_<emulator>.{json,md}.

    python benchmarks/bench_calibration.py --emulator payne-default --grid ~/.cache/stellarfit/grids/ts_default_2000.h5
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from _stars import robust_sigma
from _provenance import provenance

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--emulator", default="payne-default")
    parser.add_argument("--grid", required=True)
    parser.add_argument("--n-stars", type=int, default=100)
    parser.add_argument("--snr", type=float, nargs="+", default=[30.0, 100.0])
    parser.add_argument("--resolution", type=float, default=22_500.0)
    parser.add_argument("--window", type=float, nargs=2, default=[5010.0, 5490.0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--n-starts", type=int, default=8)
    parser.add_argument("--adam-steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", choices=["test", "validation", "heldout-a", "heldout-b"], default="test",
                        help="held-out spectra to use: the test or validation split of the emulator's training grid "
                             "(validation: for measuring error floors, see scripts/set_error_floor.py), or the first "
                             "(heldout-a) or second (heldout-b) half of an independent grid made with another --seed")
    parser.add_argument("--error-modes", default=None,
                        help="npz from scripts/estimate_error_modes.py: attach its error modes and pixel error to the emulator")
    parser.add_argument("--no-emulator-error", action="store_true",
                        help="fit with the noise alone (no pixel error, no error modes)")
    parser.add_argument("--no-error-floor", action="store_true", help="report errors without the emulator's label error floor")
    parser.add_argument("--init-from", default=None,
                        help="two-stage fits: fit every spectrum with this (fast) emulator first, then polish each MAP "
                             "with --emulator (fit_stars(init=...)); both are reported, the first as "
                             "calibration_<init-from>_...")
    parser.add_argument("--polish-batch-size", type=int, default=4, help="spectra per batch of the polishing stage")
    parser.add_argument("--method", choices=["map", "nuts"], default="map",
                        help="map (batched fit_stars) or nuts (fit_star per spectrum, 4 chains x (500 + 500); with "
                             "--emulator default on a CPU it samples the fast path re-centred on the TransformerPayne's "
                             "mode, see fit_star's sample_with)")
    parser.add_argument("--first-star", type=int, default=0,
                        help="fit only stars first-star .. n-stars - 1 of the selection (same RVs, vsini, tilts and noise "
                             "draws as the full run): to extend a stopped run; merge the two with "
                             "calibration_with_floors.py RUN --also THIS_RUN")
    parser.add_argument("--stop-star", type=int, default=None,
                        help="fit only stars first-star .. stop-star - 1 (default: to n-stars - 1), with the draws of "
                             "the full --n-stars run: to split a long run into pieces (sessions), merged by "
                             "calibration_with_floors.py RUN --also PIECE2 PIECE3 ...")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    args.settings_piece = args.stop_star is not None
    if not args.settings_piece:
        args.stop_star = args.n_stars
    if not 0 <= args.first_star < args.n_stars:
        parser.error(f"--first-star must be in [0, --n-stars), got {args.first_star}")
    if not args.first_star < args.stop_star <= args.n_stars:
        parser.error(f"--stop-star must be in (--first-star, --n-stars], got {args.stop_star}")

    import jax

    import stellarfit as sf
    from stellarfit.forward import simulate_observation
    from stellarfit.grids import SpectralGrid
    from stellarfit.wavelengths import log_lambda_grid

    emulator = sf.load_emulator(args.emulator)
    init_emulator = sf.load_emulator(args.init_from) if args.init_from else None
    init_rows, stages = [], {}
    if args.error_modes:
        with np.load(os.path.expanduser(args.error_modes)) as arrays:
            emulator = emulator.with_error_modes(arrays["error_modes"]).with_pixel_error(arrays["pixel_error"])
    grid = SpectralGrid.read(os.path.expanduser(args.grid))
    if args.split.startswith("heldout"):
        half = len(grid) // 2
        test = np.arange(half) if args.split == "heldout-a" else np.arange(half, len(grid))
    else:
        _, validation, test = grid.split((0.8, 0.1, 0.1), seed=0)
        test = validation if args.split == "validation" else test
    test = test[: args.n_stars]
    args.stop_star = min(args.stop_star, test.size)
    if args.first_star >= args.stop_star:
        parser.error(f"the {args.split} split has {test.size} stars: --first-star {args.first_star} leaves none")
    names = list(emulator.label_names) + ["rv", "vsini"]
    wavelength = log_lambda_grid(args.window[0], args.window[1], args.resolution, 2.5)
    x = (wavelength - wavelength.mean()) / np.ptp(wavelength)
    rng = np.random.default_rng(args.seed)
    rvs = rng.uniform(-150.0, 150.0, test.size)
    vsinis = rng.uniform(0.0, 8.0, test.size)
    tilts = rng.uniform(-0.2, 0.2, test.size)
    document = {
        "benchmark": "bench_calibration", "emulator": args.emulator, "first_star": args.first_star,
        "emulator_metrics": emulator.metadata.get("metrics"),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(jax.devices()[0]), "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "load_average_before": list(os.getloadavg()),
        "settings": {k: v for k, v in vars(args).items() if k != "out"}, "n_stars_used": int(args.stop_star - args.first_star), "n_pixels": int(wavelength.size), "results": {},
    }
    lines, init_lines = [], []
    init_document = None
    if args.init_from:
        init_document = dict(document, emulator=args.init_from, emulator_metrics=init_emulator.metadata.get("metrics"),
                             stage="fast first stage", results={})
        document["init_from"] = args.init_from
    for snr in args.snr:
        spectra, truths = [], []
        for k, index in enumerate(test):
            continuum = 1000.0 * (1.0 + tilts[k] * x)
            spectra.append(simulate_observation(grid.wavelength, grid.flux[index], 30_000.0, wavelength, args.resolution,
                                                rv=rvs[k], vsini=vsinis[k], snr=snr, continuum=continuum, rng=rng))
            truths.append(np.concatenate([grid.labels[index], [rvs[k], vsinis[k]]]))
        truths = np.array(truths)
        # the draws above are made for every star, so a piece has the full run's draws
        spectra, truths = spectra[args.first_star:args.stop_star], truths[args.first_star:args.stop_star]
        common = dict(n_starts=args.n_starts, adam_steps=args.adam_steps, seed=args.seed, errors="collect",
                      error_floor=not args.no_error_floor, emulator_error=not args.no_emulator_error)
        if args.method == "nuts":
            results, start = [], time.perf_counter()
            for k, spectrum in enumerate(spectra):
                try:
                    results.append(sf.fit_star(spectrum, emulator, "nuts", seed=args.seed + args.first_star + k, error_floor=common["error_floor"],
                                               emulator_error=common["emulator_error"]))
                except Exception as error:  # noqa: BLE001 - recorded per spectrum
                    results.append(error)
                print(f"S/N {snr:g}: star {k + 1}/{len(spectra)}, {time.perf_counter() - start:.0f} s", flush=True)
                if (k + 1) % 10 == 0 and k + 1 < len(spectra):
                    # a partial file every 10 stars, so that a long run that is stopped keeps what it fitted
                    partial, partial_lines = copy.deepcopy(document), list(lines)
                    record(partial, partial_lines, snr, results, truths, names, nuts_timing(results), args,
                           wavelength.size)
                    final = out_path(args, args.emulator)
                    write(partial, partial_lines, args, args.emulator, k + 1, final.with_name(final.name + "_partial"))
            record(document, lines, snr, results, truths, names, nuts_timing(results), args, wavelength.size)
            write(document, lines, args, args.emulator, args.stop_star - args.first_star, out_path(args, args.emulator))
            continue
        if args.init_from:
            # stage 1 with the fast emulator (its own compile in its first batch), then the polish
            start = time.perf_counter()
            fast = sf.fit_stars(spectra, init_emulator, batch_size=args.batch_size, init=None, progress=True, **common)
            stages["fast_s_per_star"] = (time.perf_counter() - start) / len(spectra)
            init_rows.append((snr, fast, truths))
            inits = [None if isinstance(r, Exception) else r for r in fast]
            batch = args.polish_batch_size
        else:
            inits, batch = None, args.batch_size
        start = time.perf_counter()
        first = sf.fit_stars(spectra[:batch], emulator, batch_size=batch, init=None if inits is None else inits[:batch], **common)
        first_s = time.perf_counter() - start
        start = time.perf_counter()
        rest = sf.fit_stars(spectra[batch:], emulator, batch_size=batch, progress=True,
                            init=None if inits is None else inits[batch:], **common)
        rest_s = time.perf_counter() - start
        results = first + rest
        timing = {"first_batch_s": first_s, "seconds_per_star_after_compile": rest_s / max(len(spectra) - batch, 1),
                  "batch_size": batch, **stages}
        record(document, lines, snr, results, truths, names, timing, args, wavelength.size)
        if args.init_from:
            record(init_document, init_lines, snr, fast, truths, names,
                   {"seconds_per_star": stages["fast_s_per_star"], "batch_size": args.batch_size}, args, wavelength.size)
        write(document, lines, args, args.emulator, args.stop_star - args.first_star, out_path(args, args.emulator))
        if args.init_from:
            write(init_document, init_lines, args, args.init_from, args.stop_star - args.first_star, out_path(args, args.init_from, stage="fast"))


def nuts_timing(results) -> dict:
    """Seconds per star and the samplers' diagnostics over the NUTS fits done so far."""
    done = [r for r in results if not isinstance(r, Exception)]
    per_star = [r.elapsed_s for r in done]
    timing = {"seconds_per_star": float(np.median(per_star[1:] or per_star)) if per_star else float("nan"),
              "first_star_s": per_star[0] if per_star else None, "batch_size": 1}
    if done:
        diagnostics = [r.diagnostics for r in done]
        timing["nuts"] = {
            "divergences_per_fit": [int(d["divergences"]) for d in diagnostics],
            "max_r_hat_per_fit": [float(max(d["r_hat"].values())) for d in diagnostics],
            "min_ess_bulk_per_fit": [float(d["min_ess_bulk"]) for d in diagnostics],
            "gradient_evaluations_per_fit": [int(d["gradient_evaluations"] + d["gradient_evaluations_warmup"])
                                             for d in diagnostics],
            "sampler_seconds_per_fit": [float(d["sampler_elapsed_s"]) for d in diagnostics],
        }
    return timing


def out_path(args, name: str, stage: str = "") -> Path:
    suffix = ("" if args.split == "test" else f"_{args.split}") + ("_nofloor" if args.no_error_floor else "")
    suffix += ("_modes" if args.error_modes else "") + ("_noemuerror" if args.no_emulator_error else "")
    suffix += "_nuts" if args.method == "nuts" else ""
    suffix += f"_from_star{args.first_star}" if args.first_star else ""
    suffix += f"_to_star{args.stop_star - 1}" if args.settings_piece else ""
    if args.init_from:
        suffix += f"_{stage}stage" if stage else f"_from_{Path(args.init_from).name}"
    if args.out and not stage:
        return Path(args.out)
    if args.out:
        return Path(str(args.out) + "_" + stage)
    return HERE / "results" / f"calibration_{Path(name).name}{suffix}"


def record(document, lines, snr, results, truths, names, timing, args, n_pixels) -> None:
    """Bias, scatter, z width, errors and CRBs of one S/N into ``document`` and ``lines`` (markdown)."""
    from stellarfit.inference.fit import FLAGS

    ok = [i for i, r in enumerate(results) if not isinstance(r, Exception)]
    values = np.array([[results[i].labels[n]["value"] for n in names] for i in ok])
    errors = np.array([[results[i].labels[n]["error"] for n in names] for i in ok])
    statistical = np.array([[results[i].labels[n].get("error_statistical", results[i].labels[n]["error"]) for n in names]
                            for i in ok])
    crbs = np.array([[results[i].labels[n]["crb"] for n in names] for i in ok])
    delta = values - truths[ok]
    # each truth against its own interval: the upper error above the value, the lower below
    lower = np.array([[results[i].labels[n]["lower"] for n in names] for i in ok])
    upper = np.array([[results[i].labels[n]["upper"] for n in names] for i in ok])
    side = np.where(delta < 0, upper - values, values - lower)  # truth - value > 0 -> the upper side
    z_sided = np.abs(delta) / np.where(side > 0, side, np.nan)
    per = {}
    for j, name in enumerate(names):
        finite = np.isfinite(z_sided[:, j])
        per[name] = {
            "inside_68": float(np.mean(z_sided[finite, j] <= 1.0)) if finite.any() else float("nan"),
            "inside_95": float(np.mean(z_sided[finite, j] <= 1.96)) if finite.any() else float("nan"),
            "bias": float(np.median(delta[:, j])), "scatter": robust_sigma(delta[:, j]),
            "z_width": robust_sigma(delta[:, j] / errors[:, j]),
            "median_error": float(np.nanmedian(errors[:, j])), "median_crb": float(np.nanmedian(crbs[:, j])),
            "median_error_statistical": float(np.nanmedian(statistical[:, j])),
        }
    flags = [results[i].flags for i in ok]
    document["results"][str(snr)] = r = {
        "n_fitted": len(ok), "n_failed": len(results) - len(ok),
        "failures": [str(r) for r in results if isinstance(r, Exception)][:5],
        **timing,
        "median_reduced_chi2": float(np.median([results[i].reduced_chi2 for i in ok])),
        "fraction_flagged": float(np.mean(np.array(flags) != 0)),
        "flag_counts": {name: int(sum(1 for i in ok if results[i].flags & bit)) for name, bit in FLAGS.items()},
        "parameters": per,
        "per_star": {"names": names, "truth": truths[ok].tolist(), "value": values.tolist(), "error": errors.tolist(),
                     "error_statistical": statistical.tolist(), "crb": crbs.tolist()},
    }
    lines.append(f"### S/N {snr:g} ({len(ok)} stars, R = {args.resolution:g}, {n_pixels} pixels)\n")
    lines.append("| parameter | bias | scatter | z width | inside 68% | inside 95% | median error | median CRB |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for name, row in per.items():
        lines.append(f"| {name} | {row['bias']:+.4g} | {row['scatter']:.4g} | {row['z_width']:.2f} | "
                     f"{100 * row['inside_68']:.0f}% | {100 * row['inside_95']:.0f}% | "
                     f"{row['median_error']:.4g} | {row['median_crb']:.4g} |")
    if "first_batch_s" in timing:
        speed = (f"First batch of {timing['batch_size']} (with compilation): {timing['first_batch_s']:.0f} s; afterwards "
                 f"{timing['seconds_per_star_after_compile']:.2f} s per star")
        if "fast_s_per_star" in timing:
            speed += f" (plus {timing['fast_s_per_star']:.2f} s per star for the fast first stage, compilation included)"
    else:
        speed = f"{timing['seconds_per_star']:.2f} s per star (median after the first star)"
    if "nuts" in timing:
        nuts = timing["nuts"]
        speed += (f"; NUTS: {sum(nuts['divergences_per_fit'])} divergences in {len(nuts['divergences_per_fit'])} fits "
                  f"(at most {max(nuts['divergences_per_fit'])} in one), max R-hat {max(nuts['max_r_hat_per_fit']):.3f}, "
                  f"median of the per-fit minimum bulk ESS {np.median(nuts['min_ess_bulk_per_fit']):.0f}, "
                  f"median gradients per fit {np.median(nuts['gradient_evaluations_per_fit']):.0f}")
    lines.append(f"\n{speed}; median reduced chi2 {r['median_reduced_chi2']:.2f}; "
                 f"{100 * r['fraction_flagged']:.0f}% flagged ("
                 + (", ".join(f"{k} {v}" for k, v in r["flag_counts"].items() if v) or "none") + ").\n")
    print("\n".join(lines[-len(per) - 4 :]), flush=True)


def write(document, lines, args, name, n_stars, out: Path) -> None:
    document["load_average_after"] = list(os.getloadavg())
    document["provenance"] = provenance()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(document, indent=1))
    how = ""
    if args.init_from and name == args.emulator:
        how = f", each MAP polished from the MAP of `{args.init_from}` (fit_stars(init=...))"
    elif args.init_from:
        how = f", the first stage of a two-stage run (then polished with `{args.emulator}`)"
    if args.method == "nuts":
        how += ", NUTS (fit_star(method='nuts'), 4 chains x (500 + 500), value = posterior median, 68% = 16th-84th percentile)"
    header = (f"Fits of {n_stars} held-out ({args.split} split) Turbospectrum spectra with `{name}`{how} "
              f"({document['device']}, {document['cpu_count']} cores, load {document['load_average_before'][0]:.1f}, "
              f"{document['date']}).\n\n")
    out.with_suffix(".md").write_text(header + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
