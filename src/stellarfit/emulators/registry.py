"""Shipped emulators by name, and :func:`load_emulator` for names and paths.

``load_emulator("default")`` is the shipped TransformerPayne of the default
model, ``load_emulator("payne-default")`` the shipped Payne trained on the same
kind of Turbospectrum grid, ``load_emulator("default-fast")`` a Payne distilled
from the TransformerPayne (its CPU fast path, see ``fit_star(init=...)``),
``load_emulator("payne-astro")`` a Payne of Turbospectrum spectra with log gf values
calibrated on the Sun and Arcturus (for real spectra); they live in
``stellarfit/data/emulators/<directory>/`` inside the installed package (an
emulator directory each, see :mod:`stellarfit.emulators.checkpoint`).  Nothing
is downloaded.  Any other argument is a path to an emulator directory.  Shipped emulators
carry the shipped physics error (:mod:`stellarfit.emulators.physics_error`).
"""

from __future__ import annotations

import os
from importlib import resources

from stellarfit.emulators.base import Emulator
from stellarfit.emulators.checkpoint import read_emulator
from stellarfit.emulators.composite import COMPOSITE_FILE, read_composite
from stellarfit.emulators.physics_error import shipped_physics_error_present
from stellarfit.labels import LabelSpec

__all__ = ["SHIPPED_EMULATORS", "load_emulator", "shipped_emulator_path", "available_emulators"]

#: name -> directory under stellarfit/data/emulators/
SHIPPED_EMULATORS = {
    "default": "transformer_payne_default",
    "transformer-payne-default": "transformer_payne_default",
    "payne-default": "payne_default",
    "default-fast": "payne_distilled_default",
    "payne-distilled-default": "payne_distilled_default",
    "payne-astro": "payne_astro",
}

#: the shipped physics error (:data:`~stellarfit.emulators.physics_error.SHIPPED_PHYSICS_ERRORS`) each
#: shipped emulator carries: the mismatch with real stars of the physics it learned
_SHIPPED_PHYSICS_ERROR_OF = {"payne-astro": "astro"}


def shipped_emulator_path(name: str) -> str:
    """Directory of the shipped emulator ``name`` (FileNotFoundError if this installation lacks it)."""
    if name not in SHIPPED_EMULATORS:
        raise KeyError(f"no shipped emulator called {name!r}; shipped names: {sorted(SHIPPED_EMULATORS)} (or pass a path)")
    path = resources.files("stellarfit") / "data" / "emulators" / SHIPPED_EMULATORS[name]
    if not (path / "emulator.json").is_file():
        raise FileNotFoundError(
            f"the shipped emulator {name!r} is not in this installation (expected {path}); "
            "train one with stellarfit.emulators.train_emulator and pass its directory instead"
        )
    return str(path)


def available_emulators() -> list[str]:
    """Names of the shipped emulators present in this installation."""
    names = []
    for name in SHIPPED_EMULATORS:
        try:
            shipped_emulator_path(name)
        except FileNotFoundError:
            continue
        names.append(name)
    return names


def load_emulator(name_or_path: str | os.PathLike, *, label_spec: LabelSpec | None = None) -> Emulator:
    """Load a shipped emulator by name (``"default"``, ``"payne-default"``) or an emulator directory
    (also a composite's: :class:`~stellarfit.emulators.composite.CompositeEmulator`).

    ``label_spec``: if given, the emulator must have exactly these labels.
    """
    text = os.fspath(name_or_path)
    # a directory of several windows' emulators used as one (stellarfit.emulators.composite)
    if os.path.isfile(os.path.join(text, COMPOSITE_FILE)):
        return read_composite(text, load=load_emulator, label_spec=label_spec)
    if os.path.exists(text):
        return read_emulator(text, label_spec=label_spec)
    if text in SHIPPED_EMULATORS:
        # shipped emulators learned the realistic physics whose mismatch with real stars was measured
        emulator = read_emulator(shipped_emulator_path(text), label_spec=label_spec)
        physics = _SHIPPED_PHYSICS_ERROR_OF.get(text, "default")
        return emulator.with_physics_error(physics) if shipped_physics_error_present(physics) else emulator
    raise FileNotFoundError(f"{text!r} is neither an emulator directory nor a shipped emulator name ({sorted(SHIPPED_EMULATORS)})")
