"""Estimate an emulator's correlated error modes and residual pixel error on held-out spectra.

The spectra must be ones the emulator never saw: the validation split of its
training grid (``--part validation``) or an independent grid made with another
design seed (``--part first-half``; keep the second half for checking, e.g.
``bench_calibration.py --split heldout-b``).  Writes an npz with
``error_modes`` (n_modes, n_pixels) and ``pixel_error`` (n_pixels,), which
``bench_calibration.py --error-modes`` attaches; ``--ship NAME`` also stores
them in the shipped emulator NAME (its arrays.npz gains ``error_modes``, its
``pixel_error`` is replaced by what the modes leave, its PROVENANCE.md says
where they came from).

    python scripts/estimate_error_modes.py payne-default ~/.cache/stellarfit/grids/ts_default_seed1_320.h5 \\
        --part first-half --n-modes 16 --out modes.npz
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("emulator", help="emulator name or path")
    parser.add_argument("grid", help="HDF5 grid of held-out spectra on the emulator's native wavelengths")
    parser.add_argument("--part", choices=["validation", "first-half", "all"], default="first-half",
                        help="validation: the 10%% validation split of the emulator's training grid; first-half / all: "
                             "of an independent grid")
    parser.add_argument("--n-modes", type=int, default=16)
    parser.add_argument("--out", required=True, help="npz to write")
    parser.add_argument("--ship", default=None, help="also store the modes in this shipped emulator")
    args = parser.parse_args()

    import numpy as np

    from stellarfit.emulators import TrainingData, estimate_error_modes, load_emulator
    from stellarfit.grids import SpectralGrid

    emulator = load_emulator(args.emulator)
    grid = SpectralGrid.read(Path(args.grid).expanduser())
    if args.part == "validation":
        _, rows, _ = grid.split((0.8, 0.1, 0.1), seed=0)
    elif args.part == "first-half":
        rows = np.arange(len(grid) // 2)
    else:
        rows = np.arange(len(grid))
    if tuple(grid.label_names) != tuple(emulator.label_names):
        raise SystemExit(f"the grid's labels {grid.label_names} are not the emulator's {emulator.label_names}")
    labels = grid.labels[rows]
    data = TrainingData(labels=np.asarray(labels, np.float64), flux=np.asarray(grid.flux[rows], np.float32),
                        wavelength=np.asarray(grid.wavelength, np.float64), label_spec=emulator.label_spec)
    modes, rest = estimate_error_modes(emulator, data, n_modes=args.n_modes)
    residual = emulator.predict(data.labels, check_bounds=False).astype(np.float64) - data.flux
    total = float(np.sum(residual**2) / residual.shape[0])
    captured = float(np.sum(modes.astype(np.float64) ** 2))
    out = Path(args.out).expanduser()
    np.savez(out, error_modes=modes, pixel_error=rest)
    print(f"{len(rows)} spectra, {emulator.n_pixels} pixels: RMS residual {np.sqrt(total / emulator.n_pixels):.5f}; "
          f"{args.n_modes} modes carry {100 * captured / total:.0f}% of the residual variance; "
          f"RMS left per pixel {np.sqrt(np.mean(rest.astype(np.float64) ** 2)):.5f} -> {out}")
    if args.ship:
        ship(args.ship, modes, rest, grid_name=Path(args.grid).name, part=args.part, n_spectra=len(rows),
             fraction=captured / total)


def ship(name: str, modes, pixel_error, *, grid_name: str, part: str, n_spectra: int, fraction: float) -> None:
    """Store the modes and the pixel error they leave in the shipped emulator ``name``."""
    from stellarfit.emulators import load_emulator
    from stellarfit.emulators.registry import shipped_emulator_path

    path = Path(shipped_emulator_path(name))
    emulator = load_emulator(path).with_error_modes(modes).with_pixel_error(pixel_error)
    metadata = dict(emulator.metadata)
    metadata["error_modes_source"] = {"grid": grid_name, "part": part, "n_spectra": n_spectra,
                                      "n_modes": int(modes.shape[0]), "variance_fraction": round(float(fraction), 4)}
    emulator.replace(metadata=metadata).save(str(path))
    reloaded = load_emulator(path)
    assert reloaded.error_modes is not None and reloaded.error_modes.shape == modes.shape
    provenance = path / "PROVENANCE.md"
    line = (f"- Error modes: {modes.shape[0]} principal components of the residuals on {n_spectra} held-out "
            f"Turbospectrum spectra ({grid_name}, {part}; {100 * fraction:.0f}% of the residual variance), "
            f"with the per-pixel error they leave (`scripts/estimate_error_modes.py`).")
    text = "\n".join(row for row in provenance.read_text().splitlines() if not row.startswith("- Error modes")) + "\n"
    provenance.write_text(text + line + "\n")
    print(line)


if __name__ == "__main__":
    main()
