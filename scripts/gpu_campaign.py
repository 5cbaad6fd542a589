"""One GPU session's campaign, in steps that fit 10-minute device calls.

The realistic spectra are made by Turbospectrum on the machine's CPU cores
(``ts``, started in the background) while the GPU pre-trains a
TransformerPayne on simple-physics spectra from the JAX LTE engine
(``simple``, ``pretrain``), and then fine-tunes it on the realistic spectra
made so far (``finetune``).  ``payne`` trains The Payne on the same realistic
spectra (the same-grid comparison), ``evaluate`` measures every emulator on an
independent held-out Turbospectrum grid, ``bench`` times MAP and batched NUTS
fits on the GPU, and ``pack`` gathers what should come back.

Every step writes into ``--workdir`` and can be rerun; ``pretrain`` and
``finetune`` resume from their checkpoints.  The grids are exactly what the
documented commands make:

- held-out: ``stellarfit grid --engine turbospectrum --n 320 --seed 1``;
- training: rows 200 b .. 200 b + 199 of ``stellarfit grid --engine
  turbospectrum --n 2000 --seed 0`` (the default grid's design), one file per
  block ``b``, so that a partial run is usable;
- simple: ``--n N --seed 2`` of the default label box with the jax engine.

    python scripts/gpu_campaign.py ts --workdir W --workers 14 &
    python scripts/gpu_campaign.py simple --workdir W --minutes 2.5
    python scripts/gpu_campaign.py pretrain --workdir W --minutes 5 --total-minutes 10
    python scripts/gpu_campaign.py finetune --workdir W --minutes 4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
BLOCK = 200
N_DEFAULT = 2000
WINDOW = (5000.0, 5500.0)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def write_json(path: Path, document: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(document, indent=1, default=str))
    os.replace(tmp, path)


def device_info() -> dict:
    import jax

    return {"device": str(jax.devices()[0]), "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "jax": jax.__version__, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


# -- realistic grids (CPU cores) ----------------------------------------------------
def cmd_ts(args) -> None:
    from stellarfit.grids import generate_grid, sample_labels
    from stellarfit.labels import default_label_spec
    from stellarfit.synth.engines import make_engine

    work = Path(args.workdir)
    engine = make_engine("turbospectrum", window=WINDOW, resolution=30_000.0, sampling=3.0)
    spec = default_label_spec()
    design = sample_labels(spec, N_DEFAULT, method="sobol", seed=0)
    heldout = sample_labels(spec, args.heldout_n, method="sobol", seed=1)
    jobs = [(f"ts_seed0_block{b:02d}.h5", design[b * BLOCK:(b + 1) * BLOCK], 0,
             f"rows {b * BLOCK}-{(b + 1) * BLOCK - 1} of stellarfit grid --engine turbospectrum --n {N_DEFAULT} --seed 0")
            for b in range(N_DEFAULT // BLOCK)]
    jobs.insert(args.heldout_after, (f"ts_seed1_{args.heldout_n}.h5", heldout, 1,
                                     f"stellarfit grid --engine turbospectrum --n {args.heldout_n} --seed 1"))
    for name, labels, seed, command in jobs[: args.max_jobs]:
        labels = labels[: args.limit]
        out = work / name
        if out.exists():
            continue
        start = time.perf_counter()
        result = generate_grid(engine, labels, out, label_spec=spec, workers=args.workers, chunk_size=args.chunk_size,
                               progress=False, seed=seed, design="sobol", metadata={"command": command})
        log(f"ts: {name}: {result.n_spectra} spectra, {result.n_failed} failed, {time.perf_counter() - start:.0f} s")


def realistic_blocks(work: Path):
    """The finished training blocks, concatenated as TrainingData (normalized flux + log10 continuum)."""
    from stellarfit.emulators import TrainingData

    parts = [TrainingData.from_grid(str(path)) for path in sorted(work.glob("ts_seed0_block*.h5"))]
    if not parts:
        raise SystemExit(f"no finished Turbospectrum training block in {work}")
    return TrainingData(np.concatenate([p.labels for p in parts]), np.concatenate([p.flux for p in parts]), parts[0].wavelength,
                        np.concatenate([p.log10_continuum for p in parts]), parts[0].label_spec), len(parts)


def realistic_split(work: Path):
    """The finished training blocks split 90/10 (seed 0) into training and validation spectra."""
    data, n_blocks = realistic_blocks(work)
    order = np.random.default_rng(0).permutation(data.n_spectra)
    n_val = min(max(data.n_spectra // 10, 8), data.n_spectra // 2)
    return data.subset(np.sort(order[n_val:])), data.subset(np.sort(order[:n_val])), n_blocks


def heldout_grid(work: Path):
    paths = sorted(work.glob("ts_seed1_*.h5"))
    if not paths:
        raise SystemExit(f"the held-out grid is not finished in {work}")
    return paths[0]


# -- simple-physics grid (GPU) ------------------------------------------------------
def cmd_simple(args) -> None:
    from stellarfit.grids import SpectralGrid, sample_labels
    from stellarfit.labels import default_label_spec
    from stellarfit.synth.engines import make_engine

    work = Path(args.workdir)
    out = work / "simple.h5"
    if out.exists():
        log(f"simple: {out} exists")
        return
    spec = default_label_spec()
    engine = make_engine("jax", window=WINDOW, resolution=30_000.0, sampling=3.0)
    labels = sample_labels(spec, args.n, method="sobol", seed=2)
    start = time.perf_counter()
    done, fluxes, continua, kept, failed = 0, [], [], [], 0
    while done < len(labels) and time.perf_counter() - start < 60.0 * args.minutes:
        batch = labels[done:done + args.batch]
        try:
            flux, continuum = engine.synthesize_batch(batch)
            fluxes.append(flux.astype(np.float32))
            continua.append(continuum.astype(np.float32))
            kept.append(np.arange(done, done + len(batch)))
        except FloatingPointError:
            failed += len(batch)
        except Exception as error:  # noqa: BLE001 - out of GPU memory: smaller batches
            if "RESOURCE_EXHAUSTED" not in str(error) or args.batch == 1:
                raise
            args.batch //= 2
            log(f"simple: out of memory, batch -> {args.batch}")
            continue
        done += len(batch)
        if len(fluxes) in (1, 2, 10) or len(fluxes) % 50 == 0:
            log(f"simple: {done} spectra in {time.perf_counter() - start:.0f} s")
    index = np.concatenate(kept)
    seconds = time.perf_counter() - start
    grid = SpectralGrid(labels[index], engine.wavelength, np.concatenate(fluxes), spec, continuum=np.concatenate(continua),
                        metadata={"engine": engine.metadata(), "command": f"jax engine, sobol seed 2, first {done} of {args.n}"},
                        design_index=index)
    grid.write(out)
    write_json(work / "simple.json", {**device_info(), "n_spectra": int(index.size), "n_failed_batches_spectra": failed,
                                      "seconds": seconds, "spectra_per_s": index.size / seconds, "batch": args.batch})
    log(f"simple: wrote {index.size} spectra ({index.size / seconds:.1f} per s)")


# -- TransformerPayne ---------------------------------------------------------------
def _tp_config(args):
    from stellarfit.emulators import transformer_payne_config

    return transformer_payne_config(dim=args.dim, n_layers=args.layers, n_tokens=16)


def _steps_for(emulator, train, config, minutes: float, probe_steps: int = 200) -> tuple[int, float]:
    """Optimizer steps that fit in ``minutes``, timed on a short throw-away run (second half of it)."""
    from stellarfit.emulators import TrainConfig, train_emulator

    probe = {**config.__dict__, "n_steps": probe_steps, "eval_every": probe_steps // 2, "progress": False, "warmup_steps": 10}
    history = train_emulator(emulator, train, None, TrainConfig(**probe)).history
    per_step = max((history[-1]["elapsed_s"] - history[-2]["elapsed_s"]) / (probe_steps // 2), 1e-4)
    return int(60.0 * minutes / per_step), per_step


def cmd_pretrain(args) -> None:
    from stellarfit.emulators import TrainConfig, TrainingData, TransformerPayneEmulator, train_emulator
    from stellarfit.grids import SpectralGrid

    work = Path(args.workdir)
    grid = SpectralGrid.read(work / "simple.h5")
    n = len(grid)
    rng = np.random.default_rng(0)
    order = rng.permutation(n)
    n_val = max(min(256, n // 20), 8)
    train, val = TrainingData.from_grid(grid, np.sort(order[n_val:])), TrainingData.from_grid(grid, np.sort(order[:n_val]))
    plan_path = work / "pretrain_plan.json"
    emulator = TransformerPayneEmulator.create(train.label_spec, train.wavelength, _tp_config(args), with_continuum=True,
                                              resolution=30_000.0, seed=0)
    base = TrainConfig(n_steps=1000, batch_size=args.batch_size, n_wavelengths=args.n_wavelengths, learning_rate=args.learning_rate,
                       warmup_steps=1000, eval_every=500, patience=None, checkpoint_every=500, progress=False,
                       val_max_spectra=256)
    if plan_path.exists():
        plan = json.loads(plan_path.read_text())
    else:
        n_steps, per_step = _steps_for(emulator, train, base, args.total_minutes)
        plan = {"n_steps": n_steps, "seconds_per_step": per_step, "n_train": train.n_spectra, "n_val": val.n_spectra}
        write_json(plan_path, plan)
        log(f"pretrain: {per_step * 1e3:.1f} ms per step -> {n_steps} steps in {args.total_minutes} min")
    config = TrainConfig(**{**base.__dict__, "n_steps": plan["n_steps"]})
    start = time.perf_counter()
    result = train_emulator(emulator, train, val, config, checkpoint_dir=work / "tp_pre_ckpt",
                            time_limit_s=60.0 * args.minutes, extra_metadata={"grid": "simple.h5 (jax engine, seed 2)"})
    result.emulator.save(str(work / "tp_pre"), overwrite=True)
    plan.setdefault("calls", []).append({"seconds": time.perf_counter() - start, "final_step": result.final_step,
                                         "best_step": result.best_step, "best_val_mae": result.best_val_mae})
    write_json(plan_path, plan)
    log(f"pretrain: step {result.final_step}/{plan['n_steps']}, best validation MAE {result.best_val_mae:.5f}")


def cmd_finetune(args) -> None:
    from stellarfit.emulators import TrainConfig, estimate_pixel_error, finetune, load_emulator

    work = Path(args.workdir)
    train, val, n_blocks = realistic_split(work)
    parent = load_emulator(str(work / args.init))
    base = TrainConfig(n_steps=1000, batch_size=args.batch_size, n_wavelengths=args.n_wavelengths, learning_rate=args.learning_rate,
                       warmup_steps=200, eval_every=250, patience=None, checkpoint_every=500, progress=False)
    n_steps, per_step = _steps_for(parent, train, base, args.minutes * 0.9)
    config = TrainConfig(**{**base.__dict__, "n_steps": n_steps})
    start = time.perf_counter()
    result = finetune(parent, train, val, config, mode="full", checkpoint_dir=work / f"{args.out}_ckpt",
                      time_limit_s=60.0 * args.minutes)
    emulator = result.emulator.replace(metadata={**result.emulator.metadata, "realistic_blocks": n_blocks,
                                                  "n_realistic_train": train.n_spectra, "init": args.init})
    emulator = emulator.with_pixel_error(estimate_pixel_error(emulator, val))
    emulator.save(str(work / args.out), overwrite=True)
    write_json(work / f"{args.out}.json", {**device_info(), "n_blocks": n_blocks, "n_train": train.n_spectra, "n_val": val.n_spectra,
                                           "n_steps": n_steps, "seconds_per_step": per_step, "seconds": time.perf_counter() - start,
                                           "best_step": result.best_step, "best_val_mae": result.best_val_mae, "init": args.init})
    log(f"finetune: {train.n_spectra} realistic spectra, {n_steps} steps, best validation MAE {result.best_val_mae:.5f}")


def cmd_scratch(args) -> None:
    """A TransformerPayne trained from scratch on the same realistic blocks (the pre-training control)."""
    from stellarfit.emulators import TrainConfig, TransformerPayneEmulator, train_emulator

    work = Path(args.workdir)
    train, val, n_blocks = realistic_split(work)
    emulator = TransformerPayneEmulator.create(train.label_spec, train.wavelength, _tp_config(args), with_continuum=True,
                                              resolution=30_000.0, seed=0)
    base = TrainConfig(n_steps=1000, batch_size=args.batch_size, n_wavelengths=args.n_wavelengths, learning_rate=args.learning_rate,
                       warmup_steps=500, eval_every=250, patience=None, checkpoint_every=500, progress=False)
    n_steps, per_step = _steps_for(emulator, train, base, args.minutes * 0.9)
    result = train_emulator(emulator, train, val, TrainConfig(**{**base.__dict__, "n_steps": n_steps}),
                            checkpoint_dir=work / f"{args.out}_ckpt", time_limit_s=60.0 * args.minutes)
    result.emulator.save(str(work / args.out), overwrite=True)
    write_json(work / f"{args.out}.json", {**device_info(), "n_blocks": n_blocks, "n_train": train.n_spectra, "n_steps": n_steps,
                                           "seconds_per_step": per_step, "best_val_mae": result.best_val_mae})
    log(f"scratch: {n_steps} steps, best validation MAE {result.best_val_mae:.5f}")


def cmd_payne(args) -> None:
    """The Payne trained on the same realistic blocks, with payne-default's recipe."""
    from stellarfit.emulators import PayneEmulator, TrainConfig, estimate_pixel_error, train_emulator

    work = Path(args.workdir)
    train, val, n_blocks = realistic_split(work)
    emulator = PayneEmulator.create(train.label_spec, train.wavelength, {}, with_continuum=False, resolution=30_000.0, seed=0)
    config = TrainConfig(n_steps=args.steps, batch_size=32, learning_rate=1e-3, warmup_steps=500, patience=40, progress=False)
    start = time.perf_counter()
    result = train_emulator(emulator, train, val, config, time_limit_s=60.0 * args.minutes)
    emulator = result.emulator.replace(config={**result.emulator.config, "activation_sharpness": 100.0})
    emulator = emulator.with_pixel_error(estimate_pixel_error(emulator, val))
    emulator.save(str(work / args.out), overwrite=True)
    write_json(work / f"{args.out}.json", {**device_info(), "n_blocks": n_blocks, "n_train": train.n_spectra, "steps": args.steps,
                                           "seconds": time.perf_counter() - start, "best_step": result.best_step,
                                           "best_val_mae": result.best_val_mae})
    log(f"payne: best validation MAE {result.best_val_mae:.5f} at step {result.best_step}")


