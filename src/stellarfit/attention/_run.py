"""``run_attention``: the whole study for one emulator (and optionally one encoder) into a directory.

Writes ``attention.json`` (:func:`stellarfit._io.write_json_atomic`) and the PNG figures; the
command ``stellarfit attention`` is a thin layer over it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

import numpy as np

from stellarfit._io import to_jsonable, write_json_atomic
from stellarfit.attention import _figures as figures
from stellarfit.attention._analysis import SOLAR_LABELS, analyze_encoder, analyze_transformer_payne, simulate_spectrum
from stellarfit.attention._elements import DEFAULT_STRENGTH_THRESHOLD, LABEL_ELEMENTS
from stellarfit.synth.abundances import SOLAR_SCALE

__all__ = ["ATTENTION_SCHEMA_VERSION", "default_labels", "run_attention"]

ATTENTION_SCHEMA_VERSION = 1

PROXY = ("each pixel takes the element of the strongest line of the shipped Gaia-ESO line list (air wavelengths "
         "converted to vacuum) within +-1 FWHM (lambda/R) of it; strength = log gf + A(X) - (5040 K/Teff) chi_lower, "
         "A(X) solar plus [Fe/H] and [X/Fe]; the ionization balance is ignored (neutral and ionized lines both use the "
         "element's total abundance); strongest line below the threshold: continuum")
ENRICHMENT = ("mean of the map on the element's pixels / mean of the map over all pixels: 1 = what pixels at random "
              "wavelengths get; shift_baseline: the same with the element's pixel set circularly shifted to 200 random "
              "places (fraction_random_at_least_observed ~ a p-value)")


def default_labels(emulator, overrides: Mapping[str, float] | None = None) -> dict[str, float]:
    """The Sun (:data:`SOLAR_LABELS`) for the emulator's labels, the middle of the box for labels the Sun
    table does not name, then ``overrides`` (unknown names: ValueError naming the valid ones)."""
    labels = {}
    for label in emulator.label_spec:
        labels[label.name] = SOLAR_LABELS.get(label.name, 0.5 * (label.lower + label.upper))
    for name, value in (overrides or {}).items():
        if name not in labels:
            raise ValueError(f"unknown label {name!r}; this emulator's labels are {', '.join(labels)}")
        labels[name] = float(value)
    return labels


def run_attention(emulator, out_dir, *, labels: Mapping[str, float] | None = None, encoder=None, spectrum=None,
                  emulator_name: str | None = None, threshold: float = DEFAULT_STRENGTH_THRESHOLD, seed: int = 0,
                  spectrum_emulator=None, spectrum_emulator_name: str | None = None, progress: Callable[[str], None] | None = None) -> dict:
    """Attention maps of a TransformerPayne (and of an encoder) with the enrichment numbers, into ``out_dir``.

    Args:
        emulator: a TransformerPayneEmulator.
        out_dir: directory for ``attention.json`` and ``attention_*.png`` (created).
        labels: physical labels (default :func:`default_labels`: the Sun).
        encoder: an optional :class:`stellarfit.encoders.Encoder`.
        spectrum: an ObservedSpectrum for the encoder (default: simulated at ``labels`` from
            ``spectrum_emulator``, S/N 100, seed ``seed``).
        spectrum_emulator: the emulator that simulates the encoder's spectrum (default ``emulator``);
            ``spectrum_emulator_name`` is recorded with it.
        threshold: line-strength threshold of the pixel elements (dex).
        progress: called with a line of text at each step.
    Returns:
        the document written to ``attention.json`` (with ``figures``: the PNG paths).
    """
    say = progress or (lambda message: None)
    os.makedirs(out_dir, exist_ok=True)
    labels = default_labels(emulator, labels)
    summary, arrays = analyze_transformer_payne(emulator, labels, threshold=threshold, seed=seed, progress=say)
    elements = arrays["elements"]
    document = {
        "format": "stellarfit-attention", "schema_version": ATTENTION_SCHEMA_VERSION,
        "emulator": emulator_name, "labels": labels, "seed": seed,
        "pixel_elements": {"method": PROXY, "threshold": threshold, "resolution": float(emulator.native_resolution or 30000.0),
                           "solar_scale": SOLAR_SCALE, "ionization_balance": "ignored", "counts": elements.counts()},
        "enrichment_definition": ENRICHMENT,
        "transformer_payne": summary,
    }
    say("figures")
    paths = {"transformer_payne_attention": figures.plot_transformer_payne_attention(
        os.path.join(out_dir, "attention_transformer_payne.png"), arrays["weights"], elements)}
    paths["gradient"] = figures.plot_gradient_map(os.path.join(out_dir, "attention_gradient.png"), arrays["jacobian"],
                                                  arrays["label_names"], elements)
    zoom = _zoom_window(arrays["wavelength"], elements)
    curves = _zoom_curves(summary, arrays)
    paths["zoom"] = figures.plot_zoom(os.path.join(out_dir, "attention_zoom.png"), arrays["wavelength"], arrays["flux"],
                                      curves, elements, zoom)
    bars = _enrichment_rows(summary)
    if encoder is not None:
        say("encoder attention")
        if spectrum is None:
            spectrum = simulate_spectrum(spectrum_emulator or emulator, labels, seed=seed)
            source = {"simulated_from": spectrum_emulator_name if spectrum_emulator is not None else emulator_name,
                      "snr": 100.0, "seed": seed}
        else:
            source = {"file": str(spectrum.metadata.get("source", "")) if spectrum.metadata else ""}
        encoder_summary, encoder_arrays = analyze_encoder(encoder, spectrum, labels, threshold=threshold, seed=seed)
        document["encoder"] = {"spectrum": source, **encoder_summary}
        paths["encoder"] = figures.plot_encoder_queries(os.path.join(out_dir, "attention_encoder.png"),
                                                        encoder_arrays["attention"], encoder_arrays["elements"])
        for element, values in bars:
            name = next((n for n, e in LABEL_ELEMENTS.items() if e == element), None)
            query = encoder_summary["queries"].get(name, {})
            values["encoder query"] = query.get("own_element")
    paths["enrichment"] = figures.plot_enrichment(os.path.join(out_dir, "attention_enrichment.png"), bars)
    document["figures"] = {key: os.path.basename(path) for key, path in paths.items()}
    write_json_atomic(os.path.join(out_dir, "attention.json"), to_jsonable(document))
    return document


def _zoom_window(wavelength: np.ndarray, elements) -> tuple[float, float]:
    """30 A around Mg b (5183.6 A air ~ 5185.0 vacuum) when inside, else the middle 30 A."""
    centre = 5180.0 if wavelength[0] + 15 <= 5180.0 <= wavelength[-1] - 15 else 0.5 * (wavelength[0] + wavelength[-1])
    half = min(15.0, 0.5 * (wavelength[-1] - wavelength[0]))
    return centre - half, centre + half


def _zoom_curves(summary: dict, arrays: dict) -> dict:
    """The zoom's curves: |dF/d mg_fe| (or the first label), and the attention map most enriched on Mg (or Fe)."""
    names = arrays["label_names"]
    label = "mg_fe" if "mg_fe" in names else names[0]
    curves = {f"|dF/d {label}|": np.abs(arrays["jacobian"][names.index(label)])}
    for element in ("Mg", "Fe", "lines"):
        best = (summary["attention_enrichment"].get(element) or {}).get("best")
        if best:
            w = arrays["weights"][best["layer"], best["head"], :, best["token"]]
            curves[f"attn L{best['layer']} H{best['head']} T{best['token']}\n(most on {element})"] = w
            break
    return curves


def _enrichment_rows(summary: dict) -> list[tuple[str, dict]]:
    rows = []
    for name, own in summary["gradient_own_element"].items():
        element = own["element"]
        attention = summary["attention_enrichment"].get(element, {})
        best = attention.get("best") or {}
        base = attention.get("shift_baseline_of_best") or {}
        rows.append((element, {"|dF/d [X/Fe]| (gradient)": own["enrichment"],
                               "best TP head/token": best.get("enrichment"),
                               "best head/token, random shift p95": base.get("random_p95")}))
    return rows
