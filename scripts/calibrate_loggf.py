"""Astrophysical log gf: fit corrections to the Gaia-ESO line list's log gf values on real benchmark stars.

Turbospectrum on atmosnet atmospheres with the Gaia-ESO list at a star's literature labels
misses its real spectrum line by line (docs/validation/real_stars.md).  For every line
that matters, this finds the log gf change that best explains the residuals of all
calibration stars at once (linearized, ridge-regularized least squares):

    r_s(lambda) = sum_i J_s,i(lambda) dloggf_i,    J_s,i = d flux / d log gf_i for star s

J_s,i comes from one Turbospectrum run per element with that element's abundance raised
by 0.1 dex (the same change as raising the log gf of all its lines), shared among the
element's lines at each pixel in proportion to each line's weak-line absorption there.
Observed and model spectra are compared at R = 60,000 after the model is broadened by
each star's macroturbulence and rotation (benchmarks/real_stars.json).

    python scripts/calibrate_loggf.py [--exclude STAR ...] [--iterations 2] --out DIR

writes DIR/loggf_corrections.json (one row per corrected line) and DIR/linelist.txt
(the Turbospectrum-format list with the corrected log gf), for
``make_engine("turbospectrum", linelist=DIR/linelist.txt)``.  Needs Turbospectrum.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import scipy.sparse as sparse
from scipy.sparse.linalg import lsqr

import stellarfit as sf
from stellarfit.synth.abundances import abundance_matrix
from stellarfit.synth.engines import make_engine
from stellarfit.synth.linelist import load_default_linelist, read_turbospectrum_linelist, write_turbospectrum_linelist
from stellarfit.wavelengths import air_to_vacuum

ROOT = Path(__file__).resolve().parents[1]
C_KMS = 299792.458
WINDOW = (5000.0, 5500.0)
R_WORK = 60_000.0
STEP = 0.1  # dex: the abundance change whose response stands for d flux / d log gf
ELEMENTS = (6, 11, 12, 14, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 39, 40, 56, 57, 58, 60)

_ENGINES: dict = {}


def _engine(linelist: str | None):
    if linelist not in _ENGINES:
        _ENGINES[linelist] = make_engine("turbospectrum", window=WINDOW, resolution=30000.0, linelist=linelist)
    return _ENGINES[linelist]


def _synth(job):
    labels, offsets, linelist = job
    wavelength, normalized, _ = _engine(linelist).synthesize_native(labels, abundance_offsets=offsets)
    return wavelength, normalized


def _kernel(dv: float, vmac: float, vsini: float, limb: float = 0.6) -> np.ndarray:
    """Radial-tangential macroturbulence (Gray) convolved with rotation, sampled at dv [km/s]."""
    half = int(np.ceil(4 * (vmac + vsini + 1) / dv))
    v = np.arange(-half, half + 1) * dv
    mus = np.linspace(0.005, 1.0, 200)
    weights = mus * (1 - limb + limb * mus)
    kernel = np.zeros_like(v)
    for mu, w in zip(mus, weights / weights.sum()):
        for width in (vmac * mu, vmac * np.sqrt(1 - mu**2)):
            width = max(width, 0.3 * dv)
            kernel += w * np.exp(-((v / width) ** 2)) / width
    if vsini > 0:
        x = v / vsini
        rot = np.where(np.abs(x) < 1, 2 * (1 - limb) * np.sqrt(np.clip(1 - x**2, 0, None)) + np.pi * limb / 2 * (1 - x**2), 0.0)
        kernel = np.convolve(kernel / kernel.sum(), rot / rot.sum(), mode="same")
    return kernel / kernel.sum()


def degrade(wavelength, flux, good, r_from, r_to, grid, extra=None):
    """Gaussian-degrade from R r_from to r_to (times an optional velocity kernel) and sample at grid.
    Normalized convolution over good pixels; returns (flux, weight of good pixels) on grid."""
    lw = np.log(wavelength)
    dv = float(np.median(np.diff(lw))) * C_KMS
    uniform = np.arange(lw[0], lw[-1], dv / C_KMS)
    f = np.interp(uniform, lw, np.where(good, flux, 0.0))
    g = np.interp(uniform, lw, good.astype(float))
    sigma = np.sqrt(max((C_KMS / r_to) ** 2 - (C_KMS / r_from) ** 2, 1e-6)) / 2.3548 / dv
    k = np.arange(-int(5 * sigma) - 1, int(5 * sigma) + 2)
    kernel = np.exp(-0.5 * (k / sigma) ** 2)
    if extra is not None:
        kernel = np.convolve(kernel, extra, mode="full")
    kernel /= kernel.sum()
    fs, gs = np.convolve(f * g, kernel, mode="same"), np.convolve(g, kernel, mode="same")
    return np.interp(np.log(grid), uniform, fs / np.maximum(gs, 1e-12)), np.interp(np.log(grid), uniform, gs)


def observed(star, real: Path, grid: np.ndarray):
    spectrum = sf.read_spectrum(real / star["file"], resolution=star["resolution"], air=star.get("air", False), snr=300)
    sel = (spectrum.wavelength > grid[0] - 20) & (spectrum.wavelength < grid[-1] + 20)
    good = (~spectrum.mask & (spectrum.flux > 0.02))[sel]
    return degrade(spectrum.wavelength[sel], spectrum.flux[sel], good, star["resolution"], R_WORK, grid)


def model_on(grid, native, star):
    wavelength, normalized = native
    dv = float(np.median(np.diff(np.log(wavelength)))) * C_KMS
    flux, _ = degrade(wavelength, normalized, np.ones(wavelength.size, bool), 1e7, R_WORK, grid,
                      _kernel(dv, star["vmac"], star["vsini"]))
    return flux


def continuum_residual(obs, weight, model, grid):
    """obs / continuum - model with a cubic continuum fitted to obs / model (3-sigma clipped)."""
    ok = weight > 0.999
    x = (grid - grid.mean()) / (grid[-1] - grid[0]) * 2
    design = np.vander(x, 4) * model[:, None]
    keep = ok.copy()
    for _ in range(5):
        coef, *_ = np.linalg.lstsq(design[keep], obs[keep], rcond=None)
        resid = obs - design @ coef
        keep = ok & (np.abs(resid) < 3 * np.std(resid[keep]))
    continuum = np.vander(x, 4) @ coef
    return np.where(ok, obs / continuum - model, np.nan)


def line_table(linelist_path: str | None):
    lines = load_default_linelist() if linelist_path is None else read_turbospectrum_linelist(linelist_path)
    return lines, air_to_vacuum(np.asarray(lines.wavelength_air, np.float64))


def jacobian(grid, star, lines, vacuum, base, responses, columns):
    """Sparse (n_grid, n_columns) d flux / d log gf of the candidate lines ``columns`` for one star."""
    z = np.asarray(lines.atomic_number)
    ion = np.asarray(lines.ion)
    solar, _ = abundance_matrix([])
    theta = 5040.0 / (0.9 * star["labels"]["teff"])
    strength = solar[z - 1] + np.asarray(lines.log_gf) - theta * np.asarray(lines.excitation_potential) + np.where(ion == 2, 1.0, 0.0)
    width = grid.mean() / R_WORK / 2.3548 * np.hypot(1.0, (star["vmac"] + star["vsini"]) / (C_KMS / R_WORK))
    rows, cols, vals = [], [], []
    col_of = {line: j for j, line in enumerate(columns)}
    for element, response in responses.items():
        members = np.flatnonzero((z == element) & (vacuum > grid[0] - 1) & (vacuum < grid[-1] + 1))
        if members.size == 0:
            continue
        share = np.zeros((members.size, grid.size))
        for k, i in enumerate(members):
            lo, hi = np.searchsorted(grid, [vacuum[i] - 4 * width, vacuum[i] + 4 * width])
            share[k, lo:hi] = 10.0 ** (strength[i] - 5) * np.exp(-0.5 * ((grid[lo:hi] - vacuum[i]) / width) ** 2)
        total = share.sum(axis=0)
        derivative = (response - base) / STEP
        for k, i in enumerate(members):
            if i not in col_of:
                continue
            pixels = np.flatnonzero(share[k] > 0)
            values = derivative[pixels] * share[k, pixels] / np.maximum(total[pixels], 1e-300)
            rows.append(pixels)
            cols.append(np.full(pixels.size, col_of[i]))
            vals.append(values)
    if not rows:
        return sparse.csr_matrix((grid.size, len(columns)))
    return sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(grid.size, len(columns)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", default=str(ROOT.parent / "shared" / "real"))
    parser.add_argument("--stars", default=str(ROOT / "benchmarks" / "real_stars.json"))
    parser.add_argument("--exclude", nargs="*", default=[])
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--prior", type=float, default=0.2, help="ridge prior sigma of each correction [dex]")
    parser.add_argument("--floor", type=float, default=0.005, help="per-pixel residual sigma in the fit [flux]")
    parser.add_argument("--min-response", type=float, default=0.02, help="lines whose largest |d flux/d log gf| is below are kept")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stars = [s for s in json.loads(Path(args.stars).read_text())["stars"] if s["calibration"] and s["name"] not in args.exclude]
    grid = np.exp(np.arange(np.log(WINDOW[0] + 3), np.log(WINDOW[1] - 3), 1 / (3 * R_WORK)))
    obs = {s["name"]: observed(s, Path(args.real), grid) for s in stars}
    linelist_path, total = None, None
    lines, vacuum = line_table(None)
    history = []
    for iteration in range(args.iterations):
        start = time.time()
        jobs = [(s["labels"], None, linelist_path) for s in stars]
        jobs += [(s["labels"], {z: STEP}, linelist_path) for s in stars for z in ELEMENTS]
        with ProcessPoolExecutor(args.workers) as pool:
            natives = list(pool.map(_synth, jobs))
        bases = {s["name"]: model_on(grid, natives[k], s) for k, s in enumerate(stars)}
        responses = {s["name"]: {} for s in stars}
        for k, (s, z) in enumerate(((s, z) for s in stars for z in ELEMENTS)):
            responses[s["name"]][z] = model_on(grid, natives[len(stars) + k], s)
        residuals = {s["name"]: continuum_residual(*obs[s["name"]], bases[s["name"]], grid) for s in stars}
        rms = {name: float(np.sqrt(np.nanmean(r**2))) for name, r in residuals.items()}
        print(f"iteration {iteration}: residual RMS at R={R_WORK:.0f}: " + ", ".join(f"{k} {v:.4f}" for k, v in rms.items())
              + f" ({time.time() - start:.0f} s of synthesis)", flush=True)
        history.append(rms)
        candidates = np.flatnonzero(np.isin(np.asarray(lines.atomic_number), ELEMENTS) & (vacuum > grid[0] - 1) & (vacuum < grid[-1] + 1))
        blocks = [jacobian(grid, s, lines, vacuum, bases[s["name"]], responses[s["name"]], candidates) for s in stars]
        peak = np.max([abs(b).max(axis=0).toarray().ravel() for b in blocks], axis=0)
        keep = peak > args.min_response
        columns = candidates[keep]
        design = sparse.vstack([b[:, keep] for b in blocks]).tocsr()
        target = np.concatenate([residuals[s["name"]] for s in stars])
        good = np.isfinite(target)
        weight = 1.0 / args.floor
        a = sparse.vstack([design[good] * weight, sparse.identity(columns.size) / args.prior]).tocsr()
        b = np.concatenate([target[good] * weight, np.zeros(columns.size)])
        delta = np.clip(lsqr(a, b, atol=1e-8, btol=1e-8, iter_lim=5000)[0], -0.6, 0.6)
        total = dict(total or {})
        for line, d in zip(columns, delta):
            total[int(line)] = total.get(int(line), 0.0) + float(d)
        print(f"  {columns.size} lines fitted; |dloggf| median {np.median(np.abs(delta)):.3f}, "
              f"90th percentile {np.percentile(np.abs(delta), 90):.3f}", flush=True)
        log_gf = np.asarray(load_default_linelist().log_gf, np.float64).copy()
        for line, d in total.items():
            log_gf[line] += d
        lines = dataclasses.replace(load_default_linelist(), log_gf=log_gf)
        linelist_path = str(out / "linelist.txt")
        write_turbospectrum_linelist(lines, linelist_path)
    base_lines = load_default_linelist()
    rows = [{"index": i, "wavelength_air": float(base_lines.wavelength_air[i]), "atomic_number": int(base_lines.atomic_number[i]),
             "ion": int(base_lines.ion[i]), "log_gf": float(base_lines.log_gf[i]), "dloggf": round(d, 4)}
            for i, d in sorted(total.items()) if abs(d) > 1e-4]
    (out / "loggf_corrections.json").write_text(json.dumps({
        "stars": [s["name"] for s in stars], "resolution": R_WORK, "prior_dex": args.prior, "floor": args.floor,
        "residual_rms_by_iteration": history, "lines": rows}, indent=1))
    print(f"wrote {out / 'linelist.txt'} and {out / 'loggf_corrections.json'} ({len(rows)} lines corrected)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
