"""The same spectra fitted with several emulators, side by side (``stellarfit compare``).

:func:`compare_emulators` fits every spectrum with every emulator (:func:`fit_stars`, so spectra
on one pixel grid share one compiled fit) and summarizes, per emulator and parameter:

- with known labels (``truths``; e.g. spectra of a held-out grid observed with
  :func:`observe_grid`): bias = median(fit - truth), scatter = 1.4826 MAD(fit - truth), the
  median reported error and Cramér-Rao bound, the robust width of z = (fit - truth) / error (1 for
  calibrated errors) and the fraction of truths inside the 68% and 95% intervals;
- always: the median value, error and CRB, and for each pair of emulators the median and robust
  scatter of their differences and the median of |difference| / (their errors in quadrature).

A spectrum that an emulator cannot fit is recorded as that emulator's failure (its message in
``failures``) and left out of every statistic that needs it; the other fits go on.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["compare_emulators", "observe_grid", "comparison_table"]


def _robust_sigma(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan")
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


def _nanmedian(values) -> float:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(np.median(values)) if values.size else float("nan")


def observe_grid(grid, indices: Sequence[int], *, snr: float = 100.0, resolution: float = 22_500.0,
                 window: tuple[float, float] | None = None, native_resolution: float | None = None,
                 rv_limit: float = 150.0, vsini_max: float = 8.0, tilt: float = 0.2, seed: int = 0):
    """Spectra of a grid as an instrument would observe them, with their labels.

    Each spectrum ``grid.flux[i]`` (``i`` in ``indices``) gets a random RV (uniform in
    +-``rv_limit`` km/s), vsini (uniform in 0..``vsini_max``), a linear continuum tilt (uniform in
    +-``tilt``), the LSF of ``resolution`` on a log-lambda grid of 2.5 pixels per resolution element
    over ``window`` (default: the grid's range less 10 A at each end) and Gaussian noise at ``snr``
    (:func:`stellarfit.forward.simulate_observation`); ``seed`` fixes the draws.  The grid's
    native resolution comes from its metadata (``native_resolution`` overrides it).

    Returns ``(spectra, truths, names)``: the ObservedSpectrum list, the (n, n_labels + 2) true
    labels, RV and vsini, and their names.  Use spectra that no compared emulator was trained on.
    """
    from stellarfit.forward import simulate_observation
    from stellarfit.wavelengths import log_lambda_grid

    indices = np.asarray(indices, dtype=int)
    if indices.size == 0:
        raise ValueError("no grid spectra selected")
    if indices.min() < 0 or indices.max() >= len(grid):
        raise ValueError(f"grid indices must lie in [0, {len(grid)}), got {indices.min()}..{indices.max()}")
    if native_resolution is None:
        native_resolution = (grid.metadata.get("engine") or {}).get("resolution")
        if native_resolution is None:
            raise ValueError("the grid's metadata records no resolution (engine.resolution); pass native_resolution=")
    native_resolution = float(native_resolution)
    if not resolution <= native_resolution:
        raise ValueError(f"resolution {resolution:g} is above the grid's native {native_resolution:g}: a grid spectrum "
                         "can only be broadened")
    if not (np.isfinite(snr) and snr > 0):
        raise ValueError(f"snr must be a positive number, got {snr}")
    wavelength_grid = np.asarray(grid.wavelength, dtype=np.float64)
    low, high = window if window is not None else (wavelength_grid[0] + 10.0, wavelength_grid[-1] - 10.0)
    if not (wavelength_grid[0] <= low < high <= wavelength_grid[-1]):
        raise ValueError(f"window {low:g}-{high:g} A must lie inside the grid's {wavelength_grid[0]:.1f}-"
                         f"{wavelength_grid[-1]:.1f} A")
    wavelength = log_lambda_grid(low, high, resolution, 2.5)
    x = (wavelength - wavelength.mean()) / np.ptp(wavelength)
    rng = np.random.default_rng(seed)
    rvs = rng.uniform(-rv_limit, rv_limit, indices.size)
    vsinis = rng.uniform(0.0, vsini_max, indices.size)
    tilts = rng.uniform(-tilt, tilt, indices.size)
    spectra, truths = [], []
    for k, index in enumerate(indices):
        spectra.append(simulate_observation(wavelength_grid, np.asarray(grid.flux[index]), native_resolution, wavelength,
                                            resolution, rv=rvs[k], vsini=vsinis[k], snr=snr,
                                            continuum=1000.0 * (1.0 + tilts[k] * x), rng=rng))
        truths.append(np.concatenate([np.asarray(grid.labels[index], dtype=np.float64), [rvs[k], vsinis[k]]]))
    return spectra, np.array(truths), [*grid.label_spec.names, "rv", "vsini"]


def compare_emulators(spectra: Sequence, emulators: Mapping[str, object], *, truths: np.ndarray | None = None,
                      names: Sequence[str] | None = None, method: str = "map", progress: bool = False,
                      **fit_options) -> dict:
    """Fit ``spectra`` with each of ``emulators`` (name -> Emulator) and compare the fits.

    ``truths`` (n_spectra, len(names)): known values of the parameters ``names`` (labels, and rv
    and vsini if known); a parameter that an emulator does not fit is left out of its rows.
    ``method``: "map" or "nuts" (:func:`stellarfit.fit_stars`); ``fit_options`` go to it too.

    Returns a JSON-ready document: ``emulators``, ``n_spectra``, ``method``, ``with_truths``,
    per emulator ``results[name]`` = {``n_fitted``, ``n_failed``, ``failures`` (index and message),
    ``seconds``, ``parameters``: {parameter: {median_value, bias, scatter, median_error, median_crb, z_width,
    inside_68, inside_95, n}}} (bias, scatter, z and the inside fractions only with truths) and
    ``values``/``errors`` per spectrum (None where the fit failed), and ``pairs`` ("A vs B") =
    {parameter: {median_difference, scatter_difference, median_abs_z, n}} over the spectra both fitted.
    """
    from stellarfit.inference.fit import fit_stars

    spectra = list(spectra)
    if not spectra:
        raise ValueError("no spectra to compare")
    if len(emulators) < 1:
        raise ValueError("give at least one emulator")
    if method not in ("map", "nuts"):
        raise ValueError(f"method must be 'map' or 'nuts', got {method!r}")
    if truths is not None:
        truths = np.asarray(truths, dtype=np.float64)
        if names is None or truths.shape != (len(spectra), len(names)):
            raise ValueError(f"truths must have shape (n_spectra, len(names)) = ({len(spectra)}, "
                             f"{None if names is None else len(names)}), got {truths.shape}")
    document = {"emulators": list(emulators), "n_spectra": len(spectra), "method": method,
                "with_truths": truths is not None, "results": {}, "pairs": {}}
    fitted: dict[str, dict] = {}
    for name, emulator in emulators.items():
        start = time.perf_counter()
        results = fit_stars(spectra, emulator, method=method, errors="collect", progress=progress, **fit_options)
        seconds = time.perf_counter() - start
        ok = [i for i, r in enumerate(results) if not isinstance(r, Exception)]
        parameters = list(results[ok[0]].names) if ok else []
        values = np.full((len(spectra), len(parameters)), np.nan)
        errors = np.full_like(values, np.nan)
        crbs = np.full_like(values, np.nan)
        lower, upper = np.full_like(values, np.nan), np.full_like(values, np.nan)
        for i in ok:
            for j, parameter in enumerate(parameters):
                row = results[i].labels[parameter]
                values[i, j], errors[i, j], crbs[i, j] = row["value"], row["error"], row["crb"]
                lower[i, j], upper[i, j] = row["lower"], row["upper"]
        fitted[name] = {"parameters": parameters, "values": values, "errors": errors}
        rows = {}
        for j, parameter in enumerate(parameters):
            row = {"median_value": _nanmedian(values[ok, j]), "median_error": _nanmedian(errors[ok, j]),
                   "median_crb": _nanmedian(crbs[ok, j]), "n": len(ok)}
            if truths is not None and parameter in names:
                truth = truths[ok, list(names).index(parameter)]
                delta = values[ok, j] - truth
                # each truth against its own side of the interval (asymmetric NUTS intervals)
                side = np.where(delta < 0, upper[ok, j] - values[ok, j], values[ok, j] - lower[ok, j])
                with np.errstate(divide="ignore", invalid="ignore"):
                    z = np.abs(delta) / np.where(side > 0, side, np.nan)
                    z_signed = delta / errors[ok, j]
                finite = np.isfinite(z)
                row.update(bias=_nanmedian(delta), scatter=_robust_sigma(delta), z_width=_robust_sigma(z_signed),
                           inside_68=float(np.mean(z[finite] <= 1.0)) if finite.any() else float("nan"),
                           inside_95=float(np.mean(z[finite] <= 1.96)) if finite.any() else float("nan"))
            rows[parameter] = row
        document["results"][name] = {
            "n_fitted": len(ok), "n_failed": len(spectra) - len(ok),
            "failures": [{"index": i, "error": f"{type(r).__name__}: {r}"} for i, r in enumerate(results)
                         if isinstance(r, Exception)],
            "seconds": seconds, "parameters": rows,
            "values": [None if i not in ok else dict(zip(parameters, values[i].tolist())) for i in range(len(spectra))],
            "errors": [None if i not in ok else dict(zip(parameters, errors[i].tolist())) for i in range(len(spectra))],
        }
    for a, b in itertools.combinations(emulators, 2):
        pair = {}
        for parameter in fitted[a]["parameters"]:
            if parameter not in fitted[b]["parameters"]:
                continue
            ja, jb = fitted[a]["parameters"].index(parameter), fitted[b]["parameters"].index(parameter)
            difference = fitted[a]["values"][:, ja] - fitted[b]["values"][:, jb]
            combined = np.hypot(fitted[a]["errors"][:, ja], fitted[b]["errors"][:, jb])
            both = np.isfinite(difference)
            with np.errstate(divide="ignore", invalid="ignore"):
                z = np.abs(difference[both]) / combined[both]
            pair[parameter] = {"median_difference": _nanmedian(difference[both]),
                               "scatter_difference": _robust_sigma(difference[both]),
                               "median_abs_z": _nanmedian(z), "n": int(both.sum())}
        document["pairs"][f"{a} vs {b}"] = pair
    return document


def comparison_table(document: dict) -> str:
    """The comparison as a plain-text table: one row per parameter, entries "A / B / ..." per emulator."""
    names = document["emulators"]
    results = document["results"]
    parameters = list(dict.fromkeys(p for name in names for p in results[name]["parameters"]))
    columns = (["bias", "scatter"] if document["with_truths"] else ["median_value"]) + ["median_error", "median_crb"] + (
        ["z_width", "inside_68"] if document["with_truths"] else [])
    header = ["parameter", *columns]
    count = document["n_spectra"]
    lines = [" / ".join(names) + f" ({document['method']}, {count} spectr{'um' if count == 1 else 'a'}; "
             + ", ".join(f"{name}: {results[name]['n_fitted']} fitted, {results[name]['seconds']:.0f} s" for name in names) + ")"]
    table = [header]
    for parameter in parameters:
        cells = [parameter]
        for column in columns:
            entries = []
            for name in names:
                value = results[name]["parameters"].get(parameter, {}).get(column)
                if value is None or not np.isfinite(value):
                    entries.append("-")
                elif column == "inside_68":
                    entries.append(f"{100 * value:.0f}%")
                elif column == "z_width":
                    entries.append(f"{value:.2f}")
                elif column == "median_value":
                    entries.append(f"{value:.6g}")
                else:
                    entries.append(f"{value:.3g}")
            cells.append(" / ".join(entries))
        table.append(cells)
    widths = [max(len(row[k]) for row in table) for k in range(len(header))]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in table]
    for pair, rows in document["pairs"].items():
        if rows:
            lines.append(f"{pair}: median |difference| / combined error " + ", ".join(
                f"{parameter} {row['median_abs_z']:.2f}" for parameter, row in rows.items()))
    for name in names:
        for failure in results[name]["failures"][:5]:
            lines.append(f"{name} failed on spectrum {failure['index']}: {failure['error']}")
    return "\n".join(lines)
