"""Install a trained emulator as a shipped one (stellarfit/data/emulators/<directory>/).

Evaluates it on the held-out test split (10%, split seed 0) of the grid it was
trained on, records the test metrics and the inference cost in its metadata,
names it, and writes a PROVENANCE.md beside the arrays.

    python scripts/ship_emulator.py ~/.cache/stellarfit/emulators/payne_default_20k payne-default \\
        --grid ~/.cache/stellarfit/grids/ts_default_2000.h5 --command "stellarfit train ..."
"""

from __future__ import annotations

import argparse
import datetime
import os
import time
from pathlib import Path

import numpy as np

PACKAGE_DATA = Path(__file__).resolve().parents[1] / "src" / "stellarfit" / "data" / "emulators"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("emulator", help="trained emulator directory")
    parser.add_argument("name", help="shipped name (a key of stellarfit.emulators.registry.SHIPPED_EMULATORS)")
    parser.add_argument("--grid", required=True, help="the grid it was trained on (for the test split)")
    parser.add_argument("--command", default="", help="the command(s) that trained it, for the provenance note")
    parser.add_argument("--notes", default="", help="extra provenance text")
    parser.add_argument("--activation-sharpness", type=float, default=None,
                        help="Payne only: smooth its LeakyReLU (softplus sharpness beta, see stellarfit.emulators.payne) "
                             "before evaluating and shipping; payne-default ships with 100")
    args = parser.parse_args()

    import jax
    import jax.numpy as jnp

    from stellarfit.emulators import TrainingData, estimate_pixel_error, evaluate_emulator, load_emulator
    from stellarfit.emulators.registry import SHIPPED_EMULATORS
    from stellarfit.grids import SpectralGrid

    emulator = load_emulator(args.emulator)
    if args.activation_sharpness is not None:
        if emulator.model_type != "payne":
            raise SystemExit(f"--activation-sharpness applies to a Payne; {args.emulator} is a {emulator.model_type} emulator")
        emulator = emulator.replace(config={**emulator.config, "activation_sharpness": args.activation_sharpness})
    grid = SpectralGrid.read(os.path.expanduser(args.grid))
    _, validation, test = grid.split((0.8, 0.1, 0.1), seed=0)
    # the emulator's own error per pixel, from the validation split (the test split stays for reporting)
    emulator = emulator.with_pixel_error(estimate_pixel_error(emulator, TrainingData.from_grid(grid, validation)))
    evaluation = evaluate_emulator(emulator, TrainingData.from_grid(grid, test))

    # inference cost per spectrum on this machine: forward and one chi2 gradient w.r.t. the labels
    flux_fn = emulator.flux_fn()
    x = jnp.asarray(0.5 * (emulator.label_spec.lower + emulator.label_spec.upper), jnp.float32)
    target = jnp.asarray(grid.flux[test[0]])
    forward = jax.jit(flux_fn)
    gradient = jax.jit(jax.grad(lambda labels: jnp.sum((flux_fn(labels) - target) ** 2)))
    timings = {}
    for key, function in (("forward_ms", forward), ("label_gradient_ms", gradient)):
        function(x).block_until_ready()
        repeats = []
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(20):
                function(x).block_until_ready()
            repeats.append((time.perf_counter() - start) / 20 * 1e3)
        timings[key] = float(np.min(repeats))
    metrics = dict(emulator.metadata.get("metrics") or {})
    metrics.update(test_mae=evaluation.mae, test_mse=evaluation.mse, n_test=int(len(test)),
                   test_split="grid.split((0.8, 0.1, 0.1), seed=0)[2]",
                   cost_per_spectrum={**timings, "device": str(jax.devices()[0]), "cpu_count": os.cpu_count(),
                                      "load_average": list(os.getloadavg())})
    metadata = {**emulator.metadata, "name": args.name, "metrics": metrics,
                "shipped": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    out = PACKAGE_DATA / SHIPPED_EMULATORS[args.name]
    shipped = emulator.replace(metadata=metadata)
    assert shipped.pixel_error is not None
    shipped.save(str(out), overwrite=True)
    size = sum(p.stat().st_size for p in out.iterdir()) / 1e6
    note = f"""# Shipped emulator `{args.name}`

- Model: {emulator.model_type}, config {emulator.config}; {emulator.n_parameters:,} parameters; {emulator.n_pixels} pixels
  {emulator.wavelength[0]:.2f}-{emulator.wavelength[-1]:.2f} A (vacuum), native R = {emulator.native_resolution:g};
  continuum output: {emulator.has_continuum}.
- Trained on: `{args.grid}` (Turbospectrum default grid, training-grid hash
  `{emulator.metadata.get('training_grid_hash')}`), the 80% training split (split seed 0).
- Test MAE of normalized flux on the {len(test)} held-out test spectra: **{evaluation.mae:.5f}** (MSE {evaluation.mse:.3e}).
- Cost per spectrum on {jax.devices()[0]} ({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}):
  forward {timings['forward_ms']:.2f} ms, chi2 label gradient {timings['label_gradient_ms']:.2f} ms.
- Per-pixel emulator error (`pixel_error`, RMS on the {len(validation)} validation spectra, added to the noise
  in fits): median {np.median(emulator.pixel_error):.4f}, 99th percentile {np.percentile(emulator.pixel_error, 99):.4f}.
- Size: {size:.1f} MB. Licence: generated by this project (same licence as stellarfit).
- Command: `{args.command}`
{args.notes}
"""
    (out / "PROVENANCE.md").write_text(note)
    print(note)


if __name__ == "__main__":
    main()
