"""Batch catalog fitting: inputs, catalog columns, recorded failures, resume after an interruption, the CLI."""

import json
import types

import numpy as np
import pytest

from _batch_probe import _noise_spectrum, _write_corrupt
from stellarfit.inference import FitResult
from stellarfit.inference.batch import expand_inputs, fit_batch_files, journal_path_for
from stellarfit.results import Journal, JournalMismatchError, read_catalog, write_catalog
from stellarfit.spectra import ObservedSpectrum
from stellarfit.wavelengths import log_lambda_grid

LABELS = ("temp", "metal", "shift")




@pytest.fixture
def files(tmp_path):
    """Three generic FITS spectra (the second one corrupt) in tmp_path/spectra."""
    folder = tmp_path / "spectra"
    folder.mkdir()
    _noise_spectrum(1, "star-a").write(folder / "a.fits")
    _write_corrupt(folder / "b.fits")
    _noise_spectrum(3, "star-c").write(folder / "c.fits")
    return folder


STUB = types.SimpleNamespace(metadata={"name": "stub-emulator"}, label_names=LABELS)


class FakeFit:
    """Stands in for fit_star (fast): labels derived from the spectrum, every call counted."""

    def __init__(self):
        self.calls = []

    def __call__(self, spectrum, emulator, method="map", **options):
        self.calls.append(spectrum.metadata["object_id"])
        level = float(np.mean(spectrum.flux))
        labels = {name: {"value": level + i, "error": 0.01, "lower": level + i - 0.01, "upper": level + i + 0.01,
                         "map": level + i, "crb": 0.005} for i, name in enumerate(LABELS + ("rv", "vsini"))}
        n = spectrum.n_pixels
        return FitResult(method=method, labels=labels, chi2=float(n), reduced_chi2=1.0, snr=spectrum.snr(), n_pixels=n, flags=0,
                         diagnostics={}, wavelength=spectrum.wavelength, flux=spectrum.flux, ivar=spectrum.ivar,
                         model_flux=spectrum.flux, covariance=np.eye(5), emulator="stub-emulator", elapsed_s=0.01)


def test_expand_inputs_globs_directories_and_list_files(files, tmp_path):
    by_dir = expand_inputs(files)
    assert [p.name for p in by_dir] == ["a.fits", "b.fits", "c.fits"]
    assert [p.name for p in expand_inputs(str(files / "[ac].fits"))] == ["a.fits", "c.fits"]
    listing = tmp_path / "inputs.txt"
    listing.write_text("# my stars\nspectra/c.fits\n\nspectra/a.fits  # first\nspectra/c.fits\n")
    assert [p.name for p in expand_inputs([listing])] == ["c.fits", "a.fits"]  # relative to the list, no duplicates
    with pytest.raises(FileNotFoundError, match="no such file"):
        expand_inputs([files / "missing.fits"])
    with pytest.raises(FileNotFoundError, match="matches no files"):
        expand_inputs([str(files / "*.nothing")])
    (tmp_path / "bad.txt").write_text("spectra/zzz.fits\n")
    with pytest.raises(FileNotFoundError, match="line 1"):
        expand_inputs([tmp_path / "bad.txt"])


