"""Record per-label error floors in a shipped emulator from an injection-recovery run.

The floors come from `benchmarks/bench_calibration.py --split validation --no-error-floor`
(held-out spectra of the VALIDATION split, so the test split stays for checking), or
`--split heldout-a` (the first half of an independent grid; heldout-b stays for checking):
for each label, floor = sqrt(max(scatter^2 - median statistical error^2, 0)) at the
highest S/N of that run, where the emulator's own systematic error dominates.
The same is done for the nuisance parameters rv and vsini (the emulator's line profiles are
not exact, so vsini absorbs part of its error; an rv floor is 0 where the fits' errors already
cover the scatter).  `fit_star` adds the floors in quadrature to the reported errors
(``error_floor=True``).

    python scripts/set_error_floor.py benchmarks/results/calibration_payne-default_validation_nofloor.json payne-default
    python scripts/set_error_floor.py benchmarks/results/calibration_default_heldout-a_nofloor_from_default-fast.json default

``--also RUN2 ...`` measures the floors on several runs of the same settings as one (a run extended
with ``bench_calibration.py --first-star K``: other stars, the same noise draws), their stars
pooled as ``benchmarks/calibration_with_floors.py --also`` pools them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("calibration", help="JSON written by bench_calibration.py --split validation --no-error-floor")
    parser.add_argument("name", help="shipped emulator name")
    parser.add_argument("--also", nargs="*", default=[], help="further runs of the same settings (other stars) to pool")
    args = parser.parse_args()

    import numpy as np

    from _stars import robust_sigma
    from calibration_with_floors import merge_runs

    from stellarfit.emulators import load_emulator
    from stellarfit.emulators.registry import shipped_emulator_path

    paths = [args.calibration, *args.also]
    document = merge_runs([json.loads(Path(run).read_text()) for run in paths], paths)
    split = document["settings"].get("split")
    if split not in ("validation", "heldout-a") or not document["settings"].get("no_error_floor"):
        raise SystemExit("use a calibration run on the validation (or heldout-a) split made with --no-error-floor")
    if document["emulator"] != args.name:
        raise SystemExit(f"{args.calibration} fitted {document['emulator']!r}, not {args.name!r}")
    snr = max(document["results"], key=float)
    per_star = document["results"][snr]["per_star"]
    names = per_star["names"]
    delta = np.array(per_star["value"], dtype=float) - np.array(per_star["truth"], dtype=float)
    statistical = np.array(per_star["error_statistical"], dtype=float)
    n_stars = len(delta)
    path = shipped_emulator_path(args.name)
    emulator = load_emulator(path)
    floors = {}
    for name in (*emulator.label_names, "rv", "vsini"):
        j = names.index(name)
        scatter, typical = robust_sigma(delta[:, j]), float(np.nanmedian(statistical[:, j]))
        floors[name] = float(np.sqrt(max(scatter**2 - typical**2, 0.0)))
    # edit the metadata in emulator.json only (the arrays stay byte-identical)
    meta_path = Path(path) / "emulator.json"
    meta = json.loads(meta_path.read_text())
    meta["metadata"]["label_error_floor"] = floors
    meta["metadata"]["label_error_floor_source"] = {
        "run": Path(args.calibration).name if not args.also else [Path(run).name for run in paths],
        "snr": float(snr), "n_stars": n_stars,
        "resolution": document["settings"]["resolution"], "split": split,
        **({"fitted_from": document["init_from"]} if document.get("init_from") else {})}
    meta_path.write_text(json.dumps(meta, indent=1, allow_nan=False))
    reloaded = load_emulator(path)
    assert reloaded.metadata["label_error_floor"] == floors and reloaded.pixel_error is not None
    lines = [f"- Label error floors (added in quadrature to fit errors; from {n_stars} "
             f"{split}-split stars at S/N {float(snr):g}, R = {document['settings']['resolution']:g}, "
             f"`scripts/set_error_floor.py`): " + ", ".join(f"{k} {v:.3g}" for k, v in floors.items())]
    provenance = Path(path) / "PROVENANCE.md"
    text = provenance.read_text()
    text = "\n".join(line for line in text.splitlines() if not line.startswith(lines[0].split(";")[0])) + "\n"
    provenance.write_text(text + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
