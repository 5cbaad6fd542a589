"""The attention study: maps + pixel elements -> the numbers of ``attention.json``.

:func:`analyze_transformer_payne` and :func:`analyze_encoder` compute the maps
(:mod:`stellarfit.attention._maps`), group the pixels by element
(:mod:`stellarfit.attention._elements`) and reduce them to enrichment ratios and
correlations (:mod:`stellarfit.attention._enrichment`).  Each returns a JSON-able summary
and the arrays the figures draw.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from stellarfit.attention._elements import LABEL_ELEMENTS, assign_pixel_elements
from stellarfit.attention._enrichment import enrichment, enrichment_matrix, pixel_correlation, shift_baseline
from stellarfit.attention._maps import encoder_attention, flux_jacobian, transformer_payne_attention

__all__ = ["SOLAR_LABELS", "analyze_encoder", "analyze_transformer_payne", "element_groups", "simulate_spectrum"]

#: the default labels: the Sun (Teff 5772 K, IAU 2015 B3), logg 4.44, vmic 1.0 km/s, solar abundances
SOLAR_LABELS = {"teff": 5772.0, "logg": 4.44, "vmic": 1.0, "fe_h": 0.0, "alpha_fe": 0.0, "mg_fe": 0.0, "si_fe": 0.0,
                "ca_fe": 0.0, "ti_fe": 0.0, "na_fe": 0.0, "ni_fe": 0.0, "cr_fe": 0.0, "mn_fe": 0.0}


def element_groups(label_names) -> list[str]:
    """The element groups reported: the label elements present (Fe first), then "lines" and "continuum"."""
    elements = [LABEL_ELEMENTS[name] for name in label_names if name in LABEL_ELEMENTS]
    return [*dict.fromkeys(elements), "lines", "continuum"]


def _rounded(value, digits: int = 4):
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return None
    return round(float(value), digits)


def analyze_transformer_payne(emulator, labels: Mapping[str, float], *, resolution: float | None = None,
                              threshold: float | None = None, seed: int = 0, progress=None) -> tuple[dict, dict]:
    """Attention over the parameter tokens and d flux / d label of a TransformerPayne, grouped by element.

    Returns:
        (summary, arrays): the JSON-able summary (see docs/guide/attention.md) and the arrays
        ``wavelength``, ``flux``, ``weights`` (L, H, W, T), ``jacobian`` (n_labels, W),
        ``elements`` (:class:`PixelElements`), ``token_share`` (T, n_labels).
    """
    say = progress or (lambda message: None)
    resolution = float(resolution or emulator.native_resolution or 30000.0)
    say(f"attention weights over {emulator.n_pixels} pixels")
    attention = transformer_payne_attention(emulator, labels)
    reference = emulator.predict(labels, check_bounds=False)[0]
    say(f"d flux / d label ({emulator.n_labels} labels, forward mode)")
    jacobian = flux_jacobian(emulator, labels)
    options = {} if threshold is None else {"threshold": threshold}
    elements = assign_pixel_elements(emulator.wavelength, resolution, labels=labels, **options)
    n_layers, n_heads, n_pixels, n_tokens = attention.weights.shape
    maps = attention.weights.transpose(0, 1, 3, 2).reshape(-1, n_pixels)  # (L*H*T, W), index (l, h, t)
    gradient = np.abs(jacobian)
    names = list(emulator.label_names)
    groups = element_groups(names)
    token_share = attention.token_sensitivity / attention.token_sensitivity.sum(axis=1, keepdims=True)

    def where(index: int) -> dict:
        layer, rest = divmod(int(index), n_heads * n_tokens)
        head, token = divmod(rest, n_tokens)
        return {"layer": layer, "head": head, "token": token}

    gradient_enrichment = {name: {g: _rounded(enrichment(gradient[i], elements.mask(g))) for g in groups}
                           for i, name in enumerate(names)}
    own = {}
    for i, name in enumerate(names):
        if name in LABEL_ELEMENTS:
            element = LABEL_ELEMENTS[name]
            mask = elements.mask(element)
            base = shift_baseline(gradient[i], mask, seed=seed)
            own[name] = {"element": element, "n_pixels": int(mask.sum()),
                         "enrichment": _rounded(enrichment(gradient[i], mask)),
                         "enrichment_over_line_pixels": _rounded(_ratio(enrichment(gradient[i], mask),
                                                                        enrichment(gradient[i], elements.mask("lines")))),
                         "shift_baseline": _round_dict(base)}
    per_map = {}
    attention_summary = {}
    line_enrichment = enrichment_matrix(maps, elements.mask("lines"))
    for g in groups:
        mask = elements.mask(g)
        values = enrichment_matrix(maps, mask)
        per_map[g] = np.round(values.reshape(n_layers, n_heads, n_tokens), 4).tolist()
        entry = {"n_pixels": int(mask.sum())}
        if np.all(np.isnan(values)):
            attention_summary[g] = {**entry, "best": None, "note": "too few pixels"}
            continue
        best = int(np.nanargmax(values))
        entry.update(best={**where(best), "enrichment": _rounded(values[best]),
                           "enrichment_over_line_pixels": _rounded(values[best] / line_enrichment[best])},
                     median_over_maps=_rounded(np.nanmedian(values)), lowest=_rounded(np.nanmin(values)))
        if g not in ("lines", "continuum"):
            entry["shift_baseline_of_best"] = _round_dict(shift_baseline(maps, mask, seed=seed, reduce="max"))
        attention_summary[g] = entry
    depth = 1.0 - attention.flux[None]
    correlation = pixel_correlation(maps, gradient)
    depth_correlation = pixel_correlation(maps, depth)[:, 0]
    gradient_depth = pixel_correlation(gradient, depth)[:, 0]
    correlations = {}
    for i, name in enumerate(names):
        column = correlation[:, i]
        best = int(np.nanargmax(np.abs(column)))
        correlations[name] = {"strongest": _rounded(column[best], 3), "at": where(best),
                              "median_abs": _rounded(np.nanmedian(np.abs(column)), 3),
                              "gradient_vs_line_depth": _rounded(gradient_depth[i], 3)}
    best_depth = int(np.nanargmax(np.abs(depth_correlation)))
    summary = {
        "n_layers": n_layers, "n_heads": n_heads, "n_tokens": n_tokens, "n_pixels": n_pixels,
        "wavelength_range": [float(emulator.wavelength[0]), float(emulator.wavelength[-1])],
        "flux_max_abs_difference_from_predict": float(np.max(np.abs(attention.flux - reference))),
        "tokens_mix_labels": {
            "token_label_share": np.round(token_share, 4).tolist(),
            "largest_share_per_token": np.round(token_share.max(axis=1), 4).tolist(),
            "label_of_largest_share": [names[j] for j in token_share.argmax(axis=1)],
            "note": "share of each label in the RMS of d token / d scaled label (rows: tokens, columns: labels in "
                    "label order); a token made from one label would have a share of 1",
        },
        "gradient_enrichment": gradient_enrichment,
        "gradient_own_element": own,
        "attention_enrichment": attention_summary,
        "attention_enrichment_per_map": {"axes": ["layer", "head", "token"], **per_map},
        "attention_gradient_correlation": correlations,
        "attention_line_depth_correlation": {"strongest": _rounded(depth_correlation[best_depth], 3),
                                             "at": where(best_depth),
                                             "median_abs": _rounded(np.nanmedian(np.abs(depth_correlation)), 3)},
    }
    arrays = {"wavelength": np.asarray(emulator.wavelength), "flux": attention.flux, "weights": attention.weights,
              "jacobian": jacobian, "elements": elements, "token_share": token_share, "label_names": names}
    return summary, arrays


def _ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def _round_dict(values: dict) -> dict:
    return {k: (_rounded(v) if isinstance(v, float) else v) for k, v in values.items()}


def simulate_spectrum(emulator, labels: Mapping[str, float], *, snr: float = 100.0, seed: int = 0):
    """An ObservedSpectrum from ``emulator`` at ``labels`` on its native grid, at its native R, with
    Gaussian noise of S/N ``snr`` per pixel (seeded)."""
    from stellarfit.spectra import ObservedSpectrum

    flux = emulator.predict(labels, check_bounds=False)[0].astype(np.float64)
    rng = np.random.default_rng(seed)
    sigma = np.full_like(flux, 1.0 / snr)
    noisy = flux + sigma * rng.standard_normal(flux.size)
    return ObservedSpectrum(np.asarray(emulator.wavelength, np.float64), noisy, 1.0 / sigma**2,
                            resolution=float(emulator.native_resolution or 30000.0),
                            metadata={"source": "simulated", "snr": snr, "seed": seed})


def analyze_encoder(encoder, spectrum, labels: Mapping[str, float], *, threshold: float | None = None,
                    seed: int = 0) -> tuple[dict, dict]:
    """Where each label query of ``encoder`` looks on ``spectrum`` (last cross block, mean over heads).

    The token weights are spread evenly over each token's pixels (a token is a patch of
    ``patch_size`` pixels), so enrichment ratios are on the pixels like the TransformerPayne's.
    Returns (summary, arrays) like :func:`analyze_transformer_payne`.
    """
    attention = encoder_attention(encoder, spectrum)
    info = attention.info
    if "degraded_to_resolution" in info:
        resolution = float(info["degraded_to_resolution"])
    elif spectrum.resolution is not None:
        resolution = float(np.median(spectrum.resolution))
    else:
        resolution = float(info["resolution_assumed"])
    options = {} if threshold is None else {"threshold": threshold}
    elements = assign_pixel_elements(attention.pixel_wavelength, resolution, labels=labels, **options)
    patch = encoder.config.patch_size
    pixel_maps = attention.weights[:, attention.pixel_token] / patch  # (n_outputs, n_pixels)
    groups = element_groups(encoder.label_spec.names)
    queries = {}
    for q, name in enumerate(attention.output_names):
        row = pixel_maps[q]
        entry = {"enrichment": {g: _rounded(enrichment(row, elements.mask(g))) for g in groups}}
        if name in LABEL_ELEMENTS:
            element = LABEL_ELEMENTS[name]
            mask = elements.mask(element)
            entry.update(element=element, n_pixels=int(mask.sum()),
                         own_element=_rounded(enrichment(row, mask)),
                         own_element_over_line_pixels=_rounded(_ratio(enrichment(row, mask), enrichment(row, elements.mask("lines")))),
                         shift_baseline=_round_dict(shift_baseline(row, mask, seed=seed)))
        real = attention.token_mask
        entry["top_tokens_angstrom"] = [round(float(attention.token_wavelength[t]), 2)
                                        for t in np.argsort(-np.where(real, attention.weights[q], -1))[:5]]
        entry["weight_of_top_5_tokens"] = _rounded(np.sort(attention.weights[q][real])[::-1][:5].sum())
        queries[name] = entry
    # is a query's weight on its element its own, or do all queries look there? (ratio to the other label queries' median)
    for name, entry in queries.items():
        if entry.get("own_element") is not None:
            others = [q["enrichment"].get(entry["element"]) for other, q in queries.items()
                      if other != name and other in encoder.label_spec.names]
            others = [v for v in others if v is not None]
            entry["own_element_over_other_queries_median"] = _rounded(entry["own_element"] / np.median(others)) if others else None
    summary = {
        "n_tokens": int(attention.token_mask.sum()), "patch_size": patch, "n_heads": int(attention.weights_per_head.shape[0]),
        "block": "last cross-attention block, mean over heads",
        "n_pixels": int(attention.pixel_wavelength.size), "resolution": resolution,
        "pixel_element_counts": elements.counts(),
        "spectrum_info": info,
        "queries": queries,
    }
    arrays = {"attention": attention, "elements": elements, "pixel_maps": pixel_maps}
    return summary, arrays
