"""What the ``stellarfit`` subcommands share: the usage error, logging to stderr, label and window
options, the synthesis engine and emulator options, and checks of output paths."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


from stellarfit.labels import default_label_spec


class UsageError(Exception):
    """Bad usage or bad input: exit code 2."""


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_label_options(parser: argparse.ArgumentParser, *, required=("teff", "logg", "fe_h")) -> None:
    group = parser.add_argument_group("stellar labels (default model)")
    for label in default_label_spec():
        group.add_argument(
            _option(label.name),
            dest=label.name,
            type=float,
            required=label.name in required,
            metavar=label.unit.upper().replace("/", "_") or "VALUE",
            help=f"{label.description} [{label.unit}], grid range {label.lower:g}..{label.upper:g}",
        )


def _add_window_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--window", nargs=2, type=float, metavar=("LO", "HI"), default=(5000.0, 5500.0),
                        help="wavelength window of the output pixels [A, vacuum] (default 5000 5500)")
    parser.add_argument("--resolution", type=float, default=30_000.0,
                        help="resolving power of the Gaussian LSF (default 30000)")
    parser.add_argument("--sampling", type=float, default=3.0,
                        help="pixels per resolution element (default 3)")
    parser.add_argument("--engine", choices=["turbospectrum", "jax"], default="turbospectrum",
                        help="synthesis engine: turbospectrum (realistic) or jax (simple physics)")
    parser.add_argument("--step", type=float, default=None,
                        help="native synthesis step [A] (engine default: 0.01 for turbospectrum)")
    parser.add_argument("--linelist", default=None,
                        help="Turbospectrum-format line list (default: the shipped Gaia-ESO subset, 4950-5550 A air; "
                             "'astro': that subset with the shipped astrophysical log gf corrections)")


def _engine_from_args(args: argparse.Namespace):
    from stellarfit.synth.engines import make_engine

    config = {"window": tuple(args.window), "resolution": args.resolution, "sampling": args.sampling}
    if args.step is not None:
        config["step"] = args.step
    if args.linelist is not None:
        config["linelist"] = args.linelist
    try:
        return make_engine(args.engine, **config)
    except (ValueError, FileNotFoundError) as error:
        raise UsageError(str(error)) from None


def _check_writable(path: Path) -> None:
    directory = path.expanduser().resolve().parent
    if not directory.is_dir():
        raise UsageError(f"cannot write {path}: the directory {directory} does not exist")
    if not os.access(directory, os.W_OK):
        raise UsageError(f"cannot write {path}: the directory {directory} is not writable")


def _load_emulator_option(name: str, *, fitting: bool = True):
    """The emulator named by --emulator (usage error if it cannot be loaded); for fits on a CPU
    with a TransformerPayne, a note on stderr that each spectrum costs ~0.2 s there."""
    import jax

    from stellarfit.emulators import CheckpointError, load_emulator

    try:
        emulator = load_emulator(name)
    except (CheckpointError, ValueError, FileNotFoundError, KeyError) as error:
        raise UsageError(f"cannot load emulator {name!r}: {error}") from None
    if fitting and emulator.model_type == "transformer_payne" and jax.default_backend() == "cpu":
        fast = emulator.metadata.get("fast_path")
        if fast:
            _log(f"note: {name!r} is a TransformerPayne (~0.2 s per spectrum on a CPU): each MAP starts from a fit with "
                 f"its fast path {fast!r} (a Payne distilled from it) and is polished with the TransformerPayne, "
                 f"~15-30 s per star here (--init none: the full multi-start search, minutes); NUTS samples "
                 f"{fast!r}'s posterior and moves it to the TransformerPayne's mode (--sample-with self: the "
                 f"TransformerPayne itself, hours on a CPU; use a GPU).")
        else:
            _log(f"note: {name!r} is a TransformerPayne; on a CPU each of its spectra costs ~0.2 s, so a MAP fit takes "
                 "minutes (NUTS hours). A GPU, or a Payne distilled from it (scripts/distill_emulator.py), keeps "
                 "its accuracy at speed.")
    return emulator
