"""The fit report: one self-contained HTML file (PNG plots embedded as base64) for a :class:`~stellarfit.inference.FitResult`.

Sections (``id`` of each in the HTML in brackets):

1. summary (``summary``): per parameter the value, error, 16/84 (or -/+ sigma)
   interval, MAP and Cramér-Rao bound; chi2, S/N, flags by name, emulator,
   method and timing;
2. spectrum (``spectrum``): the observation and the model at the MAP against
   wavelength, the residuals normalized by sigma, (flux - model) * sqrt(ivar),
   and their distribution against a unit normal.  Masked pixels (ivar = 0) and
   wavelength gaps (between arms) are left blank;
3. zoom (``zoom``): the same on the region richest in strong lines (or ``zoom=(lo, hi)``);
4. NUTS fits: a corner plot (``corner``) of the posterior, trace and rank
   plots per chain (``trace``) for a few key parameters, and the sampler
   diagnostics (``diagnostics``): R-hat, bulk/tail ESS, Monte Carlo standard
   errors, divergences, tree-depth hits, step sizes, acceptance, cost;
   MAP fits: the correlation matrix of the Laplace covariance (``correlation``)
   and the multi-start diagnostics (``diagnostics``).

A fit can be saved with ``FitResult.save(path)`` and reported later from the
file (``stellarfit report FIT.fits --out report.html``): the report needs only
the result, not the emulator.  Plots use matplotlib's object API with the Agg
canvas (no pyplot, no global backend change), so they work headless; matplotlib
is the ``plots`` extra.
"""

from __future__ import annotations

import base64
import html
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stellarfit._io import atomic_path

__all__ = ["FitReport", "FLAG_DESCRIPTIONS", "corner_parameters", "fit_report", "require_matplotlib", "trace_parameters",
           "zoom_window"]

#: what each flag bit of :data:`stellarfit.inference.FLAGS` means
FLAG_DESCRIPTIONS = {
    "grid_edge": "a label is within 0.5% of the emulator's label box edge",
    "fit_failed": "the fit returned non-finite parameters",
    "low_snr": "median S/N per pixel below 10",
    "high_chi2": "reduced chi2 above 3 (model does not describe the data)",
    "not_converged": "the MAP optimizer did not meet its convergence criterion",
    "rv_edge": "RV within 0.5% of the edge of its box around the RV search",
    "sampler_warning": "NUTS: max R-hat > 1.05, min bulk ESS < 100 or > 1% divergent draws",
    "degraded_to_emulator_resolution": "the spectrum was sharper than the emulator and was degraded to its native R",
    "model_mismatch": "chi2 exceeds what the noise and the emulator's error allow: errors are statistical only, too small",
}

#: how each fit method is named in the report
METHOD_NAMES = {"map": "MAP", "nuts": "NUTS (NumPyro)", "blackjax": "NUTS (BlackJAX)"}

#: R-hat and bulk ESS beyond which a parameter's row is highlighted (Vehtari et al. 2021 recommend R-hat < 1.01)
RHAT_WARNING = 1.01
ESS_WARNING = 100.0


class FitReport(dict):
    """What :func:`fit_report` wrote: ``html`` (path), ``images`` ({name: base64 PNG}),
    ``image_files`` ({name: path} when ``images_dir`` was given), ``sections`` (HTML ids in order),
    ``corner_parameters``, ``trace_parameters`` and ``zoom`` ((lo, hi) [A])."""


