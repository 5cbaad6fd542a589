"""NUTS chains on worker processes pinned one per core against the same worker processes unpinned.

Why ``stellarfit._workers`` pins its workers: fits the shipped example
spectrum with ``payne-default`` and ``chain_method="processes"`` (4 chains,
dealt out to 2 workers) on a pool whose workers are pinned to one core each
and on a pool whose workers are not, and for reference with
``chain_method="sequential"`` in this process.  Each configuration first fits
once (worker start-up and compilation), then times a second fit.  The chains
and their gradient counts are identical in every configuration; only the wall
time differs.

    python benchmarks/bench_pinning.py                      # 4 chains x (300 + 300)
    python benchmarks/bench_pinning.py --num-warmup 150 --num-samples 150

Results: benchmarks/results/pinning_payne-default.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--emulator", default="payne-default")
    parser.add_argument("--num-warmup", type=int, default=300)
    parser.add_argument("--num-samples", type=int, default=300)
    parser.add_argument("--num-chains", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--configurations", nargs="+", default=["pinned", "unpinned", "pinned", "sequential"],
                        choices=["pinned", "unpinned", "sequential"])
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    from stellarfit import _workers, example_spectrum, fit_star, load_emulator

    emulator = load_emulator(args.emulator)
    spectrum = example_spectrum()
    options = dict(method="nuts", num_warmup=args.num_warmup, num_samples=args.num_samples, num_chains=args.num_chains)
    document = {
        "benchmark": "bench_pinning", "emulator": args.emulator,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(), "usable_cores": _workers.usable_cores(), "platform": platform.platform(),
        "load_average_before": list(os.getloadavg()), "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "runs": [],
    }
    for configuration in args.configurations:
        _workers.shutdown_pools()
        if configuration == "sequential":
            chain_method, cores = "sequential", None
        else:
            pool = _workers.WorkerPool(args.workers, pin=configuration == "pinned")
            _workers._POOLS[args.workers] = pool  # what fit_star's chain_method="processes" uses
            chain_method, cores = "processes", pool.cores
        t0 = time.perf_counter()
        fit_star(spectrum, emulator, chain_method=chain_method, **options)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        result = fit_star(spectrum, emulator, chain_method=chain_method, **options)
        second = time.perf_counter() - t0
        d = result.diagnostics
        run = {"configuration": configuration, "cores": cores, "first_fit_s": first, "second_fit_s": second,
               "gradient_evaluations": d["gradient_evaluations"] + d["gradient_evaluations_warmup"],
               "load_average_after": list(os.getloadavg())}
        document["runs"].append(run)
        print(f"{configuration:10s} cores {cores}: first fit {first:7.1f} s, second fit {second:7.1f} s, "
              f"{run['gradient_evaluations']} gradients", flush=True)
    _workers.shutdown_pools()
    out = Path(args.out or HERE / "results" / f"pinning_{args.emulator}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=1) + "\n")
    print(f"saved {out}")


if __name__ == "__main__":
    main()
