"""Real benchmark stars fitted through the CLI as a user would, against their literature labels.

Every star in benchmarks/real_stars.json (files in ../shared/real) is fitted from its file
at native resolution with ``stellarfit fit FILE --resolution R --air --json`` (sharper
spectra are degraded to the emulator's resolution by stellarfit itself), with each
emulator, method and physics-error setting asked for:

- ``default``: the shipped physics error (measured on the calibration stars, so a star
  in that set is not held out);
- ``none``: no physics error;
- ``loo``: leave-one-out: a physics error measured without the star
  (``scripts/calibrate_physics_error.py --exclude STAR [--linelist FILE]``; needs Turbospectrum);
- a file made by ``scripts/calibrate_physics_error.py``.

    python benchmarks/bench_real_stars.py [--emulators payne-default] [--methods map]
        [--physics default none loo] [--stars Sun Procyon] [--out benchmarks/results/real_stars]

Writes OUT.json (one row per fit: fitted and literature labels, errors, offsets in
errors, reduced chi2, flags, seconds) and OUT.md (the table in docs/validation/real_stars.md);
``--plot FILE.png`` also draws every fit's spectrum, model and residual.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _provenance import provenance

ROOT = Path(__file__).resolve().parents[1]
MAIN_LABELS = ("teff", "logg", "fe_h")
BOX = {"teff": (4000.0, 7000.0), "logg": (1.0, 5.0), "fe_h": (-2.5, 0.5)}


def fit(star: dict, real: Path, emulator: str, method: str, physics: str, save: Path | None = None) -> dict:
    command = [sys.executable, "-m", "stellarfit.cli.main", "fit", str(real / star["file"]), "--emulator", emulator,
               "--method", method, "--resolution", str(star["resolution"]), "--json", "--physics-error", physics]
    if save is not None:
        command += ["--save", str(save)]
    command.append("--air" if star.get("air") else "--vacuum")
    if star.get("snr"):
        command += ["--snr", str(star["snr"])]
    start = time.time()
    done = subprocess.run(command, capture_output=True, text=True)
    elapsed = time.time() - start
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}",
                "seconds": elapsed}
    document = json.loads(done.stdout)
    return {"document": document, "seconds": elapsed, "stderr": [line for line in done.stderr.splitlines() if line.strip()][-6:]}


def row_of(star: dict, emulator: str, method: str, physics: str, outcome: dict) -> dict:
    row = {"star": star["name"], "emulator": emulator, "method": method, "physics_error": physics,
           "literature": {k: star["labels"][k] for k in MAIN_LABELS}, "seconds": round(outcome["seconds"], 1)}
    if "error" in outcome:
        row["error"] = outcome["error"]
        return row
    document = outcome["document"]
    labels = document["labels"]
    row["fitted"] = {k: labels[k]["value"] for k in MAIN_LABELS}
    row["errors"] = {k: labels[k]["error"] for k in MAIN_LABELS}
    row["all_labels"] = {k: v["value"] for k, v in labels.items()}
    row["offset"] = {k: labels[k]["value"] - star["labels"][k] for k in MAIN_LABELS}
    # the offset in units of the reported error and the literature error together
    row["offset_sigma"] = {k: row["offset"][k] / float(np.hypot(labels[k]["error"], star.get("errors", {}).get(k, 0.0)))
                           for k in MAIN_LABELS}
    row["reduced_chi2"] = document.get("reduced_chi2")
    row["flags"] = document.get("flag_names", document.get("flags"))
    row["snr"] = document.get("snr")
    # the model mismatch as an RMS of the continuum, and the reduced chi2 it would give at S/N 150
    # (noise and mismatch add in quadrature): the real files' own S/N is 300-1500 per native pixel
    if row["reduced_chi2"] is not None and row["snr"]:
        mismatch = float(np.sqrt(max(row["reduced_chi2"] - 1.0, 0.0))) / float(row["snr"])
        row["mismatch_rms"] = mismatch
        row["reduced_chi2_at_snr150"] = 1.0 + (150.0 * mismatch) ** 2
    row["vsini"] = document.get("vsini", {}).get("value")
    row["notes"] = outcome.get("stderr", [])
    return row


def plot_residuals(saved: list[tuple[str, Path]], out: Path) -> None:
    """Observed spectrum and model around Mg b (top) and the residual over the window (bottom), per fit,
    read from the fit files (SPECTRUM HDU: WAVELENGTH, FLUX, IVAR, MODEL_FLUX)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from astropy.io import fits

    figure, axes = plt.subplots(len(saved), 2, figsize=(12, 2.4 * len(saved)), squeeze=False,
                                gridspec_kw={"width_ratios": [1, 2]})
    for (title, path), (left, right) in zip(saved, axes):
        with fits.open(path) as hdus:
            table = hdus["SPECTRUM"].data
            wavelength, flux, ivar, model = (np.asarray(table[c], float) for c in ("WAVELENGTH", "FLUX", "IVAR", "MODEL_FLUX"))
        good = (ivar > 0) & np.isfinite(flux) & np.isfinite(model)
        scale = np.nanmedian(model[good])
        zoom = good & (wavelength > 5165) & (wavelength < 5190)
        left.plot(wavelength[zoom], flux[zoom] / scale, "k-", lw=0.7, label="observed")
        left.plot(wavelength[zoom], model[zoom] / scale, "r-", lw=0.7, label="model")
        left.set_title(title.split(":")[0], fontsize=9, loc="left")
        residual = (flux - model) / scale
        rms = float(np.sqrt(np.mean(residual[good] ** 2)))
        right.plot(wavelength[good], residual[good], "k-", lw=0.3)
        right.axhline(0, color="r", lw=0.5)
        right.set_ylim(-0.15, 0.15)
        right.set_title(f"{title.split(': ', 1)[-1]}; observed - model (continuum units), RMS {rms:.4f}", fontsize=9, loc="left")
    axes[0, 0].legend(fontsize=8, loc="lower left")
    axes[-1, 0].set_xlabel("vacuum wavelength [A]")
    axes[-1, 1].set_xlabel("vacuum wavelength [A]")
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    print(f"wrote {out}")