def require_matplotlib() -> None:
    """Raise an ImportError that says how to install matplotlib when it is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError("the fit report needs matplotlib, which is not installed; "
                          "install it with `pip install 'stellarfit[plots]'` (or `pip install matplotlib`)") from None


def _png(figure) -> str:
    from stellarfit.reports.crb import _png as png

    return png(figure)


def _figure(width: float, height: float):
    from stellarfit.reports.crb import _figure as figure

    return figure(width, height)


# -- choices --------------------------------------------------------------------------
def corner_parameters(result, max_parameters: int = 8) -> list[str]:
    """The parameters of the corner plot: all when there are at most ``max_parameters``, else the
    ``max_parameters`` with the largest posterior variance relative to their Cramér-Rao variance
    (a unit-free measure; parameters the data do not constrain, CRB infinite, come first), in fit order."""
    names = list(result.labels)
    if len(names) <= max_parameters:
        return names
    flat = np.asarray(result.samples, dtype=np.float64).reshape(-1, len(names))
    std = flat.std(axis=0)
    scores = []
    for i, name in enumerate(names):
        crb = float(result.labels[name].get("crb", float("nan")))
        scores.append(math.inf if not (math.isfinite(crb) and crb > 0) else float(std[i] / crb))
    order = sorted(range(len(names)), key=lambda i: (-scores[i], i))[:max_parameters]
    return [names[i] for i in sorted(order)]


def trace_parameters(result, diagnostics: Mapping[str, Any] | None = None, max_parameters: int = 4) -> list[str]:
    """A few key parameters for the trace and rank plots: the one with the largest R-hat, the one
    with the smallest bulk ESS (from ``diagnostics``, default ``result.diagnostics``), then the
    first parameters in fit order, up to ``max_parameters``; returned in fit order."""
    names = list(result.labels)
    diagnostics = (result.diagnostics or {}) if diagnostics is None else diagnostics
    chosen: list[str] = []

    def add(name):
        if name in names and name not in chosen and len(chosen) < max_parameters:
            chosen.append(name)

    r_hat = {k: v for k, v in (diagnostics.get("r_hat") or {}).items() if _finite(v)}
    ess = {k: v for k, v in (diagnostics.get("ess_bulk") or {}).items() if _finite(v)}
    if r_hat:
        add(max(r_hat, key=r_hat.get))
    if ess:
        add(min(ess, key=ess.get))
    for name in names:
        add(name)
    return [name for name in names if name in chosen]


def zoom_window(result, n_pixels: int | None = None) -> tuple[float, float]:
    """(lo, hi) [A] of a window of ``n_pixels`` pixels (default n/12, clipped to 60..400) where the
    model has the most line absorption: the sum over good pixels of 1 - model / local upper envelope."""
    from scipy.ndimage import maximum_filter1d, uniform_filter1d

    wavelength = np.asarray(result.wavelength, dtype=np.float64)
    model = np.asarray(result.model_flux, dtype=np.float64)
    good = (np.asarray(result.ivar) > 0) & np.isfinite(model)
    n = wavelength.size
    if n_pixels is None:
        n_pixels = int(np.clip(n // 12, 60, 400))
    n_pixels = int(min(max(n_pixels, 2), n))
    if n <= n_pixels or not good.any():
        return float(wavelength[0]), float(wavelength[-1])
    filled = np.where(good, model, -np.inf)
    envelope = maximum_filter1d(filled, size=max(3, n_pixels // 2), mode="nearest")
    with np.errstate(invalid="ignore", divide="ignore"):
        depth = np.where(good & (envelope > 0), 1.0 - model / envelope, 0.0)
    depth = np.clip(np.nan_to_num(depth), 0.0, 1.0)
    score = uniform_filter1d(depth, size=n_pixels, mode="constant")
    best = int(np.argmax(score))
    # centre the window on the absorption inside the best window (the score is flat while a line stays inside)
    low, high = max(best - n_pixels // 2, 0), min(best + n_pixels // 2 + 1, n)
    weights = depth[low:high]
    centre = int(round(np.sum(np.arange(low, high) * weights) / weights.sum())) if weights.sum() > 0 else best
    first = int(np.clip(centre - n_pixels // 2, 0, n - n_pixels))
    return float(wavelength[first]), float(wavelength[first + n_pixels - 1])


# -- the report -----------------------------------------------------------------------
def fit_report(
    result,
    path: str | os.PathLike,
    *,
    title: str | None = None,
    corner: Sequence[str] | None = None,
    max_corner: int = 8,
    trace: Sequence[str] | None = None,
    max_trace: int = 4,
    zoom: tuple[float, float] | None = None,
    source: str | None = None,
    images_dir: str | os.PathLike | None = None,
) -> FitReport:
    """Write the HTML report of one fit to ``path``.

    Args:
        result: a :class:`~stellarfit.inference.FitResult` (from ``fit_star`` or ``FitResult.load``).
        path: the HTML file (written atomically).
        title: page title (default "Fit report: <method> fit with <emulator>").
        corner: parameters of the corner plot (default :func:`corner_parameters` with ``max_corner``).
        max_corner: most parameters in the default corner plot (default 8).
        trace: parameters of the trace and rank plots (default :func:`trace_parameters` with ``max_trace``).
        max_trace: most parameters in the default trace plots (default 4).
        zoom: (lo, hi) wavelength window [A, vacuum] of the zoom panel (default :func:`zoom_window`).
        source: what was fitted (a file name), shown in the summary.
        images_dir: also write each plot as ``<html stem>_<plot>.png`` into this directory.
    Returns: a :class:`FitReport`.
    Raises:
        ImportError: matplotlib is missing (install the ``plots`` extra).
        ValueError: unknown parameter names in ``corner``/``trace``, a bad ``zoom`` window.
    """
    require_matplotlib()
    path = Path(path)
    names = list(result.labels)
    sampled = result.samples is not None
    if sampled:
        samples = np.asarray(result.samples, dtype=np.float64)
        if samples.ndim != 3 or samples.shape[2] != len(names):
            raise ValueError(f"result.samples has shape {samples.shape}, expected (n_chains, n_draws, {len(names)})")
    for option, chosen in (("corner", corner), ("trace", trace)):
        unknown = [name for name in (chosen or []) if name not in names]
        if unknown:
            raise ValueError(f"{option}: unknown parameters {unknown}; the fit has {names}")
        if chosen is not None and not sampled:
            raise ValueError(f"{option}: this {result.method!r} fit has no posterior samples to plot")
    if zoom is None:
        zoom = zoom_window(result)
    else:
        zoom = (float(zoom[0]), float(zoom[1]))
        wavelength = np.asarray(result.wavelength)
        if not zoom[0] < zoom[1] or not np.any((wavelength >= zoom[0]) & (wavelength <= zoom[1])):
            raise ValueError(f"zoom window {zoom} holds no pixel; the spectrum covers {wavelength.min():.2f}-{wavelength.max():.2f} A")

    images: dict[str, str] = {}
    images["spectrum"] = _plot_spectrum(result, zoom)
    images["zoom"] = _plot_spectrum(result, zoom, window=zoom)
    diagnostics = dict(result.diagnostics or {})
    chosen_corner: list[str] = []
    chosen_trace: list[str] = []
    if sampled:
        diagnostics = _sampler_diagnostics(result, samples, diagnostics)
        chosen_corner = list(corner) if corner else corner_parameters(result, max_corner)
        chosen_trace = list(trace) if trace else trace_parameters(result, diagnostics, max_trace)
        images["corner"] = _plot_corner(result, samples, chosen_corner)
        images["trace"] = _plot_trace(result, samples, chosen_trace, diagnostics)
        if result.sample_stats:
            images["sampler"] = _plot_sampler_stats(result.sample_stats, diagnostics)
    else:
        images["correlation"] = _plot_correlation(result)

    document, sections = _html(result, title, source, images, diagnostics, chosen_corner, chosen_trace, zoom)
    with atomic_path(path) as temporary:
        temporary.write_text(document, encoding="utf-8")
    image_files = {}
    if images_dir is not None:
        folder = Path(images_dir)
        folder.mkdir(parents=True, exist_ok=True)
        for key, data in images.items():
            image_files[key] = str(folder / f"{path.stem}_{key}.png")
            Path(image_files[key]).write_bytes(base64.b64decode(data))
    return FitReport(html=str(path), images=images, image_files=image_files, sections=sections,
                     corner_parameters=chosen_corner, trace_parameters=chosen_trace, zoom=zoom)


def _finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _sampler_diagnostics(result, samples: np.ndarray, diagnostics: dict) -> dict:
    """The fit's sampler diagnostics, completed from the samples where missing (hand-built results)."""
    names = list(result.labels)
    if not all(isinstance(diagnostics.get(key), Mapping) for key in ("r_hat", "ess_bulk", "ess_tail")):
        from stellarfit.inference.nuts import sampling_diagnostics

        diagnostics.update(sampling_diagnostics(samples, names))
    stats = result.sample_stats or {}
    if "divergences" not in diagnostics and "diverging" in stats:
        diagnostics["divergences"] = int(np.sum(stats["diverging"]))
    diagnostics.setdefault("num_chains", samples.shape[0])
    diagnostics.setdefault("num_samples", samples.shape[1])
    return diagnostics


