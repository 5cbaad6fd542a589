"""Do two pinned processes slow each other's gradients?  A compiled gradient loop alone and in pairs.

NUTS on a CPU runs its chains in worker processes pinned one per core.  This measures the
gradient of the sampled log density (the shipped example star, ``payne-default``, continuum
marginalized, at the MAP in z) in a compiled loop of 1,000 gradients: in one process pinned to
core 0 alone, then in two processes started together on cores 0 and 1, alternating for
``--rounds`` rounds.  If the two slowed each other (shared cache or memory bandwidth: the
Payne's Fourier-space read-out, 9.3 MB of float32, is read twice per gradient), the paired
times would exceed the lone ones.  (A former ``--variant float16`` meant to halve the matrix's
bytes measured the float32 program: XLA widened the float16 constant once, when compiling.)
Linux only (``taskset``).

    python benchmarks/bench_two_processes.py --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _worker(theta_path: str, seconds: float) -> None:
    from bench_gradient import time_gradients  # the same density and loop as bench_gradient.py

    out, _, _ = time_gradients(theta_path, seconds)
    print(json.dumps(out))


def _run(cores: list[int], theta_path: str, seconds: float) -> list[float]:
    command = [sys.executable, __file__, "--worker", theta_path, "--seconds", str(seconds)]
    processes = [subprocess.Popen(["taskset", "-c", str(core), *command], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                  text=True) for core in cores]
    return [json.loads(p.communicate()[0].strip().splitlines()[-1])["ms_per_gradient"] for p in processes]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=15.0, help="timed seconds per process, after compiling")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(HERE / "results" / "two_processes_payne-default.json"))
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker, args.seconds)
        return

    from bench_gradient import save_map_theta

    theta_path = str(Path(args.out).with_suffix(".theta.npy"))
    save_map_theta(theta_path)
    document = {"benchmark": "bench_two_processes", "cpu_count": os.cpu_count(),
                "load_average_before": list(os.getloadavg()), "seconds": args.seconds, "rounds": []}
    for round_ in range(args.rounds):
        alone = _run([0], theta_path, args.seconds)
        pair = _run([0, 1], theta_path, args.seconds)
        row = {"round": round_, "alone_core0_ms": alone[0], "pair_core0_ms": pair[0], "pair_core1_ms": pair[1]}
        document["rounds"].append(row)
        print(json.dumps(row), flush=True)
    os.remove(theta_path)
    alone = np.median([r["alone_core0_ms"] for r in document["rounds"]])
    pair = np.median([[r["pair_core0_ms"], r["pair_core1_ms"]] for r in document["rounds"]])
    document.update(median_alone_ms=float(alone), median_pair_ms=float(pair), pair_over_alone=float(pair / alone),
                    load_average_after=list(os.getloadavg()))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(document, indent=1))
    print(f"{alone:.3f} ms per gradient alone, {pair:.3f} ms in each of two pinned processes "
          f"(ratio {pair / alone:.2f})")


if __name__ == "__main__":
    main()
