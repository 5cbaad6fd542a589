"""What NUTS itself adds to each leapfrog step on a CPU: tree building against the log-density gradient.

In one process pinned to one core, with NumPyro's and BlackJAX's NUTS kernels
(the ones `fit_star` runs), dense identity metric, fixed step size, no adaptation:

- on a 15-dimensional standard Gaussian (a gradient that costs next to nothing):
  the time per leapfrog step is the sampler's own work (tree building, U-turn
  checks, multinomial sampling, random numbers);
- on the sampled density of the shipped example spectrum with `payne-default`
  (continuum marginalized) in z whitened by its Laplace approximation at the MAP, started at the mode: the
  time per leapfrog step inside the sampler against the time per gradient of the
  same density in a plain compiled loop (1,000 gradients), interleaved.

    python benchmarks/bench_sampler_overhead.py [--emulator payne-default] [--iterations 300] [--repeats 3]

Results: benchmarks/results/sampler_overhead_<emulator>.{json,md}.
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


def _numpyro_runner(potential, p: int, step_size: float, iterations: int, seed: int = 0):
    """A compiled function running ``iterations`` NUTS iterations from 0 (no adaptation); returns total steps."""
    import jax
    import jax.numpy as jnp
    from numpyro.infer.hmc import hmc

    init_kernel, sample_kernel = hmc(potential_fn=lambda params: potential(params["z"]), algo="NUTS")
    state = init_kernel({"z": jnp.zeros(p, jnp.float32)}, num_warmup=0, step_size=step_size, adapt_step_size=False,
                        adapt_mass_matrix=False, dense_mass=[("z",)], inverse_mass_matrix={("z",): jnp.eye(p)},
                        max_tree_depth=8, rng_key=jax.random.PRNGKey(seed))

    @jax.jit
    def run(state):
        def body(state, _):
            state = sample_kernel(state)
            return state, state.num_steps
        return jax.lax.scan(body, state, None, length=iterations)

    return lambda: run(state)[1]


def _blackjax_runner(potential, p: int, step_size: float, iterations: int, seed: int = 0):
    import blackjax
    import jax
    import jax.numpy as jnp

    kernel = blackjax.nuts(lambda z: -potential(z), step_size, jnp.eye(p), max_num_doublings=8)
    state = kernel.init(jnp.zeros(p, jnp.float32))

    @jax.jit
    def run(state, key):
        def body(state, key):
            state, info = kernel.step(key, state)
            return state, info.num_integration_steps
        return jax.lax.scan(body, state, jax.random.split(key, iterations))

    key = jax.random.PRNGKey(seed)
    return lambda: run(state, key)[1]


def _timed(runner) -> tuple[float, int]:
    import jax

    start = time.perf_counter()
    steps = jax.block_until_ready(runner())
    return time.perf_counter() - start, int(np.sum(steps))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--emulator", default="payne-default")
    parser.add_argument("--iterations", type=int, default=300, help="NUTS iterations per timed run on the spectrum")
    parser.add_argument("--step-size", type=float, default=0.4, help="in the Laplace-whitened coordinates (unit variance)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})

    import jax
    import jax.numpy as jnp

    import stellarfit as sf
    from stellarfit.forward import ForwardModel, continuum_design_matrix
    from stellarfit.inference.likelihood import FitProblem
    from stellarfit.inference.nuts import unconstrained_laplace

    document = document_header("bench_sampler_overhead", args)
    document["device"] = str(jax.devices()[0])
    rows = []

    # 1. a standard Gaussian: the sampler's own cost per leapfrog step
    p = 15
    gaussian = lambda z: 0.5 * jnp.sum(z * z)  # noqa: E731
    for name, make in (("numpyro", _numpyro_runner), ("blackjax", _blackjax_runner)):
        runner = make(gaussian, p, args.step_size, 5_000)
        _timed(runner)  # compiles
        per_step = []
        for _ in range(args.repeats):
            seconds, steps = _timed(runner)
            per_step.append(seconds / steps)
        row = {"density": f"standard Gaussian, p = {p}", "sampler": name, "iterations": 5_000, "leapfrog_steps": steps,
               "sampler_us_per_step_median": 1e6 * float(np.median(per_step))}
        rows.append(row)
        print(json.dumps(row), flush=True)

    # 2. the example star's sampled density in whitened coordinates w (z = mode + L w, Sigma = L L^T)
    emulator = sf.load_emulator(args.emulator)
    spectrum = sf.example_spectrum()
    model = ForwardModel.from_emulator(emulator, spectrum.wavelength, float(spectrum.resolution), rv_range=(-1000.0, 1000.0),
                                       vsini_max=50.0)
    design = continuum_design_matrix(spectrum.wavelength, None, 2)
    fit = sf.fit_star(spectrum, emulator)  # MAP: the chains run where a fit's chains run
    theta_map = np.array([fit.labels[name]["map"] for name in fit.names])
    rv = float(theta_map[-2])
    problem = FitProblem(model, emulator.label_spec, spectrum.flux, spectrum.ivar, design, vsini_max=50.0,
                         rv_range=(rv - 50.0, rv + 50.0)).with_continuum("marginalize")
    laplace = unconstrained_laplace(problem, theta_map)
    mode = jnp.asarray(laplace.mode, jnp.float32)
    factor = jnp.asarray(np.linalg.cholesky(laplace.covariance + 1e-9 * np.eye(p)), jnp.float32)

    def potential(w):
        return -problem.log_density_unconstrained(mode + factor @ w)

    gradient = jax.value_and_grad(potential)

    @jax.jit
    def loop(w):
        def body(carry, _):
            value, g = gradient(carry)
            return carry - 1e-7 * g, value
        return jax.lax.scan(body, w, None, length=1_000)

    w0 = jnp.zeros(p, jnp.float32)
    jax.block_until_ready(loop(w0))
    runners = {name: make(potential, p, args.step_size, args.iterations)
               for name, make in (("numpyro", _numpyro_runner), ("blackjax", _blackjax_runner))}
    for runner in runners.values():
        _timed(runner)  # compiles
    timings = {name: [] for name in runners}
    loop_ms = []
    steps_of = {}
    for _ in range(args.repeats):
        start = time.perf_counter()
        jax.block_until_ready(loop(w0))
        loop_ms.append((time.perf_counter() - start) / 1_000 * 1e3)
        for name, runner in runners.items():
            seconds, steps = _timed(runner)
            timings[name].append(seconds / steps * 1e3)
            steps_of[name] = steps
    gradient_ms = float(np.median(loop_ms))
    for name in runners:
        per_step = float(np.median(timings[name]))
        row = {"density": f"example star, {args.emulator}, z whitened by its Laplace approximation", "sampler": name,
               "iterations": args.iterations, "leapfrog_steps": steps_of[name], "sampler_ms_per_step_median": per_step,
               "gradient_loop_ms_median": gradient_ms, "sampler_over_gradient": per_step / gradient_ms}
        rows.append(row)
        print(json.dumps(row), flush=True)

    document["results"] = rows
    out = Path(args.out or HERE / "results" / f"sampler_overhead_{Path(args.emulator).name}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(document, indent=1))
    lines = [f"One core, dense identity metric, step size {args.step_size}, no adaptation, median of {args.repeats} "
             f"interleaved rounds; {document['date']}, 1-min load {document['load_average_before'][0]:.1f} before.\n",
             "| density | sampler | leapfrog steps | sampler time per step | gradient alone (compiled loop) | ratio |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        if "sampler_us_per_step_median" in r:
            lines.append(f"| {r['density']} | {r['sampler']} | {r['leapfrog_steps']:,} | {r['sampler_us_per_step_median']:.1f} us | - | - |")
        else:
            lines.append(f"| {r['density']} | {r['sampler']} | {r['leapfrog_steps']:,} | {r['sampler_ms_per_step_median']:.3f} ms | "
                         f"{r['gradient_loop_ms_median']:.3f} ms | {r['sampler_over_gradient']:.3f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
