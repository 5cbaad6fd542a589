"""Turbospectrum engine: seconds per spectrum, spectra per hour, and the error of the synthesis step.

    python benchmarks/bench_turbospectrum.py                # serial + all-cores timing, default window
    python benchmarks/bench_turbospectrum.py --quick        # 5000-5100 A, fewer spectra
    python benchmarks/bench_turbospectrum.py --step-accuracy  # error of 0.01/0.02/0.03 A steps vs 0.005 A
    python benchmarks/bench_turbospectrum.py --hydrogen      # effect/cost of hydrogen lines near 5000 A
    python benchmarks/bench_turbospectrum.py --from-parts ~/.cache/stellarfit/grids/ts_default_2000.h5.parts

``--from-parts`` reads the chunk files of a running or finished ``stellarfit grid``
run and reports its measured throughput (spectra per hour with all its workers).

Writes benchmarks/results/turbospectrum*.json and prints a markdown table.  The
machine's load average is recorded: timings taken while other work runs are slower.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from _provenance import provenance

RESULTS = Path(__file__).parent / "results"


def _labels(n: int, seed: int = 1) -> list[dict[str, float]]:
    from stellarfit.grids import sample_labels
    from stellarfit.labels import default_label_spec

    spec = default_label_spec()
    return [spec.to_dict(row) for row in sample_labels(spec, n, method="uniform", seed=seed)]


def _one(args):
    window, labels = args
    from stellarfit.synth.turbospectrum import TurbospectrumEngine

    engine = TurbospectrumEngine(window=window)
    start = time.perf_counter()
    engine.synthesize({k: float(v) for k, v in labels.items()})
    return time.perf_counter() - start


def bench_timing(window, n_serial: int, n_parallel: int, workers: int) -> dict:
    labels = _labels(max(n_serial, n_parallel))
    serial = [_one((window, labels[i])) for i in range(n_serial)]
    start = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_one, [(window, labels[i]) for i in range(n_parallel)]))
    wall = time.perf_counter() - start
    return {
        "window": list(window),
        "seconds_per_spectrum_one_core": float(np.median(serial)),
        "seconds_per_spectrum_all": serial,
        "workers": workers,
        "n_parallel": n_parallel,
        "spectra_per_hour_all_cores": 3600.0 * n_parallel / wall,
    }


def bench_step_accuracy(window=(5000.0, 5100.0)) -> dict:
    from stellarfit.synth.turbospectrum import TurbospectrumEngine

    stars = {"sun": {"teff": 5777.0, "logg": 4.44, "fe_h": 0.0}, "metal_poor_giant": {"teff": 4800.0, "logg": 2.0, "fe_h": -1.5, "alpha_fe": 0.4}}
    out = {}
    for name, labels in stars.items():
        reference = TurbospectrumEngine(window=window, step=0.005).synthesize(labels)[0]
        rows = {}
        for step in (0.01, 0.02, 0.03):
            start = time.perf_counter()
            flux = TurbospectrumEngine(window=window, step=step).synthesize(labels)[0]
            diff = flux - reference
            rows[str(step)] = {"max_abs": float(np.abs(diff).max()), "rms": float(np.sqrt(np.mean(diff**2))), "seconds": time.perf_counter() - start}
        out[name] = rows
    return {"window": list(window), "resolution": 30000, "reference_step": 0.005, "errors": out}


def bench_hydrogen(window=(5000.0, 5040.0)) -> dict:
    """Effect and cost of Turbospectrum's hydrogen lines (H-beta wing) at the blue edge of the default window."""
    from stellarfit.synth.turbospectrum import TurbospectrumEngine

    stars = {"sun": {"teff": 5777.0, "logg": 4.44, "fe_h": 0.0}, "hot_dwarf": {"teff": 7000.0, "logg": 4.0, "fe_h": 0.0},
             "hot_metal_poor": {"teff": 7000.0, "logg": 5.0, "fe_h": -2.0}}
    out = {}
    for name, labels in stars.items():
        runs = {}
        for hydrogen in (True, False):
            start = time.perf_counter()
            flux = TurbospectrumEngine(window=window, hydrogen_lines=hydrogen).synthesize(labels)[0]
            runs[hydrogen] = (flux, time.perf_counter() - start)
        out[name] = {"max_abs_diff": float(np.abs(runs[True][0] - runs[False][0]).max()),
                     "seconds_with": runs[True][1], "seconds_without": runs[False][1]}
    return {"window": list(window), "stars": out}


def from_parts(parts: Path) -> dict:
    chunks = sorted(parts.glob("chunk_*.npz"))
    if len(chunks) < 2:
        raise SystemExit(f"{parts}: need at least two finished chunks")
    times = np.array(sorted(p.stat().st_mtime for p in chunks))
    sizes = []
    for path in chunks:
        with np.load(path) as data:
            sizes.append(int(data["indices"].size))
    manifest = json.loads((parts / "manifest.json").read_text())
    span = times[-1] - times[0]
    spectra = sum(sizes) - sizes[0]
    return {
        "parts": str(parts),
        "chunks_done": len(chunks),
        "spectra_done": sum(sizes),
        "n_requested": manifest.get("n_spectra"),
        "spectra_per_hour": 3600.0 * spectra / span if span > 0 else None,
        "hours_left": (manifest.get("n_spectra", sum(sizes)) - sum(sizes)) / (spectra / span * 3600.0) if span > 0 else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--step-accuracy", action="store_true")
    parser.add_argument("--from-parts", type=Path)
    parser.add_argument("--hydrogen", action="store_true")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    info = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "load_average_before": os.getloadavg()}
    if args.from_parts:
        result = {**info, **from_parts(args.from_parts.expanduser())}
        name = "turbospectrum_grid_run.json"
        print(f"| chunks | spectra | spectra/hour | hours left |\n|---|---|---|---|\n| {result['chunks_done']} | {result['spectra_done']} | {result['spectra_per_hour']:.0f} | {result['hours_left']:.2f} |")
    elif args.hydrogen:
        result = {**info, **bench_hydrogen()}
        name = "turbospectrum_hydrogen.json"
        print("| star | max abs diff (with - without H lines) | s with | s without |\n|---|---|---|---|")
        for star, row in result["stars"].items():
            print(f"| {star} | {row['max_abs_diff']:.5f} | {row['seconds_with']:.1f} | {row['seconds_without']:.1f} |")
    elif args.step_accuracy:
        result = {**info, **bench_step_accuracy()}
        name = "turbospectrum_step_accuracy.json"
        print("| star | step [A] | max abs err | rms err | seconds |\n|---|---|---|---|---|")
        for star, rows in result["errors"].items():
            for step, row in rows.items():
                print(f"| {star} | {step} | {row['max_abs']:.4f} | {row['rms']:.5f} | {row['seconds']:.1f} |")
    else:
        window = (5000.0, 5100.0) if args.quick else (5000.0, 5500.0)
        n = 2 if args.quick else 4
        result = {**info, **bench_timing(window, n_serial=n, n_parallel=2 * args.workers, workers=args.workers)}
        name = "turbospectrum_timing.json"
        print(f"| window [A] | s/spectrum (1 core) | spectra/hour ({args.workers} workers) |\n|---|---|---|\n"
              f"| {window[0]:g}-{window[1]:g} | {result['seconds_per_spectrum_one_core']:.1f} | {result['spectra_per_hour_all_cores']:.0f} |")
    result["load_average_after"] = os.getloadavg()
    result["provenance"] = provenance()
    (RESULTS / name).write_text(json.dumps(result, indent=2))
    print(f"saved {RESULTS / name}")


if __name__ == "__main__":
    main()