def test_batch_records_failure_and_resumes_after_interruption(files, tmp_path):
    out = tmp_path / "catalog.fits"
    fake = FakeFit()

    class Stop(Exception):
        pass

    def interrupt(row):
        raise Stop  # as if the process were killed right after the first spectrum was journaled

    with pytest.raises(Stop):
        fit_batch_files(files, STUB, out, fit_function=fake, callback=interrupt, progress=False)
    assert fake.calls == ["star-a"] and not out.exists()
    journal_lines = journal_path_for(out).read_text().splitlines()
    assert len(journal_lines) == 2  # header + one row

    summary = fit_batch_files(files, STUB, out, fit_function=fake, progress=False)
    assert fake.calls == ["star-a", "star-c"]  # only the missing good one was fitted
    assert (summary.n_ok, summary.n_failed, summary.n_fitted, summary.n_skipped) == (2, 1, 2, 1)
    catalog = read_catalog(out)
    assert len(catalog) == 3
    keys = list(zip(catalog["source"], catalog["index"]))
    assert len(set(keys)) == 3
    assert [s.rsplit("/", 1)[-1] for s in catalog["source"]] == ["a.fits", "b.fits", "c.fits"]
    assert list(catalog["status"]) == ["ok", "failed", "ok"]
    failed = catalog[1]
    assert failed["index"] == -1 and "b.fits" in failed["error"] and failed["flags"] & 2
    assert np.isnan(failed["temp"])
    for column in ("object_id", "temp", "e_temp", "temp_lower", "temp_upper", "temp_map", "temp_crb", "rv", "e_rv", "vsini",
                   "chi2", "reduced_chi2", "snr", "flags", "status", "error", "elapsed_s", "stellarfit_version", "emulator"):
        assert column in catalog.colnames, column
    assert list(catalog["object_id"][[0, 2]]) == ["star-a", "star-c"]
    assert catalog["emulator"][0] == "stub-emulator"

    # deleting a journal line -> only that spectrum is refitted
    lines = journal_path_for(out).read_text().splitlines()
    kept = [line for line in lines if "star-c" not in line]
    journal_path_for(out).write_text("\n".join(kept) + "\n")
    summary = fit_batch_files(files, STUB, out, fit_function=fake, progress=False)
    assert fake.calls == ["star-a", "star-c", "star-c"]
    assert (summary.n_fitted, summary.n_skipped, len(read_catalog(out))) == (1, 2, 3)

    # a truncated last line (kill during a write) counts as not done and is cut off
    with open(journal_path_for(out), "a") as handle:
        handle.write('{"source": "x", "ind')
    summary = fit_batch_files(files, STUB, out, fit_function=fake, progress=False)
    assert summary.n_fitted == 0 and len(read_catalog(out)) == 3
    assert journal_path_for(out).read_text().endswith("\n")

    # retry_failed refits the failed file (still corrupt: still one failure, not a duplicate)
    summary = fit_batch_files(files, STUB, out, fit_function=fake, progress=False, retry_failed=True)
    assert (summary.n_fitted, summary.n_failed, len(read_catalog(out))) == (1, 1, 3)

    # the file repaired: retry_failed fits it and its failed row disappears; a plain rerun then has nothing to do
    _noise_spectrum(2, "star-b").write(files / "b.fits", overwrite=True)
    summary = fit_batch_files(files, STUB, out, fit_function=fake, progress=False, retry_failed=True)
    assert fake.calls[-1] == "star-b" and (summary.n_fitted, summary.n_ok, summary.n_failed) == (1, 3, 0)
    catalog = read_catalog(out)
    assert list(catalog["object_id"]) == ["star-a", "star-b", "star-c"] and list(catalog["index"]) == [0, 0, 0]
    assert fit_batch_files(files, STUB, out, fit_function=fake, progress=False).n_fitted == 0


def test_batch_settings_errors(files, tmp_path):
    out = tmp_path / "catalog.csv"
    fake = FakeFit()
    fit_batch_files(files, STUB, out, fit_function=fake, progress=False)
    table = read_catalog(out)
    assert len(table) == 3 and "e_metal" in table.colnames
    other = types.SimpleNamespace(metadata={"name": "another"}, label_names=LABELS)
    with pytest.raises(JournalMismatchError, match="other settings"):
        fit_batch_files(files, other, out, fit_function=fake, progress=False)
    with pytest.raises(ValueError, match="not available"):
        fit_batch_files(files, STUB, tmp_path / "r.fits", method="simplex")
    with pytest.raises(ValueError, match="only apply to backend='ray'"):
        fit_batch_files(files, STUB, tmp_path / "r.fits", backend="local", workers=2)
    with pytest.raises(ValueError, match="catalog format"):
        fit_batch_files(files, STUB, tmp_path / "r.txt")
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pyarrow"):
            fit_batch_files(files, STUB, tmp_path / "r.parquet")


def test_journal_keeps_last_entry_and_catalog_writes_atomically(tmp_path):
    path = tmp_path / "j.jsonl"
    with Journal(path, header={"emulator": "e"}) as journal:
        journal.append({"source": "s", "index": 0, "status": "failed", "error": "boom"})
        journal.append({"source": "s", "index": 0, "status": "ok", "temp": float("nan")})
    reopened = Journal(path, header={"emulator": "e"})
    assert reopened.rows[("s", 0)]["status"] == "ok" and reopened.rows[("s", 0)]["temp"] is None
    assert reopened.done("s", 0) and not reopened.done("s", 1)
    out = tmp_path / "cat.fits"
    write_catalog(list(reopened.rows.values()), out)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left
    assert read_catalog(out)["status"][0] == "ok"


