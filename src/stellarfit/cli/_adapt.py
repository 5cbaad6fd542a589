"""``stellarfit encoder-adapt``: adapt a trained spectrum encoder to another survey or physics with a labelled grid."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np

from stellarfit.cli._common import UsageError, _log

__all__ = ["add_encoder_adapt_parser"]


def add_encoder_adapt_parser(commands) -> None:
    parser = commands.add_parser(
        "encoder-adapt", help="adapt a spectrum encoder to another survey or physics with a labelled grid (head, adapters, LoRA, full)",
        description="Adapt a trained spectrum encoder (stellarfit.encoders) to the spectra of GRID (made by `stellarfit grid`, "
                    "e.g. Turbospectrum spectra) observed at another resolution and S/N: every step observes a batch of the "
                    "grid's labelled stars afresh (LSF, pixels, RV, vsini, continuum, noise, masks). Modes: head (the output "
                    "head only), adapters (residual adapters after every block, and the head), lora (low-rank updates of the "
                    "dense kernels, merged at the end, and the head), full (every parameter), scratch (a fresh network of the "
                    "same architecture). Writes the adapted encoder to OUT (encoder.json + arrays.npz); `stellarfit predict "
                    "--encoder OUT` reads it. See docs/guide/encoder.md.")
    parser.add_argument("--encoder", default="payne-default-sim",
                        help="the encoder to adapt: a shipped name or a directory (default: payne-default-sim)")
    parser.add_argument("--grid", required=True, help="HDF5 grid of labelled spectra with the encoder's labels (`stellarfit grid`)")
    parser.add_argument("--mode", choices=["head", "adapters", "lora", "full", "scratch"], default="lora", help="what is trained (default lora)")
    parser.add_argument("--part", choices=["all", "train"], default="all",
                        help="the grid's spectra to adapt on: all, or the train part of the 80/10/10 split that `stellarfit "
                             "train` uses (keeps its validation and test parts out; default all)")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the 80/10/10 split (with --part train; default 0)")
    parser.add_argument("--resolution", type=float, default=None,
                        help="the survey's resolving power R; spectra are observed at 0.95-1.05 R (default: the encoder's training range)")
    parser.add_argument("--snr", type=float, nargs=2, default=None, metavar=("MIN", "MAX"),
                        help="S/N per pixel range, log-uniform (default: the encoder's training range)")
    parser.add_argument("--rv-max", type=float, default=None, help="largest |RV| [km/s] (default: the encoder's training range)")
    parser.add_argument("--steps", type=int, default=500, help="optimizer steps (default 500)")
    parser.add_argument("--batch-size", type=int, default=32, help="spectra per step (default 32)")
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="peak learning rate (default per mode: head 3e-3, adapters 1e-3, lora 1e-3, full 3e-4, scratch 1e-3)")
    parser.add_argument("--lora-rank", type=int, default=4, help="rank of the LoRA updates (default 4)")
    parser.add_argument("--adapter-width", type=int, default=16, help="hidden width of the residual adapters (default 16)")
    parser.add_argument("--seed", type=int, default=0, help="seeds new arrays and every batch (default 0)")
    parser.add_argument("--out", required=True, help="output directory of the adapted encoder")
    parser.add_argument("--overwrite", action="store_true", help="replace an encoder already in OUT")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout (the run's summary)")
    parser.set_defaults(func=_cmd_encoder_adapt)


def _simulation(encoder, args, window_log: float):
    """Survey B's SimulationSettings: the encoder's recorded ones with the options' changes, and token buckets that hold its spectra."""
    from stellarfit.encoders import SimulationSettings

    recorded = encoder.metadata.get("simulation")
    fields = {f.name for f in dataclasses.fields(SimulationSettings)}
    base = SimulationSettings(**{k: tuple(v) if isinstance(v, list) else v for k, v in (recorded or {}).items() if k in fields})
    changes = {}
    if args.resolution is not None:
        if args.resolution <= 0:
            raise UsageError(f"--resolution must be positive, got {args.resolution}")
        changes["resolution_range"] = (0.95 * args.resolution, 1.05 * args.resolution)
    if args.snr is not None:
        if not 0 < args.snr[0] <= args.snr[1]:
            raise UsageError(f"--snr needs 0 < MIN <= MAX, got {args.snr}")
        changes["snr_range"] = tuple(args.snr)
    if args.rv_max is not None:
        changes["rv_range"] = (-abs(args.rv_max), abs(args.rv_max))
    simulation = dataclasses.replace(base, **changes)
    needed = int(np.ceil(window_log * simulation.resolution_range[1] * simulation.pixels_per_fwhm_range[1] / encoder.config.patch_size))
    if needed > max(simulation.token_buckets):
        simulation = dataclasses.replace(simulation, token_buckets=(*simulation.token_buckets, 16 * -(-needed // 16)))
    return simulation


def _cmd_encoder_adapt(args: argparse.Namespace) -> int:
    from stellarfit.encoders import AdaptSettings, EncoderFileError, GridSpectra, adapt_encoder, load_encoder
    from stellarfit.grids import GridFormatError, SpectralGrid

    out = Path(args.out)
    if (out / "encoder.json").exists() and not args.overwrite:
        raise UsageError(f"{out} already holds an encoder; add --overwrite to replace it")
    try:
        encoder = load_encoder(args.encoder)
    except (FileNotFoundError, EncoderFileError) as error:
        raise UsageError(f"cannot load the encoder: {error}") from None
    try:
        grid = SpectralGrid.read(args.grid)
    except (OSError, GridFormatError) as error:
        raise UsageError(f"cannot read the grid {args.grid}: {error}") from None
    rows = None
    if args.part == "train":
        rows = np.sort(grid.split((0.8, 0.1, 0.1), seed=args.split_seed)[0])
    try:
        source = GridSpectra.from_grid(grid, rows)
        settings = AdaptSettings(mode=args.mode, steps=args.steps, batch_size=args.batch_size, learning_rate=args.learning_rate,
                                 lora_rank=args.lora_rank, adapter_width=args.adapter_width, seed=args.seed, progress=not args.no_progress)
        simulation = _simulation(encoder, args, float(np.log(grid.wavelength[-1] / grid.wavelength[0])))
        start = time.perf_counter()
        adapted, history = adapt_encoder(encoder, source, settings, simulation=simulation)
    except ValueError as error:
        raise UsageError(str(error)) from None
    adapted.metadata["source"]["name"] = os.path.basename(args.grid)
    adapted.metadata["adapted_from"] = {**(adapted.metadata.get("adapted_from") or {}), "encoder": args.encoder}
    adapted.save(out, overwrite=args.overwrite)
    summary = {"encoder": str(out), "adapted_from": args.encoder, "mode": args.mode, "grid": args.grid, "n_spectra": len(source),
               "steps": args.steps, "seconds": time.perf_counter() - start,
               "final_loss": float(np.mean([h["loss"] for h in history[-20:]])) if history else None,
               "n_trained_parameters": adapted.metadata["adaptation"]["n_trained_parameters"],
               "resolution_range": list(adapted.resolution_range), "wavelength_range": list(adapted.wavelength_range)}
    _log(f"adapted encoder written to {out} ({args.mode}, {len(source)} labelled spectra, {args.steps} steps, {summary['seconds']:.0f} s)")
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{out}: mode {args.mode}, {len(source)} spectra, final loss {summary['final_loss']}, "
              f"{summary['n_trained_parameters']} trained parameters")
    return 0
