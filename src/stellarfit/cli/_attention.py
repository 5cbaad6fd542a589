"""``stellarfit attention``: attention maps of a TransformerPayne (and an encoder) into a directory."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from stellarfit.cli._common import UsageError, _load_emulator_option, _log

__all__ = ["add_attention_parser"]

ENCODER_HELP = ("encoder whose label queries are mapped too: a shipped name (payne-default-sim) or a directory "
                "(encoder.json + arrays.npz) saved by training, docs/guide/encoder.md")


def add_attention_parser(commands) -> None:
    parser = commands.add_parser(
        "attention", help="attention maps of a TransformerPayne (and an encoder) against the line list, with numbers",
        description="Per-layer, per-head attention of a TransformerPayne's wavelength queries over its parameter tokens, "
                    "d flux / d label, and (with --encoder) where each label query of a spectrum encoder looks, grouped by "
                    "the element of the strongest line at each pixel. Writes OUT/attention.json (enrichment ratios: 1 = "
                    "random wavelengths) and OUT/attention_*.png. See docs/guide/attention.md.")
    parser.add_argument("--emulator", default="default", help="a TransformerPayne: shipped name or checkpoint path (default: default)")
    parser.add_argument("--encoder", default=None, help=ENCODER_HELP)
    parser.add_argument("--labels", default=None, metavar="NAME=VALUE,...",
                        help="labels to evaluate at (default: the Sun, teff 5772 logg 4.44 vmic 1.0, solar abundances), "
                             "e.g. teff=4300,logg=1.7,fe_h=-0.5")
    parser.add_argument("--spectrum", default=None, metavar="FILE",
                        help="spectrum file for the encoder (default: one simulated at the labels, S/N 100)")
    parser.add_argument("--spectrum-emulator", default="payne-default",
                        help="emulator that simulates the encoder's spectrum when no --spectrum is given "
                             "(default: payne-default, the encoder's training emulator)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="line-strength threshold [dex] below which a pixel is continuum (default 1.5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulated noise and of the random shifts")
    parser.add_argument("--out", required=True, help="output directory (created)")
    parser.add_argument("--json", action="store_true", help="print attention.json on stdout")
    parser.set_defaults(func=_cmd_attention)


def _parse_labels(text: str | None) -> dict[str, float]:
    labels = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            labels[name.strip()] = float(value)
        except ValueError:
            raise UsageError(f"--labels: {item!r} is not NAME=VALUE (e.g. --labels teff=4300,logg=1.7)") from None
    return labels


def _cmd_attention(args: argparse.Namespace) -> int:
    from stellarfit.attention import default_labels, run_attention
    from stellarfit.attention._elements import DEFAULT_STRENGTH_THRESHOLD

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    if not out.expanduser().resolve().parent.is_dir():
        raise UsageError(f"cannot write {out}: the directory {out.expanduser().resolve().parent} does not exist")
    encoder = None
    if args.encoder is not None:
        from stellarfit.encoders import SHIPPED_ENCODERS

        if args.encoder not in SHIPPED_ENCODERS and not os.path.isdir(args.encoder):
            raise UsageError(f"--encoder {args.encoder}: no such directory or shipped encoder ({', '.join(SHIPPED_ENCODERS)}). "
                             "Give one of those, or train an encoder (stellarfit.encoders.train_encoder; see "
                             "docs/guide/encoder.md) and give the directory it saved")
        from stellarfit.encoders import EncoderFileError, load_encoder

        try:
            encoder = load_encoder(args.encoder)
        except (FileNotFoundError, EncoderFileError) as error:
            raise UsageError(f"cannot load the encoder: {error} (see docs/guide/encoder.md)") from None
    if args.spectrum is not None and encoder is None:
        raise UsageError("--spectrum is read by the encoder: give --encoder DIR too")
    emulator = _load_emulator_option(args.emulator, fitting=False)
    if emulator.model_type != "transformer_payne":
        raise UsageError(f"--emulator {args.emulator} is a {emulator.model_type} emulator; attention maps over parameter "
                         "tokens need a TransformerPayne (e.g. --emulator default)")
    try:
        labels = default_labels(emulator, _parse_labels(args.labels))
    except ValueError as error:
        raise UsageError(f"--labels: {error}") from None
    problems = emulator.label_spec.violations(emulator.label_spec.to_array(labels))
    if problems:
        raise UsageError("--labels outside the emulator's training range: " + "; ".join(problems))
    spectrum = spectrum_emulator = None
    if encoder is not None:
        if args.spectrum is not None:
            from stellarfit.spectra import read_spectrum

            try:
                spectrum = read_spectrum(args.spectrum)
            except FileNotFoundError:
                raise UsageError(f"--spectrum {args.spectrum}: no such file") from None
            except (OSError, ValueError, KeyError) as error:
                raise UsageError(f"--spectrum {args.spectrum}: {error}") from None
            if isinstance(spectrum, list):
                spectrum = spectrum[0]
                _log(f"{args.spectrum} holds several spectra; using the first")
        else:
            spectrum_emulator = _load_emulator_option(args.spectrum_emulator, fitting=False)
    _log(f"attention maps of {args.emulator!r} at " + ", ".join(f"{k}={v:g}" for k, v in labels.items()))
    document = run_attention(emulator, str(out), labels=labels, encoder=encoder, spectrum=spectrum,
                             emulator_name=args.emulator, spectrum_emulator=spectrum_emulator,
                             spectrum_emulator_name=args.spectrum_emulator if spectrum_emulator is not None else None,
                             threshold=DEFAULT_STRENGTH_THRESHOLD if args.threshold is None else args.threshold,
                             seed=args.seed, progress=_log)
    if args.json:
        print(json.dumps(document))
    else:
        _print_summary(document, out)
    return 0


def _print_summary(document: dict, out: Path) -> None:
    tp = document["transformer_payne"]
    print(f"{'label':<8} {'element':<7} {'pixels':>6} {'|dF/dlabel|':>11} {'best attn':>9} {'shift p95':>9}")
    for name, own in tp["gradient_own_element"].items():
        attention = tp["attention_enrichment"].get(own["element"], {})
        best = (attention.get("best") or {}).get("enrichment")
        p95 = (attention.get("shift_baseline_of_best") or {}).get("random_p95")
        print(f"{name:<8} {own['element']:<7} {own['n_pixels']:>6} {_fmt(own['enrichment']):>11} {_fmt(best):>9} {_fmt(p95):>9}")
    if "encoder" in document:
        print("encoder queries (enrichment on their element's pixels):",
              ", ".join(f"{name} {_fmt(q.get('own_element'))} (x{_fmt(q.get('own_element_over_other_queries_median'))} "
                        "the other queries')" for name, q in document["encoder"]["queries"].items()
                        if "element" in q))
    print(f"wrote {out / 'attention.json'} and {len(document['figures'])} figures")


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.2f}"
