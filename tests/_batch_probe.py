"""Helpers of the catalog-fitting tests whose functions worker processes (Ray, pinned processes) import by name."""

import json
import os
import threading
import time

import numpy as np

from stellarfit.inference import FitResult
from stellarfit.inference.batch import journal_path_for
from stellarfit.spectra import ObservedSpectrum
from stellarfit.wavelengths import log_lambda_grid

# columns that legitimately differ between runs (wall time)
_RUN_COLUMNS = ("elapsed_s",)


def _write_corrupt(path):
    with open(path, "wb") as handle:  # a FITS card, then nothing: truncated primary header
        handle.write(b"SIMPLE  =                    T" + b" " * 50)


def _noise_spectrum(seed, object_id):
    wavelength = log_lambda_grid(5010.0, 5080.0, 20_000.0, 3.0)
    rng = np.random.default_rng(seed)
    flux = 1.0 + 0.01 * rng.normal(size=wavelength.size)
    return ObservedSpectrum.from_arrays(wavelength, flux, sigma=np.full(wavelength.size, 0.01), resolution=20_000.0,
                                        metadata={"object_id": object_id})


def _probe_fit(spectrum, emulator, method="map", **options):
    """A cheap fit function: labels from the spectrum and the emulator's prediction; star-d always raises.

    ``result.emulator`` records the process and the emulator object that did the fit (``pid:id``), so the
    test can check that each worker process loaded the emulator once and reused it.
    """
    object_id = spectrum.metadata["object_id"]
    if object_id == "star-d":
        raise ValueError("cannot fit star-d")
    labels_in = 0.5 * (np.asarray(emulator.label_spec.lower) + np.asarray(emulator.label_spec.upper))
    model = np.asarray(emulator.predict(labels_in[None, :]))[0]  # depends on every weight of the emulator
    level = float(np.mean(spectrum.flux))
    names = tuple(emulator.label_names) + ("rv", "vsini")
    labels = {name: {"value": level + float(model[7 * i]), "error": 0.01 * (i + 1), "lower": level - 1.0,
                     "upper": level + 1.0, "map": float(model[7 * i]), "crb": 0.005} for i, name in enumerate(names)}
    n = spectrum.n_pixels
    return FitResult(method=method, labels=labels, chi2=float(np.sum(model)), reduced_chi2=1.0, snr=spectrum.snr(),
                     n_pixels=n, flags=0, diagnostics={}, wavelength=spectrum.wavelength, flux=spectrum.flux,
                     ivar=spectrum.ivar, model_flux=spectrum.flux, covariance=np.eye(len(names)),
                     emulator=f"{os.getpid()}:{id(emulator)}", elapsed_s=0.01)


def _stalled_fit(spectrum, emulator, method="map", pid_file=None, **options):
    """Hangs on star-c (after writing its process id to ``pid_file``), as a long fit would; the probe fit otherwise."""
    if spectrum.metadata["object_id"] == "star-c":
        partial = f"{pid_file}.partial"
        with open(partial, "w") as handle:
            handle.write(str(os.getpid()))
        os.replace(partial, pid_file)
        time.sleep(300.0)
    return _probe_fit(spectrum, emulator, method=method, **options)


def _process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, dead but not yet reaped by its parent, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def _toy_emulator(trained: bool):
    from stellarfit.emulators import PayneEmulator, TrainConfig, train_emulator
    from stellarfit.emulators.toy import make_toy_grid

    wavelength = log_lambda_grid(5000.0, 5100.0, 30_000.0, 3.0)
    train = make_toy_grid(256, wavelength.size, seed=1, window=(wavelength[0], wavelength[-1]))
    emu = PayneEmulator.create(train.label_spec, train.wavelength, resolution=30_000.0, seed=0)
    if not trained:
        return emu
    config = TrainConfig(n_steps=300, batch_size=64, learning_rate=3e-3, progress=False)
    return train_emulator(emu, train, None, config).emulator


def _same_catalog(left, right, skip=_RUN_COLUMNS, rtol=1e-6, atol=1e-9):
    """Same rows in the same order, same strings, numbers equal to tolerance (NaN == NaN)."""
    assert left.colnames == right.colnames
    assert len(left) == len(right)
    for name in left.colnames:
        if name in skip:
            continue
        a, b = np.asarray(left[name]), np.asarray(right[name])
        if a.dtype.kind in "fc":
            np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, equal_nan=True, err_msg=name)
        else:
            assert a.tolist() == b.tolist(), name


def _journal_rows(out):
    lines = journal_path_for(out).read_text().splitlines()
    return [json.loads(line) for line in lines if '"source"' in line]


# -- checks in the driver, before any Ray cluster starts ---------------------------------
class _Locked:
    """A fit function that cannot be pickled (it holds a lock)."""

    def __init__(self):
        self.lock = threading.Lock()

    def __call__(self, spectrum, emulator, method="map", **options):
        raise AssertionError("never called")


def _exit_fit(spectrum, emulator, method="map", **options):
    """Kills its worker process for star-c (as an out-of-memory kill would); the probe fit otherwise."""
    if spectrum.metadata["object_id"] == "star-c":
        os._exit(1)
    return _probe_fit(spectrum, emulator, method=method, **options)
