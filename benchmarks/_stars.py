"""The two stars of the NUTS speed benchmarks: the shipped example spectrum and a second one on its pixels.

The second is the example with an independent noise draw added (seed 1), at
sqrt(2) the noise, so its ivar halves: a different posterior on the same
pixels, which reuses every compiled program.
"""

from __future__ import annotations

import datetime
import os
import platform

import numpy as np
from _provenance import provenance


def add_sampler_options(parser) -> None:
    """The options every NUTS speed benchmark shares: emulator, chain lengths, output path."""
    parser.add_argument("--emulator", default="payne-default")
    parser.add_argument("--num-warmup", type=int, default=500)
    parser.add_argument("--num-samples", type=int, default=500)
    parser.add_argument("--num-chains", type=int, default=4)
    parser.add_argument("--out", default=None)


def document_header(benchmark: str, args) -> dict:
    """The JSON document's common fields: name, emulator, date, machine, load, settings, an empty run list."""
    return {
        "benchmark": benchmark, "emulator": args.emulator,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(), "platform": platform.platform(), "load_average_before": list(os.getloadavg()),
        "settings": {k: v for k, v in vars(args).items() if k != "out"}, "runs": [], "provenance": provenance(),
    }


def two_stars():
    """(example, second) ObservedSpectrum pair."""
    from stellarfit.spectra import ObservedSpectrum, example_spectrum

    first = example_spectrum()
    rng = np.random.default_rng(1)
    sigma = np.where(first.ivar > 0, 1.0 / np.sqrt(np.where(first.ivar > 0, first.ivar, 1.0)), 0.0)
    second = ObservedSpectrum.from_arrays(first.wavelength, first.flux + rng.normal(size=first.flux.size) * sigma,
                                          ivar=first.ivar / 2.0, resolution=first.resolution)
    return first, second


def robust_sigma(values) -> float:
    """1.4826 x the median absolute deviation of the finite values (NaN when there are none)."""
    values = np.asarray(values)
    values = values[np.isfinite(values)]
    return float(1.4826 * np.median(np.abs(values - np.median(values)))) if values.size else float("nan")


def compile_counter() -> dict:
    """{"seconds": ..., "programs": ...}: XLA backend compilation from now on, counted through
    ``jax.monitoring`` (read it before and after a step to get that step's compilation)."""
    import jax

    counts = {"seconds": 0.0, "programs": 0}

    def listener(event, duration, **kwargs):
        if "compile" in event and "backend" in event:
            counts["seconds"] += duration
            counts["programs"] += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    return counts


def add_heldout_options(parser, out: str) -> None:
    """Options of the benchmarks that fit held-out stars from a ``bench_gpu_fits.py stars`` npz."""
    parser.add_argument("--stars", required=True, help="a bench_gpu_fits.py stars npz (the S/N-100 heldout-b set)")
    parser.add_argument("--emulator", default="payne-default")
    parser.add_argument("--star-indices", type=int, nargs="+", default=None, help="default: every star in the file")
    parser.add_argument("--out", default=out)


def heldout_run(args, benchmark: str):
    """(spectra, star indices, JSON path, document) for a resumable held-out-star benchmark: the
    document at ``args.out``.json if a run left one, else a new header."""
    import json
    from pathlib import Path

    from bench_gpu_fits import load_stars

    spectra, _, _ = load_stars(args.stars)
    indices = args.star_indices if args.star_indices is not None else list(range(len(spectra)))
    path = Path(args.out).with_suffix(".json")
    document = json.loads(path.read_text()) if path.exists() else document_header(benchmark, args)
    return spectra, indices, path, document


#: fit_star's defaults for the observation model, as the two-stage benchmarks pass them to ``_prepare``
FIT_OPTIONS = dict(priors=None, rv_range=(-1000.0, 1000.0), rv_window=50.0, vsini_max=100.0, continuum_degree=2,
                   emulator_error=True)


def second_stage(spectrum, emulator, fast):
    """What ``fit_star(spectrum, emulator)`` polishes with a fast path: ``fast``'s multi-start MAP,
    then ``emulator``'s problem on the spectrum and the polish's start from that MAP.
    Returns (the fast path's FitResult, the _Prepared problem, the start (p,))."""
    import stellarfit as sf
    from stellarfit.inference.fit import _init_values, _prepare, _start_vector

    first = sf.fit_star(spectrum, fast, "map", init=None)
    values = _init_values(first, emulator.label_spec)
    prepared = _prepare(spectrum, emulator, start=values, **FIT_OPTIONS)
    return first, prepared, _start_vector(prepared.problem, values, prepared.rv0)
