"""The Cramér-Rao report: one self-contained HTML file (PNG plots embedded as base64) plus a CSV table.

Contents (for an emulator, labels, S/N, resolving power and wavelength range):

1. a table of the bound per label (and RV, vsini when free);
2. sigma per label against S/N (F scales as snr^2, so sigma = sigma(snr0) * snr0 / snr
   exactly; drawn from the bound at the planned S/N);
3. sigma per label against resolving power (one Fisher computation per R,
   same window, same S/N per pixel, 3 pixels per resolution element);
4. the derivative spectra dF/dtheta, each multiplied by 10% of the label's box width;
5. the correlation matrix of all parameters (labels and nuisance parameters);
6. for an emulator of several windows (a composite): each window's bound alone against the
   joint bound, per label (which window constrains which label).

Plots use matplotlib's object API with the Agg canvas (no pyplot, no global
backend change), so it works headless.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stellarfit._io import atomic_path

__all__ = ["CrbReport", "by_window_table", "catalog_crb_report", "crb_report", "default_resolutions", "default_snrs",
           "plot_by_window"]


class CrbReport(dict):
    """What :func:`crb_report` wrote: a dict with ``html``, ``csv``, ``result`` (the CramerRaoResult),
    ``snr_values``, ``resolution_values``, ``sigma_vs_snr`` and ``sigma_vs_resolution`` ({label: [sigma...]}),
    ``by_window`` (composite emulators: {window or "joint": {parameter: bound}}; else None)."""


def default_snrs(snr: float) -> list[float]:
    """S/N values for the S/N plot: the planned one and factors 1/4 .. 4 around it."""
    return sorted({float(snr) * f for f in (0.25, 0.5, 1.0, 2.0, 4.0)})


def default_resolutions(resolution: float, native: float | None) -> list[float]:
    """A few resolving powers up to the emulator's native R: R/4, R/2, R, 2R (those <= native)."""
    values = {float(resolution) * f for f in (0.25, 0.5, 1.0, 2.0)}
    if native is not None:
        values = {v for v in values if v <= native * (1 + 1e-9)}
    return sorted(values | {float(resolution)})


def _png(figure) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(width=7.0, height=4.0):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def crb_report(
    emulator,
    labels: Mapping[str, float],
    out: str | os.PathLike,
    *,
    snr: float = 100.0,
    resolution: float | None = None,
    window: Sequence[float] | None = None,
    rv: float = 0.0,
    vsini: float = 0.0,
    continuum_degree: int = 2,
    snr_values: Sequence[float] | None = None,
    resolution_values: Sequence[float] | None = None,
    result=None,
) -> CrbReport:
    """Compute the bounds and write ``out`` (HTML) and ``out`` with suffix ``.csv`` (the table).

    Args:
        emulator, labels, snr, resolution, window, rv, vsini, continuum_degree: as for
            :func:`~stellarfit.inference.crb.cramer_rao`.
        out: the HTML file.
        snr_values: S/N values of the S/N plot (default :func:`default_snrs`).
        resolution_values: resolving powers of the resolution plot (default :func:`default_resolutions`).
        result: an already computed CramerRaoResult for these settings (saves one computation).
    Returns: a :class:`CrbReport`.
    """
    from stellarfit.inference.crb import cramer_rao

    out = Path(out)
    options = dict(window=window, rv=rv, vsini=vsini, continuum_degree=continuum_degree)
    if result is None:
        result = cramer_rao(emulator, labels, snr=snr, resolution=resolution, **options)
    resolution = result.resolution
    snr_values = sorted(float(v) for v in (snr_values or default_snrs(result.snr)))
    resolution_values = sorted(float(v) for v in (resolution_values or default_resolutions(resolution, emulator.native_resolution)))
    names = list(result.label_names) + [n for n in ("rv", "vsini") if n in result.names]
    index = {name: result.names.index(name) for name in names}
    base = {name: float(result.sigma[index[name]]) for name in names}
    sigma_vs_snr = {name: [base[name] * result.snr / s for s in snr_values] for name in names}
    sigma_vs_resolution: dict[str, list[float]] = {name: [] for name in names}
    for value in resolution_values:
        other = result if np.isclose(value, resolution) else cramer_rao(emulator, labels, snr=result.snr, resolution=value, **options)
        for name in names:
            position = other.names.index(name) if name in other.names else None
            sigma_vs_resolution[name].append(float(other.sigma[position]) if position is not None else float("nan"))

    images = {
        "sigma_vs_snr": _plot_vs(snr_values, sigma_vs_snr, result.label_names, "S/N per pixel", result.snr),
        "sigma_vs_resolution": _plot_vs(resolution_values, sigma_vs_resolution, result.label_names, "resolving power R", resolution),
        "derivatives": _plot_derivatives(result, emulator),
        "correlation": _plot_correlation(result),
    }
    by_window = None
    if getattr(emulator, "members", None) is not None and window is None:
        from stellarfit.inference.crb import cramer_rao_by_window

        by_window = by_window_table(cramer_rao_by_window(emulator, labels, snr=result.snr, resolution=resolution,
                                                          rv=rv, vsini=vsini, continuum_degree=continuum_degree), names)
        images["by_window"] = plot_by_window(by_window)
    csv_path = out.with_suffix(".csv")
    _write_csv(csv_path, names, result, base, snr_values, sigma_vs_snr, resolution_values, sigma_vs_resolution)
    document = _html(result, names, base, images, emulator, csv_path)
    with atomic_path(out) as temporary:
        temporary.write_text(document, encoding="utf-8")
    return CrbReport(html=str(out), csv=str(csv_path), result=result, snr_values=snr_values, resolution_values=resolution_values,
                     sigma_vs_snr=sigma_vs_snr, sigma_vs_resolution=sigma_vs_resolution, by_window=by_window)


