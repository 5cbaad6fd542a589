"""Throughput of our TransformerPayne against the public ``transformer-payne`` 0.10 package.

Both networks are built at the same size with random weights (the cost does
not depend on the values) and timed back to back on this machine, in one
invocation: ours in this interpreter, the public package in a subprocess
(``benchmarks/_public_tp_worker.py``) running in its own virtual environment,
because it pins numpy 1.26 and flax <= 0.10.6.

Setup (once; nothing is downloaded when the benchmark runs)::

    /work/main/.venv/bin/python -m venv ~/.cache/stellarfit/bench_venvs/transformer_payne
    ~/.cache/stellarfit/bench_venvs/transformer_payne/bin/pip install "transformer-payne==0.10.*"

(any Python >= 3.10 works for the venv; ``--public-python`` or the
``STELLARFIT_TP_PUBLIC_PYTHON`` environment variable point the benchmark at
another interpreter).  Without it the script prints these commands and exits
with status 2.

What is timed, for each architecture (d=128, 8 layers, 16 tokens: the
issue's reference and the public v2 size; d=64, 4 layers, 8 tokens) and each
batch size (1 and 8 spectra), on the 8,578 pixels of the shipped default grid
(5000-5500 A), 13 labels:

- ``forward``: one jitted call computing the batch's spectra: ours
  ``emulator.flux_fn()`` (native grid, wavelength features precomputed), the
  public ``jax.vmap(TransformerPayne.intensity)`` over the spectra (one
  network pass at one ``mu``; the wavelength encoding is computed inside the
  call from log10(lambda));
- ``grad``: one jitted ``jax.grad`` of a scalar chi2 summed over the batch
  with respect to the physical labels (B, 13), i.e. every spectrum's label
  gradient in one call;
- ours also ``emulator.predict(labels, batch_size=B)``, the NumPy entry point
  (label checks, host transfer);
- the public disk flux of one spectrum (10-node Gauss-Legendre over ``mu``,
  the package's ``flux`` formula): what a user of the public package pays for
  a flux spectrum, as it emulates specific intensity.

Each function is called once to compile (``first_call_s``; ``compile_s`` =
first call minus the median), then ``--repeats`` times, ours and the public
one alternating call by call (who goes first alternates too), so that a
changing load on a shared machine hits both alike; the median (and the
minimum) is reported per spectrum, with pixels per second.  The public package runs with
``jax_enable_x64`` on, as its README does (its wavelength encoding needs
float64; the network itself runs in float32, as ours).

Usage: ``nice python benchmarks/bench_tp_throughput.py [--repeats N] [--out DIR]``.
Prints a table and writes ``tp_throughput.json`` and ``tp_throughput.md`` to
benchmarks/results/.  Timings on a shared, loaded machine are upper bounds;
the load average is recorded before and after.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from stellarfit.emulators import TransformerPayneEmulator, load_emulator, transformer_payne_config
from stellarfit.labels import default_label_spec

DEFAULT_PUBLIC_VENV = os.path.expanduser("~/.cache/stellarfit/bench_venvs/transformer_payne")
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_public_tp_worker.py")
CONFIGS = [
    {"name": "d128_l8_t16", "dim": 128, "n_layers": 8, "n_tokens": 16},
    {"name": "d64_l4_t8", "dim": 64, "n_layers": 4, "n_tokens": 8},
]
BATCH_SIZES = (1, 8)
FALLBACK_PIXELS = 8578


def setup_commands(venv: str) -> str:
    return (
        f"{sys.executable} -m venv {venv}\n"
        f"{os.path.join(venv, 'bin', 'pip')} install \"transformer-payne==0.10.*\""
    )


def public_python(path: str | None) -> str:
    """The interpreter of the public package's venv; exits with status 2 and the setup commands if unusable."""
    python = path or os.environ.get("STELLARFIT_TP_PUBLIC_PYTHON") or os.path.join(DEFAULT_PUBLIC_VENV, "bin", "python")
    problem = None
    if not os.path.isfile(python):
        problem = f"no Python interpreter at {python}"
    else:
        check = subprocess.run([python, "-c", "import transformer_payne"], capture_output=True, text=True)
        if check.returncode != 0:
            problem = f"{python} cannot import transformer_payne: {check.stderr.strip().splitlines()[-1:]}"
    if problem:
        venv = os.path.dirname(os.path.dirname(python)) if path or os.environ.get("STELLARFIT_TP_PUBLIC_PYTHON") else DEFAULT_PUBLIC_VENV
        print(f"error: the public transformer-payne package is not available ({problem}).\n"
              f"Create its virtual environment once with:\n\n{setup_commands(venv)}\n\n"
              "then run this benchmark again (or pass --public-python PATH).", file=sys.stderr)
        raise SystemExit(2)
    return python


