"""The Payne's last layer in Fourier space (``ForwardModel.set_linear_readout``) against transforming its flux.

On the shipped example spectrum with a shipped Payne, builds the forward model
three ways -- with the linear readout and its top Fourier bins dropped within
``READOUT_TOLERANCE`` (the default for emulators that have a readout), with the
readout and every bin (``readout_tolerance=0``), and with ``linear_readout=False``
-- and times, interleaved in one process pinned to one core, for a scalar R and
for per-pixel R (anchor LSFs):

- one call of the forward model (13 labels, rv, vsini -> 5,147 pixels);
- the value and gradient of the sampled log density in z (continuum
  marginalized), the quantity NUTS evaluates at every leapfrog step, timed as
  1,000 gradients in one compiled loop;
- the Jacobian of the model (15 parameters, forward mode), what
  Levenberg-Marquardt, Gauss-Newton and the CRB evaluate.

It also records the Fourier bins kept and the largest difference of each
model's output from the flux-then-FFT model's.

    python benchmarks/bench_linear_readout.py [--emulator payne-default] [--repeats 5]

Results: benchmarks/results/linear_readout_<emulator>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from _stars import document_header

HERE = Path(__file__).resolve().parent


def _timer(fn, *args, number=1):
    import jax

    jax.block_until_ready(fn(*args))

    def once():
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        return (time.perf_counter() - start) / number

    return once


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--emulator", default="payne-default")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds; each cell reports the median and best")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})

    import jax
    import jax.numpy as jnp

    import stellarfit as sf
    from stellarfit.forward import ForwardModel
    from stellarfit.inference.likelihood import FitProblem
    from stellarfit.inference.map import box_centre
    from stellarfit.forward import continuum_design_matrix

    emulator = sf.load_emulator(args.emulator)
    spectrum = sf.example_spectrum()
    document = header = document_header("bench_linear_readout", args)
    header["device"] = str(jax.devices()[0])
    theta = np.concatenate([box_centre(emulator.label_spec), [0.0, 5.0]]).astype(np.float32)
    design = continuum_design_matrix(spectrum.wavelength, None, 2)
    resolutions = {"scalar 22,500": float(spectrum.resolution),
                   "per pixel 20,000-25,000": np.linspace(20_000.0, 25_000.0, spectrum.wavelength.size)}
    rows = []
    for label, resolution in resolutions.items():
        cases = {}
        variants = {"cut": dict(linear_readout=True), "all": dict(linear_readout=True, readout_tolerance=0.0),
                    "plain": dict(linear_readout=False)}
        for readout, variant in variants.items():
            model = ForwardModel.from_emulator(emulator, spectrum.wavelength, resolution, rv_range=(-1000.0, 1000.0),
                                               vsini_max=50.0, **variant)
            problem = FitProblem(model, emulator.label_spec, spectrum.flux, spectrum.ivar, design, vsini_max=50.0,
                                 rv_range=(-50.0, 50.0)).with_continuum("marginalize")
            z = problem.to_unconstrained(jnp.asarray(theta))
            gradient = jax.value_and_grad(problem.log_density_unconstrained)

            @jax.jit
            def loop(z, gradient=gradient):
                def body(carry, _):
                    value, g = gradient(carry)
                    return carry + 1e-7 * g, value
                return jax.lax.scan(body, z, None, length=1000)

            call = jax.jit(lambda p, model=model: model(p[:-2], p[-2], p[-1]))
            jacobian = jax.jit(jax.jacfwd(lambda p, model=model: model(p[:-2], p[-2], p[-1])))
            p = jnp.asarray(theta)
            cases[readout] = {"flux": np.asarray(call(p)), "bins": int(model._n_bins),
                              "timers": {"call": _timer(call, p), "gradient": _timer(loop, z, number=1000),
                                         "jacobian": _timer(jacobian, p)}}
        times = {readout: {name: [] for name in cases[readout]["timers"]} for readout in cases}
        for _ in range(args.repeats):
            for readout in ("plain", "all", "cut"):
                for name, once in cases[readout]["timers"].items():
                    samples = [once() for _ in range(1 if name == "gradient" else 50)]
                    times[readout][name].append(min(samples))
        for readout in ("plain", "all", "cut"):
            difference = float(np.max(np.abs(cases[readout]["flux"] - cases["plain"]["flux"])))
            row = {"resolution": label, "variant": readout, "linear_readout": readout != "plain",
                   "fourier_bins": cases[readout]["bins"], "max_abs_flux_difference": difference}
            for name, values in times[readout].items():
                row[f"{name}_ms_median"] = 1e3 * float(np.median(values))
                row[f"{name}_ms_best"] = 1e3 * float(np.min(values))
            for name in ("call", "gradient", "jacobian"):
                row[f"{name}_ratio_to_plain"] = float(np.median(times[readout][name]) / np.median(times["plain"][name]))
            rows.append(row)
            print(json.dumps(row), flush=True)
    document["results"] = rows
    out = Path(args.out or HERE / "results" / f"linear_readout_{Path(args.emulator).name}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(document, indent=1))
    lines = [f"`{args.emulator}` on the example spectrum ({spectrum.wavelength.size} pixels), one core, "
             f"{args.repeats} interleaved rounds, median (best) per cell; {document['date']}, 1-min load "
             f"{document['load_average_before'][0]:.1f} before.\n",
             "| R | last layer | Fourier bins | one call [ms] | log-density gradient [ms] | Jacobian, 15 parameters [ms] | max flux difference from flux-then-FFT |",
             "|---|---|---|---|---|---|---|"]
    names = {"plain": "flux, then FFT", "all": "Fourier readout, all bins", "cut": "Fourier readout, bins within tolerance"}
    for r in rows:
        lines.append(f"| {r['resolution']} | {names[r['variant']]} | {r['fourier_bins']:,} | "
                     f"{r['call_ms_median']:.3f} ({r['call_ms_best']:.3f}) | {r['gradient_ms_median']:.3f} ({r['gradient_ms_best']:.3f}) | "
                     f"{r['jacobian_ms_median']:.2f} ({r['jacobian_ms_best']:.2f}) | {r['max_abs_flux_difference']:.1e} |")
    lines.append("")
    for r in rows:
        if r["variant"] != "plain":
            lines.append(f"- {r['resolution']}, {names[r['variant']]} / flux, then FFT = {r['call_ratio_to_plain']:.2f} (call), "
                         f"{r['gradient_ratio_to_plain']:.2f} (gradient), {r['jacobian_ratio_to_plain']:.2f} (Jacobian)")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
