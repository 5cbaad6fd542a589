"""The shipped encoder on held-out Turbospectrum spectra, and MAP fits started from it against the multi-start search.

Held-out stars: the test split of a Turbospectrum grid (never seen by the emulator or the
encoder), observed at R 22,500 over 5000-5500 A with a random RV (+-150 km/s), vsini 0-8 km/s,
a tilted continuum and noise at each ``--snr`` (``stellarfit.forward.simulate_observation``,
the calibration benchmark's recipe). For every star and S/N:

- the encoder (``stellarfit.encoders.predict``, shipped ``payne-default-sim``): labels, errors, time;
- ``fit_stars(..., init=None)``: today's multi-start search (8 Sobol starts, Adam, Levenberg-Marquardt);
- ``fit_stars(..., init="encoder")``: one start at the encoder's labels (Adam, Levenberg-Marquardt).

Reported per S/N: the encoder's and the MAP's bias, robust scatter and 1-sigma coverage per label
against the truth; the MAP's seconds per star (batched, ``--batch-size``) for each start; and the
failure rate: a fit whose chi2 is more than ``--failure-chi2`` above the better of the two fits of
that star (a local minimum), or that failed. Public API only.

    python benchmarks/bench_encoder_init.py --grid ~/.cache/stellarfit/grids/ts_astro_sa_600.h5 \\
        --emulator payne-default --n-stars 30 --snr 30 100
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from _provenance import provenance

import stellarfit as sf
from stellarfit.encoders import DEFAULT_ENCODER, load_encoder, predict
from stellarfit.forward import simulate_observation
from stellarfit.grids import SpectralGrid
from stellarfit.wavelengths import log_lambda_grid


def stats(values: np.ndarray, errors: np.ndarray, truths: np.ndarray) -> dict:
    delta = values - truths
    ok = np.isfinite(delta)
    delta, errors = delta[ok], errors[ok]
    return {"n": int(ok.sum()), "bias": float(np.median(delta)),
            "scatter": float(1.4826 * np.median(np.abs(delta - np.median(delta)))),
            "coverage_1sigma": float(np.mean(np.abs(delta) <= errors)), "median_error": float(np.median(errors))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", required=True, help="Turbospectrum grid; its test split (seed 0) is used")
    parser.add_argument("--emulator", default="payne-default")
    parser.add_argument("--encoder", default=DEFAULT_ENCODER)
    parser.add_argument("--n-stars", type=int, default=30)
    parser.add_argument("--snr", type=float, nargs="+", default=[30.0, 100.0])
    parser.add_argument("--resolution", type=float, default=22_500.0)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--failure-chi2", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/encoder_init.json")
    args = parser.parse_args()

    emulator = sf.load_emulator(args.emulator)
    encoder = load_encoder(args.encoder)
    grid = SpectralGrid.read(os.path.expanduser(args.grid))
    _, _, test = grid.split((0.8, 0.1, 0.1), seed=0)
    test = test[: args.n_stars]
    names = list(emulator.label_names)
    wavelength = log_lambda_grid(5000.0, 5500.0, args.resolution, 2.5)
    x = (wavelength - wavelength.mean()) / np.ptp(wavelength)
    rng = np.random.default_rng(args.seed)
    rvs, vsinis, tilts = rng.uniform(-150, 150, test.size), rng.uniform(0, 8, test.size), rng.uniform(-0.2, 0.2, test.size)
    document = {"benchmark": "bench_encoder_init", "grid": args.grid, "emulator": args.emulator, "encoder": args.encoder,
                "settings": {k: v for k, v in vars(args).items() if k != "out"}, "provenance": provenance(),
                "cpu_count": os.cpu_count(), "load_average_before": list(os.getloadavg()), "results": {}}
    for snr in args.snr:
        spectra, truths = [], []
        for k, index in enumerate(test):
            spectra.append(simulate_observation(grid.wavelength, grid.flux[index], 30_000.0, wavelength, args.resolution,
                                                rv=rvs[k], vsini=vsinis[k], snr=snr, continuum=1000.0 * (1.0 + tilts[k] * x),
                                                rng=rng))
            truths.append(np.concatenate([grid.labels[index], [rvs[k]]]))
        truths = np.array(truths)
        start = time.perf_counter()
        predicted = predict(encoder, spectra)
        encoder_seconds = time.perf_counter() - start
        outputs = names + ["rv"]
        enc_values = np.array([[p[n][0] for n in outputs] for p in predicted])
        enc_errors = np.array([[p[n][1] for n in outputs] for p in predicted])
        row = {"n_stars": len(spectra), "encoder_seconds_per_star": encoder_seconds / len(spectra),
               "encoder": {n: stats(enc_values[:, i], enc_errors[:, i], truths[:, i]) for i, n in enumerate(outputs)},
               "fits": {}}
        chi2 = {}
        fits = {}
        for init in ("multi-start", "encoder"):
            start = time.perf_counter()
            results = sf.fit_stars(spectra, emulator, init=None if init == "multi-start" else "encoder",
                                   batch_size=args.batch_size, seed=args.seed, errors="collect", progress=False)
            seconds = time.perf_counter() - start
            fits[init] = results
            chi2[init] = np.array([r.chi2 if not isinstance(r, Exception) else np.inf for r in results])
            print(f"S/N {snr:g}: {init}: {seconds / len(spectra):.1f} s per star", flush=True)
            row["fits"][init] = {"seconds_per_star": seconds / len(spectra)}
        best = np.minimum(chi2["multi-start"], chi2["encoder"])
        for init, results in fits.items():
            failed = ~np.isfinite(chi2[init]) | (chi2[init] - best > args.failure_chi2)
            values = np.array([[r.labels[n]["value"] if not isinstance(r, Exception) else np.nan for n in names]
                               + [r.labels["rv"]["value"] if not isinstance(r, Exception) else np.nan] for r in results])
            errors = np.array([[r.labels[n]["error"] if not isinstance(r, Exception) else np.nan for n in names]
                               + [r.labels["rv"]["error"] if not isinstance(r, Exception) else np.nan] for r in results])
            row["fits"][init].update(
                failure_rate=float(failed.mean()), failed_stars=[int(i) for i in np.flatnonzero(failed)],
                chi2_above_best=[float(v) for v in chi2[init] - best],
                labels={n: stats(values[:, i], errors[:, i], truths[:, i]) for i, n in enumerate(outputs)})
        document["results"][f"snr{snr:g}"] = row
        ms, en = row["fits"]["multi-start"], row["fits"]["encoder"]
        print(f"S/N {snr:g}: MAP s/star multi-start {ms['seconds_per_star']:.1f}, encoder {en['seconds_per_star']:.1f}; "
              f"failures {ms['failure_rate']:.2f} vs {en['failure_rate']:.2f}", flush=True)
        for n in ("teff", "logg", "fe_h", "rv"):
            e, m = row["encoder"][n], ms["labels"][n]
            print(f"  {n:<6} encoder bias {e['bias']:+.3g} scatter {e['scatter']:.3g} cov {e['coverage_1sigma']:.2f} | "
                  f"MAP bias {m['bias']:+.3g} scatter {m['scatter']:.3g}", flush=True)
    document["load_average_after"] = list(os.getloadavg())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(document, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
