"""The shipped example star fitted with each shipped emulator: MAP cost on this machine and errors against the truth.

The example (``stellarfit.example_spectrum()``) is a Turbospectrum star no
emulator was trained on, observed at R = 22,500 and S/N 60 with RV 37.4 km/s
and vsini 4 km/s.  Each emulator fits it with ``fit_star(method="map")`` (RV
search, multi-start MAP, Laplace errors, CRB); the table gives the fit minus
the truth, the reported error, the CRB and the wall time of the first fit
(compilation included) and, with ``--repeat``, of a second one.

    python benchmarks/bench_emulator_fits.py --emulators payne-default default --n-starts 2

Results: benchmarks/results/emulator_fits_example.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--emulators", nargs="+", default=["payne-default", "default"])
    parser.add_argument("--n-starts", type=int, default=2)
    parser.add_argument("--repeat", action="store_true", help="time a second, compiled fit too")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    import jax

    import stellarfit as sf
    from stellarfit.data import example_truth

    spectrum, truth = sf.example_spectrum(), example_truth()
    document = {
        "benchmark": "bench_emulator_fits", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(jax.devices()[0]), "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "load_average_before": list(os.getloadavg()), "n_starts": args.n_starts, "truth": truth, "fits": {},
    }
    for name in args.emulators:
        emulator = sf.load_emulator(name)
        start = time.perf_counter()
        result = sf.fit_star(spectrum, emulator, method="map", n_starts=args.n_starts)
        first = time.perf_counter() - start
        second = None
        if args.repeat:
            start = time.perf_counter()
            sf.fit_star(spectrum, emulator, method="map", n_starts=args.n_starts)
            second = time.perf_counter() - start
        rows = {label: {"value": entry["value"], "error": entry["error"], "crb": entry["crb"],
                        "delta": entry["value"] - truth[label]} for label, entry in result.labels.items()}
        document["fits"][name] = {"model_type": emulator.model_type, "first_fit_s": first, "second_fit_s": second,
                                  "reduced_chi2": result.reduced_chi2, "flags": int(result.flags), "labels": rows}
        print(f"{name}: {first:.1f} s (first)" + (f", {second:.1f} s (second)" if second else ""), flush=True)
    document["load_average_after"] = list(os.getloadavg())
    names = list(document["fits"])
    labels = list(next(iter(document["fits"].values()))["labels"])
    lines = [f"The shipped example star fitted by MAP with each shipped emulator ({document['device']}, "
             f"{document['cpu_count']} cores, {args.n_starts} starts, {document['date']}).", "",
             "| parameter | truth | " + " | ".join(f"{n}: fit - truth (error, CRB)" for n in names) + " |",
             "|---|---|" + "---|" * len(names)]
    for label in labels:
        cells = []
        for name in names:
            row = document["fits"][name]["labels"][label]
            cells.append(f"{row['delta']:+.3g} ({row['error']:.2g}, {row['crb']:.2g})")
        lines.append(f"| {label} | {truth[label]:.4g} | " + " | ".join(cells) + " |")
    lines.append("| reduced chi2 | | " + " | ".join(f"{document['fits'][n]['reduced_chi2']:.3f}" for n in names) + " |")
    lines.append("| first fit [s] (compiles) | | " + " | ".join(f"{document['fits'][n]['first_fit_s']:.0f}" for n in names) + " |")
    if args.repeat:
        lines.append("| second fit [s] | | " + " | ".join(f"{document['fits'][n]['second_fit_s']:.0f}" for n in names) + " |")
    out = Path(args.out or HERE / "results" / "emulator_fits_example")
    out.with_suffix(".json").write_text(json.dumps(document, indent=1, default=float))
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
