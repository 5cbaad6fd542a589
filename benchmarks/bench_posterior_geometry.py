"""Why some held-out stars need long NUTS trajectories: the sampled density's local curvature, and
the emulator's response to a weakly constrained label against Turbospectrum's.

For held-out stars (a ``bench_gpu_fits.py stars`` npz, the S/N-100 heldout-b set) this runs
``fit_star(spectrum, emulator, "nuts", seed=k, error_floor=False)`` as ``bench_nuts_heldout.py``
does and keeps, from inside the sampler, the chain draws, the coordinates the chains moved in and
the pooled metric of the second warm-up phase.  Then, per star:

- **Curvature in the sampler's coordinates.**  At 40 random draws, the Hessian of the negative log
  density in the coordinates in which the final metric is the identity (u, with z = mode + F L u:
  F the Laplace whitening, L the Cholesky factor of the pooled inverse mass matrix).  For a
  Gaussian posterior that the metric fits, every eigenvalue is ~1 and NUTS takes steps of ~0.5-1;
  a leapfrog step is stable only below 2 / sqrt(largest eigenvalue).  Printed: the largest
  eigenvalue's median and 90th percentile over the draws, and the parameters that dominate its
  eigenvector (mean absolute z components of the unit eigenvector mapped to z).
- **The scanned label** (``--label``, default na_fe): its 5-95% posterior range as a fraction of
  its box, and Sarle's bimodality coefficient of its z draws ((skewness^2 + 1) / (excess kurtosis +
  3); above 5/9 ~ 0.56 suggests two modes).
- **Response to the label.**  At the posterior median of the 13 labels, the spectrum for 9 values
  of the label across its box (the others held) from each emulator (``--emulators``) and from
  Turbospectrum (the engine that made the grids, on the emulators' native pixels): RMS and largest
  absolute change of the normalized flux between the box's ends.  Where the emulator's change is
  much larger than Turbospectrum's, the posterior's structure along that label comes from the
  emulator, not from the physics.

Gradient counts and curvatures do not depend on the machine's load.  Resumes from its JSON.

    python benchmarks/bench_posterior_geometry.py --stars .gpu/stars_snr100.npz --star-indices 0 10 15
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _stars import add_heldout_options, heldout_run  # noqa: E402

N_POINTS = 40
N_VALUES = 9


class _Captured:
    """What sample_numpyro saw and made inside fit_star: problem, start, pooled metric, draws."""

    def __init__(self):
        from stellarfit.inference import nuts

        self.nuts = nuts
        self.values: dict = {}
        originals = {name: getattr(nuts, name) for name in ("sample_numpyro", "_prepare", "pooled_inverse_mass", "_run_schedule")}

        def sample_numpyro(problem, *arguments, **options):
            self.values["problem"] = problem
            self.values["result"] = originals["sample_numpyro"](problem, *arguments, **options)
            return self.values["result"]

        def prepare(*arguments, **options):
            self.values["start"] = originals["_prepare"](*arguments, **options)
            return self.values["start"]

        def pooled(*arguments, **options):
            self.values["metric"] = originals["pooled_inverse_mass"](*arguments, **options)
            return self.values["metric"]

        def schedule(*arguments, **options):
            out = originals["_run_schedule"](*arguments, **options)
            self.values["w"] = np.asarray(out[0][0], np.float64)
            return out

        nuts.sample_numpyro, nuts._prepare, nuts.pooled_inverse_mass, nuts._run_schedule = (
            sample_numpyro, prepare, pooled, schedule)


def curvature(problem, start, metric, w, rng) -> dict:
    """Largest eigenvalues of the negative log density's Hessian in the final metric's coordinates."""
    import jax
    import jax.numpy as jnp

    hessian = jax.jit(jax.hessian(problem.log_density_unconstrained))
    transform = start.factor @ np.linalg.cholesky(metric)  # z = center + transform @ u
    flat = w.reshape(-1, w.shape[-1])
    largest, directions = [], []
    for i in rng.choice(len(flat), min(N_POINTS, len(flat)), replace=False):
        z = start.center + start.factor @ flat[i]
        h = -np.asarray(hessian(jnp.asarray(z, jnp.float32)), np.float64)
        hu = transform.T @ h @ transform
        values, vectors = np.linalg.eigh(0.5 * (hu + hu.T))
        largest.append(values[-1])
        direction = transform @ vectors[:, -1]
        directions.append(np.abs(direction) / np.linalg.norm(direction))
    weights = np.mean(directions, axis=0)
    order = np.argsort(-weights)[:4]
    return {"largest_eigenvalue_median": float(np.median(largest)),
            "largest_eigenvalue_p90": float(np.quantile(largest, 0.9)),
            "top_direction": {problem.names[j]: round(float(weights[j]), 3) for j in order}}


def bimodality(values) -> float:
    """Sarle's bimodality coefficient (skewness^2 + 1) / (excess kurtosis + 3) (large-sample form)."""
    from scipy import stats

    return float((stats.skew(values) ** 2 + 1.0) / (stats.kurtosis(values) + 3.0))


