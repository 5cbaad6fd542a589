"""The pinned-processes backend of catalog fitting: the same catalog as the local backend, failures recorded,
resumable, dead workers recorded and replaced; "auto" picks it for the built-in fit on a multi-core Linux machine."""

import json
import os

import numpy as np
import pytest

from _batch_probe import (
    _exit_fit,
    _journal_rows,
    _Locked,
    _noise_spectrum,
    _probe_fit,
    _same_catalog,
    _toy_emulator,
    _write_corrupt,
    _RUN_COLUMNS,
)
from stellarfit import _workers
from stellarfit.inference.batch import _auto_backend, fit_batch_files
from stellarfit.results import read_catalog


@pytest.fixture
def probe_files(tmp_path):
    """Five generic FITS files in tmp_path/spectra: a, c, d, e are spectra (d fails to fit), b is corrupt."""
    folder = tmp_path / "spectra"
    folder.mkdir()
    for seed, name in enumerate("acde"):
        _noise_spectrum(seed, f"star-{name}").write(folder / f"{name}.fits")
    _write_corrupt(folder / "b.fits")
    return folder


def test_processes_match_local_record_failures_and_resume(probe_files, tmp_path):
    folder = probe_files
    emulator = _toy_emulator(trained=False)
    local = fit_batch_files(folder, emulator, tmp_path / "local.fits", fit_function=_probe_fit, progress=False)
    assert (local.n_ok, local.n_failed, local.backend, local.workers) == (3, 2, "local", 1)

    out = tmp_path / "processes.fits"

    class Stop(Exception):
        pass

    def interrupt(row):
        if row["status"] == "ok":
            raise Stop  # the driver stops right after the first fitted spectrum was journaled

    with pytest.raises(Stop):
        fit_batch_files([folder / "a.fits", folder / "b.fits", folder / "c.fits"], emulator, out, backend="processes",
                        workers=2, fit_function=_probe_fit, callback=interrupt, progress=False)
    first = _journal_rows(out)
    assert sorted(row["status"] for row in first) == ["failed", "ok"] and not out.exists()

    summary = fit_batch_files(folder, emulator, out, backend="processes", workers=2, fit_function=_probe_fit,
                              progress=False)
    assert (summary.n_ok, summary.n_failed, summary.n_fitted, summary.n_skipped) == (3, 2, 3, 2)
    assert (summary.backend, summary.workers) == ("processes", 2)
    rows = _journal_rows(out)
    assert len({(row["source"], row["index"]) for row in rows}) == len(rows) == 5 and rows[:2] == first
    catalog = read_catalog(out)
    _same_catalog(catalog, read_catalog(tmp_path / "local.fits"), skip=_RUN_COLUMNS + ("emulator",))
    assert list(catalog["status"]) == ["ok", "failed", "ok", "failed", "ok"]
    assert catalog[3]["error"] == "ValueError: cannot fit star-d"

    # the fits ran in worker processes (not this one), each loaded the emulator once and kept it
    workers = {}
    for row in rows[2:]:  # this run's (the interrupted run stopped its workers)
        if row["status"] == "ok":
            pid, emulator_id = row["emulator"].split(":")
            workers.setdefault(pid, set()).add(emulator_id)
    assert str(os.getpid()) not in workers and 1 <= len(workers) <= 2
    assert all(len(ids) == 1 for ids in workers.values()), workers

    again = fit_batch_files(folder, emulator, out, backend="processes", fit_function=_probe_fit, progress=False)
    assert (again.n_fitted, again.n_skipped) == (0, 5)


def test_a_dead_worker_is_recorded_and_the_run_goes_on(probe_files, tmp_path):
    folder = probe_files
    out = tmp_path / "catalog.csv"
    summary = fit_batch_files([folder / "a.fits", folder / "c.fits", folder / "e.fits"], _toy_emulator(trained=False), out,
                              backend="processes", workers=2, fit_function=_exit_fit, progress=False)
    assert (summary.n_ok, summary.n_failed) == (2, 1)
    catalog = read_catalog(out)
    assert list(catalog["status"]) == ["ok", "failed", "ok"]
    assert "worker process died" in catalog["error"][1] and "retry_failed" in catalog["error"][1]


