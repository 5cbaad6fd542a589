"""Re-score a calibration run made with --no-error-floor using an emulator's label error floors.

The floors are added in quadrature to each star's statistical error after the fit (they do not
change the fitted values), so a run without them can be scored with floors measured later,
e.g. on another split:

    python benchmarks/calibration_with_floors.py benchmarks/results/calibration_default_heldout-b_nofloor_from_default-fast.json default

Writes <run>_floored.{json,md}: per parameter and S/N, the robust z width without and with the
floors and the fraction of truths inside the 68% and 95% intervals with the floors.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from _stars import robust_sigma


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="JSON written by bench_calibration.py --no-error-floor")
    parser.add_argument("emulator", help="shipped name or directory whose metadata holds label_error_floor")
    args = parser.parse_args()

    from stellarfit.emulators import load_emulator

    document = json.loads(Path(args.run).read_text())
    if not document["settings"].get("no_error_floor"):
        raise SystemExit(f"{args.run} was made with the floors already applied")
    floors = load_emulator(args.emulator).metadata.get("label_error_floor")
    if not floors:
        raise SystemExit(f"{args.emulator} records no label_error_floor (scripts/set_error_floor.py)")
    source = load_emulator(args.emulator).metadata.get("label_error_floor_source", {})
    out = {"run": Path(args.run).name, "emulator": args.emulator, "floors": floors, "floor_source": source, "results": {}}
    lines = [f"`{Path(args.run).name}` (fits of `{document['emulator']}`) scored with the label error floors of "
             f"`{args.emulator}` (from {source.get('n_stars', '?')} {source.get('split', '?')}-split stars at S/N "
             f"{source.get('snr', '?')}), added in quadrature to each star's statistical error.\n"]
    for snr, result in document["results"].items():
        per_star = result["per_star"]
        names = per_star["names"]
        truth, value = np.array(per_star["truth"]), np.array(per_star["value"])
        statistical = np.array(per_star["error_statistical"])
        floor = np.array([floors.get(name, 0.0) for name in names])
        floored = np.hypot(statistical, floor[None, :])
        delta = value - truth
        rows = {}
        for j, name in enumerate(names):
            with np.errstate(divide="ignore", invalid="ignore"):  # an error of 0 or NaN (e.g. vsini at 0): z is not finite
                z_plain, z_floor = delta[:, j] / statistical[:, j], delta[:, j] / floored[:, j]
            rows[name] = {"floor": float(floor[j]), "scatter": robust_sigma(delta[:, j]), "bias": float(np.median(delta[:, j])),
                          "z_width_without": robust_sigma(z_plain), "z_width_with": robust_sigma(z_floor),
                          "inside_68": float(np.mean(np.abs(z_floor[np.isfinite(z_floor)]) < 1.0)),
                          "inside_95": float(np.mean(np.abs(z_floor[np.isfinite(z_floor)]) < 1.96)),
                          "median_error_with": float(np.nanmedian(floored[:, j])), "median_crb": result["parameters"][name]["median_crb"]}
        out["results"][snr] = {"n_stars": len(value), "parameters": rows}
        lines.append(f"### S/N {float(snr):g} ({len(value)} stars)\n")
        lines.append("| parameter | bias | scatter | floor | median error (with floor) | median CRB | z width without / with floor | inside 68% / 95% |")
        lines.append("|---|---|---|---|---|---|---|---|")
        for name, row in rows.items():
            lines.append(f"| {name} | {row['bias']:+.3g} | {row['scatter']:.3g} | {row['floor']:.3g} | {row['median_error_with']:.3g} | "
                         f"{row['median_crb']:.3g} | {row['z_width_without']:.2f} / {row['z_width_with']:.2f} | "
                         f"{100 * row['inside_68']:.0f}% / {100 * row['inside_95']:.0f}% |")
        lines.append("")
    stem = Path(args.run).with_suffix("")
    Path(str(stem) + "_floored.json").write_text(json.dumps(out, indent=1))
    Path(str(stem) + "_floored.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
