"""The forward model's instrument (differential LSF and observed-pixel top-hat) against a line observed by hand.

A Gaussian absorption line (sigma 4.75 km/s, depth 0.6: a line of about the native
resolution of the shipped emulators, R = 30,000 at 3 pixels per FWHM) is put on the native
pixels as its pixel averages, as grids are made, and observed with
``stellarfit.forward.simulate_observation`` at several resolving powers and samplings;
the expectation is analytic (the line broadened in quadrature and averaged over each
observed pixel: an erf difference).  Prints and writes the largest error, in units of
the continuum, for each observation and for the native fluxes read as point samples
instead (what the model would get from an emulator that held point values).

    python benchmarks/bench_instrument_kernel.py [--out benchmarks/results/instrument_kernel.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from _provenance import provenance
from scipy.special import erf

from stellarfit.forward import simulate_observation
from stellarfit.wavelengths import FWHM_TO_SIGMA, SPEED_OF_LIGHT_KMS as C, log_lambda_grid

ROOT = Path(__file__).resolve().parents[1]
NATIVE_R, DEPTH, SIGMA_LINE, RV = 30_000.0, 0.6, 4.75, 25.0
CASES = [(30_000.0, 3.0), (25_000.0, 2.0), (22_500.0, 3.0), (20_000.0, 3.0), (15_000.0, 6.0), (15_000.0, 2.5),
         (2_000.0, 3.0)]


def averaged(u: np.ndarray, width: float, sigma: float) -> np.ndarray:
    """The line's profile (peak 1 at SIGMA_LINE) broadened to ``sigma`` and averaged over pixels of ``width`` [km/s]."""
    scale = np.sqrt(2.0) * sigma
    return SIGMA_LINE * np.sqrt(np.pi / 2) / width * (erf((u + width / 2) / scale) - erf((u - width / 2) / scale))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "instrument_kernel.json"))
    args = parser.parse_args(argv)
    native = log_lambda_grid(5000.0, 5100.0, NATIVE_R, 3.0)
    u_native = C * np.log(native / 5050.0)
    natives = {"pixel averages": 1.0 - DEPTH * averaged(u_native, C * np.log(native[1] / native[0]), SIGMA_LINE),
               "point samples": 1.0 - DEPTH * np.exp(-0.5 * (u_native / SIGMA_LINE) ** 2)}
    rows = []
    print(f"{'R_obs':>8} {'px/FWHM':>8} {'pixel/native':>13} " + " ".join(f"{k:>15}" for k in natives))
    for resolution, sampling in CASES:
        observed = log_lambda_grid(5010.0, 5090.0, resolution, sampling)
        sigma = np.sqrt(SIGMA_LINE**2 + (C * FWHM_TO_SIGMA) ** 2 * max(1 / resolution**2 - 1 / NATIVE_R**2, 0.0))
        pixel = C * np.log(observed[1] / observed[0])
        u = C * (np.log(observed / 5050.0) - 0.5 * np.log((1 + RV / C) / (1 - RV / C)))
        expected = 1.0 - DEPTH * averaged(u, pixel, sigma)
        errors = {}
        for name, flux in natives.items():
            clean = simulate_observation(native, flux, NATIVE_R, observed, resolution, rv=RV, snr=None)
            errors[name] = float(np.abs(clean.flux - expected)[clean.ivar > 0].max())
        width = pixel / (C * np.log(native[1] / native[0]))
        rows.append({"resolution": resolution, "pixels_per_fwhm": sampling, "pixel_in_native_pixels": round(width, 3),
                     "max_error": errors})
        print(f"{resolution:8.0f} {sampling:8.1f} {width:13.2f} " + " ".join(f"{v:15.2e}" for v in errors.values()))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"line": {"sigma_kms": SIGMA_LINE, "depth": DEPTH, "rv_kms": RV, "native_resolution": NATIVE_R},
                               "rows": rows, "provenance": provenance()}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
