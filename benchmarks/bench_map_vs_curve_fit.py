"""stellarfit's MAP fit against The Payne's fitter (scipy ``curve_fit`` on the same network), in one run.

The Payne (Ting, Conroy, Rix & Cargile 2019, ApJ 879, 69) fits a spectrum by
least squares on its MLP.  This benchmark rebuilds that approach in NumPy on
the weights of the shipped ``payne-default`` emulator:

- forward model: labels min-max scaled to [-0.5, 0.5] with the emulator's own
  scaling, the same layers (LeakyReLU 0.01), float64, then a Doppler shift by
  linear interpolation (``np.interp`` at lambda / D(rv), D relativistic);
  checked against ``emulator.predict`` (max |difference| < 1e-5) before timing;
- fitter: ``scipy.optimize.curve_fit(method="trf")`` with bounds = the scaled
  label box and rv in +-``--rv-bound`` (rv in units of 100 km/s, so that every
  parameter spans ~1), sigma = 1/sqrt(ivar), ``absolute_sigma=True``, the
  default 2-point numerical Jacobian; one start at the box centre with rv = 0
  (The Payne's default), and a second row with as many starts as stellarfit
  uses: the centre plus the first n - 1 of stellarfit's label starts
  (:func:`stellarfit.inference.map.default_starts`), all at rv = 0, keeping
  the lowest chi2 (so this row is never worse than the first).

stellarfit: :func:`stellarfit.fit_star` (``method="map"``: RV search, multi-start
Adam + Levenberg-Marquardt, Laplace covariance and Cramér-Rao bounds) one star
at a time, and :func:`stellarfit.fit_stars` (vectorized, ``--batch-size`` stars
per compiled program).  Settings chosen to match curve_fit's problem:
``continuum_degree=0`` (a profiled constant scale; the closest to no
continuum), vsini fixed at ~0 (``vsini_max=0.01`` km/s: the rotation kernel is a
delta below a pixel; ``vsini_max=0`` is rejected by the CRB step),
``emulator_error=False`` (weights = ivar, as in curve_fit), rv box
+-``--rv-bound`` km/s (``rv_range`` and ``rv_window``).

Data: the first ``--n-stars`` spectra of the default grid's held-out test split
(Turbospectrum spectra, not emulator output), at the emulator's native
resolution and pixels (normalized, no rotation), shifted by a random RV in
+-``--rv-max`` km/s and given Gaussian noise at each ``--snr``.  Pixels that
either model cannot cover for every RV in the box get ivar = 0 (the same pixels
for both fitters).  The RV shift of the data (``--data-shift``): ``quintic``
(default; a quintic spline in ln lambda, more accurate than either fitter's own
interpolation, so neither model matches the data by construction), ``linear``
(the curve_fit model's own shift) or ``cubic`` (stellarfit's forward model's
Keys cubic shift, via :func:`stellarfit.forward.simulate_observation`).

Reported per method: wall time per star (stellarfit after compilation, which
is timed separately; the methods run interleaved, chunk by chunk of
``--batch-size`` stars, so that changes of the machine's load hit all alike; BLAS single-threaded for the NumPy model unless
OPENBLAS_NUM_THREADS is set, as on a loaded machine multi-threaded BLAS is
several times slower), bias = median(fit - truth) and scatter = 1.4826 MAD of
every label and rv, the median chi2 in the method's own objective, and local
minima: the fraction of stars where a method's own chi2 at its solution exceeds
its own chi2 at another method's solution by > 1 (that solution is a point of
its parameter space it could have reached; stellarfit's objective evaluates a
curve_fit solution with vsini = 0 and the profiled scale, curve_fit's
objective evaluates a stellarfit solution without the scale).  stellarfit's
label box is smaller than curve_fit's (labels such as mg_fe must lie within
+-0.4 dex of alpha_fe, as in the grid), so a curve_fit solution outside it is
not counted against stellarfit (it is counted separately).

    nice .venv/bin/python benchmarks/bench_map_vs_curve_fit.py --n-stars 50 --snr 100

Results: benchmarks/results/map_vs_curve_fit.{json,md}.
"""

