"""Matrix products at full float32 precision wherever a fit evaluates the model.

On NVIDIA GPUs since Ampere, JAX's default precision for a float32 matrix
product is TensorFloat-32: operands rounded to a 10-bit mantissa (relative
error ~5e-4).  That is harmless for training but not for a likelihood: over
thousands of pixels at S/N 100 the rounding puts noise of order one unit into
the log likelihood, which is as large as the energy errors that NUTS adapts
its step size to, and smaller still than what a Fisher matrix or a converged
MAP needs.  Every function that evaluates the model for inference (the
emulator's ``predict`` and ``flux_fn``, the forward model, the
:class:`~stellarfit.inference.FitProblem` densities) therefore traces its
products inside ``jax.default_matmul_precision("highest")``.  On a CPU this
changes nothing (XLA's CPU products are always full float32).  Training keeps
JAX's default.
"""

from __future__ import annotations

import functools
from typing import Callable, TypeVar

import jax

#: the matmul precision of everything a fit evaluates (see the module docstring)
INFERENCE_MATMUL_PRECISION = "highest"

F = TypeVar("F", bound=Callable)


def full_precision(function: F) -> F:
    """``function`` with its matrix products traced at :data:`INFERENCE_MATMUL_PRECISION`."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with jax.default_matmul_precision(INFERENCE_MATMUL_PRECISION):
            return function(*args, **kwargs)

    return wrapper