# -- real fits with a tiny trained emulator ---------------------------------------------
@pytest.fixture(scope="module")
def emulator():
    from stellarfit.emulators import PayneEmulator, TrainConfig, train_emulator
    from stellarfit.emulators.toy import make_toy_grid

    wavelength = log_lambda_grid(5000.0, 5100.0, 30_000.0, 3.0)
    train = make_toy_grid(256, wavelength.size, seed=1, window=(wavelength[0], wavelength[-1]))
    emu = PayneEmulator.create(train.label_spec, train.wavelength, resolution=30_000.0, seed=0)
    config = TrainConfig(n_steps=300, batch_size=64, learning_rate=3e-3, progress=False)
    return train_emulator(emu, train, None, config).emulator


def _observe(emulator, truth, rv, snr, seed, object_id):
    from stellarfit.inference import forward_model_for

    wavelength = log_lambda_grid(5008.0, 5090.0, 20_000.0, 3.0)
    model = forward_model_for(emulator, wavelength, 20_000.0, rv_range=(rv - 1, rv + 1))
    normalized = np.asarray(model(np.asarray(truth, np.float32), rv, 0.0), dtype=np.float64)
    continuum = 50.0 * (1 + 0.05 * (wavelength - 5050.0) / 40.0)
    flux = continuum * normalized + np.random.default_rng(seed).normal(size=wavelength.size) * continuum / snr
    return ObservedSpectrum.from_arrays(wavelength, flux, sigma=continuum / snr, resolution=20_000.0, metadata={"object_id": object_id})


@pytest.mark.slow
def test_batch_real_fits_near_truth_and_cli(emulator, tmp_path, capsys):
    """Two real MAP fits (about 10-50 s each on this busy machine, mostly compilation) plus the CLI on the finished run."""
    from stellarfit.cli.main import main

    truths = {"a": ([0.4, 0.2, -0.3], 20.0), "c": ([0.7, -0.3, 0.2], -40.0)}
    folder = tmp_path / "spectra"
    folder.mkdir()
    for seed, (name, (truth, rv)) in enumerate(truths.items()):
        _observe(emulator, truth, rv, 300.0, seed, f"star-{name}").write(folder / f"{name}.fits")
    _write_corrupt(folder / "b.fits")
    out = tmp_path / "catalog.fits"
    options = {"n_starts": 2, "adam_steps": 100, "rv_range": (-100.0, 100.0), "vsini_max": 30.0}
    summary = fit_batch_files(folder, emulator, out, fit_options=options, progress=False)
    assert (summary.n_ok, summary.n_failed) == (2, 1)
    catalog = read_catalog(out)
    for row in catalog[catalog["status"] == "ok"]:
        truth, rv = truths[row["object_id"][-1]]
        for name, value in zip(emulator.label_names, truth):
            assert abs(row[name] - value) < max(4 * row[f"e_{name}"], 0.05), (name, row[name], value)
            assert np.isfinite(row[f"{name}_crb"]) and row[f"{name}_crb"] > 0
        assert row["rv"] == pytest.approx(rv, abs=1.0)
        assert row["elapsed_s"] > 0
    emulator.save(str(tmp_path / "emu"))
    # the CLI on the finished run: nothing to fit, JSON summary on stdout
    code = main(["batch", str(folder), "--out", str(out), "--emulator", str(tmp_path / "emu"), "--json", "--no-progress"])
    assert code == 0
    document = json.loads(capsys.readouterr().out)
    assert (document["n_ok"], document["n_failed"], document["out"], document["n_fitted"]) == (2, 1, str(out), 0)


