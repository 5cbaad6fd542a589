"""Every matrix product a fit evaluates is traced at full float32 precision (stellarfit._precision).

On NVIDIA GPUs JAX's default float32 product is TensorFloat-32, whose rounding
makes the log likelihood noisy at the level NUTS adapts to.  A CPU ignores the
precision attribute, so these tests read it from the lowered programs instead
of timing or comparing numbers.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stellarfit as sf
from stellarfit.inference.fit import _prepare


def _precisions(lowered_text: str) -> list[str]:
    """The precision attribute of every dot_general / convolution in a lowered (StableHLO) program."""
    ops = [line for line in lowered_text.splitlines() if re.search(r"stablehlo\.(dot_general|dot|convolution)\b", line)]
    assert ops, "the program has no matrix products: the check would pass vacuously"
    found = []
    for line in ops:
        match = re.search(r"precision = \[([A-Z]+), ([A-Z]+)\]", line)
        found.append("DEFAULT" if match is None else ",".join(match.groups()))
    return found


def _problem(spectrum, emulator):
    return _prepare(spectrum, emulator, priors=None, rv_range=(-300.0, 300.0), rv_window=50.0, vsini_max=20.0,
                    continuum_degree=2).problem


def _assert_all_highest(text: str) -> None:
    precisions = _precisions(text)
    loose = [p for p in precisions if p != "HIGHEST,HIGHEST"]
    assert not loose, f"{len(loose)} of {len(precisions)} matrix products are not at HIGHEST precision: {loose[:5]}"


@pytest.mark.parametrize("continuum", ["profile", "marginalize"])
def test_log_density_gradient_products_are_full_precision(payne, spectrum, continuum):
    problem = _problem(spectrum, payne).with_continuum(continuum)
    z = jnp.zeros(len(problem.names), jnp.float32)
    text = jax.jit(jax.value_and_grad(problem.log_density_unconstrained)).lower(z).as_text()
    _assert_all_highest(text)


def test_residual_jacobian_products_are_full_precision(payne, spectrum):
    """The Levenberg-Marquardt / Gauss-Newton Jacobian (forward mode) and the model flux."""
    problem = _problem(spectrum, payne)
    z = jnp.zeros(len(problem.names), jnp.float32)
    _assert_all_highest(jax.jit(jax.jacfwd(problem.residuals_unconstrained)).lower(z).as_text())
    theta = problem.to_theta(z)
    _assert_all_highest(jax.jit(problem.model_flux).lower(theta).as_text())


def test_transformer_payne_flux_fn_is_full_precision():
    emulator = sf.load_emulator("default")
    fn = emulator.flux_fn(emulator.wavelength[:64])
    labels = jnp.asarray(np.mean([emulator.label_spec.lower, emulator.label_spec.upper], axis=0), jnp.float32)
    _assert_all_highest(jax.jit(jax.jacrev(fn)).lower(labels).as_text())


def test_training_keeps_jax_default_precision(payne):
    """apply_fn (what training differentiates wrt the weights) is not forced to full precision."""
    scaled = jnp.zeros((2, payne.n_labels), jnp.float32)
    text = jax.jit(payne.apply_fn).lower(payne.params, scaled).as_text()
    assert "DEFAULT" in ",".join(_precisions(text))


def test_check_detects_a_default_precision_product():
    """The checker itself: a product outside the context is reported."""
    w = jnp.ones((8, 8))
    text = jax.jit(lambda x: jnp.tanh(x @ w)).lower(jnp.ones((2, 8))).as_text()
    with pytest.raises(AssertionError, match="not at HIGHEST"):
        _assert_all_highest(text)