# -- measurements -------------------------------------------------------------------
def cmd_evaluate(args) -> None:
    from stellarfit.emulators import TrainingData, evaluate_emulator, load_emulator

    work = Path(args.workdir)
    data = TrainingData.from_grid(str(heldout_grid(work)))
    document = {**device_info(), "heldout": heldout_grid(work).name, "n_spectra": data.n_spectra, "emulators": {}}
    for name in args.emulators:
        path = name if name.endswith("default") else str(work / name)
        if not name.endswith("default") and not Path(path).exists():
            continue
        evaluation = evaluate_emulator(load_emulator(path), data)
        teff = data.labels[:, 0]
        per = evaluation.mae_per_spectrum
        document["emulators"][name] = {
            "mae": float(evaluation.mae), "mse": float(evaluation.mse),
            "mae_by_teff": {f"{lo:.0f}-{lo + 600:.0f}": float(np.mean(per[(teff >= lo) & (teff < lo + 600)]))
                            for lo in range(4000, 7000, 600)},
        }
        log(f"evaluate: {name}: MAE {evaluation.mae:.5f}")
    write_json(work / "evaluate.json", document)


def _observations(work: Path, n: int, snr: float, seed: int = 0):
    """Held-out Turbospectrum spectra observed at R = 22,500 (as bench_calibration does)."""
    from stellarfit.forward import simulate_observation
    from stellarfit.grids import SpectralGrid
    from stellarfit.wavelengths import log_lambda_grid

    paths = sorted(work.glob("ts_seed1_*.h5")) or sorted(work.glob("ts_seed0_block*.h5"))
    grid = SpectralGrid.read(paths[0])
    wavelength = log_lambda_grid(5010.0, 5490.0, 22_500.0, 2.5)
    rng = np.random.default_rng(seed)
    index = np.arange(len(grid) // 2, len(grid))[:n]
    return [simulate_observation(grid.wavelength, grid.flux[i], 30_000.0, wavelength, 22_500.0, rv=rng.uniform(-150, 150),
                                 vsini=rng.uniform(0, 8), snr=snr, continuum=1000.0, rng=rng) for i in index]


def cmd_bench(args) -> None:
    """MAP and batched NUTS throughput on this device."""
    import stellarfit as sf

    work = Path(args.workdir)
    out = work / f"bench_{args.tag}.json"
    document = json.loads(out.read_text()) if out.exists() else {**device_info(), "runs": []}
    name = args.emulator
    emulator = sf.load_emulator(name if name.endswith("default") else str(work / name))
    for method, n_stars, batch in [("map", args.map_stars, args.map_batch), ("nuts", args.nuts_stars, args.nuts_batch)]:
        if n_stars <= 0:
            continue
        spectra = _observations(work, n_stars + batch, 100.0, seed=1)
        options = dict(method=method, batch_size=batch, n_starts=args.n_starts, errors="collect",
                       num_warmup=args.warmup, num_samples=args.samples, num_chains=4)
        start = time.perf_counter()
        sf.fit_stars(spectra[:batch], emulator, **options)  # compiles
        first = time.perf_counter() - start
        start = time.perf_counter()
        results = sf.fit_stars(spectra[batch:], emulator, **options)
        seconds = time.perf_counter() - start
        ok = [r for r in results if not isinstance(r, Exception)]
        row = {"emulator": name, "method": method, "n_stars": n_stars, "batch_size": batch, "n_starts": args.n_starts,
               "first_batch_s": first, "seconds": seconds, "seconds_per_star": seconds / n_stars,
               "stars_per_hour": 3600.0 * n_stars / seconds, "n_ok": len(ok)}
        if method == "nuts" and ok:
            row.update(num_warmup=args.warmup, num_samples=args.samples, num_chains=4,
                       max_rhat=float(max(max(r.diagnostics["r_hat"].values()) for r in ok)),
                       min_ess_bulk=float(min(min(r.diagnostics["ess_bulk"].values()) for r in ok)),
                       divergences=int(sum(r.diagnostics["divergences"] for r in ok)),
                       gradients_per_ess=float(np.median([r.diagnostics["gradient_evaluations_per_ess"] for r in ok])))
        document["runs"].append(row)
        write_json(out, document)
        log(f"bench: {name} {method}: {row['seconds_per_star']:.2f} s per star ({row['stars_per_hour']:.0f} per hour), "
            f"first batch {first:.0f} s")


def cmd_pack(args) -> None:
    """Gather results into OUT: one tar of emulators, JSON and logs; the held-out grid and blocks as npz."""
    import tarfile

    from stellarfit.grids import SpectralGrid

    work, out = Path(args.workdir), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out / "results.tar.gz", "w:gz") as archive:
        for path in sorted(work.iterdir()):
            if path.suffix in (".json", ".log", ".md"):
                archive.add(path, arcname=path.name)
    for name in args.emulators:
        if (work / name / "emulator.json").exists():
            with tarfile.open(out / f"{name}.tar", "w") as archive:
                archive.add(work / name, arcname=name)
    for path in sorted(work.glob("ts_seed1_*.h5")):
        grid = SpectralGrid.read(path)
        np.savez_compressed(out / f"{path.stem}.npz", labels=grid.labels, wavelength=grid.wavelength, flux=grid.flux,
                            design_index=np.asarray(grid.design_index))
    for path in sorted(out.iterdir()):
        log(f"pack: {path.name} {path.stat().st_size / 1e6:.1f} MB")