def test_cli_batch_usage_errors(files, tmp_path, capsys):
    from stellarfit.cli.main import main

    assert main(["batch", str(files / "nothing*.fits"), "--out", str(tmp_path / "c.fits"), "--emulator", str(tmp_path)]) == 2
    assert "cannot load emulator" in capsys.readouterr().err
    assert main(["batch", str(files), "--out", str(tmp_path / "no" / "c.fits")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["batch", str(files), "--out", str(tmp_path / "c.fits"), "--z-transform", "probit"]) == 2
    assert "--z-transform applies to --method nuts or blackjax" in capsys.readouterr().err


def test_cli_batch_passes_the_z_transform_to_the_fits(files, tmp_path, monkeypatch):
    """`stellarfit batch --method nuts --z-transform probit` hands z_transform to every fit (in its
    NutsSettings); without the option the fits get fit_star's default."""
    from stellarfit.cli.main import main
    from stellarfit.inference import MapSettings, batch

    seen = []

    def capture(inputs, emulator, out, **kwargs):
        seen.append(kwargs["fit_options"])
        raise ValueError("stop here")

    monkeypatch.setattr(batch, "fit_batch_files", capture)
    for extra in (["--z-transform", "probit"], []):
        assert main(["batch", str(files), "--out", str(tmp_path / "c.fits"), "--emulator", "payne-default",
                     "--method", "nuts", *extra]) == 2
    assert seen[0]["nuts_settings"].z_transform == "probit" and seen[1]["nuts_settings"].z_transform == "logit"
    assert seen[0]["map_settings"] == MapSettings(n_starts=8, init="auto")


@pytest.mark.slow
def test_vectorized_batch_fits_and_records_failures(emulator, tmp_path):
    """--vectorize: spectra fitted together by fit_stars; one outside the emulator's window is recorded, not fatal."""
    truths = {"a": ([0.4, 0.2, -0.3], 20.0), "c": ([0.7, -0.3, 0.2], -40.0)}
    folder = tmp_path / "spectra"
    folder.mkdir()
    for seed, (name, (truth, rv)) in enumerate(truths.items()):
        _observe(emulator, truth, rv, 300.0, seed, f"star-{name}").write(folder / f"{name}.fits")
    wavelength = log_lambda_grid(6000.0, 6050.0, 20_000.0, 3.0)  # far outside the emulator (5000-5100 A)
    ObservedSpectrum.from_arrays(wavelength, np.ones(wavelength.size), sigma=np.full(wavelength.size, 0.01),
                                 resolution=20_000.0, metadata={"object_id": "star-b"}).write(folder / "b.fits")
    out = tmp_path / "catalog.fits"
    options = {"n_starts": 2, "adam_steps": 60, "rv_range": (-100.0, 100.0), "vsini_max": 30.0}
    summary = fit_batch_files(folder, emulator, out, fit_options=options, progress=False, vectorize=4)
    assert (summary.n_ok, summary.n_failed) == (2, 1)
    catalog = read_catalog(out)
    failed = catalog[catalog["status"] != "ok"]
    assert failed["object_id"][0] == "star-b" and "wavelength" in failed["error"][0].lower()
    for row in catalog[catalog["status"] == "ok"]:
        truth, rv = truths[row["object_id"][-1]]
        assert row["rv"] == pytest.approx(rv, abs=1.0)
        for name, value in zip(emulator.label_names, truth):
            assert abs(row[name] - value) < max(5 * row[f"e_{name}"], 0.08), (name, row[name], value)


def test_vectorize_settings_errors(files, tmp_path):
    from stellarfit.inference.batch import _check_vectorize

    with pytest.raises(ValueError, match="vectorize applies to MAP and NumPyro NUTS"):
        fit_batch_files(files, STUB, tmp_path / "c.fits", method="blackjax", vectorize=4, progress=False)
    _check_vectorize(4, "nuts", None, {"num_warmup": 10, "num_chains": 2})  # sampler settings apply to batched NUTS
    with pytest.raises(ValueError, match="vectorize applies to MAP and NumPyro NUTS"):
        fit_batch_files(files, STUB, tmp_path / "c.fits", fit_function=FakeFit(), vectorize=4, progress=False)
    with pytest.raises(ValueError, match="num_warmup"):
        fit_batch_files(files, STUB, tmp_path / "c.fits", fit_options={"num_warmup": 10}, vectorize=4, progress=False)
    with pytest.raises(ValueError, match="vectorize must be a positive integer"):
        fit_batch_files(files, STUB, tmp_path / "c.fits", vectorize=0, progress=False)


def test_cli_z_transform_choices_are_the_problems_transforms():
    from stellarfit.cli.main import Z_TRANSFORMS
    from stellarfit.inference.likelihood import TRANSFORMS

    assert Z_TRANSFORMS == TRANSFORMS


def _write_nan_files(folder, spectra, n_nan):
    """Generic FITS tables (tests/spectra_factories.py) of ``spectra`` with NaN/inf flux or error pixels."""
    import spectra_factories as fac

    folder.mkdir()
    for seed, (name, spectrum) in enumerate(spectra.items()):
        flux, error = np.array(spectrum.flux), np.array(spectrum.sigma)
        rows = np.random.default_rng(seed).choice(spectrum.n_pixels, n_nan[name], replace=False)
        flux[rows[: n_nan[name] // 2]] = np.nan
        error[rows[n_nan[name] // 2:]] = np.inf if name == "b" else np.nan
        fac.write_generic_table(folder / f"{name}.fits", wavelength=spectrum.wavelength, flux=flux, error=error,
                                header={"R": 20_000.0, "OBJECT": f"star-{name}", "AIRORVAC": "vac"})


def test_batch_reads_every_file_with_nan_pixels(tmp_path):
    """Fast: files with NaN pixels reach the fit function (masked, counted), none is refused on reading."""
    n_nan = {"a": 3, "b": 7, "c": 12}
    folder = tmp_path / "spectra"
    _write_nan_files(folder, {name: _noise_spectrum(i, f"star-{name}") for i, name in enumerate(n_nan)}, n_nan)
    seen = {}

    def fit(spectrum, emulator, method="map", **options):
        seen[spectrum.metadata["object_id"]] = spectrum
        result = FakeFit()(spectrum, emulator, method=method)
        result.diagnostics["n_nonfinite_masked"] = spectrum.metadata["n_nonfinite_masked"]
        return result

    out = tmp_path / "catalog.fits"
    summary = fit_batch_files(folder, STUB, out, fit_function=fit, progress=False, backend="local", air=False)
    assert (summary.n_ok, summary.n_failed) == (3, 0)
    for name, count in n_nan.items():
        spectrum = seen[f"star-{name}"]
        assert spectrum.n_good == spectrum.n_pixels - count and np.all(np.isfinite(spectrum.flux))
        assert spectrum.metadata["air_or_vacuum_source"] == "user"  # air= reaches the reader
    catalog = read_catalog(out)
    assert {row["object_id"]: int(row["n_nonfinite_masked"]) for row in catalog} == {f"star-{k}": v for k, v in n_nan.items()}


@pytest.mark.slow
def test_batch_fits_every_file_with_nan_pixels_and_reports_the_count(emulator, tmp_path):
    """Real MAP fits (about 60 s here) of generic FITS tables with NaN flux/error pixels: all fitted, not
    refused; the masked count reaches FitResult.diagnostics and the catalog's n_nonfinite_masked column."""
    truths = {"a": ([0.4, 0.2, -0.3], 20.0, 3), "b": ([0.6, 0.0, 0.1], -10.0, 7), "c": ([0.7, -0.3, 0.2], -40.0, 12)}
    folder = tmp_path / "spectra"
    spectra = {name: _observe(emulator, truth, rv, 300.0, seed, f"star-{name}")
               for seed, (name, (truth, rv, _)) in enumerate(truths.items())}
    _write_nan_files(folder, spectra, {name: value[2] for name, value in truths.items()})
    out = tmp_path / "catalog.csv"
    options = {"n_starts": 1, "adam_steps": 60, "rv_range": (-100.0, 100.0), "vsini_max": 30.0}
    summary = fit_batch_files(folder, emulator, out, fit_options=options, progress=False, backend="local")
    assert (summary.n_ok, summary.n_failed) == (3, 0)
    catalog = read_catalog(out)
    assert sorted(catalog["object_id"]) == ["star-a", "star-b", "star-c"]
    for row in catalog:
        truth, rv, n_nan = truths[row["object_id"][-1]]
        assert row["status"] == "ok" and row["n_nonfinite_masked"] == n_nan
        assert row["rv"] == pytest.approx(rv, abs=2.0)
