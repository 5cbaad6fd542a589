"""NUTS cost with each map from z to the parameter boxes (fit_star's ``z_transform``), star by star.

Fits held-out stars (a ``bench_gpu_fits.py stars`` npz: the first stars of the
S/N-100 heldout-b calibration set, same spectra and noise) with
``fit_star(method="nuts", seed=k, error_floor=False, z_transform=T)``, which
for "logit" is exactly what ``bench_calibration.py --method nuts`` ran on star k.
Records per star and transform: gradients (warm-up + draws, 4 chains), the
smallest bulk ESS, R-hat, divergences, and the posterior medians and widths
(the posterior in theta must not depend on the transform).  ``--reference``
takes a calibration JSON for the logit column instead of refitting.  Resumes
from its JSON.

    python benchmarks/bench_z_transform.py --stars .gpu/stars_snr100.npz --transforms probit \\
        --reference benchmarks/results/calibration_payne-default_heldout-b_nofloor_nuts_snr100.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stars", required=True)
    parser.add_argument("--emulator", default="payne-default")
    parser.add_argument("--transforms", nargs="+", default=["probit"])
    parser.add_argument("--star-indices", type=int, nargs="+", default=None)
    parser.add_argument("--seed-offset", type=int, default=0,
                        help="fit star k with seed k + this (the column is then named TRANSFORM/seed+OFFSET): "
                             "a second seed measures how much of a difference is the sampler's own randomness")
    parser.add_argument("--reference", default=None, help="calibration JSON whose per-fit NUTS numbers are the logit column")
    parser.add_argument("--out", default=str(HERE / "results" / "z_transform_payne-default"))
    args = parser.parse_args()

    import stellarfit as sf
    from bench_gpu_fits import load_stars

    spectra, truth, names = load_stars(args.stars)
    indices = args.star_indices if args.star_indices is not None else list(range(len(spectra)))
    out = Path(args.out)
    path = out.with_suffix(".json")
    document = json.loads(path.read_text()) if path.exists() else {
        "benchmark": "bench_z_transform", "emulator": args.emulator, "stars_file": args.stars,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(), "cpu_count": os.cpu_count(), "runs": []}
    done = {(run["star"], run["transform"]) for run in document["runs"]}
    emulator = sf.load_emulator(args.emulator)
    for k in indices:
        for z_transform in args.transforms:  # star by star, the transforms alternating
            transform = z_transform if not args.seed_offset else f"{z_transform}/seed+{args.seed_offset}"
            if (k, transform) in done:
                continue
            start = time.perf_counter()
            result = sf.fit_star(spectra[k], emulator, "nuts", seed=k + args.seed_offset, error_floor=False,
                                 z_transform=z_transform)
            d = result.diagnostics
            draws = np.asarray(result.samples).reshape(-1, len(result.names))
            run = {"star": k, "transform": transform, "seed": k + args.seed_offset, "seconds": time.perf_counter() - start,
                   "gradients": int(d["gradient_evaluations"]) + int(d["gradient_evaluations_warmup"]),
                   "gradients_warmup": int(d["gradient_evaluations_warmup"]), "min_ess_bulk": float(min(d["ess_bulk"].values())),
                   "max_r_hat": float(max(d["r_hat"].values())), "divergences": int(d["divergences"]),
                   "probit": d["posterior"].get("probit", []),
                   "median": np.median(draws, axis=0).tolist(),
                   "half_width": (0.5 * (np.percentile(draws, 84, axis=0) - np.percentile(draws, 16, axis=0))).tolist()}
            document["runs"].append(run)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(document, indent=1))
            print(f"star {k} {transform}: {run['gradients']} gradients, min ESS {run['min_ess_bulk']:.0f}, "
                  f"R-hat {run['max_r_hat']:.3f}, {run['divergences']} divergences", flush=True)
    write_table(document, args.reference, out)


def write_table(document: dict, reference: str | None, out: Path) -> None:
    rows = {}
    for run in document["runs"]:
        rows.setdefault(run["star"], {})[run["transform"]] = run
    if reference:
        nuts = next(iter(json.loads(Path(reference).read_text())["results"].values()))["nuts"]
        for k in rows:
            rows[k].setdefault("logit", {"gradients": nuts["gradient_evaluations_per_fit"][k],
                                         "min_ess_bulk": nuts["min_ess_bulk_per_fit"][k], "max_r_hat": nuts["max_r_hat_per_fit"][k],
                                         "divergences": nuts["divergences_per_fit"][k]})
    transforms = sorted({t for r in rows.values() for t in r}, key=lambda t: (t != "logit", t))
    lines = [f"# NUTS cost per map from z to the boxes ({document['emulator']}, {document['stars_file']}; "
             "gradients = warm-up + draws of 4 chains x (500 + 500))", "",
             "| star | " + " | ".join(f"{t}: gradients / min ESS / R-hat" for t in transforms) + " |",
             "|---|" + "---|" * len(transforms)]
    for k in sorted(rows):
        cells = [f"{rows[k][t]['gradients']:,} / {rows[k][t]['min_ess_bulk']:.0f} / {rows[k][t]['max_r_hat']:.3f}"
                 if t in rows[k] else "" for t in transforms]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines.append("")
    for t in transforms:
        if t == "logit":
            continue
        pair = [k for k in rows if t in rows[k] and "logit" in rows[k]]
        if not pair:
            continue
        g = {u: np.array([rows[k][u]["gradients"] for k in pair], dtype=float) for u in ("logit", t)}
        low = {u: int(sum(rows[k][u]["min_ess_bulk"] < 100 for k in pair)) for u in ("logit", t)}
        lines.append(f"- {t} against logit on the same {len(pair)} stars: total gradients {g[t].sum():,.0f} against "
                     f"{g['logit'].sum():,.0f} ({g[t].sum() / g['logit'].sum():.2f}x), median {np.median(g[t]):,.0f} against "
                     f"{np.median(g['logit']):,.0f}, median per-star ratio {np.median(g[t] / g['logit']):.2f}, largest "
                     f"{g[t].max():,.0f} against {g['logit'].max():,.0f}; fits with a minimum bulk ESS below 100: {low[t]} against {low['logit']}")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
