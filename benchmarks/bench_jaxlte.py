"""JAX LTE engine: spectra per second (default window, R=30,000 pixels), with --turbospectrum the speed ratio to Turbospectrum in the same run.

    python benchmarks/bench_jaxlte.py [--turbospectrum]
"""
import json, os, sys, time
import numpy as np, jax, jax.numpy as jnp
from stellarfit.synth.jaxlte import JaxLteEngine
from _provenance import provenance

def best_of(f, n=5):
    out = f(); jax.block_until_ready(out); times = []
    for _ in range(n):
        t0 = time.perf_counter(); jax.block_until_ready(f()); times.append(time.perf_counter() - t0)
    return min(times), float(np.median(times))

result = {"device": str(jax.devices()[0]), "cpu_count": os.cpu_count(), "load_avg": os.getloadavg()}
for step in (0.01, 0.02):
    t0 = time.perf_counter(); eng = JaxLteEngine(step=step); build = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    names = eng.label_names
    sun = jnp.asarray(eng.label_vector({"teff": 5777.0, "logg": 4.44, "fe_h": 0.0}), jnp.float32)
    t0 = time.perf_counter(); jax.block_until_ready(eng.spectrum(sun)); first = time.perf_counter() - t0
    single = best_of(lambda: eng.spectrum(sun))
    units = rng.uniform(size=(8, len(names)))
    batch = jnp.asarray(eng.label_spec.from_unit_cube(units), jnp.float32)
    t0 = time.perf_counter(); jax.block_until_ready(eng.spectrum(batch)); first_batch = time.perf_counter() - t0
    b = best_of(lambda: eng.spectrum(batch), n=3)
    result[f"step_{step}"] = {
        "n_native": int(eng.native_wavelength.size), "n_pixels": int(eng.wavelength.size), "summary": {k: v for k, v in eng.synthesizer.summary().items() if k != "tiers"},
        "build_s": build, "first_call_s": first, "single_best_s": single[0], "single_median_s": single[1],
        "batch8_first_s": first_batch, "batch8_best_s": b[0], "spectra_per_s_batch8": 8 / b[0],
    }
    print(json.dumps(result[f"step_{step}"]), flush=True)
if "--turbospectrum" in sys.argv:
    from stellarfit.synth.turbospectrum import TurbospectrumEngine
    ts = TurbospectrumEngine()
    t0 = time.perf_counter(); ts.synthesize({"teff": 5777.0, "logg": 4.44, "fe_h": 0.0}); result["turbospectrum_s"] = time.perf_counter() - t0
from pathlib import Path
if "turbospectrum_s" in result:
    result["speed_ratio_jax_vs_turbospectrum"] = result["turbospectrum_s"] / result["step_0.01"]["single_best_s"]
out = Path(__file__).parent / "results" / "jaxlte.json"
out.parent.mkdir(exist_ok=True)
result["provenance"] = provenance()
out.write_text(json.dumps(result, indent=1))
print(json.dumps(result, indent=1))
print(f"saved {out}")
