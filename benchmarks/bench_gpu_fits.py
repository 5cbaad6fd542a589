"""Fits on an accelerator: gradient cost per emulator, batched NUTS, and exact TransformerPayne posteriors.

The steps, each its own process so that one killed by a time limit loses
nothing the others measured (every step writes its JSON, and its draws as npz,
as soon as it ends):

``stars``   (any machine) the held-out observations: the first ``--n`` stars of
            ``bench_calibration.py --split heldout-b --snr S --n-stars 100``
            (same grid, seed and noise draws), saved as npz so that the device
            and the CPU fit bit-identical spectra.
``grad``    time of one batched value-and-gradient of the sampled log density
            (the whole observation model, continuum marginalized) for each
            emulator, at several numbers of lanes (chains x stars) per call.
``compare`` (any machine, usually the CPU) ``fit_star(method="nuts")`` one star at a time on
            stars whose ``nuts`` draws came back from the device, same emulator and
            ``sample_with``: medians and 68% half-widths of the two sets of draws.
``compile`` (any machine) the programs a cold ``fit_stars(method="nuts")`` compiles, counted and
            timed by kind from JAX's compile log (short chains, 2 stars by default).
``nuts``    ``fit_stars(method="nuts")`` (its MAP, then batched NUTS) on a batch of
            stars with one emulator (4 chains x (500 + 500) by default),
            sampling the emulator itself (``sample_with="self"``); XLA
            compilation is timed apart through ``jax.monitoring``, sampling by
            the sampler's own clock.  Saves each star's draws (with
            ``--emulator default`` these are exact TransformerPayne posteriors,
            the reference for the CPU's ``sample_with="fast"``).  With
            ``--sample-with fast`` and the TransformerPayne: the practical
            batched path instead (the TransformerPayne's MAPs, then NUTS with
            ``default-fast`` moved to them).

    python benchmarks/bench_gpu_fits.py stars --grid ~/.cache/stellarfit/grids/ts_seed1_320.h5 --n 16 --out .gpu/stars_snr100.npz
    python benchmarks/bench_gpu_fits.py grad --stars .gpu/stars_snr100.npz --out OUT
    python benchmarks/bench_gpu_fits.py compile --stars .gpu/stars_snr100.npz --out benchmarks/results/fast_path_compile_cpu.json
    python benchmarks/bench_gpu_fits.py nuts --stars .gpu/stars_snr100.npz --emulator payne-default --n-stars 16 --out OUT
    python benchmarks/bench_gpu_fits.py nuts --stars .gpu/stars_snr100.npz --emulator default --n-stars 2 --out OUT
    python benchmarks/bench_gpu_fits.py nuts --stars .gpu/stars_snr100.npz --emulator default --sample-with fast --n-stars 8 --out OUT
    python benchmarks/bench_gpu_fits.py compare --stars .gpu/stars_snr100.npz --draws OUT/nuts_default_fast.npz \
        --emulator default --sample-with fast --star-ids 0 1 2 3 --out benchmarks/results/FILE.json
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
from _provenance import provenance  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _header(step: str, args) -> dict:
    import jax

    return {"benchmark": f"bench_gpu_fits {step}", "device": str(jax.devices()[0]), "backend": jax.default_backend(),
            "jax": jax.__version__, "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "compilation_cache": os.environ.get("JAX_COMPILATION_CACHE_DIR"),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "settings": {k: v for k, v in vars(args).items() if k not in ("out", "func")}}


def _write(document: dict, path: Path) -> None:
    document.setdefault("provenance", provenance())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(document, indent=1, default=float))
    os.replace(tmp, path)
    print(f"wrote {path}", flush=True)


def load_stars(path):
    """(spectra, truths (n, p), names) from a ``stars`` npz."""
    from stellarfit.spectra import ObservedSpectrum

    with np.load(path) as data:
        spectra = [ObservedSpectrum.from_arrays(data["wavelength"], flux, ivar=ivar, resolution=float(data["resolution"]))
                   for flux, ivar in zip(data["flux"], data["ivar"])]
        return spectra, np.array(data["truth"]), [str(name) for name in data["names"]]


# -- stars ----------------------------------------------------------------------------------
def cmd_stars(args) -> None:
    """The heldout-b observations of bench_calibration.py (seed, order and noise draws alike)."""
    from stellarfit.forward import simulate_observation
    from stellarfit.grids import SpectralGrid
    from stellarfit.labels import default_label_spec
    from stellarfit.wavelengths import log_lambda_grid

    grid = SpectralGrid.read(os.path.expanduser(args.grid))
    half = len(grid) // 2
    rows = np.arange(half, len(grid))[: args.n_total]
    wavelength = log_lambda_grid(5010.0, 5490.0, args.resolution, 2.5)
    x = (wavelength - wavelength.mean()) / np.ptp(wavelength)
    rng = np.random.default_rng(args.seed)
    rvs = rng.uniform(-150.0, 150.0, rows.size)
    vsinis = rng.uniform(0.0, 8.0, rows.size)
    tilts = rng.uniform(-0.2, 0.2, rows.size)
    flux, ivar, truth = [], [], []
    for k, row in enumerate(rows[: args.n]):
        spectrum = simulate_observation(grid.wavelength, grid.flux[row], 30_000.0, wavelength, args.resolution,
                                        rv=rvs[k], vsini=vsinis[k], snr=args.snr, continuum=1000.0 * (1.0 + tilts[k] * x),
                                        rng=rng)
        flux.append(spectrum.flux)
        ivar.append(spectrum.ivar)
        truth.append(np.concatenate([grid.labels[row], [rvs[k], vsinis[k]]]))
    names = list(default_label_spec().names) + ["rv", "vsini"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, wavelength=wavelength, flux=np.array(flux), ivar=np.array(ivar), truth=np.array(truth),
             names=np.array(names), resolution=args.resolution, snr=args.snr, grid_rows=rows[: args.n],
             provenance=f"bench_calibration.py --split heldout-b --snr {args.snr:g} --n-stars {args.n_total} "
                        f"--seed {args.seed}: its first {args.n} stars ({os.path.basename(args.grid)})")
    print(f"wrote {out}: {len(flux)} stars, {wavelength.size} pixels")


# -- grad -----------------------------------------------------------------------------------
def _problem(spectrum, emulator):
    from stellarfit.inference.fit import _prepare

    return _prepare(spectrum, emulator, priors=None, rv_range=(-1000.0, 1000.0), rv_window=50.0, vsini_max=100.0,
                    continuum_degree=2).problem.with_continuum("marginalize")


def cmd_grad(args) -> None:
    """Milliseconds per batched value-and-gradient of the sampled density, per emulator and lane count."""
    import jax
    import jax.numpy as jnp

    import stellarfit as sf

    spectra, truth, names = load_stars(args.stars)
    document = {**_header("grad", args), "runs": []}
    out = Path(args.out) / f"grad_{args.tag}.json"
    for name in args.emulators:
        emulator = sf.load_emulator(name)
        problem = _problem(spectra[0], emulator)
        theta = np.clip(truth[0], problem.lower, problem.upper)
        z0 = np.asarray(problem.to_unconstrained(jnp.asarray(theta, jnp.float32)))
        z0 = np.where(np.isfinite(z0), z0, 0.0)
        step = jax.jit(jax.vmap(jax.value_and_grad(problem.log_density_unconstrained)))
        lanes_list = args.lanes_tp if getattr(emulator, "model_type", "") == "transformer_payne" else args.lanes
        for lanes in lanes_list:
            z = jnp.asarray(z0 + 0.01 * np.random.default_rng(lanes).normal(size=(lanes, z0.size)), jnp.float32)
            start = time.perf_counter()
            jax.block_until_ready(step(z))
            compile_s = time.perf_counter() - start
            times = []
            deadline = time.perf_counter() + args.seconds
            while len(times) < 3 or (time.perf_counter() < deadline and len(times) < 200):
                start = time.perf_counter()
                value, grad = jax.block_until_ready(step(z))
                times.append(time.perf_counter() - start)
            ms = 1e3 * float(np.median(times))
            row = {"emulator": name, "model_type": getattr(emulator, "model_type", None), "lanes": lanes,
                   "n_pixels_observed": int(spectra[0].wavelength.size), "ms_per_call": ms, "ms_per_gradient": ms / lanes,
                   "first_call_s": compile_s, "repeats": len(times), "finite": bool(np.all(np.isfinite(np.asarray(grad))))}
            document["runs"].append(row)
            print(f"grad {name}: {lanes} lanes {ms:.2f} ms per call, {ms / lanes:.3f} ms per gradient "
                  f"(first call {compile_s:.1f} s)", flush=True)
            _write(document, out)


# -- nuts -----------------------------------------------------------------------------------
class _CompileClock:
    """Seconds spent in XLA compilation (jax.monitoring's backend-compile events)."""

    def __init__(self) -> None:
        import jax

        self.seconds = 0.0

        def listener(event, duration, **kwargs):
            if "compile" in event and "backend" in event:
                self.seconds += duration

        jax.monitoring.register_event_duration_secs_listener(listener)


def _star_row(k, result, truth, names) -> dict:
    if isinstance(result, Exception):
        return {"star": k, "error": f"{type(result).__name__}: {result}"}
    d = result.diagnostics
    row = {"star": k, "flags": result.flag_names, "reduced_chi2": result.reduced_chi2,
           "gradients": int(d.get("gradient_evaluations", 0)) + int(d.get("gradient_evaluations_warmup", 0)),
           "min_ess_bulk": float(min(d["ess_bulk"].values())), "max_r_hat": float(max(d["r_hat"].values())),
           "divergences": int(d["divergences"]), "tree_depth_hits": int(d.get("tree_depth_hits", 0)),
           "sampler_elapsed_s": d.get("sampler_elapsed_s"), "posterior": d.get("posterior")}
    row["labels"] = {n: {"median": result.labels[n]["value"], "lower": result.labels[n]["lower"],
                         "upper": result.labels[n]["upper"], "truth": float(truth[i])}
                     for i, n in enumerate(names) if n in result.labels}
    n_steps = result.sample_stats.get("n_steps") if getattr(result, "sample_stats", None) is not None else None
    if n_steps is not None:
        steps = np.asarray(n_steps)
        row["draw_steps_per_chain_mean"] = float(steps.mean())
        row["draw_steps_lockstep_mean"] = float(steps.max(axis=0).mean()) if steps.ndim == 2 else None
    return row


def cmd_nuts(args) -> None:
    """Batched NUTS (fit_stars) on the first n stars with one emulator, sampling the emulator itself
    (``--sample-with self``) or its fast path."""
    import stellarfit as sf

    clock = _CompileClock()
    spectra, truth, names = load_stars(args.stars)
    first = args.first_star
    spectra, truth = spectra[first : first + args.n_stars], truth[first : first + args.n_stars]
    emulator = sf.load_emulator(args.emulator)
    tag = args.tag or (args.emulator if args.sample_with == "self" else f"{args.emulator}_{args.sample_with}")
    if first and not args.tag:
        tag += f"_from{first}"
    out = Path(args.out)
    document = {**_header("nuts", args), "emulator": args.emulator, "runs": []}
    start = time.perf_counter()
    results = sf.fit_stars(spectra, emulator, method="nuts", batch_size=args.n_stars, errors="collect", seed=0,
                           num_warmup=args.num_warmup, num_samples=args.num_samples, num_chains=args.num_chains,
                           max_tree_depth=args.max_tree_depth, sample_with=args.sample_with)
    nuts_s = time.perf_counter() - start
    nuts_compile = clock.seconds
    ok = [r for r in results if not isinstance(r, Exception)]
    sampler_s = sum(r.diagnostics.get("sampler_elapsed_s") or 0.0 for r in ok)
    document.update(seconds=nuts_s, compile_s=nuts_compile, sampler_s=sampler_s, n_ok=len(ok),
                    seconds_per_star_excluding_compile=(nuts_s - nuts_compile) / len(spectra),
                    stars=[_star_row(first + k, r, truth[k], names) for k, r in enumerate(results)])
    if ok:
        document["median_gradients"] = float(np.median([row["gradients"] for row in document["stars"] if "gradients" in row]))
    _write(document, out / f"nuts_{tag}.json")
    print(f"MAP + NUTS: {nuts_s:.1f} s for {len(spectra)} stars ({nuts_compile:.1f} s compiling, {sampler_s:.1f} s "
          f"sampling), {len(ok)} ok", flush=True)
    arrays = {f"samples_{first + k}": np.asarray(r.samples) for k, r in enumerate(results) if not isinstance(r, Exception)}
    arrays.update({f"map_{first + k}": np.asarray([r.value(n) for n in r.names]) for k, r in enumerate(results)
                   if not isinstance(r, Exception)})
    np.savez_compressed(out / f"nuts_{tag}.npz", names=np.array(ok[0].names if ok else []), **arrays)


# -- compile --------------------------------------------------------------------------------
def cmd_compile(args) -> None:
    """The programs a cold fit_stars(method="nuts") compiles (JAX's compile log): how many, and the
    seconds of each kind, for a batch of n stars with short chains in one fresh process (run it
    without JAX_COMPILATION_CACHE_DIR, or with an empty one, to see a cold start)."""
    import collections
    import logging
    import re

    import jax

    import stellarfit as sf

    records = []

    class Compiles(logging.Handler):
        def emit(self, record):
            found = re.search(r"Finished XLA compilation of (.*?) in ([0-9.e+-]+) s", record.getMessage())
            if found:
                records.append((found.group(1), float(found.group(2))))

    jax.config.update("jax_log_compiles", True)
    logger = logging.getLogger("jax")
    logger.addHandler(Compiles())
    logger.propagate = False  # the per-program lines go to the JSON, not the terminal
    spectra, _, _ = load_stars(args.stars)
    spectra = spectra[: args.n_stars]
    emulator = sf.load_emulator(args.emulator)
    start = time.perf_counter()
    results = sf.fit_stars(spectra, emulator, method="nuts", batch_size=len(spectra), errors="collect", seed=0,
                           num_warmup=args.num_warmup, num_samples=args.num_samples, sample_with=args.sample_with)
    seconds = time.perf_counter() - start
    programs = collections.defaultdict(lambda: [0, 0.0])
    for name, duration in records:
        programs[name][0] += 1
        programs[name][1] += duration
    rows = sorted(({"program": name, "count": count, "seconds": total} for name, (count, total) in programs.items()),
                  key=lambda row: -row["seconds"])
    compiling = sum(duration for _, duration in records)
    document = {**_header("compile", args), "emulator": args.emulator, "seconds": seconds, "compile_s": compiling,
                "n_programs": len(records), "n_ok": sum(not isinstance(r, Exception) for r in results), "programs": rows}
    _write(document, Path(args.out))
    print(f"{seconds:.1f} s for {len(spectra)} stars, {compiling:.1f} s compiling {len(records)} programs", flush=True)
    for row in rows[:12]:
        print(f"  {row['seconds']:6.2f} s  x{row['count']:<3d} {row['program']}")


# -- compare --------------------------------------------------------------------------------
def cmd_compare(args) -> None:
    """fit_star here against the device's batched draws of the same stars (Monte-Carlo agreement)."""
    import stellarfit as sf

    spectra, truth, names = load_stars(args.stars)
    emulator = sf.load_emulator(args.emulator)
    document = {**_header("compare", args), "draws": os.path.basename(args.draws), "stars": []}
    with np.load(args.draws) as device:
        device_names = [str(n) for n in device["names"]]
        device_draws = {k: np.array(device[f"samples_{k}"]) for k in args.star_ids}
    for k in args.star_ids:
        start = time.perf_counter()
        result = sf.fit_star(spectra[k], emulator, method="nuts", sample_with=args.sample_with, seed=args.seed)
        seconds = time.perf_counter() - start
        if list(result.names) != device_names:
            raise SystemExit(f"parameter names differ: {result.names} here, {device_names} in {args.draws}")
        here = np.asarray(result.samples, dtype=np.float64).reshape(-1, len(device_names))
        there = device_draws[k].reshape(-1, len(device_names))
        lo, median, hi = np.percentile(here, [16, 50, 84], axis=0)
        dlo, dmedian, dhi = np.percentile(there, [16, 50, 84], axis=0)
        half = 0.5 * (hi - lo)
        shift = (dmedian - median) / half
        width = 0.5 * (dhi - dlo) / half
        d = result.diagnostics
        row = {"star": k, "seconds": seconds, "min_ess_bulk": float(min(d["ess_bulk"].values())),
               "gradients": int(d.get("gradient_evaluations", 0)) + int(d.get("gradient_evaluations_warmup", 0)),
               "median_shift_over_half_width": dict(zip(device_names, shift.tolist())),
               "half_width_ratio_device_over_here": dict(zip(device_names, width.tolist()))}
        document["stars"].append(row)
        print(f"star {k}: {seconds:.1f} s here; |median shift| / half-width: median {np.median(np.abs(shift)):.2f}, "
              f"max {np.max(np.abs(shift)):.2f} ({device_names[int(np.argmax(np.abs(shift)))]}); half-width ratio "
              f"{width.min():.2f}-{width.max():.2f}", flush=True)
        _write(document, Path(args.out))


def main() -> None:
    import logging

    # fit_stars' phase timings, so that a step stopped at its time limit still tells where the time went
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("stellarfit").setLevel(logging.INFO)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    stars = commands.add_parser("stars")
    stars.add_argument("--grid", required=True)
    stars.add_argument("--n", type=int, default=16)
    stars.add_argument("--n-total", type=int, default=100, help="the --n-stars of the bench_calibration run reproduced")
    stars.add_argument("--snr", type=float, default=100.0)
    stars.add_argument("--resolution", type=float, default=22_500.0)
    stars.add_argument("--seed", type=int, default=0)
    stars.add_argument("--out", required=True)
    stars.set_defaults(func=cmd_stars)
    grad = commands.add_parser("grad")
    grad.add_argument("--stars", required=True)
    grad.add_argument("--emulators", nargs="+", default=["payne-default", "default-fast", "default"])
    grad.add_argument("--lanes", type=int, nargs="+", default=[1, 4, 16, 64, 128, 512])
    grad.add_argument("--lanes-tp", type=int, nargs="+", default=[1, 4, 8, 16, 64])
    grad.add_argument("--seconds", type=float, default=2.0, help="time spent repeating each call")
    grad.add_argument("--tag", default="device")
    grad.add_argument("--out", required=True)
    grad.set_defaults(func=cmd_grad)
    compile_ = commands.add_parser("compile")
    compile_.add_argument("--stars", required=True)
    compile_.add_argument("--emulator", default="default")
    compile_.add_argument("--sample-with", default="fast", choices=["self", "fast"])
    compile_.add_argument("--n-stars", type=int, default=2)
    compile_.add_argument("--num-warmup", type=int, default=20)
    compile_.add_argument("--num-samples", type=int, default=20)
    compile_.add_argument("--out", required=True)
    compile_.set_defaults(func=cmd_compile)
    compare = commands.add_parser("compare")
    compare.add_argument("--stars", required=True)
    compare.add_argument("--draws", required=True, help="a nuts step's npz (samples_K per star K)")
    compare.add_argument("--emulator", default="default")
    compare.add_argument("--sample-with", default="fast", choices=["self", "fast"])
    compare.add_argument("--star-ids", type=int, nargs="+", default=[0, 1, 2, 3])
    compare.add_argument("--seed", type=int, default=0)
    compare.add_argument("--out", required=True, help="the JSON file to write")
    compare.set_defaults(func=cmd_compare)

    nuts = commands.add_parser("nuts")
    nuts.add_argument("--stars", required=True)
    nuts.add_argument("--emulator", default="payne-default")
    nuts.add_argument("--n-stars", type=int, default=16)
    nuts.add_argument("--first-star", type=int, default=0, help="fit stars first .. first + n-stars - 1 of the file")
    nuts.add_argument("--num-warmup", type=int, default=500)
    nuts.add_argument("--num-samples", type=int, default=500)
    nuts.add_argument("--num-chains", type=int, default=4)
    nuts.add_argument("--max-tree-depth", type=int, default=8)
    nuts.add_argument("--sample-with", default="self", choices=["self", "fast"],
                      help="fit_stars' sample_with: the emulator itself, or (TransformerPayne) its distilled Payne "
                           "moved to the TransformerPayne's MAPs")
    nuts.add_argument("--tag", default=None)
    nuts.add_argument("--out", required=True)
    nuts.set_defaults(func=cmd_nuts)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
