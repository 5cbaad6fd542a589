"""The TransformerPayne's MAP polish from `default-fast`'s MAP on held-out stars: wall time,
iterations, Jacobians and accepted steps per star, and where it ends (-log posterior).

This is the second stage of ``fit_star(spectrum, "default")`` (``polish_map`` with at most
``INIT_POLISH_STEPS`` iterations), timed alone, one star after another, after a compiling call.
To compare two versions of stellarfit in the same hour, run it twice with PYTHONPATH pointing
at each version's ``src`` (e.g. a ``git worktree`` of the older commit) and merge with ``--compare``:

    python benchmarks/bench_polish_jacobians.py run --example NEW.json 0 1 2 3 4 5 6 7
    PYTHONPATH=/tmp/old/src python benchmarks/bench_polish_jacobians.py run --example OLD.json 0 1 2 3 4 5 6 7
    python benchmarks/bench_polish_jacobians.py compare OLD.json NEW.json benchmarks/results/polish_jacobians.md

``--spaces z unit`` polishes every star in each of the coordinate systems ``polish_map(...,
space=...)`` offers, one after the other (same process, same start); ``compare`` then takes that
one file and pairs its first space (old) with its second (new):

    python benchmarks/bench_polish_jacobians.py run --example BOTH.json 0 1 2 3 --spaces z unit
    python benchmarks/bench_polish_jacobians.py compare BOTH.json benchmarks/results/polish_space.md

Stars: ``--stars`` (default .gpu/stars_snr100_64.npz, from ``bench_gpu_fits.py stars``) by index;
``--example`` (before the output file) adds the shipped example spectrum (index -1).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def run(args) -> None:
    import stellarfit as sf
    from stellarfit.inference.fit import INIT_POLISH_STEPS, fast_path_emulator
    from stellarfit.inference.map import polish_map

    from _stars import second_stage
    from bench_gpu_fits import load_stars

    emulator = sf.load_emulator("default")
    fast = fast_path_emulator(emulator)
    spectra, _, _ = load_stars(args.stars)
    indices = ([-1] if args.example else []) + list(args.indices)
    rows = []
    print("stellarfit from", sf.__file__, flush=True)
    for k in indices:
        spectrum = sf.example_spectrum() if k < 0 else spectra[k]
        _, prepared, start = second_stage(spectrum, emulator, fast)
        problem = prepared.problem
        for space in args.spaces or [None]:
            options = {} if space is None else {"space": space}
            polish_map(problem, start, max_steps=1, **options)  # compiled before timing
            clock = time.perf_counter()
            result = polish_map(problem, start, max_steps=INIT_POLISH_STEPS, **options)
            wall = time.perf_counter() - clock
            rows.append(dict(star=k, space=space, wall_s=wall, minus_log_posterior=-result.log_posterior,
                             iterations=result.iterations, jacobians=result.jacobians,
                             accepted_steps=getattr(result, "accepted_steps", None), converged=result.converged,
                             theta=result.theta.tolist()))
            print(f"star {k}{'' if space is None else ' (' + space + ')'}: {wall:.1f} s, {result.iterations} iterations, "
                  f"{result.jacobians} Jacobians, -log posterior {-result.log_posterior:.2f}, converged {result.converged}",
                  flush=True)
            Path(args.out).write_text(json.dumps(dict(stellarfit=sf.__file__, stars=args.stars, max_steps=INIT_POLISH_STEPS,
                                                      date=time.strftime("%Y-%m-%dT%H:%M:%S%z"), spaces=args.spaces,
                                                      rows=rows), indent=1))
    print(f"total {sum(r['wall_s'] for r in rows):.1f} s, {sum(r['jacobians'] for r in rows)} Jacobians")


def _split_spaces(document: dict) -> tuple[dict, dict]:
    """One ``--spaces A B`` run -> (A's document, B's document)."""
    first, second = document["spaces"][:2]
    return tuple(dict(document, stellarfit=f"{document['stellarfit']} (space={space})",
                      rows=[r for r in document["rows"] if r.get("space") == space]) for space in (first, second))


def compare(args) -> None:
    if args.out is None:  # one file of a --spaces run
        old, new = _split_spaces(json.loads(Path(args.old).read_text()))
        args.out = args.new
    else:
        old, new = (json.loads(Path(p).read_text()) for p in (args.old, args.new))
    by_star = {r["star"]: r for r in old["rows"]}
    lines = [f"TransformerPayne MAP polish from `default-fast`'s MAP (at most {new['max_steps']} iterations), "
             f"one star after another; old: `{old['stellarfit']}` ({old['date']}), new: `{new['stellarfit']}` "
             f"({new['date']}); star -1 is the shipped example spectrum, others `{new['stars']}`.", "",
             "| star | old s | new s | old iterations / Jacobians | new iterations / Jacobians / accepted | "
             "old -log post | new - old [nats] |", "|---|---|---|---|---|---|---|"]
    totals = [0.0, 0.0, 0, 0]
    for row in new["rows"]:
        ref = by_star.get(row["star"])
        if ref is None:
            continue
        totals = [totals[0] + ref["wall_s"], totals[1] + row["wall_s"], totals[2] + ref["jacobians"],
                  totals[3] + row["jacobians"]]
        flag = lambda r: "" if r["converged"] else " (not converged)"  # noqa: E731
        lines.append(f"| {row['star']} | {ref['wall_s']:.1f} | {row['wall_s']:.1f} | {ref['iterations']} / "
                     f"{ref['jacobians']}{flag(ref)} | {row['iterations']} / {row['jacobians']} / "
                     f"{row['accepted_steps']}{flag(row)} | {ref['minus_log_posterior']:.2f} | "
                     f"{row['minus_log_posterior'] - ref['minus_log_posterior']:+.3f} |")
    lines += ["", f"Total: {totals[0]:.1f} s and {totals[2]} Jacobians old, {totals[1]:.1f} s and {totals[3]} "
              f"Jacobians new ({totals[1] / totals[0]:.2f}x the time)."]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run")
    p.add_argument("out")
    p.add_argument("indices", nargs="*", type=int)
    p.add_argument("--stars", default=".gpu/stars_snr100_64.npz")
    p.add_argument("--example", action="store_true")
    p.add_argument("--spaces", nargs="+", choices=["z", "unit"], default=None,
                   help="polish each star in each of these coordinate systems (polish_map's space)")
    p.set_defaults(func=run)
    p = sub.add_parser("compare", help="OLD.json NEW.json OUT.md, or BOTH.json OUT.md for a --spaces run")
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("out", nargs="?", default=None)
    p.set_defaults(func=compare)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
