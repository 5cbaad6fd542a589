"""The Ray backend of catalog fitting: the same catalog as the local backend, failures recorded, resumable.

A local Ray cluster with 2 CPUs is started once for the module (and shut down
at its end); the driver-only checks run before it starts.
"""

import json
import os
import time
import warnings

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from stellarfit.inference.batch import fit_batch_files, journal_path_for  # noqa: E402
from stellarfit.results import read_catalog  # noqa: E402
from stellarfit.spectra import ObservedSpectrum  # noqa: E402
from stellarfit.wavelengths import log_lambda_grid  # noqa: E402

from _batch_probe import (  # noqa: E402
    _RUN_COLUMNS,
    _exit_fit,
    _journal_rows,
    _Locked,
    _noise_spectrum,
    _probe_fit,
    _process_alive,
    _stalled_fit,
    _same_catalog,
    _toy_emulator,
    _write_corrupt,
)

def test_ray_settings_errors_in_the_driver(tmp_path, monkeypatch, capsys):
    from stellarfit.cli.main import main

    folder = tmp_path / "spectra"
    folder.mkdir()
    _noise_spectrum(1, "star-a").write(folder / "a.fits")
    out = tmp_path / "catalog.fits"
    emulator = _toy_emulator(trained=False)
    with pytest.raises(TypeError, match="cannot be sent to Ray workers.*module-level function"):
        fit_batch_files(folder, emulator, out, backend="ray", fit_function=_Locked(), progress=False)
    with pytest.raises(ValueError, match="workers must be a positive integer"):
        fit_batch_files(folder, emulator, out, backend="ray", workers=0, progress=False)
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        fit_batch_files(folder, emulator, out, backend="ray", chunk_size=2.5, progress=False)
    with pytest.raises(ValueError, match="only apply to backend='ray'"):
        fit_batch_files(folder, emulator, out, backend="local", workers=2, progress=False)
    emulator.save(str(tmp_path / "emu"))
    assert main(["batch", str(folder), "--out", str(out), "--emulator", str(tmp_path / "emu"), "--backend", "local",
                 "--workers", "2"]) == 2
    assert "only apply to backend='ray'" in capsys.readouterr().err
    assert not out.exists() and not journal_path_for(out).exists()

    # a catalog finished by the local backend: a Ray rerun has nothing to fit and starts no cluster
    done = tmp_path / "done.fits"
    fit_batch_files(folder, emulator, done, fit_function=_probe_fit, progress=False)
    again = fit_batch_files(folder, emulator, done, backend="ray", fit_function=_probe_fit, progress=False)
    assert (again.n_fitted, again.n_skipped, again.n_ok, again.workers) == (0, 1, 1, 0)
    assert not ray.is_initialized()

    monkeypatch.setitem(__import__("sys").modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(ImportError, match=r"pip install 'stellarfit\[ray\]'"):
        fit_batch_files(folder, emulator, out, backend="ray", progress=False)
    assert main(["batch", str(folder), "--out", str(out), "--emulator", str(tmp_path / "emu"), "--backend", "ray"]) == 2
    assert "pip install 'stellarfit[ray]'" in capsys.readouterr().err
    assert not out.exists() and not journal_path_for(out).exists()


# -- on a local Ray cluster with 2 workers -------------------------------------------------
@pytest.fixture(scope="module")
def ray_cluster():
    if ray.is_initialized():
        pytest.skip("this process is already connected to a Ray cluster")
    with warnings.catch_warnings():  # Ray starts its processes by fork + exec: JAX's fork warning does not apply
        warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
        # the workers import this module (the fit function below) from tests/, as the driver does
        job_config = ray.job_config.JobConfig(code_search_path=[os.path.dirname(os.path.abspath(__file__))])
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, job_config=job_config)
    yield
    ray.shutdown()


@pytest.fixture
def probe_files(tmp_path):
    """Five generic FITS files in tmp_path/spectra: a, c, d, e are spectra (d fails to fit), b is corrupt."""
    folder = tmp_path / "spectra"
    folder.mkdir()
    for seed, name in enumerate("acde"):
        _noise_spectrum(seed, f"star-{name}").write(folder / f"{name}.fits")
    _write_corrupt(folder / "b.fits")
    return folder