def cmd_report(args) -> None:
    """benchmarks/results/gpu_campaign_<tag>.{json,md} from a workdir's JSON files (or the unpacked results)."""
    work = Path(args.workdir)
    read = lambda name: json.loads((work / name).read_text()) if (work / name).exists() else None  # noqa: E731
    document = {name.removesuffix(".json"): read(name) for name in
                ("evaluate.json", "simple.json", "pretrain_plan.json", "tp_ft.json", "payne_same.json", "bench_gpu.json", "bench_tp.json")}
    ts_log = work / "ts.log"
    document["turbospectrum_log"] = [line for line in ts_log.read_text().splitlines() if "ts: " in line] if ts_log.exists() else []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out.with_suffix(".json"), document)
    evaluation = document["evaluate"] or {"emulators": {}}
    described = {
        "payne-default": "The Payne 300-300 (shipped payne-default)", "payne_same": "The Payne 300-300, payne-default's recipe",
        "tp_pre": "TransformerPayne d=128, 8 layers", "tp_ft": "TransformerPayne d=128, 8 layers",
    }
    trained = {
        "payne-default": "1,593 Turbospectrum (default grid, training split)",
        "payne_same": f"{(document['payne_same'] or {}).get('n_train', '?')} Turbospectrum (blocks 0-3 of the default design)",
        "tp_pre": f"{(document['pretrain_plan'] or {}).get('n_train', '?')} simple (JAX LTE) only",
        "tp_ft": f"the simple ones, then fine-tuned on {(document['tp_ft'] or {}).get('n_train', '?')} Turbospectrum (blocks 0-3)",
    }
    bins = next(iter(evaluation["emulators"].values()), {}).get("mae_by_teff", {})
    lines = [f"GPU campaign ({(document['evaluate'] or {}).get('device', '?')}, {(document['evaluate'] or {}).get('date', '?')}; "
             "scripts/gpu_campaign.py). Flux MAE on the independent held-out Turbospectrum grid "
             f"({evaluation.get('heldout', '?')}, {evaluation.get('n_spectra', '?')} spectra, normalized flux, 8,578 pixels):", "",
             "| emulator | model | trained on | MAE | MSE | " + " | ".join(f"MAE Teff {k} K" for k in bins) + " |",
             "|---|---|---|---|---|" + "---|" * len(bins)]
    for name, row in evaluation["emulators"].items():
        lines.append(f"| `{name}` | {described.get(name, name)} | {trained.get(name, '')} | {row['mae']:.5f} | {row['mse']:.2e} | "
                     + " | ".join(f"{v:.4f}" for v in row["mae_by_teff"].values()) + " |")
    simple, plan, tp_ft = document["simple"], document["pretrain_plan"], document["tp_ft"]
    if simple:
        lines += ["", f"Simple spectra: {simple['n_spectra']:,} in {simple['seconds']:.0f} s on the GPU "
                      f"({simple['spectra_per_s']:.0f} per s, batches of {simple['batch']}; {simple['n_failed_batches_spectra']} "
                      "spectra in batches with a non-finite spectrum dropped)."]
    if plan:
        last = plan["calls"][-1]
        lines += [f"Pre-training: {last['final_step']:,} of {plan['n_steps']:,} planned steps at {1e3 * plan['seconds_per_step']:.1f} ms "
                  f"(batch 64 spectra x 1,024 wavelengths), best validation MAE on simple spectra {last['best_val_mae']:.5f}."]
    if tp_ft:
        lines += [f"Fine-tuning: {tp_ft['n_steps']:,} steps at {1e3 * tp_ft['seconds_per_step']:.1f} ms on {tp_ft['n_train']} "
                  f"Turbospectrum spectra, best validation MAE {tp_ft['best_val_mae']:.5f} at step {tp_ft['best_step']:,}."]
    if document["payne_same"]:
        row = document["payne_same"]
        lines += [f"The Payne on the same spectra: best validation MAE {row['best_val_mae']:.5f} at step {row['best_step']:,} "
                  f"({row['seconds']:.0f} s)."]
    for line in document["turbospectrum_log"]:
        lines.append(f"- Turbospectrum on {args.ts_workers} CPU cores of the GPU machine: {line.split('ts: ', 1)[1]}")
    for run in (document["bench_gpu"] or {}).get("runs", []):
        lines.append(f"- `{run['emulator']}` {run['method']} on the GPU, batches of {run['batch_size']}, {run['n_starts']} starts: "
                     f"{run['seconds_per_star']:.3f} s per star ({run['stars_per_hour']:,.0f} per hour) after a first batch of "
                     f"{run['first_batch_s']:.0f} s (compilation)")
    lines += [f"- {note}" for note in args.note]
    document["notes"] = args.note
    write_json(out.with_suffix(".json"), document)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def cmd_ship(args) -> None:
    """Install a campaign emulator as a shipped one, with its held-out accuracy and a PROVENANCE.md."""
    import jax

    from stellarfit.emulators import TrainingData, evaluate_emulator, load_emulator
    from stellarfit.emulators.registry import SHIPPED_EMULATORS
    from stellarfit.labels import default_label_spec

    work = Path(args.workdir)
    emulator = load_emulator(str(work / args.emulator))
    with np.load(work / args.heldout) as arrays:
        heldout = TrainingData(arrays["labels"], arrays["flux"], arrays["wavelength"], None, default_label_spec())
    evaluation = evaluate_emulator(emulator, heldout)
    labels = heldout.labels[:1].astype(np.float32)
    emulator.predict(labels)
    start = time.perf_counter()
    for _ in range(3):
        np.asarray(emulator.predict(labels))
    forward = (time.perf_counter() - start) / 3
    metrics = {**(emulator.metadata.get("metrics") or {}), "heldout_mae": float(evaluation.mae), "heldout_mse": float(evaluation.mse),
               "n_heldout": heldout.n_spectra, "heldout": f"{args.heldout}: stellarfit grid --engine turbospectrum --n 320 --seed 1",
               "cost_per_spectrum": {"forward_ms": 1e3 * forward, "device": str(jax.devices()[0]), "cpu_count": os.cpu_count()}}
    metadata = {**emulator.metadata, "metrics": metrics, "shipped_name": args.name}
    if args.fast_path:
        metadata["fast_path"] = args.fast_path
    # floors measured for an earlier emulator do not describe this one: they are measured again afterwards
    for key in ("label_error_floor", "label_error_floor_source"):
        metadata.pop(key, None)
    emulator = emulator.replace(metadata=metadata)
    target = HERE.parent / "src" / "stellarfit" / "data" / "emulators" / SHIPPED_EMULATORS[args.name]
    emulator.save(str(target), overwrite=True)
    (target / "PROVENANCE.md").write_text(Path(args.provenance).read_text().format(
        heldout_mae=evaluation.mae, heldout_mse=evaluation.mse, n_heldout=heldout.n_spectra, forward_ms=1e3 * forward,
        n_parameters=emulator.n_parameters, size_mb=sum(p.stat().st_size for p in target.iterdir()) / 1e6))
    log(f"ship: {args.name} -> {target}: held-out MAE {evaluation.mae:.5f}, forward {1e3 * forward:.0f} ms on {jax.devices()[0]}")
    log(f"ship: {args.name} has no label error floors yet; measure them on heldout-a and record them with "
        f"`benchmarks/bench_calibration.py --emulator {args.name} --split heldout-a --no-error-floor"
        f"{' --init-from ' + args.fast_path if args.fast_path else ''} --snr 100 --n-stars 158` and "
        f"`scripts/set_error_floor.py <its json> {args.name}`")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    ts = commands.add_parser("ts")
    ts.add_argument("--workers", type=int, default=os.cpu_count())
    ts.add_argument("--chunk-size", type=int, default=4)
    ts.add_argument("--heldout-n", type=int, default=320)
    ts.add_argument("--heldout-after", type=int, default=4, help="training blocks made before the held-out grid")
    ts.add_argument("--limit", type=int, default=None, help="(testing) at most this many spectra per grid")
    ts.add_argument("--max-jobs", type=int, default=None, help="(testing) at most this many grids")
    simple = commands.add_parser("simple")
    simple.add_argument("--n", type=int, default=50_000)
    simple.add_argument("--batch", type=int, default=64)
    simple.add_argument("--minutes", type=float, default=2.5)
    for name in ("pretrain", "finetune", "scratch"):
        sub = commands.add_parser(name)
        sub.add_argument("--minutes", type=float, default=5.0)
        sub.add_argument("--dim", type=int, default=128)
        sub.add_argument("--layers", type=int, default=8)
        sub.add_argument("--batch-size", type=int, default=64)
        sub.add_argument("--n-wavelengths", type=int, default=1024)
        sub.add_argument("--learning-rate", type=float, default=1e-3 if name != "finetune" else 3e-4)
        if name == "pretrain":
            sub.add_argument("--total-minutes", type=float, default=10.0, help="the schedule's length over all calls")
        else:
            sub.add_argument("--out", default="tp_ft" if name == "finetune" else "tp_scratch")
        if name == "finetune":
            sub.add_argument("--init", default="tp_pre")
    payne = commands.add_parser("payne")
    payne.add_argument("--steps", type=int, default=20_000)
    payne.add_argument("--out", default="payne_same")
    payne.add_argument("--minutes", type=float, default=4.0)
    evaluate = commands.add_parser("evaluate")
    evaluate.add_argument("--emulators", nargs="+", default=["payne-default", "payne_same", "tp_pre", "tp_ft", "tp_scratch"])
    bench = commands.add_parser("bench")
    bench.add_argument("--emulator", default="payne-default")
    bench.add_argument("--tag", default="gpu")
    bench.add_argument("--map-stars", type=int, default=64)
    bench.add_argument("--map-batch", type=int, default=32)
    bench.add_argument("--nuts-stars", type=int, default=32)
    bench.add_argument("--nuts-batch", type=int, default=32)
    bench.add_argument("--n-starts", type=int, default=8)
    bench.add_argument("--warmup", type=int, default=500)
    bench.add_argument("--samples", type=int, default=500)
    report = commands.add_parser("report")
    report.add_argument("--out", default=str(HERE.parent / "benchmarks" / "results" / "gpu_campaign_h100"))
    report.add_argument("--ts-workers", type=int, default=14)
    report.add_argument("--note", action="append", default=[], help="a line to add (e.g. a step that did not finish)")
    ship = commands.add_parser("ship")
    ship.add_argument("--emulator", default="tp_ft")
    ship.add_argument("--name", default="default")
    ship.add_argument("--heldout", default="ts_seed1_320.npz")
    ship.add_argument("--provenance", required=True, help="PROVENANCE.md template ({heldout_mae}, {forward_ms}, ... filled in)")
    ship.add_argument("--fast-path", default=None,
                      help="shipped name of the emulator's fast path for two-stage CPU fits, recorded as metadata "
                           "'fast_path' (default: default-fast when shipping 'default', else none)")
    pack = commands.add_parser("pack")
    pack.add_argument("--out", required=True)
    pack.add_argument("--emulators", nargs="+", default=["tp_ft", "payne_same", "tp_scratch", "tp_pre"])
    for sub in commands.choices.values():
        sub.add_argument("--workdir", required=True)
    args = parser.parse_args()
    if args.command == "ship" and args.fast_path is None and args.name == "default":
        args.fast_path = "default-fast"
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    globals()[f"cmd_{args.command}"](args)


if __name__ == "__main__":
    main()