from __future__ import annotations

import os

# The NumPy model's matrix products: single-threaded BLAS unless the caller says otherwise
# (set before NumPy loads).  Multi-threaded OpenBLAS spins badly on a busy machine.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from _provenance import provenance  # noqa: E402

HERE = Path(__file__).resolve().parent
SPEED_OF_LIGHT_KMS = 299_792.458
RV_UNIT = 100.0  # curve_fit's rv parameter is rv / RV_UNIT (km/s)
METHODS = ("fit_star", "fit_stars", "curve_fit_1", "curve_fit_k")


def robust_sigma(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(1.4826 * np.median(np.abs(values - np.median(values)))) if values.size else float("nan")


def doppler_factor(rv_kms):
    beta = np.asarray(rv_kms, dtype=np.float64) / SPEED_OF_LIGHT_KMS
    return np.sqrt((1.0 + beta) / (1.0 - beta))


class NumpyPayne:
    """The Payne's forward model in NumPy (float64) from a stellarfit PayneEmulator's weights."""

    def __init__(self, emulator):
        import jax

        if getattr(emulator, "model_type", None) != "payne" or emulator.has_continuum:
            raise ValueError(f"needs a Payne emulator without a continuum output, got {emulator!r}")
        if emulator.config.get("lora_rank", 0):
            raise ValueError("LoRA-adapted Payne emulators are not supported by the NumPy model")
        params = jax.tree_util.tree_map(lambda a: np.asarray(a, dtype=np.float64), emulator.params)
        self.hidden = [(params["hidden"][i]["kernel"], params["hidden"][i]["bias"]) for i in range(len(params["hidden"]))]
        self.kernel, self.bias = params["output"]["kernel"], params["output"]["bias"]
        self.slope = float(emulator.config["negative_slope"])
        self.lower = np.asarray(emulator.label_spec.lower, dtype=np.float64)
        self.span = np.asarray(emulator.label_spec.upper - emulator.label_spec.lower, dtype=np.float64)
        self.wavelength = np.asarray(emulator.wavelength, dtype=np.float64)

    def scale(self, labels: np.ndarray) -> np.ndarray:
        return (np.asarray(labels, dtype=np.float64) - self.lower) / self.span - 0.5

    def unscale(self, scaled: np.ndarray) -> np.ndarray:
        return (np.asarray(scaled, dtype=np.float64) + 0.5) * self.span + self.lower

    def rest_flux(self, scaled: np.ndarray) -> np.ndarray:
        """Normalized flux on the native pixels for scaled labels (..., n_labels)."""
        h = np.asarray(scaled, dtype=np.float64)
        for kernel, bias in self.hidden:
            h = h @ kernel + bias
            h = np.where(h > 0.0, h, self.slope * h)
        return h @ self.kernel + self.bias

    def observed_flux(self, scaled: np.ndarray, rv_kms: float, wavelength: np.ndarray) -> np.ndarray:
        """Rest-frame flux Doppler shifted by linear interpolation onto ``wavelength``."""
        return np.interp(wavelength / doppler_factor(rv_kms), self.wavelength, self.rest_flux(scaled))


def shift_spectrum(wavelength: np.ndarray, flux: np.ndarray, rv: float, how: str) -> np.ndarray:
    """A rest-frame spectrum on ``wavelength`` (uniform in ln lambda) seen at radial velocity ``rv``."""
    if how == "linear":
        return np.interp(wavelength / doppler_factor(rv), wavelength, flux)
    if how == "quintic":
        from scipy.interpolate import make_interp_spline

        log_wavelength = np.log(wavelength)
        return make_interp_spline(log_wavelength, flux, k=5)(log_wavelength - np.log(doppler_factor(rv)))
    if how == "cubic":
        from stellarfit.forward import simulate_observation

        resolution = 1.0 / np.mean(np.diff(np.log(wavelength))) / 3.0  # any R <= native: same R in and out
        return np.asarray(simulate_observation(wavelength, flux, resolution, wavelength, resolution, rv=rv, vsini=0.0,
                                               snr=None).flux, dtype=np.float64)
    raise ValueError(f"unknown data shift {how!r}; use linear, cubic or quintic")


def curve_fit_star(model: NumpyPayne, wavelength, flux, sigma, starts, rv_bound: float):
    """The Payne's fit: curve_fit (trf, numerical Jacobian) from each start; the lowest chi2 wins.

    starts: (n_starts, n_labels + 1) scaled labels and rv / RV_UNIT.  Returns
    (best parameters or NaN, its chi2 or inf, model evaluations, failures, time [s]).
    """
    from scipy.optimize import curve_fit

    n_labels = model.lower.size
    calls = [0]

    def function(_, *parameters):
        calls[0] += 1
        parameters = np.asarray(parameters)
        return model.observed_flux(parameters[:n_labels], parameters[n_labels] * RV_UNIT, wavelength)

    lower = np.r_[np.full(n_labels, -0.5), -rv_bound / RV_UNIT]
    upper = np.r_[np.full(n_labels, 0.5), rv_bound / RV_UNIT]
    best, best_chi2, failures = np.full(n_labels + 1, np.nan), np.inf, 0
    begin = time.perf_counter()
    for start in starts:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # OptimizeWarning: covariance not estimable
                parameters, _ = curve_fit(function, wavelength, flux, p0=np.clip(start, lower, upper), sigma=sigma,
                                          absolute_sigma=True, bounds=(lower, upper), method="trf")
        except (RuntimeError, ValueError):
            failures += 1
            continue
        chi2 = float(np.sum(((function(None, *parameters) - flux) / sigma) ** 2))
        if chi2 < best_chi2:
            best, best_chi2 = parameters, chi2
    return best, best_chi2, calls[0], failures, time.perf_counter() - begin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--emulator", default="payne-default")
    parser.add_argument("--grid", default="~/.cache/stellarfit/grids/ts_default_2000.h5")
    parser.add_argument("--n-stars", type=int, default=50)
    parser.add_argument("--snr", type=float, nargs="+", default=[100.0])
    parser.add_argument("--rv-max", type=float, default=20.0, help="true RVs are uniform in +-rv-max km/s")
    parser.add_argument("--rv-bound", type=float, default=50.0, help="both fitters' RV box: +-rv-bound km/s")
    parser.add_argument("--data-shift", choices=["quintic", "linear", "cubic"], default="quintic")
    parser.add_argument("--n-starts", type=int, default=8, help="stellarfit's starts, and curve_fit's in the second row")
    parser.add_argument("--adam-steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="output path without suffix (default results/map_vs_curve_fit)")
    args = parser.parse_args()
    if args.n_stars < 1:
        parser.error("--n-stars must be >= 1")
    if not 0 < args.rv_max < args.rv_bound:
        parser.error("need 0 < --rv-max < --rv-bound")

    import jax
    import jax.numpy as jnp

    import stellarfit as sf
    from stellarfit.forward import continuum_design_matrix
    from stellarfit.grids import SpectralGrid
    from stellarfit.inference import FitProblem
    from stellarfit.inference.map import default_starts
    from stellarfit.inference.fit import forward_model_for
    from stellarfit.spectra import ObservedSpectrum

    emulator = sf.load_emulator(args.emulator)
    model = NumpyPayne(emulator)
    grid = SpectralGrid.read(os.path.expanduser(args.grid))
    if not (grid.wavelength.size == emulator.n_pixels and np.allclose(grid.wavelength, emulator.wavelength)):
        raise SystemExit("the grid is not on the emulator's native pixels; use the emulator's training grid")
    if tuple(grid.label_names) != tuple(emulator.label_names):
        raise SystemExit(f"grid labels {grid.label_names} differ from the emulator's {emulator.label_names}")
    _, _, test = grid.split((0.8, 0.1, 0.1), seed=0)
    test = test[: args.n_stars]
    truth_labels = np.asarray(grid.labels[test], dtype=np.float64)
    wavelength = np.asarray(emulator.wavelength, dtype=np.float64)
    resolution = float(emulator.native_resolution)
    label_names = list(emulator.label_names)
    names = label_names + ["rv"]
    n_labels = len(label_names)

    # the NumPy model must be the emulator
    difference = float(np.max(np.abs(model.rest_flux(model.scale(truth_labels)) - emulator.predict(truth_labels))))
    assert difference < 1e-5, f"NumPy Payne differs from emulator.predict by {difference:.2e}"
    print(f"NumPy model = emulator.predict to {difference:.1e} (max over {len(test)} spectra x {wavelength.size} pixels)")

    options = dict(rv_range=(-args.rv_bound, args.rv_bound), vsini_max=0.01)
    fit_options = dict(rv_window=args.rv_bound, continuum_degree=0, n_starts=args.n_starts, adam_steps=args.adam_steps,
                       seed=args.seed, emulator_error=False, error_floor=False, **options)
    forward_model = forward_model_for(emulator, wavelength, resolution, **options)
    covered = forward_model.covered  # pixels modelled for every rv in the box (also inside np.interp's range)
    design = continuum_design_matrix(wavelength, None, 0)
    ours_chi2 = jax.jit(lambda problem, theta: problem.continuum_fit(theta)[2])

    rng = np.random.default_rng(args.seed)
    rvs = rng.uniform(-args.rv_max, args.rv_max, len(test))
    truths = np.column_stack([truth_labels, rvs])
    rest = [np.asarray(grid.flux[i], dtype=np.float64) for i in test]
    shifted = [shift_spectrum(wavelength, f, rv, args.data_shift) for f, rv in zip(rest, rvs)]
    document = {
        "benchmark": "bench_map_vs_curve_fit", "emulator": args.emulator,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(jax.devices()[0]), "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS"), "load_average_before": list(os.getloadavg()),
        "settings": {k: v for k, v in vars(args).items() if k != "out"}, "fit_star_options": fit_options,
        "n_pixels": int(covered.sum()), "numpy_model_max_difference": difference, "test_indices": [int(i) for i in test],
        "results": {},
    }
    lines = []
    for snr in args.snr:
        spectra, problems = [], []
        for flux in shifted:
            observed = flux + rng.normal(size=flux.size) / snr
            ivar = np.where(covered, snr**2, 0.0)
            spectra.append(ObservedSpectrum.from_arrays(wavelength, observed, ivar=ivar, resolution=resolution))
            problems.append(FitProblem(forward_model, emulator.label_spec, observed, ivar, design,
                                       vsini_max=options["vsini_max"], rv_range=options["rv_range"]))
        solutions = {m: np.full((len(test), n_labels + 1), np.nan) for m in METHODS}
        seconds = {m: np.full(len(test), np.nan) for m in METHODS}
        extra: dict = {m: {} for m in METHODS}
        flags: dict = {"fit_star": [], "fit_stars": []}

        # --- compilation: one fit_star call, and fit_stars on every batch shape used below
        print(f"S/N {snr:g}: compiling ...", flush=True)
        begin = time.perf_counter()
        sf.fit_star(spectra[0], emulator, method="map", **fit_options)
        first_call_s = time.perf_counter() - begin
        batch = min(args.batch_size, len(spectra))
        chunks = [list(range(i, min(i + batch, len(spectra)))) for i in range(0, len(spectra), batch)]
        warm = [spectra[:batch]] + ([spectra[: len(chunks[-1])]] if len(chunks[-1]) != batch else [])
        begin = time.perf_counter()
        for chunk in warm:
            sf.fit_stars(chunk, emulator, batch_size=batch, **fit_options)
        warm_s = time.perf_counter() - begin

        # --- timed fits, interleaved chunk by chunk (the machine's load changes during a run):
        # fit_stars on a chunk, then fit_star and both curve_fit rows on each of its stars
        label_starts = default_starts(problems[0], max(args.n_starts - 1, 1), rv=0.0, seed=args.seed)[: args.n_starts - 1, :n_labels]
        starts_k = np.zeros((args.n_starts, n_labels + 1))  # the centre (as curve_fit x1), then stellarfit's starts
        starts_k[1:, :n_labels] = model.scale(label_starts)
        evaluations = {"curve_fit_1": [], "curve_fit_k": []}
        failures = {"curve_fit_1": 0, "curve_fit_k": 0}
        load = []
        for chunk in chunks:
            load.append(os.getloadavg()[0])
            begin = time.perf_counter()
            results = sf.fit_stars([spectra[k] for k in chunk], emulator, batch_size=batch, **fit_options)
            seconds["fit_stars"][chunk] = (time.perf_counter() - begin) / len(chunk)
            for k, result in zip(chunk, results):
                solutions["fit_stars"][k] = [result.labels[n]["value"] for n in names]
                flags["fit_stars"].append(result.flag_names)
            for k in chunk:
                begin = time.perf_counter()
                result = sf.fit_star(spectra[k], emulator, method="map", **fit_options)
                seconds["fit_star"][k] = time.perf_counter() - begin
                solutions["fit_star"][k] = [result.labels[n]["value"] for n in names]
                flags["fit_star"].append(result.flag_names)
                flux = np.asarray(spectra[k].flux)[covered]
                sigma = 1.0 / np.sqrt(np.asarray(spectra[k].ivar)[covered])
                for method, starts in (("curve_fit_1", np.zeros((1, n_labels + 1))), ("curve_fit_k", starts_k)):
                    best, _, calls, failed, elapsed = curve_fit_star(model, wavelength[covered], flux, sigma, starts, args.rv_bound)
                    solutions[method][k] = np.r_[model.unscale(best[:n_labels]), best[n_labels] * RV_UNIT]
                    seconds[method][k] = elapsed
                    evaluations[method].append(calls)
                    failures[method] += failed
                print(f"  star {k + 1}/{len(spectra)}: fit_stars {seconds['fit_stars'][k]:.1f} s, fit_star {seconds['fit_star'][k]:.1f} s, "
                      f"curve_fit {seconds['curve_fit_1'][k]:.1f} s (1 start), {seconds['curve_fit_k'][k]:.1f} s ({args.n_starts})",
                      flush=True)
        extra["fit_star"]["first_call_s"] = first_call_s
        extra["fit_stars"].update(warm_up_s=warm_s, warm_up_stars=sum(len(c) for c in warm), batch_size=batch)
        for method, names_per_star in flags.items():
            extra[method]["fraction_flagged"] = {flag: float(np.mean([flag in f for f in names_per_star]))
                                                 for flag in sorted({x for f in names_per_star for x in f})}
        for method in evaluations:
            extra[method].update(model_evaluations_median=float(np.median(evaluations[method])), failed_starts=failures[method])

        # --- every solution in every objective: stellarfit's (vsini 0, profiled scale) and curve_fit's
        chi2 = {"stellarfit": np.full((len(METHODS), len(test)), np.nan), "curve_fit": np.full((len(METHODS), len(test)), np.nan)}
        for k, (spectrum, problem) in enumerate(zip(spectra, problems)):
            flux, sigma = np.asarray(spectrum.flux)[covered], 1.0 / np.sqrt(np.asarray(spectrum.ivar)[covered])
            for j, method in enumerate(METHODS):
                solution = solutions[method][k]
                if not np.all(np.isfinite(solution)):
                    continue
                theta = jnp.asarray(np.r_[solution, 0.0], jnp.float32)
                chi2["stellarfit"][j, k] = float(ours_chi2(problem, theta))
                prediction = model.observed_flux(model.scale(solution[:n_labels]), solution[n_labels], wavelength[covered])
                chi2["curve_fit"][j, k] = float(np.sum(((prediction - flux) / sigma) ** 2))
        truth_chi2 = {"stellarfit": [], "curve_fit": []}
        for k, (spectrum, problem) in enumerate(zip(spectra, problems)):
            flux, sigma = np.asarray(spectrum.flux)[covered], 1.0 / np.sqrt(np.asarray(spectrum.ivar)[covered])
            truth_chi2["stellarfit"].append(float(ours_chi2(problem, jnp.asarray(np.r_[truths[k], 0.0], jnp.float32))))
            prediction = model.observed_flux(model.scale(truths[k, :n_labels]), truths[k, n_labels], wavelength[covered])
            truth_chi2["curve_fit"].append(float(np.sum(((prediction - flux) / sigma) ** 2)))
        objective = {m: ("stellarfit" if m.startswith("fit_") else "curve_fit") for m in METHODS}
        # inside stellarfit's box (tolerance: float32 solutions on the box edge); curve_fit's box holds stellarfit's
        inside = np.array([[np.all(np.isfinite(s)) and not emulator.label_spec.violations(s[:n_labels], tolerance=1e-4)
                            for s in solutions[m]] for m in METHODS])
        reachable = {m: (inside if objective[m] == "stellarfit" else np.ones_like(inside)) for m in METHODS}
        worse, worse_outside = {}, {}  # worse[a][b]: fraction of stars where a's own chi2 at a's solution > at b's + 1
        for i, a in enumerate(METHODS):
            own = chi2[objective[a]]
            worse[a] = {b: float(np.mean((own[i] > own[j] + 1.0) & reachable[a][j])) for j, b in enumerate(METHODS) if b != a}
            worse_outside[a] = {b: float(np.mean((own[i] > own[j] + 1.0) & ~reachable[a][j])) for j, b in enumerate(METHODS)
                                if b != a}
        outside_box = {m: float(np.mean(~inside[i])) for i, m in enumerate(METHODS)}

        per_method = {}
        for i, method in enumerate(METHODS):
            delta = solutions[method] - truths
            own = chi2[objective[method]][i]
            others = [j for j in range(len(METHODS)) if j != i]
            stuck = np.any((own[None, :] > chi2[objective[method]][others] + 1.0) & reachable[method][others], axis=0)
            timed = seconds[method]
            per_method[method] = {
                "seconds_per_star": float(np.mean(timed)), "seconds_per_star_median": float(np.median(timed)),
                "compile_s": (float(first_call_s - seconds["fit_star"][0]) if method == "fit_star" else
                              float(warm_s - np.mean(timed) * extra["fit_stars"]["warm_up_stars"]) if method == "fit_stars" else 0.0),
                "median_chi2": float(np.nanmedian(own)),
                "median_chi2_minus_truth": float(np.nanmedian(own - np.asarray(truth_chi2[objective[method]]))),
                "objective": objective[method], "fraction_stuck": float(np.mean(stuck)),
                "fraction_outside_stellarfit_box": outside_box[method],
                "n_failed": int(np.sum(~np.all(np.isfinite(solutions[method]), axis=1))),
                "worse_than": worse[method], "worse_than_outside_box": worse_outside[method],
                "parameters": {name: {"bias": float(np.nanmedian(delta[:, j])), "scatter": robust_sigma(delta[:, j])}
                               for j, name in enumerate(names)},
                **extra[method],
            }
        document["results"][str(snr)] = {
            "methods": per_method, "load_average_per_chunk": load, "median_chi2_at_truth": {k: float(np.median(v)) for k, v in truth_chi2.items()},
            "per_star": {"truth": truths.tolist(), "solutions": {m: s.tolist() for m, s in solutions.items()},
                         "seconds": {m: s.tolist() for m, s in seconds.items()},
                         "chi2": {k: v.tolist() for k, v in chi2.items()}, "chi2_at_truth": truth_chi2},
        }
        lines += markdown(snr, per_method, document, args, names)
        print("\n".join(lines[-(len(names) + 30):]), flush=True)

    document["load_average_after"] = list(os.getloadavg())
    document["provenance"] = provenance()
    out = Path(args.out) if args.out else HERE / "results" / "map_vs_curve_fit"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(document, indent=1))
    header = (f"`{args.emulator}` on {args.n_stars} held-out Turbospectrum spectra (test split), native R and pixels "
              f"({document['n_pixels']} used), RV uniform in +-{args.rv_max:g} km/s, data shifted by `{args.data_shift}` "
              f"interpolation; {document['device']}, {document['cpu_count']} cores, BLAS threads "
              f"{document['blas_threads']}, load {document['load_average_before'][0]:.1f} -> "
              f"{document['load_average_after'][0]:.1f}, {document['date']}.\n\n")
    out.with_suffix(".md").write_text(header + "\n".join(lines) + "\n")
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