def inside_box(star: dict) -> bool:
    return all(BOX[k][0] < star["labels"][k] < BOX[k][1] for k in MAIN_LABELS) and star["labels"]["teff"] < 7000


def loo_floors(rows: list[dict]) -> list[dict]:
    """Leave-one-out label error floors from real stars, per (emulator, method, physics) group: for each
    star, the floor of each label measured on the OTHER stars (the RMS offset beyond their reported
    errors, sqrt(max(mean(offset^2 - error^2), 0))), and the star's offset in units of its error
    with that floor added in quadrature."""
    groups: dict = {}
    for row in rows:
        if "fitted" in row:
            groups.setdefault((row["emulator"], row["method"], row["physics_error"]), []).append(row)
    out = []
    for (emulator, method, physics), members in groups.items():
        if len(members) < 3:
            continue
        for row in members:
            others = [r for r in members if r is not row]
            floor = {k: float(np.sqrt(max(np.mean([r["offset"][k] ** 2 - r["errors"][k] ** 2 for r in others]), 0.0)))
                     for k in MAIN_LABELS}
            z = {k: row["offset"][k] / float(np.hypot(row["errors"][k], floor[k])) for k in MAIN_LABELS}
            out.append({"emulator": emulator, "method": method, "physics_error": physics, "star": row["star"],
                        "floor_from_others": floor, "offset_over_error_with_floor": z})
    return out


def summarize(rows: list[dict], stars: dict) -> list[dict]:
    groups: dict = {}
    for row in rows:
        if "fitted" in row and inside_box(stars[row["star"]]) and stars[row["star"]]["labels"]["fe_h"] > -1.0:
            groups.setdefault((row["emulator"], row["method"], row["physics_error"]), []).append(row)
    out = []
    for (emulator, method, physics), members in groups.items():
        offsets = {k: [abs(r["offset"][k]) for r in members] for k in MAIN_LABELS}
        within = [all(abs(r["offset_sigma"][k]) <= 3 for k in MAIN_LABELS) for r in members]
        out.append({"emulator": emulator, "method": method, "physics_error": physics, "n_stars": len(members),
                    "median_abs_offset": {k: float(np.median(v)) for k, v in offsets.items()},
                    "within_3_errors": f"{sum(within)}/{len(within)}"})
    return out


