"""Cross-survey transfer of the spectrum encoder (issue 46; after Zhao, Ting, Wyse et al. 2026).

Survey A (pre-training): spectra simulated from the shipped ``payne-default`` emulator at
LAMOST-LRS-like R 1,700-1,900, S/N 20-200 (6,000 steps of 32; the encoder is kept in the user
cache under ``transfer/survey_a``, never in git).  Survey B (adaptation): the Turbospectrum grid
``ts_astro_sa_600.h5`` (Turbospectrum with astrophysical log gf values: other physics than
payne-default, as real survey B data would be) observed DESI-like at R 3,800-4,200, S/N 30-100,
RV within +-300 km/s, through the same forward model.  The grid's 80/10/10 split (seed 0, as
``stellarfit train`` splits it): the adaptation pool is its train part, the test stars its
validation and test parts (never used for adaptation).

Methods: zero-shot (the A encoder through ``predict``, which degrades R 4,000 to its own
resolution; and on R 4,000 tokens as they are), head only, residual adapters, LoRA, full
fine-tuning, from scratch (the same architecture, B's stars only), and an MLP on the raw
spectrum; N = 100, 250 and all pool stars, and SpectraFM's test (adapt on [Fe/H] > -1 stars
only, test on iron-poor ones).  Every test star is observed ``--draws`` times (fixed seeds, R
4,000, S/N log-uniform 30-100, whole window); per label: bias, robust scatter (1.4826 MAD) and
the coverage of the 1-sigma errors, split at [Fe/H] = -1.

Resumable: each run is appended to the results file as it finishes, and runs already there are
skipped.  Public API only.

    python benchmarks/bench_encoder_transfer.py             # pre-train (or reuse), then every run
    python benchmarks/bench_encoder_transfer.py --table     # print the tables of the results file
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np
from _provenance import provenance

import stellarfit as sf
from stellarfit.encoders import (
    AdaptSettings,
    EncoderConfig,
    GridSpectra,
    MLPSettings,
    SimulationSettings,
    TrainingSettings,
    TrainingSimulator,
    adapt_encoder,
    predict,
    predict_tokens,
    train_encoder,
    train_spectrum_mlp,
)
from stellarfit.forward import log_doppler_factor
from stellarfit.grids import SpectralGrid

CONFIG = EncoderConfig(patch_size=8, dim=64, heads=4, blocks=3, cross_blocks=2, mlp_ratio=2)
BUCKETS = (16, 24, 32, 48, 64, 80, 96, 112, 128, 144, 160)
SURVEY_A = SimulationSettings(resolution_range=(1700.0, 1900.0), pixels_per_fwhm_range=(2.0, 3.0), snr_range=(20.0, 200.0),
                              token_buckets=BUCKETS)
PRETRAINING = TrainingSettings(steps=6000, batch_size=32, learning_rate=1e-3, warmup_steps=200, seed=0,
                               validate_every=500, checkpoint_every=250)
SURVEY_B = SimulationSettings(resolution_range=(3800.0, 4200.0), pixels_per_fwhm_range=(2.0, 3.0), snr_range=(30.0, 100.0),
                              rv_range=(-300.0, 300.0), gap_rate=0.3, crop_probability=0.0, token_buckets=(112, 144))
GRID = "ts_astro_sa_600.h5"
STEPS = 600
SIZES = (100, 250, None)  # None: every pool star
MODES = ("head", "adapters", "lora", "full", "scratch", "mlp")
SPECTRAFM_MODES = ("full", "lora", "scratch", "mlp", "head", "adapters")
TEST_RESOLUTION = 4000.0
LABELS = ("teff", "logg", "fe_h", "mg_fe")


def cache_root() -> Path:
    root = os.environ.get("STELLARFIT_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "stellarfit")
    return Path(root)


def pretrain(directory: Path):
    emulator = sf.load_emulator("payne-default")
    settings = dataclasses.replace(PRETRAINING, checkpoint_dir=str(directory))
    encoder, history = train_encoder(emulator, settings, config=CONFIG, simulation=SURVEY_A)
    return encoder, history


def split(grid_path: Path):
    """(pool rows, test rows) of the grid: its 80/10/10 split with seed 0 (train | validation + test)."""
    grid = SpectralGrid.read(grid_path)
    train, validation, test = grid.split((0.8, 0.1, 0.1), seed=0)
    return grid, np.sort(train), np.sort(np.concatenate([validation, test]))


def test_observations(simulator: TrainingSimulator, rows: np.ndarray, draws: int, seed: int = 2026):
    """[(pixels, tokens)] of every test star observed ``draws`` times (same arrays for every method)."""
    out = []
    for draw in range(draws):
        for start in range(0, rows.size, 40):
            chunk = rows[start:start + 40]
            pixels = simulator.sample_pixels(np.random.default_rng([seed, draw, start]), chunk.size, resolution=TEST_RESOLUTION,
                                             masks=False, rows=chunk)
            tokens = simulator.sample(np.random.default_rng([seed, draw, start]), chunk.size, resolution=TEST_RESOLUTION,
                                      masks=False, rows=chunk)
            out.append((pixels, tokens))
    return out


def metrics(names, values: np.ndarray, errors: np.ndarray, truths: np.ndarray, fe_h: np.ndarray) -> dict:
    """{group: {label: {bias, scatter, coverage_1sigma, rms, n}}}, groups split at [Fe/H] = -1 (truth)."""
    result = {}
    for group, keep in (("all", np.ones(fe_h.size, bool)), ("fe_h>-1", fe_h > -1.0), ("fe_h<-1", fe_h <= -1.0)):
        rows = {}
        for i, name in enumerate(names):
            r = values[keep, i] - truths[keep, i]
            rows[name] = {"bias": float(np.median(r)), "scatter": float(1.4826 * np.median(np.abs(r - np.median(r)))),
                          "rms": float(np.sqrt(np.mean(r**2))), "coverage_1sigma": float(np.mean(np.abs(r) <= errors[keep, i])),
                          "truth_sd": float(np.std(truths[keep, i]))}
        result[group] = {"n_spectra": int(keep.sum()), "labels": rows}
    return result


def evaluate(observations, names, *, encoder=None, mlp=None, tokens: bool = False, rest_frame: bool = False) -> dict:
    """Metrics of one method on the test observations; ``rest_frame``: the spectra are moved to the rest frame
    with their true RV first (the MLP; the encoder adapted on rest-frame spectra)."""
    values, errors, truths = [], [], []
    for pixels, batch in observations:
        if mlp is not None:
            result = mlp.predict(pixels.spectra(), pixels.rv if rest_frame else None)
            values.append([[row[n][0] for n in names] for row in result])
            errors.append([[row[n][1] for n in names] for row in result])
        elif tokens:  # the tokens as the simulator makes them (no degradation to the encoder's R)
            value, error = predict_tokens(encoder, batch.features, batch.encoding, batch.token_mask)
            values.append(value[:, :len(names)])
            errors.append(error[:, :len(names)])
        else:
            spectra = pixels.spectra()
            if rest_frame:  # the encoder adapted on rest-frame spectra reads them moved with the true RV, as the MLP does
                spectra = [s.replace(wavelength=s.wavelength * np.exp(-float(log_doppler_factor(v)))) for s, v in zip(spectra, pixels.rv)]
            result = predict(encoder, spectra)
            values.append([[row[n][0] for n in names] for row in result])
            errors.append([[row[n][1] for n in names] for row in result])
        truths.append(pixels.labels)
    values, errors, truths = (np.concatenate([np.asarray(a, np.float64) for a in x]) for x in (values, errors, truths))
    return metrics(names, values, errors, truths, truths[:, names.index("fe_h")])


def run_plan(pool: np.ndarray, grid) -> list[dict]:
    """Every run: {id, mode, rows (grid rows it adapts on), n, sample}; the most telling first (N = 100, SpectraFM's
    test, all pool stars, N = 250), so that a run cut short still has them."""
    order = np.random.default_rng(46).permutation(pool)
    plan = [{"id": "zero-shot", "mode": "zero-shot", "rows": [], "n": 0},
            {"id": "zero-shot-tokens", "mode": "zero-shot-tokens", "rows": [], "n": 0}]
    rich = np.sort(pool[grid.labels[pool, grid.label_spec.index("fe_h")] > -1.0])
    blocks = {size: np.sort(order[:size]) if size else np.sort(order) for size in SIZES}
    for rows, modes, sample in ((blocks[100], MODES, "all"), (rich, SPECTRAFM_MODES[:4], "fe_h>-1"), (blocks[None], MODES, "all"),
                                (blocks[250], MODES, "all"), (rich, SPECTRAFM_MODES[4:], "fe_h>-1"),
                                (blocks[100], ("mlp-observed", "full-rest-frame"), "all"), (blocks[None], ("mlp-observed", "full-rest-frame"), "all")):
        prefix = "rich" if sample == "fe_h>-1" else "N"
        for mode in modes:
            plan.append({"id": f"{prefix}{rows.size}/{mode}", "mode": mode, "rows": rows.tolist(), "n": int(rows.size), "sample": sample})
    # the resolution change alone: the test stars' payne-default spectra (survey A's physics), observed as the Turbospectrum ones
    plan.append({"id": "zero-shot-payne-spectra", "mode": "zero-shot-payne", "rows": [], "n": 0})
    return plan


def print_tables(document: dict) -> None:
    runs = document["runs"]
    for label in LABELS:
        print(f"\n### {label}\n")
        print("| run | N | [Fe/H] > -1: bias | scatter | coverage | [Fe/H] < -1: bias | scatter | coverage |")
        print("|---|---|---|---|---|---|---|---|")
        for run in runs:
            cells = []
            for group in ("fe_h>-1", "fe_h<-1"):
                m = run["test"][group]["labels"][label]
                digits = 0 if label == "teff" else 3
                cells += [f"{m['bias']:+.{digits}f}", f"{m['scatter']:.{digits}f}", f"{m['coverage_1sigma']:.2f}"]
            print(f"| {run['id']} | {run['n']} | " + " | ".join(cells) + " |")


def _cell(run: dict | None, group: str, label: str, what: str = "scatter") -> str:
    if run is None:
        return "-"
    m = run["test"][group]["labels"][label]
    digits = 0 if label == "teff" else 2
    if what == "scatter":
        return f"{m['scatter']:.{digits}f}"
    return f"{m['bias']:+.{digits}f} / {m['coverage_1sigma']:.2f}"


def print_compact(document: dict) -> None:
    """Per label: the scatter of every method at each N, metal-rich | iron-poor; then bias / coverage at N = all."""
    runs = {run["id"]: run for run in document["runs"]}
    n_all = document["survey_b"]["n_pool"]
    rich = next((r["n"] for r in document["runs"] if r.get("sample") == "fe_h>-1"), 0)
    methods = ("head", "adapters", "lora", "full", "full-rest-frame", "scratch", "mlp", "mlp-observed")
    reference = runs["zero-shot"]["test"]
    for label in LABELS:
        print(f"\n{label}: robust scatter, [Fe/H] > -1 | [Fe/H] < -1 test stars\n")
        print(f"| method | N = 100 | N = 250 | N = {n_all} | adapted on [Fe/H] > -1 only (N = {rich}; biases below) | bias / coverage, N = {n_all} |")
        print("|---|---|---|---|---|---|")
        for method in ("zero-shot", "zero-shot-tokens", "zero-shot-payne-spectra"):
            if method in runs:
                cell = f"{_cell(runs[method], 'fe_h>-1', label)} \\| {_cell(runs[method], 'fe_h<-1', label)}"
                bias = f"{_cell(runs[method], 'fe_h>-1', label, 'bias')} \\| {_cell(runs[method], 'fe_h<-1', label, 'bias')}"
                print(f"| {method} (no adaptation) | {cell} | | | | {bias} |")
        for method in methods:
            cells = []
            for key in (f"N100/{method}", f"N250/{method}", f"N{n_all}/{method}", f"rich{rich}/{method}"):
                run = runs.get(key)
                cells.append(f"{_cell(run, 'fe_h>-1', label)} \\| {_cell(run, 'fe_h<-1', label)}")
            run = runs.get(f"N{n_all}/{method}")
            cells.append(f"{_cell(run, 'fe_h>-1', label, 'bias')} \\| {_cell(run, 'fe_h<-1', label, 'bias')}")
            print(f"| {method} | " + " | ".join(cells) + " |")
        sd = " \\| ".join(f"{reference[g]['labels'][label]['truth_sd']:.{0 if label == 'teff' else 2}f}" for g in ("fe_h>-1", "fe_h<-1"))
        print(f"| sd of the truth (no information) | {sd} | | | | |")
    print(f"\nSpectraFM's test: iron-poor test stars ([Fe/H] < -1), bias / scatter / coverage; adapted on the {rich} "
          f"[Fe/H] > -1 pool stars, or on all {n_all}\n")
    print("| method | adapted on | " + " | ".join(LABELS) + " |")
    print("|---|---|" + "---|" * len(LABELS))

    def triple(run, label):
        m = run["test"]["fe_h<-1"]["labels"][label]
        digits = 0 if label == "teff" else 2
        return f"{m['bias']:+.{digits}f} / {m['scatter']:.{digits}f} / {m['coverage_1sigma']:.2f}"

    print("| zero-shot | - | " + " | ".join(triple(runs["zero-shot"], label) for label in LABELS) + " |")
    for method in methods:
        for key, what in ((f"rich{rich}/{method}", f"[Fe/H] > -1 ({rich})"), (f"N{n_all}/{method}", f"all ({n_all})")):
            if key in runs:
                print(f"| {method} | {what} | " + " | ".join(triple(runs[key], label) for label in LABELS) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", default=str(cache_root() / "grids" / GRID))
    parser.add_argument("--steps", type=int, default=STEPS, help="adaptation steps of every run")
    parser.add_argument("--draws", type=int, default=3, help="noise draws per test star")
    parser.add_argument("--only", default=None, help="comma-separated run ids (default: every run)")
    parser.add_argument("--table", action="store_true", help="print the tables of the results file and stop")
    parser.add_argument("--compact", action="store_true", help="print the compact tables of the docs and stop")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "encoder_transfer.json"))
    args = parser.parse_args()
    out = Path(args.out)
    document = json.loads(out.read_text()) if out.exists() else None
    if args.table or args.compact:
        (print_compact if args.compact else print_tables)(document)
        return
    directory = cache_root() / "transfer" / "survey_a"
    t0 = time.perf_counter()
    base, history = pretrain(directory)
    grid, pool, test = split(Path(args.grid))
    names = list(base.label_spec.names)
    if document is None:
        document = {
            "benchmark": "bench_encoder_transfer", "grid": os.path.basename(args.grid), "config": dataclasses.asdict(CONFIG),
            "survey_a": {"emulator": "payne-default", "simulation": dataclasses.asdict(SURVEY_A), "training": dataclasses.asdict(PRETRAINING),
                         "n_parameters": base.n_parameters, "final_validation_loss": base.metadata.get("metrics", {}).get("final_validation_loss"),
                         "training_seconds": history[-1]["seconds"] if history else None},
            "survey_b": {"simulation": dataclasses.asdict(SURVEY_B), "n_pool": int(pool.size), "n_test_stars": int(test.size),
                         "test_rows": test.tolist(), "draws": args.draws, "test_resolution": TEST_RESOLUTION,
                         "n_test_iron_poor_stars": int(np.sum(grid.labels[test, names.index("fe_h")] <= -1.0))},
            "steps": args.steps, "runs": [],
        }
    done = {run["id"] for run in document["runs"]}
    source = GridSpectra.from_grid(args.grid)
    simulator = TrainingSimulator(source, CONFIG, SURVEY_B)
    observations = test_observations(simulator, test, args.draws)
    # the same test stars and observations (same seeds: RV, noise, continuum) with payne-default's spectra instead
    emulator = sf.load_emulator("payne-default")
    payne = GridSpectra(grid.labels[test], emulator.predict(grid.labels[test]), emulator.wavelength, emulator.label_spec,
                        resolution=emulator.native_resolution, name="payne-default at the test stars' labels")
    payne_observations = test_observations(TrainingSimulator(payne, CONFIG, SURVEY_B), np.arange(test.size), args.draws)
    only = set(args.only.split(",")) if args.only else None
    for run in run_plan(pool, grid):
        if run["id"] in done or (only and run["id"] not in only):
            continue
        start = time.perf_counter()
        record = {"id": run["id"], "mode": run["mode"], "n": run["n"], "sample": run.get("sample"), "steps": args.steps}
        if run["mode"] in ("zero-shot", "zero-shot-tokens"):
            record["test"] = evaluate(observations, names, encoder=base, tokens=run["mode"] == "zero-shot-tokens")
            record["steps"] = 0
        elif run["mode"] == "zero-shot-payne":
            record["test"] = evaluate(payne_observations, names, encoder=base)
            record["steps"] = 0
        elif run["mode"] in ("mlp", "mlp-observed"):  # the MLP on rest-frame spectra (true RV), or on the observed ones
            rest_frame = run["mode"] == "mlp"
            mlp, trace = train_spectrum_mlp(source.subset(np.asarray(run["rows"])),
                                            MLPSettings(steps=args.steps, rest_frame=rest_frame, progress=False), simulation=SURVEY_B)
            record["final_loss"] = float(np.mean([h["loss"] for h in trace[-50:]]))
            record["test"] = evaluate(observations, names, mlp=mlp, rest_frame=rest_frame)
        else:  # full-rest-frame: full fine-tuning on rest-frame spectra (RV 0), tested on spectra moved with the true RV, like the MLP
            rest = run["mode"] == "full-rest-frame"
            settings = AdaptSettings(mode="full" if rest else run["mode"], steps=args.steps, batch_size=32, progress=False)
            simulation = dataclasses.replace(SURVEY_B, rv_range=(0.0, 0.0)) if rest else SURVEY_B
            adapted, trace = adapt_encoder(base, source.subset(np.asarray(run["rows"])), settings, simulation=simulation)
            adapted.save(cache_root() / "transfer" / "runs" / run["id"].replace("/", "_"), overwrite=True)
            record["final_loss"] = float(np.mean([h["loss"] for h in trace[-50:]]))
            record["n_trained_parameters"] = adapted.metadata["adaptation"]["n_trained_parameters"]
            record["learning_rate"] = settings.peak_learning_rate
            record["test"] = evaluate(observations, names, encoder=adapted, rest_frame=rest)
        record["seconds"] = time.perf_counter() - start
        record["load_average"] = os.getloadavg()
        document["runs"].append(record)
        document["provenance"] = provenance()
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(document, indent=1))
        tmp.replace(out)
        m = record["test"]
        print(f"{run['id']:>20}: {record['seconds']:.0f} s; teff {m['fe_h>-1']['labels']['teff']['scatter']:.0f}/{m['fe_h<-1']['labels']['teff']['scatter']:.0f} K, "
              f"fe_h {m['fe_h>-1']['labels']['fe_h']['scatter']:.3f}/{m['fe_h<-1']['labels']['fe_h']['scatter']:.3f}, "
              f"logg {m['fe_h>-1']['labels']['logg']['scatter']:.3f}/{m['fe_h<-1']['labels']['logg']['scatter']:.3f} "
              f"(metal-rich/iron-poor scatter)", flush=True)
    print(f"done in {time.perf_counter() - t0:.0f} s; wrote {out}")


if __name__ == "__main__":
    main()