def default_wavelength() -> tuple[np.ndarray, str]:
    """The shipped default grid's wavelengths (8,578 pixels), or a log-spaced stand-in."""
    try:
        return np.asarray(load_emulator("payne-default").wavelength, np.float64), "payne-default emulator grid"
    except Exception as error:  # noqa: BLE001 - any failure: fall back, and say so
        print(f"note: could not load the payne-default grid ({error}); using {FALLBACK_PIXELS} log-spaced pixels", file=sys.stderr)
        return np.geomspace(5000.0, 5500.0, FALLBACK_PIXELS), "log-spaced 5000-5500 A"


class PublicWorker:
    """The public package's worker (``_public_tp_worker.py``) in its venv, driven one call at a time."""

    def __init__(self, python: str, request: dict):
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        self.proc = subprocess.Popen([python, WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.ready = self._ask(request)
        if not self.ready.get("ready"):
            raise RuntimeError(f"unexpected answer from the public-package worker: {self.ready}")

    def _ask(self, document: dict) -> dict:
        self.proc.stdin.write(json.dumps(document) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the public-package worker died (exit {self.proc.wait()}); see its traceback above")
        return json.loads(line)

    def run(self, name: str) -> float:
        return float(self._ask({"run": name})["seconds"])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write(json.dumps({"quit": True}) + "\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=60)


def _time_call(fn) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t0


def _summary(first: float | None, times: list[float]) -> dict:
    median = statistics.median(times)
    out = {"median_s": median, "min_s": min(times), "times_s": times}
    if first is not None:
        out["first_call_s"] = first
        out["compile_s"] = max(0.0, first - median)
    return out


def bench_config(python: str, cfg: dict, wavelength: np.ndarray, labels: np.ndarray, observed: np.ndarray, *, repeats: int, flux_mu_nodes: int) -> dict:
    """Ours and the public package at one architecture; timed calls alternate between the two."""
    spec = default_label_spec()
    emulator = TransformerPayneEmulator.create(
        spec, wavelength, transformer_payne_config(cfg["dim"], cfg["n_layers"], cfg["n_tokens"]), with_continuum=True, seed=0
    )
    flux = emulator.flux_fn()  # native grid: the wavelength features are computed once, here
    obs = jnp.asarray(observed, jnp.float32)
    forward = jax.jit(flux)

    @jax.jit
    def grad_chi2(theta):
        return jax.grad(lambda t: jnp.sum((flux(t) - obs) ** 2 * 1e4))(theta)

    ours_calls = {}
    for batch in BATCH_SIZES:
        theta = jnp.asarray(labels[:batch], jnp.float32)
        ours_calls[f"forward:{batch}"] = (lambda theta=theta: forward(theta))
        ours_calls[f"grad:{batch}"] = (lambda theta=theta: grad_chi2(theta))
        ours_calls[f"predict:{batch}"] = (lambda batch=batch: emulator.predict(labels[:batch], batch_size=batch))
    print(f"  [ours] {cfg['name']}: compiling", file=sys.stderr, flush=True)
    ours_first = {name: _time_call(call) for name, call in ours_calls.items()}
    for batch in BATCH_SIZES:
        g = np.asarray(ours_calls[f"grad:{batch}"]())
        if g.shape != (batch, len(spec)) or not np.all(np.isfinite(g)):
            raise RuntimeError(f"bad gradient from our emulator: shape {g.shape}")

    print(f"  [public] {cfg['name']}: starting the worker and compiling", file=sys.stderr, flush=True)
    request = {
        "wavelength": wavelength.tolist(),
        "labels": labels.tolist(),
        "lower": list(map(float, spec.lower)),
        "upper": list(map(float, spec.upper)),
        "config": cfg,
        "batch_sizes": list(BATCH_SIZES),
        "seed": 0,
        "x64": True,
        "flux_mu_nodes": flux_mu_nodes,
    }
    worker = PublicWorker(python, request)
    try:
        ours_times = {name: [] for name in ours_calls}
        public_times = {name: [] for name in worker.ready["compile"]}
        for r in range(repeats):
            print(f"  {cfg['name']}: round {r + 1}/{repeats}", file=sys.stderr, flush=True)
            for name in ours_calls:
                pair = [("ours", name), ("public", name)] if name in public_times else [("ours", name)]
                for side, call in (pair if r % 2 == 0 else pair[::-1]):  # alternate who goes first
                    if side == "ours":
                        ours_times[call].append(_time_call(ours_calls[call]))
                    else:
                        public_times[call].append(worker.run(call))
            if "flux:1" in public_times and r < max(1, repeats // 2):
                public_times["flux:1"].append(worker.run("flux:1"))
    finally:
        worker.close()

    meta = {k: v for k, v in worker.ready.items() if k not in ("ready", "compile", "n_parameters", "architecture", "package_flux_error")}
    ours_row = {"config": {k: v for k, v in emulator.config.items() if not k.startswith("continuum")},
                "n_parameters": emulator.n_parameters, "batches": []}
    public_row = {"architecture": worker.ready["architecture"], "n_parameters": worker.ready["n_parameters"], "batches": []}
    for batch in BATCH_SIZES:
        ours_row["batches"].append({"batch": batch, **{kind: _summary(ours_first[f"{kind}:{batch}"], ours_times[f"{kind}:{batch}"])
                                                       for kind in ("forward", "grad", "predict")}})
        public_row["batches"].append({"batch": batch, **{kind: _summary(worker.ready["compile"][f"{kind}:{batch}"], public_times[f"{kind}:{batch}"])
                                                         for kind in ("forward", "grad")}})
    if "flux:1" in public_times:
        public_row["flux_one_spectrum"] = {"mu_nodes": flux_mu_nodes, "package_flux_error": worker.ready["package_flux_error"],
                                           **_summary(worker.ready["compile"]["flux:1"], public_times["flux:1"])}
    return {"config": cfg, "ours": ours_row, "public": public_row, "public_meta": meta}


def per_spectrum(entry: dict, batch: int, key: str = "median_s") -> float:
    return entry[key] / batch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed calls after the compiling one (median reported)")
    parser.add_argument("--public-python", default=None, help="Python of the venv with transformer-payne installed")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    python = public_python(args.public_python)
    wavelength, wavelength_source = default_wavelength()
    spec = default_label_spec()
    rng = np.random.default_rng(0)
    labels = spec.from_unit_cube(rng.uniform(size=(max(BATCH_SIZES), len(spec))))
    observed = 1.0 - 0.1 * rng.uniform(size=wavelength.size)

    started = time.perf_counter()
    load_before = os.getloadavg()
    rows = []
    for cfg in CONFIGS:
        rows.append(bench_config(python, cfg, wavelength, labels, observed, repeats=args.repeats,
                                 flux_mu_nodes=10 if cfg is CONFIGS[0] else 0))
    public_meta = rows[-1].pop("public_meta")
    for row in rows:
        row.pop("public_meta", None)

    doc = {
        "benchmark": "bench_tp_throughput",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpu_count": os.cpu_count(),
            "cpus_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "platform": platform.platform(),
            "processor": platform.processor(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "xla_flags": os.environ.get("XLA_FLAGS"),
        },
        "ours": {"jax_version": jax.__version__, "python": sys.version.split()[0], "device": str(jax.devices()[0]), "x64": bool(jax.config.jax_enable_x64)},
        "public": public_meta,
        "n_pixels": int(wavelength.size),
        "wavelength": {"source": wavelength_source, "min": float(wavelength[0]), "max": float(wavelength[-1])},
        "n_labels": len(spec),
        "batch_sizes": list(BATCH_SIZES),
        "repeats": args.repeats,
        "wall_s": None,
        "results": rows,
    }
    doc["wall_s"] = time.perf_counter() - started
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, "tp_throughput")
    with open(stem + ".json", "w") as handle:
        json.dump(doc, handle, indent=1)
    text = markdown(doc)
    with open(stem + ".md", "w") as handle:
        handle.write(text)
    print(text)
    return 0


def markdown(doc: dict) -> str:
    """The results table (per spectrum; medians, minima in parentheses) and notes."""
    n_pix = doc["n_pixels"]
    lines = [
        "| model | params ours / public | spectra per call | forward per spectrum [ms] ours / public | Mpixels/s ours / public | forward speed-up | label gradient per spectrum [ms] ours / public | gradient speed-up | first call (compile) fwd + grad [s] ours / public |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in doc["results"]:
        cfg = row["config"]
        name = f"d={cfg['dim']}, {cfg['n_layers']} layers, {cfg['n_tokens']} tokens"
        for ours_b, pub_b in zip(row["ours"]["batches"], row["public"]["batches"]):
            b = ours_b["batch"]
            of, pf = per_spectrum(ours_b["forward"], b), per_spectrum(pub_b["forward"], b)
            og, pg = per_spectrum(ours_b["grad"], b), per_spectrum(pub_b["grad"], b)
            ofm, pfm = per_spectrum(ours_b["forward"], b, "min_s"), per_spectrum(pub_b["forward"], b, "min_s")
            ogm, pgm = per_spectrum(ours_b["grad"], b, "min_s"), per_spectrum(pub_b["grad"], b, "min_s")
            oc = ours_b["forward"]["first_call_s"] + ours_b["grad"]["first_call_s"]
            pc = pub_b["forward"]["first_call_s"] + pub_b["grad"]["first_call_s"]
            lines.append(
                f"| {name} | {row['ours']['n_parameters'] / 1e6:.2f} M / {row['public']['n_parameters'] / 1e6:.2f} M | {b} "
                f"| {1e3 * of:.0f} / {1e3 * pf:.0f} ({1e3 * ofm:.0f} / {1e3 * pfm:.0f}) "
                f"| {n_pix / of / 1e6:.3g} / {n_pix / pf / 1e6:.3g} | {pf / of:.2f}x ({pfm / ofm:.2f}x) "
                f"| {1e3 * og:.0f} / {1e3 * pg:.0f} ({1e3 * ogm:.0f} / {1e3 * pgm:.0f}) | {pg / og:.2f}x ({pgm / ogm:.2f}x) "
                f"| {oc:.1f} / {pc:.1f} |"
            )
    notes = []
    for row in doc["results"]:
        pred = ", ".join(f"{1e3 * per_spectrum(b['predict'], b['batch']):.0f} ms (batch {b['batch']})" for b in row["ours"]["batches"])
        notes.append(f"- ours, `predict()` per spectrum at {row['config']['name']}: {pred}.")
        flux = row["public"].get("flux_one_spectrum")
        if flux:
            notes.append(
                f"- public, disk flux of one spectrum at {row['config']['name']} ({flux['mu_nodes']} mu nodes, the formula of the package's "
                f"`flux`): {1e3 * flux['median_s']:.0f} ms"
                + (f"; the package's own `flux()` raises `ValueError: {flux['package_flux_error'][:56]}...`" if flux.get("package_flux_error") else "")
                + "."
            )
    m = doc["machine"]
    pub = doc["public"]
    footer = (
        f"\n{n_pix} pixels ({doc['wavelength']['source']}), {doc['n_labels']} labels, random weights; median (minimum) of "
        f"{doc['repeats']} calls after a compiling one, ours and public alternating call by call; speed-up = public / ours. "
        f"Ours: stellarfit on jax {doc['ours']['jax_version']}; public: transformer-payne {pub['package_version']} on jax "
        f"{pub['jax_version']} / flax {pub['flax_version']} (x64 {'on' if pub['x64'] else 'off'}, network in float32). "
        f"{m['cpu_count']} CPUs ({m['platform']}), load average {m['load_average_before'][0]:.1f} before / "
        f"{m['load_average_after'][0]:.1f} after, {doc['date']}, {doc['wall_s'] / 60:.1f} min.\n"
    )
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n" + footer


if __name__ == "__main__":
    raise SystemExit(main())
