"""Worker for ``bench_tp_throughput.py``: times the public ``transformer-payne`` package.

Runs inside the separate virtual environment that holds the public package
(``transformer-payne==0.10`` with its own jax/flax pins); it never imports
stellarfit.  The benchmark drives it over stdin/stdout, one JSON document per
line, so that its timed calls can alternate with ours call by call (on a
shared machine the load then hits both sides alike):

1. request (one line): ``wavelength`` (vacuum A; the package takes
   log10(lambda / A)), ``labels`` (n_spectra, n_labels) physical values,
   ``lower`` / ``upper`` (the label box, min-max scaled by the package),
   ``config`` (``{"name", "dim", "n_layers", "n_tokens"}``), ``batch_sizes``,
   ``seed``, ``x64`` (default true: the package's README enables
   ``jax_enable_x64``, its wavelength encoding needs float64),
   ``flux_mu_nodes`` (0: no disk-flux function).
2. the worker builds the network, calls every function once (compile) and
   answers ``{"ready": true, "compile": {...}, "n_parameters": ..., versions}``;
   ``compile`` maps ``forward:B``, ``grad:B`` and ``flux:1`` to the seconds of
   that first call.
3. each further line ``{"run": "forward:8"}`` runs that function once and
   answers ``{"seconds": ...}``; ``{"quit": true}`` ends the worker.

The network is the package's own ``TransformerPayneModel`` with random
weights from ``model.init``, wrapped in the package's ``TransformerPayne``
class through an ``ArchitectureDefinition``.  ``forward:B`` is
``jax.vmap(TransformerPayne.intensity)`` over B spectra (one network pass over
all wavelengths at mu = 1); ``grad:B`` is ``jax.grad`` of a chi2 of the
normalized output summed over the batch wrt the (B, n_labels) labels;
``flux:1`` is one spectrum's disk flux, the intensity integrated over ``mu``
with Gauss-Legendre nodes by the formula of the package's ``flux``.  That
method itself is tried once and its error recorded: under jax 0.7 it passes
NumPy arrays as static ``jit`` arguments and raises ``ValueError``.
"""

from __future__ import annotations

import json
import sys
import time


def _reply(document: dict) -> None:
    sys.stdout.write(json.dumps(document) + "\n")
    sys.stdout.flush()


def main() -> int:
    request = json.loads(sys.stdin.readline())
    import jax

    jax.config.update("jax_enable_x64", bool(request.get("x64", True)))
    from importlib.metadata import version

    import flax
    import jax.numpy as jnp
    import numpy as np
    import transformer_payne as tp
    from transformer_payne.architecture_definition import ArchitectureDefinition
    from transformer_payne.transformer_payne import ARCHITECTURE_NAME, TransformerPayneModel

    wavelength = np.asarray(request["wavelength"], np.float64)
    log_wave = jnp.asarray(np.log10(wavelength))
    labels_all = np.asarray(request["labels"], np.float64)
    lower = np.asarray(request["lower"], np.float64)
    upper = np.asarray(request["upper"], np.float64)
    n_labels = labels_all.shape[1]
    cfg = request["config"]
    seed = int(request.get("seed", 0))
    mu = 1.0
    observed = jnp.asarray(1.0 - 0.1 * np.random.default_rng(seed + 1).uniform(size=wavelength.size))

    architecture = {
        "dim": int(cfg["dim"]),
        "no_layers": int(cfg["n_layers"]),
        "no_tokens": int(cfg["n_tokens"]),
        "dim_head": 32,
        "dim_ff_multiplier": 4,
        "out_dim": 2,  # normalized intensity and log10 continuum
        "input_dim": n_labels + 1,  # labels + mu
        "min_period": 1e-6,
        "max_period": 10.0,
        "reference_depth": 1,
    }
    model = TransformerPayneModel(**architecture)
    p0 = jnp.zeros(n_labels + 1, jnp.float32)
    params = model.init(jax.random.key(seed), (log_wave[:4], p0), train=False)["params"]
    definition = ArchitectureDefinition(
        emulator_weights=params,
        architecture=ARCHITECTURE_NAME,
        architecture_parameters=architecture,
        spectral_parameters=[f"label_{i}" for i in range(n_labels)] + ["mu"],
        min_spectral_parameters=np.concatenate([lower, [0.0]]),
        max_spectral_parameters=np.concatenate([upper, [1.0]]),
        solar_parameters=np.concatenate([0.5 * (lower + upper), [1.0]]),
        abundance_parameters=np.zeros(n_labels + 1, bool),
        tag="random-weights-benchmark",
    )
    emulator = tp.TransformerPayne(definition)

    forward = jax.jit(jax.vmap(emulator.intensity, in_axes=(None, None, 0)))

    @jax.jit
    def grad_chi2(labels):
        def chi2(theta):
            normalized = jax.vmap(emulator.intensity, in_axes=(None, None, 0))(log_wave, mu, theta)[..., 0]
            return jnp.sum((normalized - observed) ** 2 * 1e4)

        return jax.grad(chi2)(labels)

    calls = {}
    for batch in request["batch_sizes"]:
        labels = jnp.asarray(labels_all[:batch])
        calls[f"forward:{batch}"] = (lambda labels=labels: forward(log_wave, mu, labels))
        calls[f"grad:{batch}"] = (lambda labels=labels: grad_chi2(labels))

    package_flux_error = None
    nodes = int(request.get("flux_mu_nodes", 0))
    if nodes > 0:
        single = jnp.asarray(labels_all[0])
        try:  # the package's own flux(): jit with NumPy arrays as static arguments
            emulator.flux(log_wave, single, mus_number=nodes)
        except ValueError as error:  # "Non-hashable static arguments" under recent jax
            package_flux_error = str(error).split("\n")[0][:200]
        roots, weights = np.polynomial.legendre.leggauss(nodes)
        roots, weights = jnp.asarray((roots + 1) / 2), jnp.asarray(weights / 2)

        @jax.jit
        def disk_flux(theta):  # the package's _flux formula, with the nodes traced
            intensities = jax.vmap(emulator.intensity, in_axes=(None, 0, None))(log_wave, roots, theta)
            return 2 * jnp.pi * jnp.sum(intensities * (roots * weights)[:, None, None], axis=0)

        calls["flux:1"] = (lambda: disk_flux(single))

    compile_s = {}
    for name, call in calls.items():
        t0 = time.perf_counter()
        result = jax.block_until_ready(call())
        compile_s[name] = time.perf_counter() - t0
        if name.startswith("grad:"):
            batch = int(name.split(":")[1])
            g = np.asarray(result)
            if g.shape != (batch, n_labels) or not np.all(np.isfinite(g)):
                raise RuntimeError(f"bad gradient from the public package: shape {g.shape}")

    _reply({
        "ready": True,
        "compile": compile_s,
        "n_parameters": int(sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(params))),
        "architecture": architecture,
        "package_flux_error": package_flux_error,
        "package": "transformer-payne",
        "package_version": version("transformer-payne"),
        "jax_version": jax.__version__,
        "jaxlib_version": version("jaxlib"),
        "flax_version": flax.__version__,
        "numpy_version": np.__version__,
        "python": sys.version.split()[0],
        "x64": bool(jax.config.jax_enable_x64),
        "device": str(jax.devices()[0]),
    })
    for line in sys.stdin:
        command = json.loads(line)
        if command.get("quit"):
            break
        call = calls[command["run"]]
        t0 = time.perf_counter()
        jax.block_until_ready(call())
        _reply({"seconds": time.perf_counter() - t0})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
