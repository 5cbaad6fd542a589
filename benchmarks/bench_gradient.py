"""What one gradient of the sampled log density costs, and where its time goes, on one CPU core.

NUTS on a CPU spends nearly all of a fit in gradients of the log density in z (a leapfrog step
costs 1.05-1.08x a gradient: ``bench_sampler_overhead.py``), so a fit's seconds are its gradient
count times this.  The density is the one ``fit_star`` samples for the shipped example star
(``payne-default``, continuum marginalized, at the MAP in z).  A compiled loop of 1,000 gradients
runs in a process pinned to one core, ``--rounds`` times; the median round is reported.

``--profile`` adds the XLA operations that take the most time inside the loop (from a JAX profiler
trace of 20 gradients; the trace adds a little time per operation), each with the JAX operation it
came from.  ``--against REV`` times the same loop with the stellarfit of another git revision
(checked out in a temporary worktree), alternating with this checkout round by round, so that the
ratio comes from one run on one machine.  Linux only (``taskset``).

    python benchmarks/bench_gradient.py --rounds 5 --profile --against 1756328
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _problem(theta_path: str):
    import jax.numpy as jnp

    import stellarfit as sf
    from stellarfit.forward import ForwardModel, continuum_design_matrix
    from stellarfit.inference import FitProblem

    emulator = sf.load_emulator("payne-default")
    spectrum = sf.example_spectrum()
    model = ForwardModel.from_emulator(emulator, spectrum.wavelength, float(spectrum.resolution), rv_range=(-1000.0, 1000.0),
                                       vsini_max=50.0)
    theta = np.load(theta_path)
    problem = FitProblem(model, emulator.label_spec, spectrum.flux, spectrum.ivar,
                         continuum_design_matrix(spectrum.wavelength, None, 2), vsini_max=50.0,
                         rv_range=(theta[-2] - 50.0, theta[-2] + 50.0)).with_continuum("marginalize")
    return problem, jnp.asarray(problem.to_unconstrained(jnp.asarray(theta, jnp.float32)))


def _loop(problem, length: int):
    import jax

    gradient = jax.value_and_grad(lambda z: -problem.log_density_unconstrained(z))

    @jax.jit
    def loop(z):
        def body(carry, _):
            value, g = gradient(carry)
            return carry - 1e-7 * g, value
        return jax.lax.scan(body, z, None, length=length)

    return loop


def _profile(problem, z0, top: int) -> list[dict]:
    """The ``top`` XLA operations by time in 20 gradients, with the JAX operation each came from."""
    import jax

    loop = _loop(problem, 20)
    jax.block_until_ready(loop(z0))
    origin = {}
    for line in loop.lower(z0).compile().as_text().splitlines():
        match = re.match(r"\s*(?:ROOT )?%([\w.-]+) = (\S+) ([\w-]+)\(", line)
        if not match or match.group(3) == "while":  # the loop itself contains everything
            continue
        name = re.search(r'op_name="([^"]*)"', line)
        origin[match.group(1)] = (name.group(1).replace("jit(loop)/while/body/", "") if name
                                  else f"{match.group(3)} -> {match.group(2)}")
    with tempfile.TemporaryDirectory() as directory:
        with jax.profiler.trace(directory, create_perfetto_trace=True):
            jax.block_until_ready(loop(z0))
        trace = glob.glob(os.path.join(directory, "**", "*.trace.json.gz"), recursive=True)[0]
        events = [e for e in json.load(gzip.open(trace))["traceEvents"] if e.get("ph") == "X"]
    total = collections.Counter()
    for event in events:
        if event["name"] in origin:
            total[event["name"]] += event["dur"]
    return [{"op": name, "us_per_gradient": microseconds / 20, "from": origin[name][:120]}
            for name, microseconds in total.most_common(top)]


def save_map_theta(path: str) -> None:
    """The example star's MAP (physical parameters), where the gradient loops start."""
    import stellarfit as sf

    fit = sf.fit_star(sf.example_spectrum(), sf.load_emulator("payne-default"), "map")
    np.save(path, np.array([fit.labels[name]["map"] for name in fit.names]))


