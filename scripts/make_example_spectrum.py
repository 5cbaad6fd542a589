"""Make the shipped example spectrum (stellarfit/data/examples/example_star.fits).

A Turbospectrum spectrum of the default grid's held-out test split (never seen
by the shipped emulators), observed at R = 22,500 through stellarfit's
observation model: Doppler shift, rotation, differential Gaussian LSF onto a
log-lambda pixel grid of 2.5 pixels per resolution element over 5010-5490 A
(vacuum), times a tilted continuum, plus Gaussian noise at S/N 60 per pixel.
The true labels, RV and vsini go into the FITS header (TRUE_* keywords).

    python scripts/make_example_spectrum.py --grid ~/.cache/stellarfit/grids/ts_default_2000.h5

The star is design row 414 of that grid.  Without the 2,000-spectrum grid, a
grid of that one row (its labels are ``sample_labels(default_label_spec(),
2000, method="sobol", seed=0)[414]``) gives the same spectrum:

    python scripts/make_example_spectrum.py --grid row414.h5 --index 0 --grid-index 414
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "src" / "stellarfit" / "data" / "examples" / "example_star.fits"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", required=True)
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--teff", type=float, default=5750.0, help="pick the test star nearest this Teff...")
    parser.add_argument("--logg", type=float, default=4.3, help="...and logg")
    parser.add_argument("--fe-h", type=float, default=-0.3, help="...and [Fe/H]")
    parser.add_argument("--index", type=int, default=None,
                        help="use this row of --grid as it is (a grid of the example's own labels) instead of the search")
    parser.add_argument("--grid-index", type=int, default=None,
                        help="the design index to record in the header (GRIDIDX) when --index picks from a one-row grid")
    parser.add_argument("--rv", type=float, default=37.4)
    parser.add_argument("--vsini", type=float, default=4.0)
    parser.add_argument("--resolution", type=float, default=22_500.0)
    parser.add_argument("--snr", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()

    from astropy.io import fits

    from stellarfit.forward import ForwardModel
    from stellarfit.grids import SpectralGrid
    from stellarfit.wavelengths import log_lambda_grid

    grid = SpectralGrid.read(os.path.expanduser(args.grid))
    names = list(grid.label_spec.names)
    if args.index is not None:
        if not 0 <= args.index < len(grid):
            raise SystemExit(f"--index {args.index} is outside the grid's {len(grid)} rows")
        pick = args.index
    else:
        _, _, test = grid.split((0.8, 0.1, 0.1), seed=0)
        if not test.size:
            raise SystemExit(f"{args.grid} has no test split to pick from ({len(grid)} spectra); give --index")
        target = np.array([args.teff, args.logg, args.fe_h])
        scale = np.array([500.0, 0.5, 0.3])
        columns = [names.index("teff"), names.index("logg"), names.index("fe_h")]
        distance = np.sum(((grid.labels[test][:, columns] - target) / scale) ** 2, axis=1)
        pick = test[int(np.argmin(distance))]
    truth = grid.labels[pick]
    native_flux = np.asarray(grid.flux[pick], dtype=np.float64)

    wavelength = log_lambda_grid(5010.0, 5490.0, args.resolution, 2.5)
    model = ForwardModel(lambda labels, w: labels, grid.wavelength, 30_000.0, wavelength, args.resolution,
                         rv_range=(args.rv - 1.0, args.rv + 1.0), vsini_max=30.0)
    normalized = np.asarray(model.shift_to_observed(model.broaden(native_flux[model.native_slice], args.vsini), args.rv),
                            dtype=np.float64)
    x = (wavelength - wavelength.mean()) / np.ptp(wavelength)
    continuum = 1200.0 * (1.0 + 0.12 * x - 0.05 * x**2)
    sigma = continuum / args.snr
    rng = np.random.default_rng(args.seed)
    flux = continuum * normalized + sigma * rng.normal(size=wavelength.size)

    columns = [
        fits.Column(name="WAVELENGTH", format="D", unit="Angstrom", array=wavelength),
        fits.Column(name="FLUX", format="E", array=flux.astype(np.float32)),
        fits.Column(name="IVAR", format="E", array=(1.0 / sigma**2).astype(np.float32)),
    ]
    table = fits.BinTableHDU.from_columns(columns, name="SPECTRUM")
    header = fits.Header()
    header["ORIGIN"] = "stellarfit scripts/make_example_spectrum.py"
    header["COMMENT"] = "Turbospectrum 1.0.2 LTE spectrum (atmosnet atmosphere, Gaia-ESO line list) from the"
    header["COMMENT"] = "held-out test split of the default grid; observed with stellarfit's observation model."
    header["VACUUM"] = (True, "wavelengths are in vacuum")
    header["RESOLUTN"] = (args.resolution, "resolving power of the Gaussian LSF")
    header["SNR"] = (args.snr, "S/N per pixel of the added noise")
    header["GRIDIDX"] = (args.grid_index if args.grid_index is not None
                         else int(grid.design_index[pick]) if hasattr(grid, "design_index") else int(pick), "design index in the grid")
    truth_names = names + ["rv", "vsini"]
    truth_values = list(map(float, truth)) + [args.rv, args.vsini]
    truth_hdu = fits.BinTableHDU.from_columns([
        fits.Column(name="PARAMETER", format="12A", array=np.array(truth_names)),
        fits.Column(name="VALUE", format="D", array=np.array(truth_values)),
    ], name="TRUTH")
    primary = fits.PrimaryHDU(header=header)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fits.HDUList([primary, table, truth_hdu]).writeto(args.out, overwrite=True)
    print(f"wrote {args.out}: {wavelength.size} pixels; truth " + ", ".join(f"{n}={v:.3f}" for n, v in zip(names, truth)))


if __name__ == "__main__":
    main()
