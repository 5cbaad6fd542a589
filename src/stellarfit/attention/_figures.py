"""Figures of the attention study (matplotlib, Agg backend, PNG): one function per figure.

Every figure marks the element of each pixel's strongest line as a coloured band
(:mod:`stellarfit.attention._elements`); wavelengths are vacuum A.
"""

from __future__ import annotations

import numpy as np

__all__ = ["plot_encoder_queries", "plot_enrichment", "plot_gradient_map", "plot_transformer_payne_attention", "plot_zoom"]

#: colours of the element bands (others: grey)
ELEMENT_COLOURS = {"Fe": "tab:red", "Ti": "tab:blue", "Cr": "tab:green", "Ni": "tab:purple", "Ca": "tab:orange",
                   "Mg": "tab:cyan", "Na": "gold", "Mn": "tab:brown", "Si": "tab:pink"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _bin(values: np.ndarray, n_bins: int) -> np.ndarray:
    """Mean over ``n_bins`` contiguous bins of the last axis (for images wider than the figure)."""
    n = values.shape[-1]
    if n <= n_bins:
        return values
    edges = np.linspace(0, n, n_bins + 1).astype(int)
    return np.stack([values[..., a:b].mean(axis=-1) for a, b in zip(edges[:-1], edges[1:])], axis=-1)


def _element_band(ax, elements) -> list:
    """Coloured bands where the pixels' strongest line is of a coloured element; a legend."""
    from stellarfit.synth.abundances import ELEMENT_SYMBOLS

    wavelength = elements.wavelength
    ax.set_yticks([])
    ax.set_xlim(wavelength[0], wavelength[-1])
    shown = set()
    for z in np.unique(elements.atomic_number):
        if z == 0:
            continue
        symbol = ELEMENT_SYMBOLS[z - 1]
        colour = ELEMENT_COLOURS.get(symbol, "0.7")
        mask = elements.atomic_number == z
        ax.vlines(wavelength[mask], 0, 1, colors=colour, linewidth=0.6)
        if symbol in ELEMENT_COLOURS:
            shown.add(symbol)
    handles = [_patch(ELEMENT_COLOURS[s], s) for s in ELEMENT_COLOURS if s in shown] + [_patch("0.7", "other")]
    ax.legend(handles=handles, ncol=len(handles), fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -1.1), frameon=False)
    ax.set_ylabel("element", fontsize=6, rotation=0, ha="right", va="center")
    return handles


def _patch(colour, label):
    from matplotlib.patches import Patch

    return Patch(color=colour, label=label)


def plot_transformer_payne_attention(path, weights: np.ndarray, elements, *, n_bins: int = 600, dpi: int = 70) -> str:
    """A panel per layer (rows) and head (columns): attention over the tokens (y) against wavelength (x).

    weights: (n_layers, n_heads, n_pixels, n_tokens); the colour is the weight, binned to ``n_bins``
    wavelength bins; the last row is the element bands.
    """
    plt = _pyplot()
    n_layers, n_heads, _, n_tokens = weights.shape
    wavelength = elements.wavelength
    fig = plt.figure(figsize=(2.6 * n_heads + 0.6, 0.9 * n_layers + 1.2))
    grid = fig.add_gridspec(n_layers + 1, n_heads, height_ratios=[1] * n_layers + [0.35], hspace=0.15, wspace=0.06)
    vmax = float(np.percentile(weights, 99.5))
    image = None
    for layer in range(n_layers):
        for head in range(n_heads):
            ax = fig.add_subplot(grid[layer, head])
            binned = _bin(np.moveaxis(weights[layer, head], 0, -1), n_bins)  # (tokens, bins)
            image = ax.imshow(binned, aspect="auto", origin="lower", interpolation="nearest", vmin=0, vmax=vmax,
                              extent=(wavelength[0], wavelength[-1], -0.5, n_tokens - 0.5), cmap="viridis")
            ax.set_xticks([])
            ax.set_yticks([0, n_tokens - 1] if head == 0 else [])
            ax.tick_params(labelsize=6)
            if head == 0:
                ax.set_ylabel(f"layer {layer}\ntoken", fontsize=6)
            if layer == 0:
                ax.set_title(f"head {head}", fontsize=8)
    for head in range(n_heads):
        ax = fig.add_subplot(grid[n_layers, head])
        handles = _element_band_quiet(ax, elements)
        if head == 0:
            ax.set_ylabel("element", fontsize=6, rotation=0, ha="right", va="center")
        ax.tick_params(labelsize=6)
        ax.set_xlabel("vacuum wavelength [A]", fontsize=7)
    fig.colorbar(image, ax=fig.axes, fraction=0.015, pad=0.01).ax.tick_params(labelsize=6)
    fig.legend(handles=handles, ncol=len(handles), fontsize=7, loc="lower center", bbox_to_anchor=(0.5, -0.03), frameon=False)
    fig.suptitle("TransformerPayne: attention of each pixel over the parameter tokens (per layer and head)", fontsize=9)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return str(path)