def by_window_table(results: Mapping[str, Any], names: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """{window or ``"joint"``: {parameter: bound}} from :func:`~stellarfit.inference.crb.cramer_rao_by_window`'s
    results (labels, then rv and vsini where free); a parameter a window leaves free is inf."""
    joint = results["joint"]
    if names is None:
        names = list(joint.label_names) + [n for n in ("rv", "vsini") if n in joint.names]
    return {window: {name: float(result.sigma[result.names.index(name)]) if name in result.names else float("nan")
                     for name in names} for window, result in results.items()}


def plot_by_window(table: Mapping[str, Mapping[str, float]]) -> str:
    """Grouped bars: per label, each window's bound alone divided by the joint bound (1: that window
    alone constrains the label as well as all together; large: it adds little)."""
    joint = table["joint"]
    windows = [w for w in table if w != "joint"]
    names = [n for n in joint if np.isfinite(joint[n]) and joint[n] > 0]
    figure = _figure(max(7.0, 0.55 * len(names) + 2.0), 4.0)
    axes = figure.add_subplot()
    x = np.arange(len(names))
    width = 0.8 / max(len(windows), 1)
    for i, window in enumerate(windows):
        ratio = np.array([table[window][n] / joint[n] for n in names], dtype=float)
        shown = np.where(np.isfinite(ratio), ratio, 1e3)  # a label the window leaves free: off the scale
        axes.bar(x + (i - (len(windows) - 1) / 2) * width, shown, width, label=f"{window} A alone")
    axes.axhline(1.0, color="k", lw=0.8)
    axes.set_yscale("log")
    axes.set_xticks(x, names, rotation=45, ha="right")
    axes.set_ylabel("bound alone / joint bound")
    axes.legend(fontsize=8)
    return _png(figure)


def _plot_vs(x, curves: Mapping[str, list[float]], label_names, xlabel: str, marker_x: float) -> str:
    figure = _figure()
    axes = figure.add_subplot()
    for name in label_names:
        y = np.asarray(curves[name], dtype=float)
        good = np.isfinite(y) & (y > 0)
        if good.any():
            axes.plot(np.asarray(x)[good], y[good], "o-", label=name)
    axes.set_xscale("log")
    if any(np.isfinite(v) and v > 0 for name in label_names for v in curves[name]):
        axes.set_yscale("log")
    axes.axvline(marker_x, color="0.6", linestyle=":")
    axes.set_xlabel(xlabel)
    axes.set_ylabel("Cramér-Rao sigma [label units]")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small", ncol=2)
    return _png(figure)


def _plot_derivatives(result, emulator) -> str:
    spec = emulator.label_spec
    n = len(result.label_names)
    figure = _figure(8.0, 1.2 + 1.1 * (n + 1))
    axes = figure.subplots(n + 1, 1, sharex=True, squeeze=False)[:, 0]
    axes[0].plot(result.wavelength, result.model_flux, color="k", lw=0.7)
    axes[0].set_ylabel("flux")
    for i, name in enumerate(result.label_names):
        step = 0.1 * (spec[name].upper - spec[name].lower)
        axes[i + 1].plot(result.wavelength, result.derivatives[:, i] * step, lw=0.7)
        axes[i + 1].set_ylabel(f"dF/d{name}\n x {step:g}", fontsize="small")
    axes[-1].set_xlabel("wavelength [A, vacuum]")
    return _png(figure)


def _plot_correlation(result) -> str:
    p = len(result.names)
    figure = _figure(1.5 + 0.45 * p, 1.0 + 0.45 * p)
    axes = figure.add_subplot()
    image = axes.imshow(result.correlation, vmin=-1, vmax=1, cmap="RdBu_r")
    axes.set_xticks(range(p), result.names, rotation=90, fontsize="small")
    axes.set_yticks(range(p), result.names, fontsize="small")
    figure.colorbar(image, ax=axes, label="correlation")
    return _png(figure)


def _write_csv(path: Path, names, result, base, snr_values, sigma_vs_snr, resolution_values, sigma_vs_resolution) -> None:
    header = ["parameter", "value", "sigma"] + [f"sigma_snr_{s:g}" for s in snr_values] + [f"sigma_R_{r:g}" for r in resolution_values]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for name in names:
            value = float(result.theta[result.names.index(name)])
            writer.writerow([name, f"{value:.6g}", f"{base[name]:.6g}"] + [f"{v:.6g}" for v in sigma_vs_snr[name]]
                            + [f"{v:.6g}" for v in sigma_vs_resolution[name]])


def _html(result, names, base, images: Mapping[str, str], emulator, csv_path: Path) -> str:
    from stellarfit import __version__

    escape = html.escape
    emulator_name = escape(str(emulator.metadata.get("name", type(emulator).__name__)))
    rows = "\n".join(
        f"<tr><td>{escape(name)}</td><td>{float(result.theta[result.names.index(name)]):.5g}</td><td>{base[name]:.4g}</td></tr>"
        for name in names
    )
    settings: dict[str, Any] = {
        "emulator": emulator_name, "S/N per pixel": f"{result.snr:g}", "resolving power": f"{result.resolution:g}",
        "wavelength range [A, vacuum]": f"{result.wavelength[0]:.2f} - {result.wavelength[-1]:.2f} ({result.wavelength.size} pixels)",
        "rv, vsini [km/s]": f"{result.rv:g}, {result.vsini:g}" + (" (vsini free)" if "vsini" in result.names else " (vsini fixed)"),
        "continuum": f"Legendre degree {result.continuum_degree} (marginalized)",
        "unconstrained": ", ".join(result.fisher.unconstrained) or "none",
        "stellarfit": __version__,
    }
    setting_rows = "\n".join(f"<tr><th>{escape(k)}</th><td>{escape(str(v))}</td></tr>" for k, v in settings.items())
    titles = {
        "sigma_vs_snr": "Bound against S/N (sigma scales as 1/S/N)",
        "sigma_vs_resolution": "Bound against resolving power (same window and S/N per pixel, 3 pixels per resolution element)",
        "derivatives": "Model flux and derivative spectra dF/dtheta (times 10% of each label's range)",
        "correlation": "Correlation matrix (labels and nuisance parameters)",
        "by_window": "Which window constrains which label: each window's bound alone over the joint bound (1: as good as all windows)",
    }
    figures = "\n".join(
        f'<h2>{escape(titles[key])}</h2>\n<img alt="{key}" src="data:image/png;base64,{data}">' for key, data in images.items()
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Cramér-Rao report</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:0.2em 0.6em;text-align:left}} img{{max-width:100%}}</style></head>
<body>
<h1>Cramér-Rao bounds</h1>
<table>{setting_rows}</table>
<h2>Bounds (marginalized over RV{', vsini' if 'vsini' in result.names else ''} and the continuum)</h2>
<table><tr><th>parameter</th><th>value</th><th>sigma</th></tr>
{rows}
</table>
<p>Table with the bounds against S/N and resolving power: <a href="{escape(csv_path.name)}">{escape(csv_path.name)}</a></p>
{figures}
</body></html>
"""


def catalog_crb_report(catalog, out: str | os.PathLike) -> dict[str, Any]:
    """For a fitted catalog: the fit errors ``e_<name>`` against the Cramér-Rao bounds ``<name>_crb``.

    Writes ``out`` (HTML, one log-log scatter per parameter with the 1:1 line)
    and ``out`` with suffix ``.csv`` (per parameter: n, median and 16/84th
    percentiles of e/crb).  An efficient, well-behaved fit has e/crb close to 1;
    much larger ratios point at degeneracies the Laplace/posterior width sees
    and the local Fisher bound does not, or at poor fits.

    Args:
        catalog: a catalog path (:func:`~stellarfit.results.read_catalog`) or an astropy Table.
    Returns: ``{"html", "csv", "ratios": {name: {"n", "median", "p16", "p84"}}}``.
    """
    from stellarfit.results import read_catalog

    table = read_catalog(catalog) if isinstance(catalog, (str, os.PathLike)) else catalog
    out = Path(out)
    if "status" in table.colnames:
        table = table[np.asarray(table["status"]) == "ok"]
    names = [c[2:] for c in table.colnames if c.startswith("e_") and f"{c[2:]}_crb" in table.colnames]
    if not names:
        raise ValueError("the catalog has no e_<name> and <name>_crb columns; is it a stellarfit batch catalog?")
    ratios: dict[str, dict[str, float]] = {}
    images = {}
    for name in names:
        error = np.asarray(table[f"e_{name}"], dtype=float)
        bound = np.asarray(table[f"{name}_crb"], dtype=float)
        good = np.isfinite(error) & np.isfinite(bound) & (error > 0) & (bound > 0)
        ratio = error[good] / bound[good]
        ratios[name] = {"n": int(good.sum()),
                        **({k: float(np.percentile(ratio, q)) for k, q in (("median", 50), ("p16", 16), ("p84", 84))} if good.any()
                           else {"median": None, "p16": None, "p84": None})}
        if good.any():
            figure = _figure(4.5, 4.0)
            axes = figure.add_subplot()
            axes.loglog(bound[good], error[good], "o", ms=3)
            span = [min(bound[good].min(), error[good].min()), max(bound[good].max(), error[good].max())]
            axes.plot(span, span, "k--", lw=0.8, label="e = CRB")
            axes.set_xlabel(f"{name} Cramér-Rao bound")
            axes.set_ylabel(f"e_{name} (fit error)")
            axes.legend(fontsize="small")
            images[name] = _png(figure)
    csv_path = out.with_suffix(".csv")
    with open(csv_path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["parameter", "n", "median_ratio", "p16_ratio", "p84_ratio"])
        for name, row in ratios.items():
            writer.writerow([name, row["n"]] + ["" if row[k] is None else f"{row[k]:.6g}" for k in ("median", "p16", "p84")])
    escape = html.escape
    def fmt(value):
        return "-" if value is None else f"{value:.3g}"

    rows = "\n".join(f"<tr><td>{escape(n)}</td><td>{r['n']}</td><td>{fmt(r['median'])}</td><td>{fmt(r['p16'])} - {fmt(r['p84'])}</td></tr>"
                     for n, r in ratios.items())
    figures = "\n".join(f'<img alt="{escape(n)}" src="data:image/png;base64,{data}">' for n, data in images.items())
    document = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Fit errors against Cramér-Rao bounds</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:0.2em 0.6em}} img{{max-width:48%}}</style></head>
<body><h1>Fit errors against Cramér-Rao bounds</h1>
<p>{len(table)} fitted spectra. Ratio e / CRB per parameter (1 = the fit reaches the bound).</p>
<table><tr><th>parameter</th><th>n</th><th>median e/CRB</th><th>16-84%</th></tr>
{rows}
</table>
<p>Table: <a href="{escape(csv_path.name)}">{escape(csv_path.name)}</a></p>
{figures}
</body></html>
"""
    with atomic_path(out) as temporary:
        temporary.write_text(document, encoding="utf-8")
    return {"html": str(out), "csv": str(csv_path), "ratios": ratios}