# -- plots ------------------------------------------------------------------------------
def _with_gaps(wavelength: np.ndarray, *arrays: np.ndarray):
    """Insert NaN rows at wavelength gaps (steps > 5 x the median step) so lines break there."""
    step = np.diff(wavelength)
    if step.size == 0:
        return (wavelength, *arrays)
    gaps = np.flatnonzero(step > 5.0 * np.median(step)) + 1
    return tuple(np.insert(np.asarray(a, dtype=np.float64), gaps, np.nan) for a in (wavelength, *arrays))


def _plot_spectrum(result, zoom: tuple[float, float], window: tuple[float, float] | None = None) -> str:
    from matplotlib.gridspec import GridSpec

    wavelength = np.asarray(result.wavelength, dtype=np.float64)
    flux = np.asarray(result.flux, dtype=np.float64)
    ivar = np.asarray(result.ivar, dtype=np.float64)
    model = np.asarray(result.model_flux, dtype=np.float64)
    good = (ivar > 0) & np.isfinite(flux) & np.isfinite(model)
    if window is not None:
        inside = (wavelength >= window[0]) & (wavelength <= window[1])
        wavelength, flux, ivar, model, good = (a[inside] for a in (wavelength, flux, ivar, model, good))
    sigma = np.where(good, 1.0 / np.sqrt(np.where(good, ivar, 1.0)), np.nan)
    shown_flux = np.where(good, flux, np.nan)
    shown_model = np.where(np.isfinite(model), model, np.nan)
    residual = np.where(good, (flux - model) * np.sqrt(np.where(good, ivar, 0.0)), np.nan)
    x, shown_flux, shown_model, residual, sigma = _with_gaps(wavelength, shown_flux, shown_model, residual, sigma)

    figure = _figure(10.0, 5.2)
    grid = GridSpec(2, 2, figure=figure, height_ratios=(2.6, 1.2), width_ratios=(6.0, 1.0))
    top = figure.add_subplot(grid[0, 0])
    bottom = figure.add_subplot(grid[1, 0], sharex=top)
    side = figure.add_subplot(grid[1, 1], sharey=bottom)
    thin = 0.5 if window is None and wavelength.size > 3000 else 0.8
    if window is not None:
        top.fill_between(x, shown_flux - sigma, shown_flux + sigma, color="0.85", step="mid", lw=0, label="±1 sigma")
    top.plot(x, shown_flux, color="k", lw=thin, drawstyle="steps-mid", label="observed")
    top.plot(x, shown_model, color="tab:red", lw=thin + 0.2, label="model (MAP)")
    top.set_ylabel("flux")
    top.legend(loc="lower left", fontsize="small", ncol=3)
    if window is None and (zoom[0] > wavelength[0] or zoom[1] < wavelength[-1]):
        top.axvspan(zoom[0], zoom[1], color="tab:blue", alpha=0.12, lw=0)
        top.text(0.5 * (zoom[0] + zoom[1]), 1.0, "zoom", transform=top.get_xaxis_transform(), ha="center", va="bottom",
                 fontsize="small", color="tab:blue")
    finite = residual[np.isfinite(residual)]
    limit = max(5.0, float(np.percentile(np.abs(finite), 99.5))) if finite.size else 5.0
    limit = min(limit, 50.0)
    bottom.plot(x, np.clip(residual, -limit, limit), color="k", lw=thin, drawstyle="steps-mid")
    for level, style in ((0.0, "-"), (-3.0, ":"), (3.0, ":")):
        bottom.axhline(level, color="tab:red" if level == 0 else "0.5", lw=0.8, linestyle=style)
    bottom.set_ylim(-limit, limit)
    bottom.set_ylabel("residual / sigma")
    bottom.set_xlabel("wavelength [A, vacuum]")
    top.tick_params(labelbottom=False)
    if finite.size:
        bins = np.linspace(-limit, limit, int(np.clip(finite.size // 8, 10, 40)) + 1)
        side.hist(np.clip(finite, -limit, limit), bins=bins, orientation="horizontal", density=True, color="0.5")
        y = np.linspace(-limit, limit, 200)
        side.plot(np.exp(-0.5 * y**2) / np.sqrt(2 * np.pi), y, color="tab:red", lw=1.0)
        side.set_title(f"mean {finite.mean():+.2f}\nstd {finite.std():.2f}", fontsize="small")
    side.set_xlabel("density", fontsize="small")
    side.tick_params(labelleft=False, labelsize="small")
    if window is not None:
        top.set_title(f"{window[0]:.2f} - {window[1]:.2f} A", fontsize="medium")
    return _png(figure)


def _levels(density: np.ndarray, fractions=(0.393, 0.865)) -> list[float]:
    """Density levels enclosing ``fractions`` of the mass (the 1 and 2 sigma regions of a 2-D Gaussian), increasing."""
    flat = np.sort(density.ravel())[::-1]
    total = flat.sum()
    if total <= 0:
        return []
    cumulative = np.cumsum(flat) / total
    levels = sorted({float(flat[min(np.searchsorted(cumulative, f), flat.size - 1)]) for f in fractions})
    return [level for level in levels if 0 < level < flat[0]]


def _plot_corner(result, samples: np.ndarray, chosen: Sequence[str]) -> str:
    from matplotlib.ticker import MaxNLocator
    from scipy.ndimage import gaussian_filter

    names = list(result.labels)
    index = [names.index(name) for name in chosen]
    flat = samples.reshape(-1, samples.shape[-1])[:, index]
    diverging = None
    if result.sample_stats and "diverging" in result.sample_stats:
        diverging = np.asarray(result.sample_stats["diverging"], dtype=bool).reshape(-1)
    k = len(chosen)
    size = min(1.9, 11.0 / max(k, 1))
    figure = _figure(1.0 + size * k, 0.8 + size * k)
    axes = figure.subplots(k, k, squeeze=False)
    ranges = []
    for j in range(k):
        low, high = np.percentile(flat[:, j], [0.5, 99.5])
        if not high > low:
            low, high = flat[:, j].min() - 0.5, flat[:, j].max() + 0.5
        pad = 0.05 * (high - low)
        ranges.append((low - pad, high + pad))
    rng = np.random.default_rng(0)
    shown = rng.permutation(flat.shape[0])[:3000]
    for row in range(k):
        for column in range(k):
            axis = axes[row, column]
            if column > row:
                axis.set_axis_off()
                continue
            name_x, name_y = chosen[column], chosen[row]
            if row == column:
                axis.hist(flat[:, row], bins=30, range=ranges[row], histtype="stepfilled", color="tab:blue", alpha=0.35)
                axis.hist(flat[:, row], bins=30, range=ranges[row], histtype="step", color="tab:blue")
                entry = result.labels[name_x]
                low, median, high = np.percentile(flat[:, row], [16, 50, 84])
                axis.axvline(median, color="k", lw=1.0)
                for value in (low, high):
                    axis.axvline(value, color="k", lw=0.8, linestyle="--")
                if _finite(entry.get("map")):
                    axis.axvline(entry["map"], color="tab:red", lw=1.0, linestyle=":")
                axis.set_title(f"{name_x} = {_with_errors(median, high - median, median - low)}", fontsize="small")
            else:
                x, y = flat[:, column], flat[:, row]
                axis.plot(x[shown], y[shown], ".", ms=1.5, color="0.45", alpha=0.4, rasterized=True)
                counts, x_edges, y_edges = np.histogram2d(x, y, bins=25, range=[ranges[column], ranges[row]])
                density = gaussian_filter(counts.T, 1.0)
                levels = _levels(density)
                if len(levels) >= 1:
                    centres_x = 0.5 * (x_edges[1:] + x_edges[:-1])
                    centres_y = 0.5 * (y_edges[1:] + y_edges[:-1])
                    axis.contour(centres_x, centres_y, density, levels=levels, colors="tab:blue", linewidths=1.0)
                if diverging is not None and diverging.any():
                    axis.plot(x[diverging], y[diverging], ".", ms=3, color="tab:red", label="divergent")
                map_x, map_y = result.labels[name_x].get("map"), result.labels[name_y].get("map")
                if _finite(map_x) and _finite(map_y):
                    axis.plot([map_x], [map_y], "x", color="tab:red", ms=6, mew=1.5)
                axis.set_ylim(ranges[row])
            axis.set_xlim(ranges[column])
            axis.xaxis.set_major_locator(MaxNLocator(3))
            axis.yaxis.set_major_locator(MaxNLocator(3))
            if row == column:
                axis.set_yticks([])
            axis.tick_params(labelsize="x-small")
            if row == k - 1:
                axis.set_xlabel(name_x, fontsize="small")
                for tick in axis.get_xticklabels():
                    tick.set_rotation(45)
            else:
                axis.tick_params(labelbottom=False)
            if column == 0 and row > 0:
                axis.set_ylabel(name_y, fontsize="small")
            elif row != column:
                axis.tick_params(labelleft=False)
    return _png(figure)


def _plot_trace(result, samples: np.ndarray, chosen: Sequence[str], diagnostics: Mapping[str, Any]) -> str:
    from scipy.stats import rankdata

    names = list(result.labels)
    n_chains, n_draws, _ = samples.shape
    diverging = None
    if result.sample_stats and "diverging" in result.sample_stats:
        diverging = np.asarray(result.sample_stats["diverging"], dtype=bool)
    figure = _figure(10.0, 0.6 + 1.9 * len(chosen))
    axes = figure.subplots(len(chosen), 2, squeeze=False, width_ratios=(3.0, 1.2))
    colors = [f"C{c % 10}" for c in range(n_chains)]
    n_bins = int(np.clip(n_draws // 10, 5, 20))
    for row, name in enumerate(chosen):
        values = samples[:, :, names.index(name)]
        trace_axis, rank_axis = axes[row]
        for chain in range(n_chains):
            trace_axis.plot(np.arange(n_draws), values[chain], color=colors[chain], lw=0.5, alpha=0.8, label=f"chain {chain}")
        if diverging is not None and diverging.any():
            chain_index, draw_index = np.nonzero(diverging)
            trace_axis.plot(draw_index, values[chain_index, draw_index], "|", color="tab:red", ms=8, label="divergent")
        trace_axis.set_ylabel(name)
        trace_axis.set_xlim(0, n_draws - 1)
        # rank plot: ranks of all draws pooled, histogram per chain; uniform when the chains agree
        ranks = rankdata(values.reshape(-1)).reshape(n_chains, n_draws)
        edges = np.linspace(0.5, n_chains * n_draws + 0.5, n_bins + 1)
        expected = n_draws / n_bins
        for chain in range(n_chains):
            counts, _ = np.histogram(ranks[chain], bins=edges)
            heights = 0.42 * counts / expected
            rank_axis.bar(0.5 * (edges[1:] + edges[:-1]), heights, width=np.diff(edges) * 0.92, bottom=chain,
                          color=colors[chain], alpha=0.8)
            rank_axis.axhline(chain + 0.42, color="k", lw=0.7, linestyle="--")
        rank_axis.set_yticks(np.arange(n_chains) + 0.21, [str(c) for c in range(n_chains)], fontsize="x-small")
        rank_axis.set_ylabel("chain", fontsize="small")
        rank_axis.set_xticks([])
        rank_axis.set_xlim(edges[0], edges[-1])
        rank_axis.set_ylim(-0.1, n_chains)
        r_hat = (diagnostics.get("r_hat") or {}).get(name)
        rank_axis.set_title("rank plot" + (f" (R-hat {r_hat:.3f})" if _finite(r_hat) else ""), fontsize="small")
        if row == 0:
            trace_axis.set_title("trace per chain", fontsize="small")
            if n_chains <= 8:
                trace_axis.legend(fontsize="x-small", ncol=min(n_chains + 1, 5), loc="upper right")
    axes[-1, 0].set_xlabel("draw (after warm-up)")
    axes[-1, 1].set_xlabel("rank of pooled draws", fontsize="small")
    return _png(figure)


def _plot_sampler_stats(stats: Mapping[str, np.ndarray], diagnostics: Mapping[str, Any]) -> str:
    panels = [key for key in ("tree_depth", "acceptance_rate", "lp") if key in stats]
    figure = _figure(10.0, 2.8)
    axes = figure.subplots(1, max(len(panels), 1), squeeze=False)[0]
    for axis, key in zip(axes, panels):
        values = np.asarray(stats[key])
        n_chains = values.shape[0]
        if key == "tree_depth":
            depths = np.arange(0, int(np.nanmax(values)) + 2)
            width = 0.8 / n_chains
            for chain in range(n_chains):
                counts = np.array([(values[chain] == d).sum() for d in depths])
                axis.bar(depths + (chain - (n_chains - 1) / 2) * width, counts, width=width, color=f"C{chain % 10}")
            if _finite(diagnostics.get("max_tree_depth")):
                axis.axvline(float(diagnostics["max_tree_depth"]) + 0.5, color="tab:red", linestyle=":", label="max depth")
                axis.legend(fontsize="x-small")
            axis.set_xlabel("tree depth")
            axis.set_ylabel("draws")
        elif key == "acceptance_rate":
            for chain in range(n_chains):
                axis.hist(values[chain], bins=20, range=(0.0, 1.0), histtype="step", color=f"C{chain % 10}")
            if _finite(diagnostics.get("target_accept")):
                axis.axvline(float(diagnostics["target_accept"]), color="k", linestyle="--", lw=0.8, label="target")
                axis.legend(fontsize="x-small", loc="upper left")
            axis.set_xlabel("acceptance rate")
        else:
            for chain in range(n_chains):
                axis.plot(values[chain], color=f"C{chain % 10}", lw=0.5)
            axis.set_xlabel("draw")
            axis.set_ylabel("log density (sampler space)", fontsize="small")
    return _png(figure)


def _plot_correlation(result) -> str:
    names = list(result.labels)
    covariance = np.asarray(result.covariance, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        sigma = np.sqrt(np.diag(covariance))
        correlation = covariance / np.outer(sigma, sigma)
    correlation = np.where(np.isfinite(correlation), correlation, np.nan)
    p = len(names)
    figure = _figure(2.2 + 0.6 * p, 1.5 + 0.6 * p)
    axis = figure.add_subplot()
    image = axis.imshow(np.ma.masked_invalid(correlation), vmin=-1, vmax=1, cmap="RdBu_r")
    if p <= 16:
        for i in range(p):
            for j in range(p):
                text = "n/a" if not np.isfinite(correlation[i, j]) else f"{correlation[i, j]:.2f}"
                axis.text(j, i, text, ha="center", va="center", fontsize="x-small",
                          color="w" if np.isfinite(correlation[i, j]) and abs(correlation[i, j]) > 0.6 else "k")
    axis.set_xticks(range(p), names, rotation=90, fontsize="small")
    axis.set_yticks(range(p), names, fontsize="small")
    figure.colorbar(image, ax=axis, label="correlation (Laplace)")
    return _png(figure)


# -- HTML -------------------------------------------------------------------------------
def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    try:
        value = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{digits}g}"


def _fmt_to_error(value, error) -> str:
    """``value`` to one digit beyond the second significant digit of ``error`` (6 significant digits without one)."""
    if not _finite(value) or not _finite(error) or float(error) <= 0:
        return _fmt(value, 6)
    decimals = int(np.clip(2 - math.floor(math.log10(float(error))), 0, 10))
    return f"{float(value):.{decimals}f}"


def _with_errors(value: float, plus: float, minus: float) -> str:
    """'v^{+a}_{-b}' (matplotlib mathtext) with two significant digits in the smaller error."""
    smallest = min(abs(plus), abs(minus))
    decimals = int(np.clip(1 - math.floor(math.log10(smallest)), 0, 10)) if smallest > 0 and math.isfinite(smallest) else 3
    return f"${value:.{decimals}f}^{{+{plus:.{decimals}f}}}_{{-{minus:.{decimals}f}}}$"


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str] | None = None, classes: Sequence[str] | None = None) -> str:
    escape = html.escape
    lines = ["<table>"]
    if header:
        lines.append("<tr>" + "".join(f"<th>{escape(str(h))}</th>" for h in header) + "</tr>")
    for i, row in enumerate(rows):
        css = f' class="{classes[i]}"' if classes and classes[i] else ""
        cells = "".join(f"<{'th' if j == 0 and not header else 'td'}>{escape(str(cell))}</{'th' if j == 0 and not header else 'td'}>"
                        for j, cell in enumerate(row))
        lines.append(f"<tr{css}>{cells}</tr>")
    lines.append("</table>")
    return "\n".join(lines)


def _image(key: str, data: str, alt: str) -> str:
    return f'<img id="img-{key}" alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _html(result, title, source, images, diagnostics, chosen_corner, chosen_trace, zoom) -> tuple[str, list[str]]:
    from stellarfit import __version__
    from stellarfit.inference.fit import FLAGS

    escape = html.escape
    sampled = result.samples is not None
    method = METHOD_NAMES.get(result.method, result.method)
    title = title or f"Fit report: {method} fit with {result.emulator or 'an emulator'}"
    names = list(result.labels)
    interval = "16th - 84th percentile" if sampled else "value -/+ error"
    value_name = "median" if sampled else "MAP"
    parameter_rows = []
    for name in names:
        row = result.labels[name]
        error, crb = row.get("error"), row.get("crb")
        ratio = float(error) / float(crb) if _finite(error) and _finite(crb) and float(crb) > 0 else None

        def value(key, row=row, error=error):
            return _fmt_to_error(row.get(key), error)

        parameter_rows.append([name, value("value"), _fmt(error, 3), f"{value('lower')} - {value('upper')}", value("map"),
                               _fmt(crb, 3), _fmt(ratio, 3)])
    flag_names = [name for name, bit in FLAGS.items() if int(result.flags) & bit]
    fit_rows = [
        ["source", source or "-"],
        ["method", method],
        ["emulator", result.emulator or "-"],
        ["chi2 (at the MAP)", f"{_fmt(result.chi2, 6)} over {result.n_pixels} pixels, reduced {_fmt(result.reduced_chi2, 4)}"],
        ["median S/N per pixel", _fmt(result.snr, 4)],
        ["flags", f"{int(result.flags)} ({', '.join(flag_names) or 'none'})"],
        ["RV search [km/s]", _fmt(diagnostics.get("rv_search"), 6)],
        ["wavelength range [A, vacuum]", f"{float(np.min(result.wavelength)):.2f} - {float(np.max(result.wavelength)):.2f} "
                                         f"({np.asarray(result.wavelength).size} pixels)"],
        ["fit time [s]", _fmt(result.elapsed_s, 3) + (f" (sampler {_fmt(diagnostics.get('sampler_elapsed_s'), 3)})"
                                                     if _finite(diagnostics.get("sampler_elapsed_s")) else "")],
        ["seed", str(diagnostics.get("seed", "-"))],
        ["stellarfit", __version__],
    ]
    warnings = [f"<li><b>{escape(name)}</b>: {escape(FLAG_DESCRIPTIONS.get(name, ''))}</li>" for name in flag_names]
    unconstrained = diagnostics.get("crb_unconstrained") or []
    if unconstrained:
        warnings.append(f"<li>not constrained by the data (infinite Cramér-Rao bound): {escape(', '.join(map(str, unconstrained)))}</li>")
    if sampled:
        warnings += [f"<li>sampler: {escape(text)}</li>" for text in _sampler_warnings(result, diagnostics)]

    sections: list[tuple[str, str, str]] = []
    summary = (f"<p>Value: {value_name}; interval: {interval}; CRB: Cramér-Rao bound at the MAP (marginalized over RV, "
               f"vsini and the continuum); error/CRB near 1 means the fit reaches the information limit.</p>\n"
               + _table(parameter_rows, ["parameter", "value", "error", interval, "MAP", "CRB", "error / CRB"])
               + "\n" + _table(fit_rows)
               + (f'\n<div class="warn"><p>Flags and warnings:</p><ul>{"".join(warnings)}</ul></div>' if warnings else ""))
    sections.append(("summary", "Summary", summary))
    sections.append(("spectrum", "Spectrum, model and residuals",
                     "<p>Observed flux (black) and the model at the MAP (red), residuals (flux - model) / sigma below and "
                     "their distribution against a unit normal (red) on the right. Masked pixels and gaps are blank; "
                     "the shaded band is the zoom region.</p>\n" + _image("spectrum", images["spectrum"], "spectrum, model and residuals")))
    sections.append(("zoom", f"Zoom: {zoom[0]:.2f} - {zoom[1]:.2f} A",
                     "<p>The region with the most line absorption in the model, with the ±1 sigma band of the data (grey).</p>\n"
                     + _image("zoom", images["zoom"], "zoom on a strong-line region")))
    if sampled:
        n_chains, n_draws, _ = np.asarray(result.samples).shape
        sections.append(("corner", "Posterior: corner plot",
                         f"<p>{n_chains} chains x {n_draws} draws. Parameters: {escape(', '.join(chosen_corner))}. "
                         "Diagonal: marginal histograms with the median (solid) and 16th/84th percentiles (dashed), MAP dotted red; "
                         "off-diagonal: draws (grey), 39% and 86% contours (1 and 2 sigma of a 2-D Gaussian), MAP as a red cross, "
                         "divergent draws red.</p>\n" + _image("corner", images["corner"], "corner plot")))
        sections.append(("trace", "Trace and rank plots",
                         f"<p>Parameters: {escape(', '.join(chosen_trace))}. Left: draws per chain (divergent draws marked red); "
                         "right: histograms of the ranks of the pooled draws per chain, flat (dashed line) when the chains "
                         "sample the same distribution (Vehtari et al. 2021).</p>\n" + _image("trace", images["trace"], "trace and rank plots")))
        sections.append(("diagnostics", "Sampler diagnostics", _sampler_html(result, diagnostics, images.get("sampler"))))
    else:
        sections.append(("correlation", "Laplace correlation matrix",
                         "<p>Correlations of the Laplace (inverse Hessian) covariance at the MAP; n/a where a variance is "
                         "not finite.</p>\n" + _image("correlation", images["correlation"], "correlation matrix")))
        sections.append(("diagnostics", "MAP diagnostics", _map_html(diagnostics)))

    nav = " | ".join(f'<a href="#{key}">{escape(heading.split(":")[0])}</a>' for key, heading, _ in sections)
    body = "\n".join(f'<section id="{key}">\n<h2>{escape(heading)}</h2>\n{content}\n</section>' for key, heading, content in sections)
    document = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:64em;margin:2em auto;padding:0 1em}} table{{border-collapse:collapse;margin:0.6em 0}}
td,th{{border:1px solid #ccc;padding:0.2em 0.6em;text-align:left}} img{{max-width:100%}}
tr.warn td{{background:#fde2e1}} div.warn{{background:#fff4e5;border-left:4px solid #f0a030;padding:0.1em 1em}}
nav{{margin-bottom:1em}}</style></head>
<body>
<h1>{escape(title)}</h1>
<nav>{nav}</nav>
{body}
</body></html>
"""
    return document, [key for key, _, _ in sections]


def _sampler_warnings(result, diagnostics: Mapping[str, Any]) -> list[str]:
    """Plain-text warnings about the chains (thresholds: R-hat 1.01, bulk ESS 100, any divergence, tree-depth hits)."""
    out = []
    r_hat = {k: float(v) for k, v in (diagnostics.get("r_hat") or {}).items() if _finite(v)}
    ess = {k: float(v) for k, v in (diagnostics.get("ess_bulk") or {}).items() if _finite(v)}
    high = [f"{k} {v:.3f}" for k, v in r_hat.items() if v > RHAT_WARNING]
    low = [f"{k} {v:.0f}" for k, v in ess.items() if v < ESS_WARNING]
    if high:
        out.append(f"R-hat above {RHAT_WARNING} for {', '.join(high)}: run longer chains (more --samples/--warmup)")
    if low:
        out.append(f"bulk ESS below {ESS_WARNING:g} for {', '.join(low)}: run longer chains")
    if _finite(diagnostics.get("divergences")) and int(diagnostics["divergences"]) > 0:
        out.append(f"{int(diagnostics['divergences'])} divergent draws: the posterior may be biased; "
                   "raise target_accept or reparametrize")
    if _finite(diagnostics.get("tree_depth_hits")) and int(diagnostics["tree_depth_hits"]) > 0:
        out.append(f"{int(diagnostics['tree_depth_hits'])} draws hit the maximum tree depth: raise max_tree_depth")
    return out


def _sampler_html(result, diagnostics: Mapping[str, Any], sampler_image: str | None) -> str:
    names = list(result.labels)
    samples = np.asarray(result.samples, dtype=np.float64)
    n_chains, n_draws, _ = samples.shape
    flat = samples.reshape(-1, len(names))
    r_hat, bulk, tail = (diagnostics.get(key) or {} for key in ("r_hat", "ess_bulk", "ess_tail"))
    rows, classes = [], []
    for i, name in enumerate(names):
        std = float(flat[:, i].std(ddof=1)) if flat.shape[0] > 1 else float("nan")
        ess = bulk.get(name)
        mcse = std / math.sqrt(float(ess)) if _finite(ess) and float(ess) > 0 else None
        rows.append([name, _fmt(r_hat.get(name), 4), _fmt(ess, 4), _fmt(tail.get(name), 4), _fmt(std), _fmt(mcse, 3)])
        bad = (_finite(r_hat.get(name)) and float(r_hat[name]) > RHAT_WARNING) or not _finite(ess) or float(ess) < ESS_WARNING
        classes.append("warn" if bad else "")
    total = n_chains * n_draws
    divergences = diagnostics.get("divergences")
    settings = [
        ["backend", diagnostics.get("backend", result.method)],
        ["chains x draws (warm-up)", f"{n_chains} x {n_draws} ({diagnostics.get('num_warmup', '-')} warm-up per chain)"],
        ["divergent draws", f"{divergences} ({100.0 * float(divergences) / total:.2f}%)" if _finite(divergences) else "-"],
        ["tree-depth hits", f"{diagnostics.get('tree_depth_hits', '-')} (max tree depth {diagnostics.get('max_tree_depth', '-')})"],
        ["step size per chain", ", ".join(_fmt(s, 3) for s in diagnostics.get("step_size", [])) or "-"],
        ["mean acceptance (target)", f"{_fmt(diagnostics.get('mean_acceptance'), 3)} ({_fmt(diagnostics.get('target_accept'), 3)})"],
        ["mass matrix", diagnostics.get("mass_matrix", "-")],
        ["gradient evaluations (drawing / warm-up)", f"{diagnostics.get('gradient_evaluations', '-')} / "
                                                     f"{diagnostics.get('gradient_evaluations_warmup', '-')}"],
        ["gradient evaluations per effective sample", _fmt(diagnostics.get("gradient_evaluations_per_effective_sample",
                                                                           diagnostics.get("gradient_evaluations_per_ess")), 4)],
        ["sampler time [s]", _fmt(diagnostics.get("sampler_elapsed_s"), 3)],
    ]
    text = (f"<p>Rank-normalized split R-hat and bulk/tail ESS (Vehtari et al. 2021); MCSE = posterior std / sqrt(bulk ESS), "
            f"the Monte Carlo error of the posterior mean. Rows with R-hat > {RHAT_WARNING} or bulk ESS < {ESS_WARNING:g} "
            f"are highlighted.</p>\n")
    out = text + _table(rows, ["parameter", "R-hat", "ESS bulk", "ESS tail", "posterior std", "MCSE"], classes) + "\n" + _table(settings)
    if sampler_image:
        out += ("\n<p>Per-draw statistics by chain: tree depth (red line: the cap), acceptance rate (dashed: target), "
                "log density.</p>\n" + _image("sampler", sampler_image, "sampler statistics"))
    return out


def _map_html(diagnostics: Mapping[str, Any]) -> str:
    objectives = [float(v) for v in diagnostics.get("start_objectives", []) if _finite(v)]
    best = min(objectives) if objectives else None
    near = sum(1 for v in objectives if v - best < 1.0) if objectives else 0
    rows = [
        ["converged", str(diagnostics.get("converged", "-"))],
        ["starts", f"{diagnostics.get('n_starts', len(objectives) or '-')}; {near} within 1 of the best objective"
                   if objectives else str(diagnostics.get("n_starts", "-"))],
        ["start objectives (-log posterior)", ", ".join(_fmt(v, 8) for v in sorted(objectives)) or "-"],
        ["Fisher condition number", _fmt(diagnostics.get("fisher_condition_number"), 4)],
        ["unconstrained (infinite CRB)", ", ".join(map(str, diagnostics.get("crb_unconstrained") or [])) or "none"],
    ]
    return ("<p>Multi-start MAP: the objective each start reached (several starts at the best value mean a well-defined "
            "optimum) and the conditioning of the Fisher matrix.</p>\n" + _table(rows))