def _element_band_quiet(ax, elements) -> list:
    handles = _element_band(ax, elements)
    legend = ax.get_legend()
    if legend is not None:
        legend.remove()
    ax.set_ylabel("")
    return handles


def plot_gradient_map(path, jacobian: np.ndarray, label_names, elements, *, n_bins: int = 900, dpi: int = 80) -> str:
    """|d flux / d label| per label (rows, each scaled to its own maximum) against wavelength."""
    plt = _pyplot()
    gradient = np.abs(np.asarray(jacobian))
    binned = _bin(gradient, n_bins)
    binned = binned / np.maximum(binned.max(axis=1, keepdims=True), 1e-30)
    wavelength = elements.wavelength
    fig, (ax, band) = plt.subplots(2, 1, figsize=(10, 0.28 * len(label_names) + 1.6), sharex=True,
                                   gridspec_kw={"height_ratios": [len(label_names), 1.2]})
    ax.imshow(binned, aspect="auto", origin="upper", interpolation="nearest", cmap="magma",
              extent=(wavelength[0], wavelength[-1], len(label_names) - 0.5, -0.5))
    ax.set_yticks(range(len(label_names)), label_names, fontsize=7)
    ax.set_title("|d flux / d label| (each row scaled to its maximum)", fontsize=9)
    _element_band(band, elements)
    band.set_xlabel("vacuum wavelength [A]", fontsize=8)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return str(path)


def plot_zoom(path, wavelength, flux, curves: dict, elements, window: tuple[float, float], *, dpi: int = 90) -> str:
    """A zoom on ``window``: the flux, each curve of ``curves`` ({label: (n_pixels,)}, scaled to its
    maximum in the window) and the element bands."""
    plt = _pyplot()
    inside = (wavelength >= window[0]) & (wavelength <= window[1])
    fig, axes = plt.subplots(len(curves) + 2, 1, figsize=(9, 1.1 * (len(curves) + 2) + 0.4), sharex=True,
                             gridspec_kw={"height_ratios": [2] + [1] * len(curves) + [0.5]})
    axes[0].plot(wavelength[inside], flux[inside], "k-", lw=0.8)
    axes[0].set_ylabel("flux", fontsize=7)
    for ax, (label, values) in zip(axes[1:-1], curves.items()):
        part = np.asarray(values)[inside]
        ax.plot(wavelength[inside], part / max(float(np.max(part)), 1e-30), lw=0.8)
        ax.set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
        ax.set_yticks([])
    band = axes[-1]
    from stellarfit.attention._elements import PixelElements

    sub = PixelElements(elements.wavelength[inside], elements.atomic_number[inside], elements.strength[inside],
                        elements.line_wavelength[inside], elements.threshold)
    _element_band(band, sub)
    band.set_xlabel("vacuum wavelength [A]", fontsize=8)
    for ax in axes:
        ax.tick_params(labelsize=7)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return str(path)


def plot_encoder_queries(path, attention, elements, *, dpi: int = 80) -> str:
    """Each label query's attention (last cross block, mean over heads) over the tokens, against wavelength."""
    plt = _pyplot()
    names = attention.output_names
    real = attention.token_mask
    fig, axes = plt.subplots(len(names) + 1, 1, figsize=(10, 0.55 * len(names) + 1.2), sharex=True,
                             gridspec_kw={"height_ratios": [1] * len(names) + [0.6]})
    for ax, name, row in zip(axes, names, attention.weights):
        ax.plot(attention.token_wavelength[real], row[real], lw=0.7, drawstyle="steps-mid")
        ax.axhline(1.0 / max(int(real.sum()), 1), color="0.6", lw=0.5, ls="--")
        ax.set_ylabel(name, fontsize=7, rotation=0, ha="right", va="center")
        ax.set_yticks([])
    _element_band(axes[-1], elements)
    axes[-1].set_xlabel("vacuum wavelength [A]", fontsize=8)
    axes[0].set_title("encoder: attention of each label query over the patch tokens (dashed: uniform)", fontsize=9)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return str(path)


def plot_enrichment(path, rows: list[tuple[str, dict]], *, dpi: int = 90) -> str:
    """Bars of enrichment per element; ``rows`` = [(element, {series name: value or None})]."""
    plt = _pyplot()
    series = list(dict.fromkeys(name for _, values in rows for name in values))
    fig, ax = plt.subplots(figsize=(1.0 * len(rows) + 2.5, 3.2))
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(rows))
    for i, name in enumerate(series):
        values = [values.get(name) for _, values in rows]
        heights = [v if v is not None else 0.0 for v in values]
        ax.bar(x + (i - (len(series) - 1) / 2) * width, heights, width, label=name)
    ax.axhline(1.0, color="k", lw=0.6, ls="--")
    ax.set_yscale("log")
    ax.set_xticks(x, [element for element, _ in rows], fontsize=8)
    ax.set_ylabel("enrichment (1 = random wavelengths)", fontsize=8)
    ax.legend(fontsize=6)
    ax.tick_params(labelsize=7)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return str(path)