def time_gradients(theta_path: str, seconds: float) -> tuple[dict, object, object]:
    """Milliseconds per gradient in a compiled loop of 1,000 (median and fastest loop over ``seconds``,
    at least 3 loops), with the problem and its start."""
    import jax

    problem, z0 = _problem(theta_path)
    loop = _loop(problem, 1_000)
    jax.block_until_ready(loop(z0))
    times = []
    end = time.time() + seconds
    while time.time() < end or len(times) < 3:
        start = time.perf_counter()
        jax.block_until_ready(loop(z0))
        times.append(time.perf_counter() - start)
    out = {"ms_per_gradient": 1e3 * float(np.median(times)) / 1_000, "ms_per_gradient_min": 1e3 * min(times) / 1_000,
           "loops": len(times)}
    return out, problem, z0


def _worker(theta_path: str, seconds: float, profile_top: int) -> None:
    out, problem, z0 = time_gradients(theta_path, seconds)
    if profile_top:
        out["profile"] = _profile(problem, z0, profile_top)
    print(json.dumps(out))


def _run(source: str, theta_path: str, seconds: float, profile_top: int) -> dict:
    environment = dict(os.environ, PYTHONPATH=source)
    command = ["taskset", "-c", "0", sys.executable, __file__, "--worker", theta_path, "--seconds", str(seconds),
               "--profile-top", str(profile_top)]
    finished = subprocess.run(command, env=environment, capture_output=True, text=True, check=False)
    if finished.returncode != 0:
        raise RuntimeError(f"gradient worker for {source} failed:\n{finished.stderr[-3000:]}")
    return json.loads(finished.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0, help="timed seconds per process, after compiling")
    parser.add_argument("--profile", action="store_true", help="also list the XLA operations that take the most time")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--against", default=None, help="a git revision to compare with, alternating round by round")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--profile-top", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(HERE / "results" / "gradient_payne-default.json"))
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker, args.seconds, args.profile_top)
        return

    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    sources = {f"this checkout ({head or 'HEAD'})": str(ROOT / "src")}
    worktree = None
    if args.against:
        worktree = tempfile.mkdtemp(prefix="stellarfit-against-")
        subprocess.run(["git", "worktree", "add", "--detach", worktree, args.against], cwd=ROOT, check=True,
                       capture_output=True)
        sources[f"{args.against}"] = str(Path(worktree) / "src")
    try:
        with tempfile.TemporaryDirectory() as directory:
            theta_path = os.path.join(directory, "theta.npy")
            save_map_theta(theta_path)
            document = {"benchmark": "bench_gradient", "cpu_count": os.cpu_count(),
                        "load_average_before": list(os.getloadavg()), "seconds": args.seconds, "rounds": [],
                        "profiles": {}}
            for round_ in range(args.rounds):
                row = {"round": round_}
                for label, source in sources.items():
                    top = args.top if (args.profile and round_ == 0) else 0
                    result = _run(source, theta_path, args.seconds, top)
                    row[label] = result["ms_per_gradient"]
                    if "profile" in result:
                        document["profiles"][label] = result["profile"]
                document["rounds"].append(row)
                print(json.dumps(row), flush=True)
    finally:
        if worktree:
            subprocess.run(["git", "worktree", "remove", "--force", worktree], cwd=ROOT, check=False, capture_output=True)
    medians = {label: float(np.median([r[label] for r in document["rounds"]])) for label in sources}
    document.update(median_ms_per_gradient=medians, load_average_after=list(os.getloadavg()))
    if args.against:
        first, second = list(sources)
        document["ratio"] = float(np.median([r[first] / r[second] for r in document["rounds"]]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(document, indent=1))
    for label, value in medians.items():
        print(f"{label}: {value:.3f} ms per gradient (median of {args.rounds} rounds, one core)")
    if args.against:
        print(f"ratio {document['ratio']:.3f} (median of per-round ratios)")
    for label, rows in document["profiles"].items():
        print(f"\n{label}: the XLA operations that took the most time (us per gradient, under the profiler)")
        for row in rows:
            print(f"  {row['us_per_gradient']:7.1f}  {row['op']:32s} {row['from']}")


if __name__ == "__main__":
    main()
