"""Inference cost of the emulators: forward and label-gradient time per spectrum.

For each emulator (random weights; cost does not depend on the values) on the
default model's labels (13) and 8,600 log-spaced pixels over 5000-5500 A:

- ``forward_s``: one spectrum, jitted ``apply_fn`` (median of repeats);
- ``batch_pixels_per_s``: throughput for a batch of spectra;
- ``grad_chi2_s``: ``jax.grad`` of a chi2 wrt the 13 physical labels (what
  NUTS/HMC needs per leapfrog step);
- ``jacobian_s``: ``jax.jacfwd`` of the full spectrum wrt the labels
  (8600 x 13, what Fisher/Cramér-Rao needs);
- ``compile_s`` of each function, reported separately.

Models: The Payne (300-300), the scaled-up Payne (3 x 512) and
TransformerPayne at d=128, 8 layers, 16 tokens (the public v2 size); the full
run adds a smaller TransformerPayne (d=64, 4 layers, 8 tokens).  Reference
(issue 4): the public TransformerPayne took ~0.47 s forward and ~2.1 s per
label gradient on a 2-core machine; a Payne MLP ~0.5 ms.

Usage: ``python benchmarks/bench_emulators.py [--quick] [--out DIR]``; prints a
table and writes ``bench_emulators[_quick].json`` and ``.md`` to
benchmarks/results/.  The machine's load average is recorded: timings on a
shared, loaded machine are upper bounds.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from stellarfit.emulators import PayneEmulator, TransformerPayneEmulator, scaled_payne_config
from stellarfit.labels import default_label_spec
from _provenance import provenance

N_PIXELS = 8600


def _timed(fn, *args, repeats: int) -> tuple[float, float]:
    """(compile + first-call seconds, median seconds of ``repeats`` further calls)."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times)


def bench_one(name: str, emulator, *, repeats: int, batch: int) -> dict:
    spec = emulator.label_spec
    rng = np.random.default_rng(0)
    theta = jnp.asarray(spec.from_unit_cube(rng.uniform(size=(1, len(spec))))[0], jnp.float32)
    thetas = jnp.asarray(spec.from_unit_cube(rng.uniform(size=(batch, len(spec)))), jnp.float32)
    observed = jnp.asarray(1.0 - 0.1 * rng.uniform(size=N_PIXELS), jnp.float32)
    params = emulator.params

    @jax.jit
    def forward(params, theta):
        return emulator.apply_fn(params, emulator.scale_labels(theta))

    @jax.jit
    def grad_chi2(params, theta):
        def chi2(t):
            return jnp.sum((emulator.apply_fn(params, emulator.scale_labels(t)) - observed) ** 2 * 1e4)

        return jax.grad(chi2)(theta)

    @jax.jit
    def jacobian(params, theta):
        return jax.jacfwd(lambda t: emulator.apply_fn(params, emulator.scale_labels(t)))(theta)

    result = {"model": name, "model_type": emulator.model_type, "config": {k: v for k, v in emulator.config.items() if not k.startswith("continuum")},
              "n_parameters": emulator.n_parameters, "n_pixels": N_PIXELS, "n_labels": len(spec), "batch": batch}
    print(f"  {name}: forward ...", file=sys.stderr, flush=True)
    result["forward_compile_s"], result["forward_s"] = _timed(forward, params, theta, repeats=repeats)
    print(f"  {name}: batch of {batch} ...", file=sys.stderr, flush=True)
    _, batch_s = _timed(forward, params, thetas, repeats=max(1, repeats // 2))
    result["batch_s"] = batch_s
    result["batch_pixels_per_s"] = batch * N_PIXELS / batch_s
    print(f"  {name}: grad chi2 ...", file=sys.stderr, flush=True)
    result["grad_compile_s"], result["grad_chi2_s"] = _timed(grad_chi2, params, theta, repeats=repeats)
    print(f"  {name}: jacobian ...", file=sys.stderr, flush=True)
    result["jacobian_compile_s"], result["jacobian_s"] = _timed(jacobian, params, theta, repeats=max(1, repeats // 2))
    g = np.asarray(grad_chi2(params, theta))
    assert g.shape == (len(spec),) and np.all(np.isfinite(g))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, small batch, main models only")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = parser.parse_args(argv)

    spec = default_label_spec()
    wavelength = np.geomspace(5000.0, 5500.0, N_PIXELS)
    models = [
        ("payne_300x2", PayneEmulator.create(spec, wavelength, seed=0)),
        ("payne_scaled_512x3", PayneEmulator.create(spec, wavelength, scaled_payne_config(), seed=0)),
        ("transformer_payne_d128_l8_t16", TransformerPayneEmulator.create(spec, wavelength, {"dim": 128, "n_layers": 8, "n_tokens": 16}, with_continuum=True, seed=0)),
    ]
    if not args.quick:
        models.append(("transformer_payne_d64_l4_t8", TransformerPayneEmulator.create(spec, wavelength, {"dim": 64, "n_layers": 4, "n_tokens": 8}, with_continuum=True, seed=0)))
    repeats = 3 if args.quick else 10
    rows = []
    load_before = os.getloadavg()
    for name, emulator in models:
        batch = 64 if emulator.model_type == "payne" else (4 if args.quick else 16)
        rows.append(bench_one(name, emulator, repeats=repeats, batch=batch))
    doc = {
        "benchmark": "bench_emulators",
        "quick": args.quick,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(jax.devices()[0]),
        "backend": jax.default_backend(),
        "jax_version": jax.__version__,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "n_pixels": N_PIXELS,
        "results": rows,
    }
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, "bench_emulators" + ("_quick" if args.quick else ""))
    doc["provenance"] = provenance()
    with open(stem + ".json", "w") as handle:
        json.dump(doc, handle, indent=1)
    header = "| model | params | forward [ms] | grad chi2 [ms] | jacfwd 13 labels [ms] | batch throughput [Mpix/s] |\n|---|---|---|---|---|---|\n"
    lines = [
        f"| {r['model']} | {r['n_parameters']:,} | {1e3 * r['forward_s']:.2f} | {1e3 * r['grad_chi2_s']:.2f} | {1e3 * r['jacobian_s']:.1f} | {r['batch_pixels_per_s'] / 1e6:.3g} |"
        for r in rows
    ]
    table = header + "\n".join(lines) + "\n"
    note = (f"\n{N_PIXELS} pixels, 13 labels, one spectrum per call, {doc['device']} ({doc['cpu_count']} cores), "
            f"load average {load_before[0]:.1f} before / {doc['load_average_after'][0]:.1f} after, {doc['date']}.\n")
    with open(stem + ".md", "w") as handle:
        handle.write(table + note)
    print(table + note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
