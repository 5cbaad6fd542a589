"""Accuracy and cost of the forward model's Doppler-shift interpolation.

The forward model (:class:`stellarfit.forward.ForwardModel`) broadens the
emulator's spectrum on its native log-lambda pixels and then evaluates it at
the Doppler-shifted positions of the observed pixels by interpolation.  This
benchmark measures, for ``payne-default`` (native R = 30,000, 3 pixels per FWHM):

(a) flux error of each interpolator against a band-limited (Fourier) shift of
    the same broadened spectrum, at shifts of 0, 1/8, 1/4, 3/8 and 1/2 native
    pixel: max and RMS over the evaluated pixels and stars;
(b) RV bias: the RV (everything else fixed at the truth) that minimizes
    sum (model - data)^2 for noise-free data made by the Fourier shift, minus the true RV;
(c) cost: ``ForwardModel`` call, gradient of a chi2 in (labels, rv, vsini) and
    ``jacfwd`` (15 parameters) on the example spectrum's pixels, float32, jitted.

Reference.  The broadened native spectrum b_k (``ForwardModel.broaden``, float64)
is extended by its mirror image (length 2n, no jump at the ends), and its
band-limited interpolant (the trigonometric one of the periodic extension) is
evaluated at the shifted positions: on the native pixels by a phase ramp in
Fourier space (a shift in ln lambda is a multiplication by exp(-2 pi i f s)), on
other grids by FFT upsampling x16 followed by a quintic spline on the fine grid.
The two agree to < 2e-7 on the native pixels (recorded as ``reference_check``);
pixels within 64 native pixels of the slice ends (mirror-extension ringing) and
those the forward model does not cover are excluded.  After the LSF to
R <= 30,000 the spectrum's power at the Nyquist frequency is < 1e-3 of its
power at low frequency, so the band-limited interpolant is the natural truth.

Interpolators: ``keys`` (Keys 1981 cubic convolution, a = -1/2; the forward
model's former default) and ``spline`` (interpolating quintic B-spline, now
the default) through ``ForwardModel.__call__`` itself (float64 here; the
spline's Doppler shift is a Fourier phase in the broadening convolution and the
observed pixels are read at fixed positions); ``spline_moving`` is the same
spline evaluated at the Doppler-shifted positions (``__call__`` before the
phase shift, kept for comparison); for
comparison, in NumPy on the same broadened spectrum: ``linear``,
``lanczos3`` / ``lanczos4`` (windowed sinc, weights normalized to sum 1) and
``cubic_bspline`` (interpolating cubic B-spline, exact prefilter).

Observed grids: ``native`` (the observed pixels are the native pixels: every
pixel has the same sub-pixel phase, the worst case; as in
``bench_map_vs_curve_fit.py``) at R_obs = 30,000 and 20,000, and ``r3``: a
log-lambda grid with 3 pixels per FWHM at R_obs = 20,000 (observed pixels 1.5
native pixels wide; phases mixed).

Cost rows: ``keys (before)`` is ``shift_to_observed(broaden(...))`` with Keys,
which is exactly the former ``ForwardModel.__call__`` (rotation FFT convolution
+ direct LSF convolution + Keys); ``keys`` and ``spline`` are the present
``__call__`` (rotation, LSF and, for the spline, its prefilter in one FFT
convolution; the spline's Doppler shift a phase in it, read at fixed pixel
positions); ``spline (moving positions)`` the same convolution with the spline
interpolated at the shifted positions (the spline's ``__call__`` before).  The rows run interleaved; best and median of repeated blocks.

    nice .venv/bin/python benchmarks/bench_rv_interpolation.py

Results: benchmarks/results/rv_interpolation.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
from _provenance import provenance

HERE = Path(__file__).resolve().parent
SPEED_OF_LIGHT_KMS = 299_792.458
SHIFTS = (0.0, 0.125, 0.25, 0.375, 0.5)
GUARD_PIXELS = 64  # native pixels next to the slice ends left out (mirror-extension ringing of the reference)
UPSAMPLE = 16
LIBRARY = ("keys", "spline", "spline_moving")  # through ForwardModel (spline_moving: the former spline path)
NUMPY = ("linear", "lanczos3", "lanczos4", "cubic_bspline")
STARS = {  # teff, logg, vmic, fe_h, alpha_fe (mg, si, ca, ti = alpha_fe; na, ni, cr, mn = 0)
    "sun": (5772.0, 4.44, 1.0, 0.0, 0.0),
    "k_giant": (4600.0, 2.5, 1.5, -0.3, 0.1),
    "metal_poor_turnoff": (6200.0, 4.0, 1.3, -1.5, 0.3),
    "metal_rich_k_dwarf": (5000.0, 4.6, 0.8, 0.3, 0.0),
}
ALPHA = ("mg_fe", "si_fe", "ca_fe", "ti_fe")


def star_labels(emulator) -> dict[str, np.ndarray]:
    out = {}
    for name, (teff, logg, vmic, fe_h, alpha_fe) in STARS.items():
        values = {"teff": teff, "logg": logg, "vmic": vmic, "fe_h": fe_h, "alpha_fe": alpha_fe}
        labels = np.array([values.get(label, alpha_fe if label in ALPHA else 0.0) for label in emulator.label_names])
        violations = emulator.label_spec.violations(labels)
        if violations:
            raise SystemExit(f"star {name} is outside the emulator's label box: {violations}")
        out[name] = labels
    return out


# -- the reference: band-limited interpolation of the broadened native spectrum ----------------------


def mirror_spectrum(broadened: np.ndarray) -> np.ndarray:
    return np.fft.rfft(np.concatenate([broadened, broadened[::-1]]))


def fourier_shift(broadened: np.ndarray, shift: float) -> np.ndarray:
    """Band-limited b at native positions k - shift (k = 0..n-1)."""
    spectrum = mirror_spectrum(broadened)
    size = 2 * broadened.size
    phase = np.exp(2j * np.pi * np.fft.rfftfreq(size) * shift)  # value at k - s: multiply by exp(-2 pi i f (-s))
    return np.fft.irfft(spectrum * phase.conj(), size)[: broadened.size]


class Upsampled:
    """Band-limited interpolant of b at any position, by FFT upsampling and a quintic spline on the fine grid."""

    def __init__(self, broadened: np.ndarray, factor: int = UPSAMPLE):
        from scipy.interpolate import make_interp_spline

        spectrum = mirror_spectrum(broadened)
        size = 2 * broadened.size
        padded = np.zeros(size * factor // 2 + 1, dtype=complex)
        padded[: spectrum.size] = spectrum
        padded[size // 2] *= 0.5  # split the Nyquist bin between +- f (a real, symmetric interpolant)
        fine = np.fft.irfft(padded, size * factor) * factor
        keep = broadened.size * factor + 8 * factor  # the first half of the mirror and a little of the second
        self.spline = make_interp_spline(np.arange(keep) / factor, fine[:keep], k=5)

    def __call__(self, position: np.ndarray) -> np.ndarray:
        return self.spline(position)


# -- comparison interpolators (NumPy, float64) ---------------------------------------------------------


def taps(values: np.ndarray, position: np.ndarray, offsets, weights) -> np.ndarray:
    n = values.size
    position = np.clip(position, 0.0, n - 1.0)
    base = np.clip(np.floor(position), 0, n - 2).astype(int)
    t = position - base
    return sum(w * values[np.clip(base + o, 0, n - 1)] for o, w in zip(offsets, weights(t)))


def cubic_bspline_coefficients(values: np.ndarray) -> np.ndarray:
    from scipy.ndimage import spline_filter1d

    return spline_filter1d(values, order=3, mode="nearest")


def numpy_interpolate(name: str, broadened: np.ndarray, position: np.ndarray, cache: dict) -> np.ndarray:
    if name == "linear":
        return np.interp(position, np.arange(broadened.size), broadened)
    if name.startswith("lanczos"):
        a = int(name[-1])
        offsets = range(-a + 1, a + 1)

        def weights(t):
            raw = [np.sinc(t - o) * np.sinc((t - o) / a) for o in offsets]
            total = sum(raw)
            return [w / total for w in raw]

        return taps(broadened, position, offsets, weights)
    if name == "cubic_bspline":
        if "bspline3" not in cache:
            cache["bspline3"] = cubic_bspline_coefficients(broadened)

        def weights(t):
            u = 1.0 - t
            return [u**3 / 6, (4.0 - 6.0 * t**2 + 3.0 * t**3) / 6, (4.0 - 6.0 * u**2 + 3.0 * u**3) / 6, t**3 / 6]

        return taps(cache["bspline3"], position, (-1, 0, 1, 2), weights)
    raise ValueError(name)


# -- (a) and (b) -----------------------------------------------------------------------------------------


def accuracy(emulator, stars: dict, configurations: list[tuple[str, float]], methods: list[str]) -> dict:
    import jax
    import jax.numpy as jnp
    from scipy.optimize import minimize_scalar

    from stellarfit.forward import ForwardModel
    from stellarfit.wavelengths import log_lambda_grid

    native = np.asarray(emulator.wavelength, dtype=np.float64)
    rest = {name: np.asarray(emulator.predict(labels), dtype=np.float64).reshape(-1) for name, labels in stars.items()}
    results = {}
    for grid_name, resolution in configurations:
        observed = native if grid_name == "native" else log_lambda_grid(native[0] + 10.0, native[-1] - 10.0, resolution, 3.0)
        key = f"{grid_name}_R{resolution:.0f}"
        models = {method: ForwardModel(lambda labels, wavelength: labels, native, float(emulator.native_resolution),
                                       observed, resolution, rv_range=(-5.0, 5.0), vsini_max=5.0,
                                       interpolation=method.removesuffix("_moving"))
                  for method in LIBRARY if method in methods}
        reference_model = models.get("spline") or next(iter(models.values()))
        log_step = reference_model.log_step
        calls = {method: jax.jit(lambda flux, rv, m=model: m(flux, rv, 0.0)) for method, model in models.items()}
        if "spline_moving" in models:  # the spline at the Doppler-shifted positions (ForwardModel.__call__ before the phase shift)
            moving = models["spline_moving"]
            calls["spline_moving"] = jax.jit(
                lambda flux, rv: moving._interpolate(moving._broaden_fused(flux, 0.0), rv, prefiltered=True))
        entry = {"observed_pixels": int(observed.size), "methods": {m: {"per_shift": []} for m in methods}}
        checks = []
        for star, flux in rest.items():
            # one native slice for all: the models' slices differ only by the spline's margin
            model = reference_model
            broadened = np.asarray(model.broaden(jnp.asarray(flux[model.native_slice]), 0.0), dtype=np.float64)
            n = broadened.size
            base = (np.log(observed) - np.log(model.native_wavelength[0])) / log_step
            upsampled = Upsampled(broadened)
            cache: dict = {}
            for shift in SHIFTS:
                position = base - shift
                mask = model.covered & (position >= GUARD_PIXELS) & (position <= n - 1 - GUARD_PIXELS)
                reference = upsampled(position)
                if grid_name == "native":
                    exact = fourier_shift(broadened, shift)[np.clip(np.round(position + shift).astype(int), 0, n - 1)]
                    checks.append(float(np.max(np.abs(exact - reference)[mask])))
                rv_true = SPEED_OF_LIGHT_KMS * np.tanh(shift * log_step)  # log D(rv) = atanh(beta) = shift * log_step
                for method in methods:
                    if method in models:
                        m = models[method]
                        own = flux[m.native_slice]  # each model on its own native slice (the spline's has more margin)
                        evaluate = lambda rv, m=method, own=own: np.asarray(calls[m](jnp.asarray(own), rv))  # noqa: E731
                    else:
                        evaluate = lambda rv, m=method: numpy_interpolate(  # noqa: E731
                            m, broadened, base - np.arctanh(rv / SPEED_OF_LIGHT_KMS) / log_step, cache)
                    error = (evaluate(rv_true) - reference)[mask]
                    chi2 = lambda rv: float(np.sum((evaluate(rv) - reference)[mask] ** 2))  # noqa: E731
                    half = 0.3 * SPEED_OF_LIGHT_KMS * log_step
                    fit = minimize_scalar(chi2, bounds=(rv_true - half, rv_true + half), method="bounded",
                                          options={"xatol": 1e-7})
                    entry["methods"][method]["per_shift"].append({
                        "star": star, "shift_pixels": shift, "rv_true_kms": rv_true,
                        "max_error": float(np.max(np.abs(error))), "rms_error": float(np.sqrt(np.mean(error**2))),
                        "rv_bias_ms": 1e3 * (float(fit.x) - rv_true), "pixels": int(mask.sum()),
                    })
        for method, row in entry["methods"].items():
            per = row["per_shift"]
            row["by_shift"] = {
                f"{shift:g}": {
                    "max_error": max(p["max_error"] for p in per if p["shift_pixels"] == shift),
                    "rms_error": float(np.sqrt(np.mean([p["rms_error"] ** 2 for p in per if p["shift_pixels"] == shift]))),
                    "rv_bias_ms_mean": float(np.mean([p["rv_bias_ms"] for p in per if p["shift_pixels"] == shift])),
                    "rv_bias_ms_min": min(p["rv_bias_ms"] for p in per if p["shift_pixels"] == shift),
                    "rv_bias_ms_max": max(p["rv_bias_ms"] for p in per if p["shift_pixels"] == shift),
                }
                for shift in SHIFTS
            }
            row["max_abs_rv_bias_ms"] = max(abs(p["rv_bias_ms"]) for p in per)
            row["max_error"] = max(p["max_error"] for p in per)
        if checks:
            entry["reference_check"] = {"description": "max |phase-ramp shift - upsampled reference| on the native pixels",
                                        "value": max(checks)}
        results[key] = entry
        print(f"{key}: " + ", ".join(f"{m} {row['max_abs_rv_bias_ms']:.2f} m/s" for m, row in entry["methods"].items()),
              flush=True)
    return results


# -- (c) cost --------------------------------------------------------------------------------------------


def timing(emulator, repeats: int, block: int) -> dict:
    import jax
    import jax.numpy as jnp

    import stellarfit as sf
    from stellarfit.forward import ForwardModel

    wavelength = np.asarray(sf.example_spectrum().wavelength, dtype=np.float64)
    labels = jnp.asarray(0.5 * (emulator.label_spec.lower + emulator.label_spec.upper), jnp.float32)
    parameters = jnp.concatenate([labels, jnp.array([10.3, 5.0], jnp.float32)])
    cases = {"scalar R 22,500": 22_500.0, "per-pixel R 20,000-25,000": np.linspace(20_000.0, 25_000.0, wavelength.size),
             "per-pixel R 14,000-28,000": np.linspace(14_000.0, 28_000.0, wavelength.size)}
    out = {"pixels": int(wavelength.size), "cases": {}}
    for case, resolution in cases.items():
        models = {"keys": ForwardModel.from_emulator(emulator, wavelength, resolution, interpolation="keys"),
                  "spline": ForwardModel.from_emulator(emulator, wavelength, resolution, interpolation="spline")}
        rows = {
            "keys (before)": lambda p, m=models["keys"]: m.shift_to_observed(m.broaden(m.rest_frame(p[:-2]), p[-1]), p[-2]),
            "keys": lambda p, m=models["keys"]: m(p[:-2], p[-2], p[-1]),
            "spline (moving positions)": lambda p, m=models["spline"]: m._interpolate(
                m._broaden_fused(m.rest_frame(p[:-2]), p[-1]), p[-2], prefiltered=True),
            "spline": lambda p, m=models["spline"]: m(p[:-2], p[-2], p[-1]),
        }
        data = rows["spline"](parameters + 0.01)
        functions = {}
        for row, model in rows.items():
            functions[row] = {
                "call": jax.jit(model),
                "gradient": jax.jit(jax.grad(lambda p, f=model: jnp.sum((f(p) - data) ** 2))),
                "jacfwd": jax.jit(jax.jacfwd(model)),
            }
        times = {row: {kind: [] for kind in ("call", "gradient", "jacfwd")} for row in rows}
        compile_s = {}
        for row, kinds in functions.items():
            for kind, function in kinds.items():
                begin = time.perf_counter()
                jax.block_until_ready(function(parameters))
                compile_s[f"{row} {kind}"] = time.perf_counter() - begin
        for _ in range(repeats):
            for row, kinds in functions.items():
                for kind, function in kinds.items():
                    count = block if kind != "jacfwd" else max(block // 5, 1)
                    begin = time.perf_counter()
                    for _ in range(count):
                        result = function(parameters)
                    jax.block_until_ready(result)
                    times[row][kind].append((time.perf_counter() - begin) / count)
        out["cases"][case] = {
            "native_pixels": {name: m.n_native for name, m in models.items()},
            "covered_pixels": {name: int(m.covered.sum()) for name, m in models.items()},
            "anchors": (None if models["spline"].lsf_anchor_resolution is None
                        else int(models["spline"].lsf_anchor_resolution.size)),
            "ms": {row: {kind: {"best": 1e3 * min(v), "median": 1e3 * float(np.median(v))} for kind, v in kinds.items()}
                   for row, kinds in times.items()},
            "compile_s": compile_s,
        }
        print(case, {row: {k: round(v["median"], 3) for k, v in kinds.items()}
                     for row, kinds in out["cases"][case]["ms"].items()}, flush=True)
    return out


# -- output ----------------------------------------------------------------------------------------------


def markdown(document: dict) -> str:
    lines = [f"`{document['emulator']}` (native R {document['native_resolution']:.0f}, {document['velocity_step_kms']:.3f} km/s "
             f"pixels); {document['device']}, {document['cpu_count']} cores, load {document['load_average_before'][0]:.1f} -> "
             f"{document['load_average_after'][0]:.1f}, {document['date']}. Stars: {', '.join(STARS)}.", ""]
    for key, entry in document.get("accuracy", {}).items():
        lines += [f"### {key} ({entry['observed_pixels']} observed pixels)", "",
                  "Flux error against the band-limited shift, max over stars (RMS), by shift in native pixels:", "",
                  "| interpolator | " + " | ".join(f"{s:g}" for s in SHIFTS) + " |", "|---" * (len(SHIFTS) + 1) + "|"]
        for method, row in entry["methods"].items():
            cells = [f"{row['by_shift'][f'{s:g}']['max_error']:.1e} ({row['by_shift'][f'{s:g}']['rms_error']:.0e})"
                     for s in SHIFTS]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines += ["", "RV bias [m/s] of a noise-free fit of the RV alone, mean over stars [min, max]:", "",
                  "| interpolator | " + " | ".join(f"{s:g}" for s in SHIFTS) + " | max abs |", "|---" * (len(SHIFTS) + 2) + "|"]
        for method, row in entry["methods"].items():
            cells = []
            for s in SHIFTS:
                b = row["by_shift"][f"{s:g}"]
                cells.append(f"{b['rv_bias_ms_mean']:+.2f} [{b['rv_bias_ms_min']:+.2f}, {b['rv_bias_ms_max']:+.2f}]")
            lines.append(f"| {method} | " + " | ".join(cells) + f" | {row['max_abs_rv_bias_ms']:.2f} |")
        if "reference_check" in entry:
            lines += ["", f"Reference check (phase ramp against upsampling, native pixels): {entry['reference_check']['value']:.1e}."]
        lines.append("")
    cost = document.get("timing")
    if cost:
        lines += [f"### Cost (float32, jitted, example spectrum: {cost['pixels']} pixels; ms, median (best))", "",
                  "| case | row | call | gradient (15 parameters) | jacfwd (15 parameters) |", "|---|---|---|---|---|"]
        for case, entry in cost["cases"].items():
            suffix = f" (K = {entry['anchors']})" if entry["anchors"] else ""
            for row, kinds in entry["ms"].items():
                cells = [f"{kinds[k]['median']:.2f} ({kinds[k]['best']:.2f})" for k in ("call", "gradient", "jacfwd")]
                lines.append(f"| {case}{suffix} | {row} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--emulator", default="payne-default")
    parser.add_argument("--methods", nargs="+", default=list(LIBRARY + NUMPY), choices=list(LIBRARY + NUMPY))
    parser.add_argument("--repeats", type=int, default=15, help="timing: interleaved blocks per row")
    parser.add_argument("--block", type=int, default=20, help="timing: calls per block (jacfwd: a fifth)")
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--out", default=None, help="output path without suffix (default results/rv_interpolation)")
    args = parser.parse_args()

    import jax

    import stellarfit as sf

    emulator = sf.load_emulator(args.emulator)
    native = np.asarray(emulator.wavelength, dtype=np.float64)
    document = {
        "benchmark": "bench_rv_interpolation", "emulator": args.emulator,
        "native_resolution": float(emulator.native_resolution),
        "velocity_step_kms": SPEED_OF_LIGHT_KMS * float(np.log(native[1] / native[0])),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(jax.devices()[0]), "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "load_average_before": list(os.getloadavg()), "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "shifts_pixels": list(SHIFTS), "stars": {name: dict(zip(("teff", "logg", "vmic", "fe_h", "alpha_fe"), values))
                                                 for name, values in STARS.items()},
    }
    if not args.skip_timing:  # float32, before x64 is switched on
        document["timing"] = timing(emulator, args.repeats, args.block)
    if not args.skip_accuracy:
        jax.config.update("jax_enable_x64", True)
        configurations = [("native", 30_000.0), ("native", 20_000.0), ("r3", 20_000.0)]
        document["accuracy"] = accuracy(emulator, star_labels(emulator), configurations, args.methods)
    document["load_average_after"] = list(os.getloadavg())
    document["provenance"] = provenance()
    out = Path(args.out) if args.out else HERE / "results" / "rv_interpolation"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(document, indent=1))
    text = markdown(document)
    out.with_suffix(".md").write_text(text)
    print(text)
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