def test_processes_settings_errors(probe_files, tmp_path):
    emulator = _toy_emulator(trained=False)
    out = tmp_path / "catalog.csv"
    with pytest.raises(TypeError, match="cannot be sent to worker processes.*module level"):
        fit_batch_files(probe_files, emulator, out, backend="processes", fit_function=_Locked(), progress=False)
    with pytest.raises(ValueError, match="workers must be a positive integer"):
        fit_batch_files(probe_files, emulator, out, backend="processes", workers=0, progress=False)
    with pytest.raises(ValueError, match="ray_address only applies"):
        fit_batch_files(probe_files, emulator, out, backend="processes", ray_address="auto", progress=False)
    with pytest.raises(ValueError, match="unknown backend 'threads'"):
        fit_batch_files(probe_files, emulator, out, backend="threads", progress=False)
    assert not out.exists()


def test_auto_backend_choice():
    emulator = _toy_emulator(trained=False)
    multi = _workers.can_pin() and len(_workers.usable_cores()) >= 2
    assert _auto_backend(5, emulator, None, None, None, None) == ("processes" if multi else "local")
    assert _auto_backend(1, emulator, None, None, None, None) == "local"  # one file: no worker start-up
    assert _auto_backend(5, emulator, _probe_fit, None, None, None) == "local"  # a custom fit stays here
    assert _auto_backend(5, emulator, None, 8, None, None) == "local"  # vectorized fits fill one program
    assert _auto_backend(5, emulator, None, None, 3, None) == "processes"  # workers asked for
    assert _auto_backend(5, emulator, None, None, None, "auto") == "ray"


@pytest.mark.slow
def test_real_map_fits_on_processes_equal_local_and_cli(tmp_path, capsys):
    """Real MAP fits with a trained toy Payne: the catalog of the pinned workers equals the local one."""
    from stellarfit.cli.main import main
    from stellarfit.inference import forward_model_for
    from stellarfit.spectra import ObservedSpectrum
    from stellarfit.wavelengths import log_lambda_grid

    emulator = _toy_emulator(trained=True)
    wavelength = log_lambda_grid(5008.0, 5090.0, 20_000.0, 3.0)
    folder = tmp_path / "spectra"
    folder.mkdir()
    truths = {"a": ([0.4, 0.2, -0.3], 20.0), "c": ([0.7, -0.3, 0.2], -40.0), "e": ([0.3, 0.4, 0.1], 60.0)}
    for seed, (name, (truth, rv)) in enumerate(truths.items()):
        model = forward_model_for(emulator, wavelength, 20_000.0, rv_range=(rv - 1, rv + 1))
        normalized = np.asarray(model(np.asarray(truth, np.float32), rv, 0.0), dtype=np.float64)
        continuum = 50.0 * (1 + 0.05 * (wavelength - 5050.0) / 40.0)
        flux = continuum * normalized + np.random.default_rng(seed).normal(size=wavelength.size) * continuum / 300.0
        ObservedSpectrum.from_arrays(wavelength, flux, sigma=continuum / 300.0, resolution=20_000.0,
                                     metadata={"object_id": f"star-{name}"}).write(folder / f"{name}.fits")
    options = {"n_starts": 2, "adam_steps": 100, "rv_range": (-100.0, 100.0), "vsini_max": 30.0}
    local = fit_batch_files(folder, emulator, tmp_path / "local.fits", backend="local", fit_options=options,
                            progress=False)
    pinned = fit_batch_files(folder, emulator, tmp_path / "pinned.fits", backend="processes", workers=2,
                             fit_options=options, progress=False)
    assert (local.n_ok, pinned.n_ok, pinned.backend) == (3, 3, "processes")
    _same_catalog(read_catalog(tmp_path / "pinned.fits"), read_catalog(tmp_path / "local.fits"), rtol=1e-5, atol=1e-6)

    emulator.save(str(tmp_path / "emu"))
    arguments = ["batch", str(folder), "--out", str(tmp_path / "cli.csv"), "--emulator", str(tmp_path / "emu"),
                 "--starts", "2", "--json", "--no-progress"]
    assert main(arguments) == 0
    document = json.loads(capsys.readouterr().out)
    expected = "processes" if _workers.can_pin() and len(_workers.usable_cores()) >= 2 else "local"
    assert (document["n_ok"], document["backend"]) == (3, expected)