def markdown(rows: list[dict], summary: list[dict], revision: str) -> str:
    lines = [f"Real benchmark stars (commit {revision[:10]}): fitted - literature; in brackets the offset in "
             "reported errors (literature errors added in quadrature).", "",
             "| star | emulator | method | physics error | Teff | logg | [Fe/H] | reduced chi2 (at S/N 150) | flags | s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['star']} | {r['emulator']} | {r['method']} | {r['physics_error']} | failed: {r['error']} | | | | | {r['seconds']} |")
            continue
        cells = [f"{r['fitted'][k]:.{0 if k == 'teff' else 2}f} ({r['offset'][k]:+.{0 if k == 'teff' else 2}f}, "
                 f"{r['offset_sigma'][k]:+.1f} sigma)" for k in MAIN_LABELS]
        flags = ", ".join(r["flags"]) if isinstance(r["flags"], list) else str(r["flags"])
        lines.append(f"| {r['star']} | {r['emulator']} | {r['method']} | {r['physics_error']} | " + " | ".join(cells)
                     + f" | {r['reduced_chi2']:.2f} ({r.get('reduced_chi2_at_snr150', float('nan')):.2f}) | {flags} | {r['seconds']:.0f} |")
    floors = loo_floors(rows)
    if floors:
        lines += ["", "Leave-one-out error floors (measured on the other stars of the same setting) and the offset in "
                  "units of the reported error with that floor added:", "",
                  "| star | emulator | method | physics error | floor Teff / logg / [Fe/H] | offset / error |", "|---|---|---|---|---|---|"]
        for f in floors:
            fl, z = f["floor_from_others"], f["offset_over_error_with_floor"]
            lines.append(f"| {f['star']} | {f['emulator']} | {f['method']} | {f['physics_error']} | {fl['teff']:.0f} K / "
                         f"{fl['logg']:.2f} / {fl['fe_h']:.3f} | {z['teff']:+.1f} / {z['logg']:+.1f} / {z['fe_h']:+.1f} |")
    lines += ["", "FGK stars inside the label box with [Fe/H] > -1:", "",
              "| emulator | method | physics error | stars | median abs dTeff | dlogg | d[Fe/H] | all offsets within 3 errors |",
              "|---|---|---|---|---|---|---|---|"]
    for s in summary:
        m = s["median_abs_offset"]
        lines.append(f"| {s['emulator']} | {s['method']} | {s['physics_error']} | {s['n_stars']} | {m['teff']:.0f} K | "
                     f"{m['logg']:.2f} | {m['fe_h']:.2f} | {s['within_3_errors']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", default=str(ROOT.parent / "shared" / "real"))
    parser.add_argument("--stars-file", default=str(ROOT / "benchmarks" / "real_stars.json"))
    parser.add_argument("--stars", nargs="*", default=None, help="names (default: all)")
    parser.add_argument("--emulators", nargs="+", default=["payne-default"])
    parser.add_argument("--methods", nargs="+", default=["map"], choices=["map", "nuts"])
    parser.add_argument("--physics", nargs="+", default=["default", "none"], metavar="default|none|loo|FILE",
                        help="physics-error settings; FILE: one made by scripts/calibrate_physics_error.py")
    parser.add_argument("--linelist", default=None,
                        help="line list for the leave-one-out physics errors (calibrate_physics_error.py --linelist)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "real_stars"))
    parser.add_argument("--summarize", action="store_true",
                        help="fit nothing: rewrite OUT.md and the summary of OUT.json from its rows")
    parser.add_argument("--plot", default=None, metavar="FILE.png",
                        help="also draw each fit's observed spectrum, model and residual into this figure")
    args = parser.parse_args(argv)
    for physics in args.physics:
        if physics not in ("default", "none", "loo") and not Path(physics).is_file():
            parser.error(f"--physics {physics!r}: not default, none, loo or an existing physics-error file")
    if args.summarize:
        catalog = {s["name"]: s for s in json.loads(Path(args.stars_file).read_text())["stars"]}
        document = json.loads(Path(args.out + ".json").read_text())
        document["summary"] = summarize(document["rows"], catalog)
        document["loo_floors"] = loo_floors(document["rows"])
        Path(args.out + ".json").write_text(json.dumps(document, indent=1))
        Path(args.out + ".md").write_text(markdown(document["rows"], document["summary"], document["provenance"]["commit"]))
        print(Path(args.out + ".md").read_text())
        return 0
    real = Path(args.real)
    if not real.is_dir():
        print(f"no real spectra at {real} (pass --real DIR)", file=sys.stderr)
        return 2
    catalog = {s["name"]: s for s in json.loads(Path(args.stars_file).read_text())["stars"]}
    names = args.stars or list(catalog)
    rows = []
    saved: list[tuple[str, Path]] = []
    with tempfile.TemporaryDirectory(prefix="stellarfit-loo-") as scratch:
        for name in names:
            star = catalog[name]
            for physics in args.physics:
                setting = physics
                if physics == "loo":
                    if not star["calibration"]:
                        setting = "default"  # not a calibration star: the shipped error is already held out
                    else:
                        setting = str(Path(scratch) / f"physics_error_without_{name.replace(' ', '_')}.npz")
                        command = [sys.executable, str(ROOT / "scripts" / "calibrate_physics_error.py"), "--exclude", name,
                                   "--out", setting, "--real", str(real)]
                        if args.linelist:
                            command += ["--linelist", args.linelist]
                        subprocess.run(command, check=True, capture_output=True)
                for emulator in args.emulators:
                    for method in args.methods:
                        save = Path(scratch) / f"fit_{len(rows)}.fits" if args.plot else None
                        outcome = fit(star, real, emulator, method, setting, save)
                        row = row_of(star, emulator, method, physics, outcome)
                        if save is not None and save.is_file():
                            offsets = row["offset"]
                            saved.append((f"{name} ({emulator}, {method}, physics error {physics}): dTeff "
                                          f"{offsets['teff']:+.0f}, dlogg {offsets['logg']:+.2f}, "
                                          f"d[Fe/H] {offsets['fe_h']:+.2f}", save))
                        rows.append(row)
                        brief = row.get("error") or {k: round(v, 3) for k, v in row["fitted"].items()}
                        print(f"{name} {emulator} {method} physics={physics}: {brief} chi2r={row.get('reduced_chi2')} "
                              f"({row['seconds']:.0f} s)", flush=True)
        if saved:
            plot_residuals(saved, Path(args.plot))
    summary = summarize(rows, catalog)
    record = provenance()
    revision = record["commit"]
    Path(args.out + ".json").write_text(json.dumps({"provenance": record, "rows": rows, "summary": summary,
                                                    "loo_floors": loo_floors(rows)}, indent=1))
    Path(args.out + ".md").write_text(markdown(rows, summary, revision))
    print(markdown(rows, summary, revision))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
