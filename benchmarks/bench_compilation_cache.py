"""What the ``stellarfit`` program's compilation cache buys: one CLI command, each run a new process.

Runs a command (by default the README's first: ``stellarfit fit example --emulator
payne-default --json``) in rounds of three processes, in this order: cache off
(``STELLARFIT_COMPILATION_CACHE=off``), cache cold (an empty directory), cache warm
(the directory the cold run filled).  Wall time of each process, the cache's size,
and whether the JSON results of the three runs are identical.

    python benchmarks/bench_compilation_cache.py --rounds 3
    python benchmarks/bench_compilation_cache.py --rounds 2 -- fit example --emulator payne-default --method nuts --json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _provenance import provenance

HERE = Path(__file__).resolve().parent
PROGRAM = Path(sys.executable).with_name("stellarfit")


def _run(argv: list[str], env: dict) -> tuple[float, dict]:
    start = time.perf_counter()
    done = subprocess.run([str(PROGRAM), *argv], env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"stellarfit {' '.join(argv)} exited {done.returncode}:\n{done.stderr[-2000:]}")
    return seconds, json.loads(done.stdout)


def _size(directory: Path) -> tuple[int, int]:
    files = [p for p in directory.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(HERE / "results" / "compilation_cache.json"))
    parser.add_argument("command", nargs="*", help="the stellarfit command (after --); must print JSON")
    args = parser.parse_args()
    argv = args.command or ["fit", "example", "--emulator", "payne-default", "--json"]
    if not PROGRAM.exists():
        raise SystemExit(f"no stellarfit program beside {sys.executable}; run install.sh first")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE"))}
    rows = []
    for round_ in range(args.rounds):
        directory = Path(tempfile.mkdtemp(prefix="stellarfit-jax-cache-"))
        try:
            results = {}
            for mode in ("off", "cold", "warm"):
                env = dict(base, STELLARFIT_COMPILATION_CACHE="off" if mode == "off" else str(directory))
                seconds, result = _run(argv, env)
                results[mode] = result
                files, size = _size(directory)
                rows.append({"round": round_, "mode": mode, "seconds": seconds, "cache_files": files,
                             "cache_bytes": size})
                print(f"round {round_}: cache {mode}: {seconds:.1f} s (cache {files} files, {size / 2**20:.0f} MiB)",
                      flush=True)
            same = all(results[m]["labels"] == results["off"]["labels"] for m in ("cold", "warm"))
            rows[-1]["labels_identical_in_round"] = same
            print(f"round {round_}: labels identical across the three runs: {same}", flush=True)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    medians = {m: float(np.median([r["seconds"] for r in rows if r["mode"] == m])) for m in ("off", "cold", "warm")}
    document = {"benchmark": "bench_compilation_cache", "command": ["stellarfit", *argv], "rounds": args.rounds,
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "cpu_count": os.cpu_count(), "platform": platform.platform(), "load_average": list(os.getloadavg()),
                "median_seconds": medians, "warm_over_off": medians["warm"] / medians["off"],
                "cold_over_off": medians["cold"] / medians["off"], "runs": rows, "provenance": provenance()}
    Path(args.out).write_text(json.dumps(document, indent=1))
    print(f"median: off {medians['off']:.1f} s, cold {medians['cold']:.1f} s, warm {medians['warm']:.1f} s "
          f"(warm/off {document['warm_over_off']:.2f}, cold/off {document['cold_over_off']:.2f}); wrote {args.out}")


if __name__ == "__main__":
    main()
