"""Measure where the realistic physics (Turbospectrum on atmosnet atmospheres, Gaia-ESO lines) misses nature.

For each calibration star in benchmarks/real_stars.json: its real spectrum (../shared/real) is
degraded to the emulator grid's resolution (R = 30,000) on the default emulators' native pixels;
a Turbospectrum spectrum at the star's literature labels is broadened by the star's
macroturbulence and rotation and by the same instrument; RV and a smooth continuum are
fitted; the residual (observed - model, normalized flux) is what the physics gets wrong
there.  The physics error per native pixel is the RMS of the calibration stars' residuals,
spread over +-1 resolution element (lines move with RV and labels), and it ships as
``src/stellarfit/data/physics_error_5000_5500.npz`` (fits add it to the noise, like the
emulator's own error).

    python scripts/calibrate_physics_error.py [--real ../shared/real] [--exclude Sun] [--linelist FILE] [--out FILE]

``--exclude`` leaves stars out (leave-one-out checks in benchmarks/bench_real_stars.py).
Needs Turbospectrum (``stellarfit engines install turbospectrum``); about a minute per star.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.ndimage import maximum_filter1d

import stellarfit as sf
from stellarfit.synth.engines import make_engine

C_KMS = 299792.458
ROOT = Path(__file__).resolve().parents[1]
SYNTH_RESOLUTION = 300_000.0


def broadening_kernel(dv: float, vmac: float, vsini: float, limb: float = 0.6) -> np.ndarray:
    """Radial-tangential macroturbulence (Gray) times rotation, on a velocity step dv [km/s]."""
    half = int(np.ceil(4 * (vmac + vsini + 1) / dv))
    v = np.arange(-half, half + 1) * dv
    mus = np.linspace(0.005, 1.0, 200)
    weights = mus * (1 - limb + limb * mus)
    weights /= weights.sum()
    kernel = np.zeros_like(v)
    for mu, w in zip(mus, weights):
        for width in (vmac * mu, vmac * np.sqrt(1 - mu**2)):
            width = max(width, 0.3 * dv)
            kernel += w * np.exp(-((v / width) ** 2)) / width
    kernel /= kernel.sum()
    if vsini > 0:
        x = v / vsini
        rot = np.where(np.abs(x) < 1, 2 * (1 - limb) * np.sqrt(np.clip(1 - x**2, 0, None)) + np.pi * limb / 2 * (1 - x**2), 0.0)
        kernel = np.convolve(kernel, rot / rot.sum(), mode="same")
    return kernel / kernel.sum()


def smooth_to(wavelength, flux, good, r_from, r_to, grid, extra_kernel=None):
    """Gaussian-degrade (wavelength, flux) from R r_from to r_to and sample it at ``grid``.

    Normalized convolution over good pixels; returns (flux, weight) on ``grid`` (weight < 1 near gaps)."""
    lw = np.log(wavelength)
    dv = float(np.median(np.diff(lw))) * C_KMS
    uniform = np.arange(lw[0], lw[-1], dv / C_KMS)
    f = np.interp(uniform, lw, np.where(good, flux, 0.0))
    g = np.interp(uniform, lw, good.astype(float))
    sigma = np.sqrt(max((C_KMS / r_to) ** 2 - (C_KMS / r_from) ** 2, 0.0)) / 2.3548 / dv
    k = np.arange(-int(5 * sigma) - 1, int(5 * sigma) + 2)
    kernel = np.exp(-0.5 * (k / max(sigma, 1e-3)) ** 2)
    kernel /= kernel.sum()
    if extra_kernel is not None:
        kernel = np.convolve(kernel, extra_kernel, mode="full")
        kernel /= kernel.sum()
    fs = np.convolve(f * g, kernel, mode="same")
    gs = np.convolve(g, kernel, mode="same")
    out = np.interp(np.log(grid), uniform, fs / np.maximum(gs, 1e-12))
    return out, np.interp(np.log(grid), uniform, gs)


def star_residual(star, real_dir: Path, grid: np.ndarray, engine, emulator_resolution: float):
    spectrum = sf.read_spectrum(real_dir / star["file"], resolution=star["resolution"], air=star.get("air", False), snr=300)
    good = ~spectrum.mask & (spectrum.flux > 0.02) & np.isfinite(spectrum.flux)
    sel = (spectrum.wavelength > grid[0] - 20) & (spectrum.wavelength < grid[-1] + 20)
    obs, weight = smooth_to(spectrum.wavelength[sel], spectrum.flux[sel], good[sel], star["resolution"], emulator_resolution, grid)
    labels = dict(star["labels"])
    flux, _ = engine.synthesize(labels)
    dv = float(np.median(np.diff(np.log(engine.wavelength)))) * C_KMS
    kernel = broadening_kernel(dv, star["vmac"], star["vsini"])
    best = None
    for rv in np.arange(-3.0, 3.01, 0.25):  # rest-frame files: a small residual shift only
        model, _ = smooth_to(engine.wavelength * (1 + rv / C_KMS), flux, np.ones(flux.size, bool), SYNTH_RESOLUTION,
                             emulator_resolution, grid, kernel)
        ok = weight > 0.999
        x = (grid - grid.mean()) / (grid[-1] - grid[0]) * 2
        design = np.vander(x, 4)
        keep = ok.copy()
        for _ in range(5):  # continuum: cubic in x fitted to obs/model, upper envelope-ish clipping
            coef, *_ = np.linalg.lstsq(design[keep] * model[keep, None], obs[keep], rcond=None)
            resid = obs - (design @ coef) * model
            keep = ok & (np.abs(resid) < 3 * np.std(resid[keep]))
        chi = float(np.mean(resid[ok] ** 2))
        if best is None or chi < best[0]:
            best = (chi, rv, resid / (design @ coef), ok)
    chi, rv, residual, ok = best
    print(f"{star['name']}: rv shift {rv:+.2f} km/s, residual RMS {np.sqrt(chi):.4f} over {int(ok.sum())} pixels")
    return np.where(ok, residual, np.nan)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", default=str(ROOT.parent / "shared" / "real"))
    parser.add_argument("--stars", default=str(ROOT / "benchmarks" / "real_stars.json"))
    parser.add_argument("--exclude", nargs="*", default=[])
    parser.add_argument("--emulator", default="payne-default", help="emulator whose native pixels the error is on")
    parser.add_argument("--linelist", default=None,
                        help="Turbospectrum line list (default: the shipped Gaia-ESO one; 'astro': with the shipped "
                             "astrophysical log gf; or a file, e.g. one written by scripts/calibrate_loggf.py)")
    parser.add_argument("--spread", type=int, default=3, help="native pixels each residual spreads to (+-)")
    parser.add_argument("--out", default=str(ROOT / "src" / "stellarfit" / "data" / "physics_error_5000_5500.npz"))
    args = parser.parse_args(argv)
    stars = [s for s in json.loads(Path(args.stars).read_text())["stars"] if s["calibration"] and s["name"] not in args.exclude]
    emulator = sf.load_emulator(args.emulator)
    grid = np.asarray(emulator.wavelength, np.float64)
    engine = make_engine("turbospectrum", window=(float(grid[0]), float(grid[-1])), resolution=SYNTH_RESOLUTION, sampling=1.7,
                         linelist=args.linelist)
    residuals = np.array([star_residual(s, Path(args.real), grid, engine, float(emulator.native_resolution)) for s in stars])
    squared = np.nanmean(residuals**2, axis=0)
    squared = np.where(np.isfinite(squared), squared, np.nanmedian(squared))
    sigma = np.sqrt(maximum_filter1d(squared, size=2 * args.spread + 1))
    np.savez(args.out, wavelength=grid, sigma=sigma.astype(np.float32), residuals=residuals.astype(np.float32),
             stars=np.array([s["name"] for s in stars]), resolution=float(emulator.native_resolution))
    print(f"wrote {args.out}: physics error median {np.median(sigma):.4f}, 90th percentile {np.percentile(sigma, 90):.4f}, "
          f"from {', '.join(s['name'] for s in stars)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