def test_ray_matches_local_records_failures_and_resumes(ray_cluster, probe_files, tmp_path):
    """The machinery with a cheap fit function (no fit compilation): ~20-40 s, mostly worker start-up."""
    folder = probe_files
    emulator = _toy_emulator(trained=False)  # weights of a fresh network: the probe only needs them to travel
    local = fit_batch_files(folder, emulator, tmp_path / "local.fits", fit_function=_probe_fit, progress=False)
    assert (local.n_ok, local.n_failed, local.backend, local.workers) == (3, 2, "local", 1)

    out = tmp_path / "ray.fits"

    class Stop(Exception):
        pass

    def interrupt(row):
        if row["status"] == "ok":
            raise Stop  # as if the driver were killed right after the first fitted spectrum was journaled

    # a limited set of inputs, interrupted: the corrupt file (read by the driver) and one fitted spectrum are journaled
    with pytest.raises(Stop):
        fit_batch_files([folder / "a.fits", folder / "b.fits", folder / "c.fits"], emulator, out, backend="ray",
                        workers=2, chunk_size=1, fit_function=_probe_fit, callback=interrupt, progress=False)
    first = _journal_rows(out)
    assert sorted(row["status"] for row in first) == ["failed", "ok"]
    assert not out.exists()

    # the full set: only what is not in the journal is fitted, nothing finished is refitted
    summary = fit_batch_files(folder, emulator, out, backend="ray", workers=2, chunk_size=1, fit_function=_probe_fit,
                              progress=False)
    assert (summary.n_ok, summary.n_failed, summary.n_fitted, summary.n_skipped) == (3, 2, 3, 2)
    assert (summary.backend, summary.workers) == ("ray", 2)
    rows = _journal_rows(out)
    keys = [(row["source"], row["index"]) for row in rows]
    assert len(keys) == len(set(keys)) == 5 and rows[:2] == first

    catalog = read_catalog(out)
    _same_catalog(catalog, read_catalog(tmp_path / "local.fits"), skip=_RUN_COLUMNS + ("emulator",))
    assert list(catalog["object_id"]) == ["star-a", "", "star-c", "star-d", "star-e"]
    assert list(catalog["status"]) == ["ok", "failed", "ok", "failed", "ok"]
    failed = catalog[3]
    assert failed["error"] == "ValueError: cannot fit star-d" and failed["flags"] & 2 and np.isnan(failed["temp"])
    assert catalog[1]["index"] == -1 and "b.fits" in catalog[1]["error"]

    # the fits ran in the Ray workers, each worker process loaded the emulator once and kept it across runs
    workers = {}
    for row in rows:
        if row["status"] == "ok":
            pid, emulator_id = row["emulator"].split(":")
            workers.setdefault(pid, set()).add(emulator_id)
    assert str(os.getpid()) not in workers and 1 <= len(workers) <= 2
    assert all(len(ids) == 1 for ids in workers.values()), workers

    # a rerun has nothing to do and leaves the catalog as it is
    again = fit_batch_files(folder, emulator, out, backend="ray", fit_function=_probe_fit, progress=False)
    assert (again.n_fitted, again.n_skipped, again.workers) == (0, 5, 2)
    _same_catalog(read_catalog(out), catalog)


@pytest.mark.slow
def test_ray_real_fits_equal_local_and_cli(ray_cluster, tmp_path, capsys):
    """Real MAP fits with a trained toy Payne: the Ray catalog equals the local one; the CLI on Ray resumes."""
    from stellarfit.cli.main import main
    from stellarfit.inference import forward_model_for

    emulator = _toy_emulator(trained=True)
    wavelength = log_lambda_grid(5008.0, 5090.0, 20_000.0, 3.0)
    folder = tmp_path / "spectra"
    folder.mkdir()
    truths = {"a": ([0.4, 0.2, -0.3], 20.0), "c": ([0.7, -0.3, 0.2], -40.0), "d": ([0.5, 0.0, 0.0], 5.0),
              "e": ([0.3, 0.4, 0.1], 60.0)}
    for seed, (name, (truth, rv)) in enumerate(truths.items()):
        model = forward_model_for(emulator, wavelength, 20_000.0, rv_range=(rv - 1, rv + 1))
        normalized = np.asarray(model(np.asarray(truth, np.float32), rv, 0.0), dtype=np.float64)
        continuum = 50.0 * (1 + 0.05 * (wavelength - 5050.0) / 40.0)
        flux = continuum * normalized + np.random.default_rng(seed).normal(size=wavelength.size) * continuum / 300.0
        ObservedSpectrum.from_arrays(wavelength, flux, sigma=continuum / 300.0, resolution=20_000.0,
                                     metadata={"object_id": f"star-{name}"}).write(folder / f"{name}.fits")
    _write_corrupt(folder / "b.fits")
    options = {"n_starts": 2, "adam_steps": 100, "rv_range": (-100.0, 100.0), "vsini_max": 30.0}

    local = fit_batch_files(folder, emulator, tmp_path / "local.fits", fit_options=options, progress=False)
    assert (local.n_ok, local.n_failed) == (4, 1)
    out = tmp_path / "ray.fits"
    first = fit_batch_files([folder / "a.fits", folder / "b.fits", folder / "c.fits"], emulator, out, backend="ray",
                            workers=2, chunk_size=1, fit_options=options, progress=False)
    assert (first.n_ok, first.n_failed, first.n_fitted) == (2, 1, 3)
    summary = fit_batch_files(folder, emulator, out, backend="ray", workers=2, chunk_size=1, fit_options=options,
                              progress=False)
    assert (summary.n_ok, summary.n_failed, summary.n_fitted, summary.n_skipped) == (4, 1, 2, 3)
    rows = _journal_rows(out)
    assert len(rows) == len({(row["source"], row["index"]) for row in rows}) == 5
    # the second run reused the workers' compiled functions: no compilation (tens of seconds) in its fits
    assert max(row["elapsed_s"] for row in rows[3:]) < 10.0, [row["elapsed_s"] for row in rows]
    catalog = read_catalog(out)
    _same_catalog(catalog, read_catalog(tmp_path / "local.fits"), rtol=1e-5, atol=1e-6)
    for row in catalog[catalog["status"] == "ok"]:
        truth, rv = truths[row["object_id"][-1]]
        assert row["rv"] == pytest.approx(rv, abs=1.0)

    # the CLI on Ray (emulator from a directory); a second call resumes with nothing to do
    emulator.save(str(tmp_path / "emu"))
    arguments = ["batch", str(folder), "--out", str(tmp_path / "cli.csv"), "--emulator", str(tmp_path / "emu"),
                 "--backend", "ray", "--workers", "2", "--chunk-size", "2", "--starts", "2", "--json", "--no-progress"]
    assert main(arguments) == 0
    document = json.loads(capsys.readouterr().out)
    assert (document["n_ok"], document["n_failed"], document["n_fitted"], document["backend"]) == (4, 1, 5, "ray")
    assert main(arguments) == 0
    document = json.loads(capsys.readouterr().out)
    assert (document["n_fitted"], document["n_skipped"]) == (0, 5)