LABELS = {"fit_star": "stellarfit `fit_star` (MAP, {k} starts)", "fit_stars": "stellarfit `fit_stars` (vectorized, batch {b})",
          "curve_fit_1": "curve_fit, 1 start (The Payne)", "curve_fit_k": "curve_fit, {k} starts"}
SHORT = {"fit_star": "fit_star", "fit_stars": "fit_stars", "curve_fit_1": "curve_fit x1", "curve_fit_k": "curve_fit x{k}"}


def markdown(snr: float, per_method: dict, document: dict, args, names: list[str]) -> list[str]:
    k, b = args.n_starts, per_method["fit_stars"].get("batch_size", args.batch_size)
    label = {m: text.format(k=k, b=b) for m, text in LABELS.items()}
    short = {m: text.format(k=k) for m, text in SHORT.items()}
    lines = [f"### S/N {snr:g}\n",
             "| method | s / star | compile s | median chi2 | median chi2 - chi2(truth) | stuck: chi2 > another method's solution + 1 |",
             "|---|---|---|---|---|---|"]
    for method, row in per_method.items():
        lines.append(f"| {label[method]} | {row['seconds_per_star']:.2f} | {row['compile_s']:.0f} | {row['median_chi2']:.0f} | "
                     f"{row['median_chi2_minus_truth']:+.0f} | {100 * row['fraction_stuck']:.0f}% |")
    lines += ["", "Bias (median of fit - truth) / scatter (1.4826 MAD):", "",
              "| parameter | " + " | ".join(short[m] for m in per_method) + " |", "|---" * (len(per_method) + 1) + "|"]
    for name in names:
        cells = [f"{row['parameters'][name]['bias']:+.3g} / {row['parameters'][name]['scatter']:.3g}" for row in per_method.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Local minima: % of stars where the row's own chi2 at its solution exceeds its own chi2 at the column's "
              "solution by > 1:", "", "| | " + " | ".join(short[m] for m in per_method) + " |",
              "|---" * (len(per_method) + 1) + "|"]
    for method, row in per_method.items():
        cells = ["-" if other == method else f"{100 * row['worse_than'][other]:.0f}%" for other in per_method]
        lines.append(f"| {short[method]} | " + " | ".join(cells) + " |")
    cf1, cfk = per_method["curve_fit_1"], per_method["curve_fit_k"]
    lines += ["", f"curve_fit: median {cf1['model_evaluations_median']:.0f} (1 start) and {cfk['model_evaluations_median']:.0f} "
              f"({k} starts) model evaluations per star, Jacobian included; {cf1['failed_starts']} and {cfk['failed_starts']} "
              f"starts failed. stellarfit fit_stars: first calls (compilation + {per_method['fit_stars']['warm_up_stars']} stars) "
              f"{per_method['fit_stars']['warm_up_s']:.0f} s. Solutions outside stellarfit's label box (offset labels such as "
              f"mg_fe within +-0.4 of alpha_fe): curve_fit x1 {100 * cf1['fraction_outside_stellarfit_box']:.0f}%, "
              f"curve_fit x{k} {100 * cfk['fraction_outside_stellarfit_box']:.0f}% (not counted as stellarfit local minima; "
              f"stellarfit's chi2 exceeds its chi2 at such a solution by > 1 for "
              f"{100 * max(per_method['fit_star']['worse_than_outside_box'].values()):.0f}% of the stars). "
              f"stellarfit flags (fit_star): {flag_text(per_method['fit_star'].get('fraction_flagged', {}))}. "
              "Median chi2 at the truth: "
              f"{document['results'][str(snr)]['median_chi2_at_truth']['stellarfit']:.0f} (stellarfit's model), "
              f"{document['results'][str(snr)]['median_chi2_at_truth']['curve_fit']:.0f} (curve_fit's model); "
              f"{document['n_pixels']} pixels.", ""]
    return lines


def flag_text(fractions: dict) -> str:
    return ", ".join(f"{name} {100 * value:.0f}%" for name, value in fractions.items()) or "none"


if __name__ == "__main__":
    main()
