"""How much TensorFloat-32 matrix products would perturb the sampled log density (emulated on a CPU).

JAX's default float32 matrix product on NVIDIA GPUs since Ampere rounds both
operands to TF32 (8-bit exponent, 10-bit mantissa).  stellarfit traces every
product a fit evaluates at full float32 (``stellarfit._precision``); this
script measures what that guards against, on a CPU: the program of the log
density (and of its gradient) is rewritten so that every float32
``dot_general`` first rounds its operands with ``lax.reduce_precision(x, 8, 10)``
(exactly TF32's operand rounding; the products' accumulation stays float32),
and compared with the exact program at draws around a star's MAP.

Reported per star: the standard deviation of log p_TF32 - log p over the draws
(noise that a NUTS trajectory sees as energy error), the same between two
points 1e-3 apart in whitened z (what a small step sees), and the median
relative error of the gradient.

    python benchmarks/bench_tf32_noise.py --stars .gpu/stars_snr100.npz --n-stars 4
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def tf32_program(fn, *example_args, mantissa_bits: int = 10):
    """``fn`` re-evaluated with every float32 dot_general's operands rounded to TF32
    (``mantissa_bits=23``: float32 itself, the control)."""
    import jax
    from jax import lax
    from jax.extend import core

    def rounded(x):
        return lax.reduce_precision(x, exponent_bits=8, mantissa_bits=mantissa_bits) if x.dtype == np.float32 else x

    def transform(value):
        if isinstance(value, core.ClosedJaxpr):
            avals = [jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype) for v in value.jaxpr.invars]
            return jax.make_jaxpr(lambda *args: evaluate(value, *args))(*avals)
        if isinstance(value, tuple) and any(isinstance(v, core.ClosedJaxpr) for v in value):
            items = [transform(v) for v in value]
            return type(value)(*items) if hasattr(value, "_fields") else tuple(items)  # namedtuples too
        return value

    def evaluate(closed, *args):
        jaxpr, env = closed.jaxpr, {}

        def read(var):
            return var.val if isinstance(var, core.Literal) else env[var]

        env.update(zip(jaxpr.constvars, closed.consts))
        env.update(zip(jaxpr.invars, args))
        for eqn in jaxpr.eqns:
            values = [read(v) for v in eqn.invars]
            name = eqn.primitive.name
            if name == "dot_general":
                out = eqn.primitive.bind(*[rounded(v) for v in values], **eqn.params)
            elif name in ("pjit", "jit", "closed_call", "core_call"):
                out = evaluate(eqn.params["jaxpr"], *values)
            elif name == "custom_jvp_call":
                out = evaluate(eqn.params["call_jaxpr"], *values)
            elif name == "custom_vjp_call":
                out = evaluate(eqn.params["call_jaxpr"], *values)
            else:
                out = eqn.primitive.bind(*values, **{k: transform(v) for k, v in eqn.params.items()})
            outs = out if eqn.primitive.multiple_results else [out]
            env.update(zip(eqn.outvars, outs))
        return [read(v) for v in jaxpr.outvars]

    closed = jax.make_jaxpr(fn)(*example_args)
    return jax.jit(lambda *args: evaluate(closed, *args))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stars", required=True, help="npz from bench_gpu_fits.py stars")
    parser.add_argument("--emulator", default="payne-default")
    parser.add_argument("--n-stars", type=int, default=4)
    parser.add_argument("--n-draws", type=int, default=200)
    parser.add_argument("--mantissa-bits", type=int, default=10, help="10: TF32; 23: float32 (a control: all zeros)")
    parser.add_argument("--out", default=str(HERE / "results" / "tf32_noise"))
    args = parser.parse_args()

    import jax
    import jax.numpy as jnp

    import stellarfit as sf
    from bench_gpu_fits import load_stars
    from stellarfit.inference.fit import _prepare
    from stellarfit.inference.nuts import unconstrained_laplace

    spectra, _, _ = load_stars(args.stars)
    emulator = sf.load_emulator(args.emulator)
    document = {"benchmark": "bench_tf32_noise", "emulator": args.emulator, "stars_file": args.stars,
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "device": str(jax.devices()[0]), "platform": platform.platform(), "cpu_count": os.cpu_count(),
                "settings": {k: v for k, v in vars(args).items() if k != "out"}, "stars": []}
    rng = np.random.default_rng(0)
    for k, spectrum in enumerate(spectra[: args.n_stars]):
        fit = sf.fit_star(spectrum, emulator, "map", error_floor=False)
        problem = _prepare(spectrum, emulator, priors=None, rv_range=(-1000.0, 1000.0), rv_window=50.0, vsini_max=100.0,
                           continuum_degree=2, start={**{n: fit.value(n) for n in fit.names}}).problem
        problem = problem.with_continuum("marginalize")
        theta = np.array([fit.value(n) for n in problem.names])
        laplace = unconstrained_laplace(problem, theta)
        chol = np.linalg.cholesky(laplace.covariance + 1e-12 * np.eye(theta.size))
        z = laplace.mode[None, :] + rng.normal(size=(args.n_draws, theta.size)) @ chol.T
        z_step = z + 1e-3 * (rng.normal(size=z.shape) @ chol.T)  # a small step in whitened units
        z, z_step = jnp.asarray(z, jnp.float32), jnp.asarray(z_step, jnp.float32)
        value_and_grad = jax.value_and_grad(problem.log_density_unconstrained)
        exact = jax.jit(jax.vmap(value_and_grad))
        emulated = tf32_program(jax.vmap(value_and_grad), z, mantissa_bits=args.mantissa_bits)
        (lp, grad), (lp_step, _) = exact(z), exact(z_step)
        lp_tf, grad_tf = emulated(z)
        lp_tf_step, _ = emulated(z_step)
        lp, lp_tf, lp_step, lp_tf_step = (np.asarray(a, np.float64) for a in (lp, lp_tf, lp_step, lp_tf_step))
        grad, grad_tf = np.asarray(grad, np.float64), np.asarray(grad_tf, np.float64)
        # gradient error in whitened units (what the leapfrog integrator feels)
        white = grad @ chol
        white_tf = grad_tf @ chol
        row = {
            "star": k, "n_pixels": int(np.sum(np.asarray(problem.ivar) > 0)), "reduced_chi2_map": fit.reduced_chi2,
            "log_density_noise_sd": float(np.std(lp_tf - lp)),
            "log_density_offset_mean": float(np.mean(lp_tf - lp)),
            "small_step_difference_sd": float(np.std((lp_tf_step - lp_tf) - (lp_step - lp))),
            "small_step_exact_change_sd": float(np.std(lp_step - lp)),
            "gradient_relative_error_median": float(np.median(np.linalg.norm(white_tf - white, axis=1)
                                                              / np.linalg.norm(white, axis=1))),
        }
        document["stars"].append(row)
        print(json.dumps(row), flush=True)
    keys = ["log_density_noise_sd", "small_step_difference_sd", "gradient_relative_error_median"]
    document["median"] = {key: float(np.median([row[key] for row in document["stars"]])) for key in keys}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(document, indent=1))
    lines = [f"# Operand rounding to {args.mantissa_bits} mantissa bits emulated on the CPU ({args.emulator}, {args.stars}, {args.n_draws} Laplace draws per star)",
             "", "| star | pixels | sd(log p_TF32 - log p) | sd of the same over a 1e-3 whitened step | exact change over that step (sd) | "
             "median relative gradient error |", "|---|---|---|---|---|---|"]
    for row in document["stars"]:
        lines.append(f"| {row['star']} | {row['n_pixels']} | {row['log_density_noise_sd']:.3f} | {row['small_step_difference_sd']:.3f} | "
                     f"{row['small_step_exact_change_sd']:.3f} | {row['gradient_relative_error_median']:.2e} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
