"""Re-score a calibration run made with --no-error-floor using an emulator's label error floors.

The floors are added in quadrature to each star's statistical error after the fit (they do not
change the fitted values), so a run without them can be scored with floors measured later,
e.g. on another split:

    python benchmarks/calibration_with_floors.py benchmarks/results/calibration_default_heldout-b_nofloor_from_default-fast.json default

Writes <run>_floored.{json,md}: per parameter and S/N, the robust z width without and with the
floors and the fraction of truths inside the 68% and 95% intervals with the floors.

``--also RUN2 ...`` scores several runs of the same settings as one (a run extended with
``bench_calibration.py --first-star K``): their stars are concatenated per S/N (a star that
appears twice is an error), NUTS diagnostics too, and ``--out`` names the result.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from _stars import robust_sigma
from _provenance import provenance


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="JSON written by bench_calibration.py --no-error-floor")
    parser.add_argument("emulator", help="shipped name or directory whose metadata holds label_error_floor")
    parser.add_argument("--also", nargs="*", default=[], help="further runs of the same settings (other stars) to merge")
    parser.add_argument("--out", default=None, help="output stem (default: <run>_floored)")
    args = parser.parse_args()

    from stellarfit.emulators import load_emulator

    document = merge_runs([json.loads(Path(run).read_text()) for run in [args.run, *args.also]], [args.run, *args.also])
    if not document["settings"].get("no_error_floor"):
        raise SystemExit(f"{args.run} was made with the floors already applied")
    floors = load_emulator(args.emulator).metadata.get("label_error_floor")
    if not floors:
        raise SystemExit(f"{args.emulator} records no label_error_floor (scripts/set_error_floor.py)")
    source = load_emulator(args.emulator).metadata.get("label_error_floor_source", {})
    runs = ", ".join(f"`{Path(run).name}`" for run in [args.run, *args.also])
    out = {"run": [Path(run).name for run in [args.run, *args.also]] if args.also else Path(args.run).name, "emulator": args.emulator, "floors": floors, "floor_source": source, "results": {}}
    lines = [f"{runs} (fits of `{document['emulator']}`) scored with the label error floors of "
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
                          "median_error_with": float(np.nanmedian(floored[:, j])),
                          "median_crb": float(np.nanmedian(np.array(per_star["crb"], dtype=float)[:, j]))}
        out["results"][snr] = {"n_stars": len(value), "parameters": rows}
        lines.append(f"### S/N {float(snr):g} ({len(value)} stars)\n")
        if result.get("nuts"):
            nuts = result["nuts"]
            out["results"][snr]["nuts"] = summary = nuts_summary(nuts)
            lines.append(f"NUTS: median {summary['median_gradients']:,.0f} gradients per fit (quartiles "
                         f"{summary['gradients_q25']:,.0f}-{summary['gradients_q75']:,.0f}); {summary['divergences']} divergences "
                         f"in {summary['n_fits']} fits; max R-hat {summary['max_r_hat']:.3f}; {summary['fits_min_ess_below_100']} "
                         "fits with a minimum bulk ESS below 100.\n")
        lines.append("| parameter | bias | scatter | floor | median error (with floor) | median CRB | z width without / with floor | inside 68% / 95% |")
        lines.append("|---|---|---|---|---|---|---|---|")
        for name, row in rows.items():
            lines.append(f"| {name} | {row['bias']:+.3g} | {row['scatter']:.3g} | {row['floor']:.3g} | {row['median_error_with']:.3g} | "
                         f"{row['median_crb']:.3g} | {row['z_width_without']:.2f} / {row['z_width_with']:.2f} | "
                         f"{100 * row['inside_68']:.0f}% / {100 * row['inside_95']:.0f}% |")
        lines.append("")
    stem = Path(args.out) if args.out else Path(str(Path(args.run).with_suffix("")) + "_floored")
    out["provenance"] = provenance()
    stem.with_suffix(".json").write_text(json.dumps(out, indent=1))
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def merge_runs(documents: list[dict], paths: list[str]) -> dict:
    """One document whose per-star arrays (and NUTS diagnostics) are those of all ``documents``, per S/N."""
    first = documents[0]
    # --n-stars may differ: a run of other n_stars draws other RVs, vsini and noise for a star, from the
    # same distributions, so runs of other stars pool; a star (its labels) twice is refused below
    ignore = {"first_star", "stop_star", "settings_piece", "n_stars", "out", "snr"}
    for document, path in zip(documents[1:], paths[1:]):
        # settings that bench_calibration.py gained later, at the values runs made before had
        before = {"method": "map"}
        a = {**before, **{k: v for k, v in first["settings"].items() if k not in ignore}}
        b = {**before, **{k: v for k, v in document["settings"].items() if k not in ignore}}
        if a != b or document["emulator"] != first["emulator"]:
            differ = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            raise SystemExit(f"{path} was made with other settings than {paths[0]} ({differ or 'emulator'})")
        # the noise of each S/N is drawn after that of the S/N listed before it: the runs' noise at an
        # S/N agrees when their --snr lists agree up to it ([30, 100] and [30] at S/N 30, not at 100)
        for snr in set(first["results"]) & set(document["results"]):
            lists = [[float(v) for v in d["settings"]["snr"]] for d in (first, document)]
            prefixes = [values[: values.index(float(snr)) + 1] for values in lists]
            if prefixes[0] != prefixes[1]:
                raise SystemExit(f"{path} drew its S/N {snr} noise after other S/N than {paths[0]} "
                                 f"(--snr {lists[1]} against {lists[0]})")
    merged = {**first, "results": {}}
    for snr in first["results"]:
        parts = [document["results"][snr] for document in documents if snr in document["results"]]
        per_star = {"names": parts[0]["per_star"]["names"]}
        for key in ("truth", "value", "error", "error_statistical", "crb"):
            per_star[key] = [row for part in parts for row in part["per_star"][key]]
        labels = [j for j, name in enumerate(per_star["names"]) if name not in ("rv", "vsini")]
        truths = [tuple(np.round(np.asarray(row)[labels], 6)) for row in per_star["truth"]]
        if len(set(truths)) != len(truths):
            raise SystemExit(f"S/N {snr}: the runs share stars; merge runs of different stars (--first-star)")
        result = {**parts[0], "per_star": per_star}
        if all(part.get("nuts") for part in parts):
            result["nuts"] = {key: [value for part in parts for value in part["nuts"][key]] for key in parts[0]["nuts"]}
        merged["results"][snr] = result
    return merged


def nuts_summary(nuts: dict) -> dict:
    gradients = np.array(nuts["gradient_evaluations_per_fit"], dtype=float)
    return {"n_fits": len(gradients), "median_gradients": float(np.median(gradients)),
            "gradients_q25": float(np.percentile(gradients, 25)), "gradients_q75": float(np.percentile(gradients, 75)),
            "divergences": int(np.sum(nuts["divergences_per_fit"])), "max_r_hat": float(np.max(nuts["max_r_hat_per_fit"])),
            "fits_min_ess_below_100": int(np.sum(np.array(nuts["min_ess_bulk_per_fit"]) < 100))}


if __name__ == "__main__":
    main()
