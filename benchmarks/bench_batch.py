"""Catalog throughput of `fit_batch_files`: the local backend (one star at a time, and
vectorized: ``vectorize`` spectra per vmapped MAP program) against worker processes
pinned one per core (backend "processes") and Ray workers.

Simulates N spectra with an emulator (labels drawn in the middle 60% of each
label's range, RV in +-50 km/s, vsini 0-10 km/s, S/N 100, a sloped continuum),
writes them as generic FITS files in a temporary directory, and fits them into
a catalog with each backend, twice per backend:

- cold: the first run (the local run compiles the fit functions in this
  process; the Ray run starts with fresh workers that load the emulator and
  compile in parallel; the Ray cluster itself is started before and timed
  separately as `ray_start_s`);
- warm: a second run into a new catalog with the compiled functions of the
  first (the steady state of a long catalog).

Per run it reports spectra per hour, the sum of `FitResult.elapsed_s` (time
inside the fits) and the per-spectrum overhead outside the fits,
``(workers * wall - sum(elapsed_s)) / N``: reading files, sending spectra,
journaling rows, and workers waiting (for the local backend, workers = 1:
the whole batch minus the fits, divided by N).  It also reports how closely
the Ray and processes catalogs agree with the local one (largest label difference).

``--method nuts`` fits with NUTS instead of MAP (4 chains x (500 + 500) by default; with the
local backend a star's chains run on the pinned chain workers, with the processes backend each
worker runs one star's chains one after another on its core).  ``--stars NPZ`` fits the held-out
Turbospectrum stars of a ``bench_gpu_fits.py stars`` file (the first N) instead of simulating
spectra with the emulator.

Prints and saves JSON to benchmarks/results/batch_throughput.json.

Examples:

    python benchmarks/bench_batch.py --emulator path/to/emulator --n 32 --workers 2
    python benchmarks/bench_batch.py --emulator toy --n 4 --starts 2 --adam-steps 100   # quick check
    python benchmarks/bench_batch.py --emulator payne-default --method nuts --stars .gpu/stars_snr100_64.npz --n 8 \
        --backends local processes --out benchmarks/results/batch_throughput_payne_default_nuts.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from _provenance import provenance  # noqa: E402

HERE = Path(__file__).resolve().parent


def toy_emulator():
    """A tiny Payne trained on the toy grid (5000-5100 A, R=30,000; ~15 s): for a quick check of this script."""
    from stellarfit.emulators import PayneEmulator, TrainConfig, train_emulator
    from stellarfit.emulators.toy import make_toy_grid
    from stellarfit.wavelengths import log_lambda_grid

    wavelength = log_lambda_grid(5000.0, 5100.0, 30_000.0, 3.0)
    train = make_toy_grid(256, wavelength.size, seed=1, window=(wavelength[0], wavelength[-1]))
    emulator = PayneEmulator.create(train.label_spec, train.wavelength, resolution=30_000.0, seed=0)
    config = TrainConfig(n_steps=300, batch_size=64, learning_rate=3e-3, progress=False)
    emulator = train_emulator(emulator, train, None, config).emulator
    emulator.metadata["name"] = "toy-payne"
    return emulator


def simulate(emulator, n: int, folder: Path, *, resolution: float, snr: float, seed: int) -> list[dict]:
    """Write n simulated spectra as generic FITS files; returns their true labels."""
    from stellarfit.inference import forward_model_for
    from stellarfit.spectra import ObservedSpectrum
    from stellarfit.wavelengths import log_lambda_grid

    low, high = (float(x) for x in emulator.wavelength_range)
    margin = 0.08 * (high - low)
    wavelength = log_lambda_grid(low + margin, high - margin, resolution, 3.0)
    model = forward_model_for(emulator, wavelength, resolution, rv_range=(-100.0, 100.0), vsini_max=30.0)
    spec = emulator.label_spec
    lower, upper = np.asarray(spec.lower, np.float64), np.asarray(spec.upper, np.float64)
    rng = np.random.default_rng(seed)
    continuum = 50.0 * (1 + 0.05 * (wavelength - wavelength.mean()) / (wavelength[-1] - wavelength[0]))
    truths = []
    for i in range(n):
        labels = lower + (0.2 + 0.6 * rng.uniform(size=lower.size)) * (upper - lower)
        rv, vsini = rng.uniform(-50.0, 50.0), rng.uniform(0.0, 10.0)
        normalized = np.asarray(model(np.asarray(labels, np.float32), rv, vsini), dtype=np.float64)
        flux = continuum * normalized + rng.normal(size=wavelength.size) * continuum / snr
        object_id = f"sim-{i:04d}"
        ObservedSpectrum.from_arrays(wavelength, flux, sigma=continuum / snr, resolution=resolution,
                                     metadata={"object_id": object_id}).write(folder / f"{object_id}.fits")
        truths.append({"object_id": object_id, **dict(zip(spec.names, map(float, labels))), "rv": rv, "vsini": vsini})
    return truths


def write_stars(path: str, n: int, folder: Path) -> None:
    """Write the first n held-out stars of a ``bench_gpu_fits.py stars`` npz as generic FITS files."""
    import sys

    sys.path.insert(0, str(HERE))
    from bench_gpu_fits import load_stars

    spectra, _, _ = load_stars(path)
    if n > len(spectra):
        raise SystemExit(f"--n {n}: {path} holds {len(spectra)} stars")
    from stellarfit.spectra import ObservedSpectrum

    for i, spectrum in enumerate(spectra[:n]):
        object_id = f"heldout-{i:04d}"
        ObservedSpectrum.from_arrays(spectrum.wavelength, spectrum.flux, ivar=spectrum.ivar, resolution=spectrum.resolution,
                                     metadata={"object_id": object_id}).write(folder / f"{object_id}.fits")


def measure(folder: Path, emulator, out: Path, *, backend: str, workers: int, options: dict, chunk_size: int | None,
            vectorize: int, method: str = "map") -> dict:
    from stellarfit.inference.batch import fit_batch_files
    from stellarfit.results import read_catalog

    extra = {"workers": workers, "chunk_size": chunk_size} if backend in ("ray", "processes") else {}
    if backend == "local-vectorized":
        backend, extra = "local", {"vectorize": vectorize}
    start = time.perf_counter()
    summary = fit_batch_files(folder, emulator, out, backend=backend, method=method, fit_options=options, progress=False,
                              **extra)
    wall = time.perf_counter() - start
    catalog = read_catalog(out)
    elapsed = np.asarray(catalog["elapsed_s"], np.float64)
    n = len(catalog)
    used = workers if backend in ("ray", "processes") else 1
    return {
        "n_spectra": n, "n_ok": summary.n_ok, "n_failed": summary.n_failed, "workers": used,
        "wall_s": wall, "spectra_per_hour": 3600.0 * n / wall,
        "sum_fit_elapsed_s": float(np.nansum(elapsed)), "max_fit_elapsed_s": float(np.nanmax(elapsed)),
        "median_fit_elapsed_s": float(np.nanmedian(elapsed)),
        "overhead_per_spectrum_s": (used * wall - float(np.nansum(elapsed))) / n,
    }


def agreement(local: Path, ray_catalog: Path) -> dict:
    """Largest absolute difference between the two catalogs, per numeric column group."""
    from stellarfit.results import read_catalog

    a, b = read_catalog(local), read_catalog(ray_catalog)
    same_rows = list(zip(a["source"], a["index"], a["status"])) == list(zip(b["source"], b["index"], b["status"]))
    worst = {}
    for name in a.colnames:
        if name == "elapsed_s" or np.asarray(a[name]).dtype.kind != "f":
            continue
        x, y = np.asarray(a[name], np.float64), np.asarray(b[name], np.float64)
        both = np.isfinite(x) & np.isfinite(y)
        if both.any():
            worst[name] = float(np.max(np.abs(x[both] - y[both])))
    return {"same_rows_and_status": same_rows, "max_abs_difference": max(worst.values(), default=0.0),
            "worst_column": max(worst, key=worst.get) if worst else None}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--emulator", required=True,
                        help="emulator directory or shipped name, or 'toy' (a tiny toy Payne trained on the spot)")
    parser.add_argument("--n", type=int, default=32, help="simulated spectra (default 32)")
    parser.add_argument("--workers", type=int, default=2, help="Ray workers or pinned worker processes (default 2)")
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="spectra per task (default: the library's, 8 for Ray and 1 for processes)")
    parser.add_argument("--backends", nargs="+", choices=["local", "local-vectorized", "processes", "ray"],
                        default=["local", "local-vectorized", "processes", "ray"])
    parser.add_argument("--resolution", type=float, default=None,
                        help="resolving power of the simulated spectra (default: 2/3 of the emulator's)")
    parser.add_argument("--snr", type=float, default=100.0)
    parser.add_argument("--starts", type=int, default=8, help="MAP starting points (default 8, as the CLI)")
    parser.add_argument("--adam-steps", type=int, default=150, help="Adam steps per start (default 150, as fit_star)")
    parser.add_argument("--vectorize", type=int, default=8,
                        help="spectra per vectorized MAP program for the backend 'local-vectorized' (default 8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--method", choices=["map", "nuts"], default="map", help="fit method (default map)")
    parser.add_argument("--stars", default=None,
                        help="fit the first N held-out stars of this bench_gpu_fits.py stars npz instead of simulated spectra")
    parser.add_argument("--out", default=str(HERE / "results" / "batch_throughput.json"))
    args = parser.parse_args(argv)

    from stellarfit.emulators import load_emulator

    emulator = toy_emulator() if args.emulator == "toy" else load_emulator(args.emulator)
    resolution = args.resolution or (2.0 / 3.0) * float(emulator.native_resolution)
    options = {"n_starts": args.starts, "adam_steps": args.adam_steps, "rv_range": (-100.0, 100.0), "vsini_max": 30.0,
               "seed": args.seed}
    if args.stars:  # held-out stars (RV within +-150 km/s): fit_star's default RV range and vsini_max
        options.update(rv_range=(-1000.0, 1000.0), vsini_max=100.0)
    report: dict = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "load_average": list(os.getloadavg())},
        "settings": {"emulator": args.emulator, "n": args.n, "workers": args.workers, "chunk_size": args.chunk_size,
                     "vectorize": args.vectorize, "method": args.method, "stars": args.stars,
                     "resolution": resolution, "snr": args.snr, "fit_options": {**options, "rv_range": list(options["rv_range"])}},
        "results": {},
    }
    with tempfile.TemporaryDirectory(prefix="stellarfit-bench-batch-") as work:
        work = Path(work)
        folder = work / "spectra"
        folder.mkdir()
        t0 = time.perf_counter()
        if args.stars:
            write_stars(args.stars, args.n, folder)
        else:
            simulate(emulator, args.n, folder, resolution=resolution, snr=args.snr, seed=args.seed)
        report["simulate_s"] = time.perf_counter() - t0
        for backend in args.backends:
            entry: dict = {}
            if backend == "ray":
                import ray

                t0 = time.perf_counter()
                with warnings.catch_warnings():  # Ray forks + execs its processes: JAX's fork warning does not apply
                    warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
                    ray.init(num_cpus=args.workers, include_dashboard=False)
                entry["ray_start_s"] = time.perf_counter() - t0
            try:
                for run in ("cold", "warm"):
                    entry[run] = measure(folder, emulator, work / f"{backend}_{run}.fits", backend=backend,
                                         workers=args.workers, options=options, chunk_size=args.chunk_size,
                                         vectorize=args.vectorize, method=args.method)
                    print(f"{backend:16s} {run}: {entry[run]['spectra_per_hour']:9.0f} spectra/hour, wall "
                          f"{entry[run]['wall_s']:7.1f} s, in fits {entry[run]['sum_fit_elapsed_s']:7.1f} s, overhead "
                          f"{1000 * entry[run]['overhead_per_spectrum_s']:7.1f} ms/spectrum", flush=True)
            finally:
                if backend == "ray":
                    ray.shutdown()
            report["results"][backend] = entry
        if {"local", "ray"} <= set(args.backends):
            report["agreement_local_vs_ray"] = agreement(work / "local_cold.fits", work / "ray_cold.fits")
            print("local vs ray:", report["agreement_local_vs_ray"])
        if {"local", "processes"} <= set(args.backends):
            report["agreement_local_vs_processes"] = agreement(work / "local_cold.fits", work / "processes_cold.fits")
            print("local vs processes:", report["agreement_local_vs_processes"])
        if {"local", "local-vectorized"} <= set(args.backends):
            report["agreement_local_vs_vectorized"] = agreement(work / "local_cold.fits", work / "local-vectorized_cold.fits")
            print("local vs local-vectorized:", report["agreement_local_vs_vectorized"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report["provenance"] = provenance()
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
