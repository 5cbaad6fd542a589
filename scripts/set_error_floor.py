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
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("calibration", help="JSON written by bench_calibration.py --split validation --no-error-floor")
    parser.add_argument("name", help="shipped emulator name")
    args = parser.parse_args()

    import numpy as np

    from stellarfit.emulators import load_emulator
    from stellarfit.emulators.registry import shipped_emulator_path

    document = json.loads(Path(args.calibration).read_text())
    split = document["settings"].get("split")
    if split not in ("validation", "heldout-a") or not document["settings"].get("no_error_floor"):
        raise SystemExit("use a calibration run on the validation (or heldout-a) split made with --no-error-floor")
    if document["emulator"] != args.name:
        raise SystemExit(f"{args.calibration} fitted {document['emulator']!r}, not {args.name!r}")
    snr = max(document["results"], key=float)
    parameters = document["results"][snr]["parameters"]
    path = shipped_emulator_path(args.name)
    emulator = load_emulator(path)
    floors = {}
    for name in (*emulator.label_names, "rv", "vsini"):
        row = parameters[name]
        floors[name] = float(np.sqrt(max(row["scatter"] ** 2 - row["median_error_statistical"] ** 2, 0.0)))
    # edit the metadata in emulator.json only (the arrays stay byte-identical)
    meta_path = Path(path) / "emulator.json"
    meta = json.loads(meta_path.read_text())
    meta["metadata"]["label_error_floor"] = floors
    meta["metadata"]["label_error_floor_source"] = {
        "run": Path(args.calibration).name, "snr": float(snr), "n_stars": document["results"][snr]["n_fitted"],
        "resolution": document["settings"]["resolution"], "split": split,
        **({"fitted_from": document["init_from"]} if document.get("init_from") else {})}
    meta_path.write_text(json.dumps(meta, indent=1, allow_nan=False))
    reloaded = load_emulator(path)
    assert reloaded.metadata["label_error_floor"] == floors and reloaded.pixel_error is not None
    lines = [f"- Label error floors (added in quadrature to fit errors; from {document['results'][snr]['n_fitted']} "
             f"{split}-split stars at S/N {float(snr):g}, R = {document['settings']['resolution']:g}, "
             f"`scripts/set_error_floor.py`): " + ", ".join(f"{k} {v:.3g}" for k, v in floors.items())]
    provenance = Path(path) / "PROVENANCE.md"
    text = provenance.read_text()
    text = "\n".join(line for line in text.splitlines() if not line.startswith(lines[0].split(";")[0])) + "\n"
    provenance.write_text(text + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