@pytest.mark.slow
def test_ray_interrupted_run_kills_the_workers_of_lost_chunks(ray_cluster, probe_files, tmp_path):
    """An interrupted run kills the workers still fitting its lost chunks, and the next run fits on fresh ones.

    A KeyboardInterrupt instead (ray.cancel without force) can land while a worker's first chunk imports JAX
    and Flax: the half-imported modules stay, and that worker can never load an emulator again (CI saw it).
    """
    folder = probe_files
    emulator = _toy_emulator(trained=False)
    out = tmp_path / "catalog.fits"
    pid_file = tmp_path / "stalled.pid"

    class Stop(Exception):
        pass

    def interrupt(row):  # star-a is fitted: stop once star-c's chunk hangs in the other worker
        deadline = time.monotonic() + 120.0
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        raise Stop

    with pytest.raises(Stop):
        fit_batch_files([folder / "a.fits", folder / "c.fits"], emulator, out, backend="ray", workers=2, chunk_size=1,
                        fit_function=_stalled_fit, fit_options={"pid_file": str(pid_file)}, callback=interrupt,
                        progress=False)
    stalled = int(pid_file.read_text())
    deadline = time.monotonic() + 30.0
    while _process_alive(stalled) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _process_alive(stalled), "the worker of the lost chunk still runs"
    assert [row["object_id"] for row in _journal_rows(out)] == ["star-a"]

    summary = fit_batch_files(folder, emulator, out, backend="ray", workers=2, chunk_size=1, fit_function=_probe_fit,
                              progress=False)
    assert (summary.n_ok, summary.n_failed, summary.n_fitted, summary.n_skipped) == (3, 2, 4, 1)


@pytest.mark.slow
def test_ray_worker_failures(ray_cluster, probe_files, tmp_path, monkeypatch):
    """A worker that dies on a chunk: retried, then recorded as failed; an emulator the workers cannot load: a clear error."""
    folder = probe_files
    out = tmp_path / "catalog.csv"
    summary = fit_batch_files([folder / "a.fits", folder / "c.fits", folder / "e.fits"], _toy_emulator(trained=False), out,
                              backend="ray", chunk_size=1, fit_function=_exit_fit, progress=False)
    assert (summary.n_ok, summary.n_failed) == (2, 1)
    catalog = read_catalog(out)
    assert list(catalog["status"]) == ["ok", "failed", "ok"]
    assert catalog["error"][1].startswith("Ray worker failed:") and "retry_failed" in catalog["error"][1]

    # an emulator whose class only this process can import (a module the workers do not have)
    (tmp_path / "driver_only_module.py").write_text("class Emulator:\n    metadata = {'name': 'driver-only'}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from driver_only_module import Emulator

    with pytest.raises(RuntimeError, match="could not load the emulator.*driver_only_module"):
        fit_batch_files(folder / "a.fits", Emulator(), tmp_path / "other.csv", backend="ray", fit_function=_probe_fit,
                        progress=False)