def _turbospectrum(labels: dict) -> np.ndarray:
    from stellarfit.synth.engines import make_engine

    engine = make_engine("turbospectrum")
    flux, _ = engine.synthesize(labels)
    return np.interp(_turbospectrum.wavelength, engine.wavelength, flux)


def _init_worker(wavelength):
    _turbospectrum.wavelength = wavelength


def response(emulators: dict, names, median, label: str, workers: int) -> dict:
    """Flux change across the label's box at the posterior median: each emulator and Turbospectrum."""
    spec = next(iter(emulators.values())).label_spec
    j = names.index(label)
    lower, upper = spec.lower[j], spec.upper[j]
    labels = np.repeat(np.asarray(median, np.float64)[None, : len(spec)], N_VALUES, axis=0)
    offset_from = spec.labels[j].offset_from
    if offset_from is not None:  # a label bounded relative to another: its interval around that one (or 0)
        centre = labels[0, spec.index(offset_from)] if offset_from else 0.0
        lower, upper = max(lower, centre - spec.labels[j].offset_halfwidth), min(upper, centre + spec.labels[j].offset_halfwidth)
    labels[:, j] = np.linspace(lower, upper, N_VALUES)
    fluxes = {name: np.asarray(emulator.predict(labels), np.float64) for name, emulator in emulators.items()}
    wavelength = np.asarray(next(iter(emulators.values())).wavelength, np.float64)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                             initargs=(wavelength,)) as pool:
        fluxes["turbospectrum"] = np.array(list(pool.map(_turbospectrum, [dict(zip(spec.names, row)) for row in labels])))
    out = {"values": labels[:, j].tolist()}
    for name, flux in fluxes.items():
        change = flux[-1] - flux[0]
        out[name] = {"rms_change": float(np.sqrt(np.mean(change**2))), "max_change": float(np.max(np.abs(change))),
                     "rms_vs_middle": np.sqrt(np.mean((flux - flux[N_VALUES // 2]) ** 2, axis=1)).tolist()}
        if name != "turbospectrum":
            out[name]["rms_minus_turbospectrum"] = np.sqrt(np.mean((flux - fluxes["turbospectrum"]) ** 2, axis=1)).tolist()
    return out


def table(document: dict) -> str:
    label = document["settings"]["label"]
    emulators = document["settings"]["emulators"]
    head = ("| star | truth Teff / logg / [Fe/H] | gradients | step size | steps per draw | largest eigenvalue, median (90%) "
            "| its direction (z) | " + f"{label} 5-95% / box | bimodality | "
            + " | ".join(f"RMS flux change across {label}'s box, {name}" for name in emulators + ["turbospectrum"]) + " |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for run in document["runs"]:
        t = run["truth"]
        direction = ", ".join(f"{k} {v:.2f}" for k, v in run["curvature"]["top_direction"].items())
        changes = " | ".join(f"{run['response'][name]['rms_change']:.1e}" for name in emulators + ["turbospectrum"])
        lines.append(
            f"| {run['star']} | {t['teff']:.0f} / {t['logg']:.2f} / {t['fe_h']:+.2f} | {run['gradients']:,} | "
            f"{run['step_size_median']:.2f} | {run['steps_per_draw']:.1f} | "
            f"{run['curvature']['largest_eigenvalue_median']:.1f} ({run['curvature']['largest_eigenvalue_p90']:.1f}) | "
            f"{direction} | {run['label_range_fraction']:.2f} | {run['label_bimodality']:.2f} | {changes} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_heldout_options(parser, str(HERE / "results" / "posterior_geometry_payne-default"))
    parser.add_argument("--label", default="na_fe", help="the label whose posterior and flux response are scanned")
    parser.add_argument("--emulators", nargs="+", default=["payne-default", "default-fast", "default"],
                        help="emulators whose response to the label is compared with Turbospectrum's")
    parser.add_argument("--workers", type=int, default=2, help="Turbospectrum processes")
    args = parser.parse_args()

    import stellarfit as sf
    from bench_gpu_fits import load_stars

    captured = _Captured()
    spectra, indices, path, document = heldout_run(args, "bench_posterior_geometry")
    _, truths, truth_names = load_stars(args.stars)
    emulator = sf.load_emulator(args.emulator)
    others = {name: emulator if name == args.emulator else sf.load_emulator(name) for name in args.emulators}
    done = {run["star"] for run in document["runs"]}
    for k in indices:
        if k in done:
            continue
        start_time = time.perf_counter()
        sf.fit_star(spectra[k], emulator, "nuts", seed=k, error_floor=False)
        values = captured.values
        problem, result = values["problem"], values["result"]
        names = list(problem.names)
        j = names.index(args.label)
        theta = result.samples.reshape(-1, len(names))
        z = np.asarray(problem.to_unconstrained(theta.astype(np.float32)), np.float64)
        low, high = np.quantile(theta[:, j], [0.05, 0.95])
        box = problem.box_widths()[j] if problem._offset_reference[j] == -2 else 2.0 * problem._offset_halfwidth[j]
        diagnostics = result.diagnostics
        run = {
            "star": k, "truth": dict(zip(truth_names, np.asarray(truths[k], float).tolist())),
            "gradients": int(diagnostics["gradient_evaluations"] + diagnostics["gradient_evaluations_warmup"]),
            "step_size_median": float(np.median(diagnostics["step_size"])),
            "steps_per_draw": float(np.mean(result.sample_stats["n_steps"])),
            "min_ess_bulk": float(min(diagnostics["ess_bulk"].values())),
            "curvature": curvature(problem, values["start"], values["metric"], values["w"], np.random.default_rng(k)),
            "label_range_fraction": float((high - low) / box), "label_bimodality": bimodality(z[:, j]),
            "posterior_median": dict(zip(names, np.median(theta, axis=0).tolist())),
        }
        run["response"] = response(others, names, np.median(theta, axis=0), args.label, args.workers)
        run["seconds"] = time.perf_counter() - start_time
        document["runs"].append(run)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document, indent=1))
        print(f"star {k}: {run['gradients']:,} gradients, largest eigenvalue {run['curvature']['largest_eigenvalue_median']:.1f}, "
              f"{args.label} bimodality {run['label_bimodality']:.2f}, flux change "
              + ", ".join(f"{name} {run['response'][name]['rms_change']:.1e}" for name in list(others) + ["turbospectrum"]),
              flush=True)
    path.with_suffix(".md").write_text(table(document))
    print(table(document))


if __name__ == "__main__":
    main()
