"""The physics error: where the realistic physics the emulators learned misses real stars.

The shipped emulators reproduce Turbospectrum on atmosnet atmospheres with the Gaia-ESO
line list; nature differs (log gf values, missing lines, atmospheres, NLTE).  The physics
error is a per-wavelength sigma in normalized flux, measured on real benchmark stars by
``scripts/calibrate_physics_error.py`` (residuals of Turbospectrum at their literature
labels), that fits add to the noise like the emulator's own error, so that pixels the
physics gets wrong weigh less and the errors include the mismatch.  Shipped emulators
carry it (:func:`stellarfit.load_emulator`); ``emulator.with_physics_error(None)`` removes
it and ``fit_star(..., physics_error=False)`` ignores it.
"""

from __future__ import annotations

import dataclasses
import os
from importlib import resources

import numpy as np

__all__ = ["PhysicsError", "load_physics_error", "shipped_physics_error_present", "DEFAULT_PHYSICS_ERROR_FILE",
           "SHIPPED_PHYSICS_ERRORS"]

#: the shipped physics error of the default window (file under stellarfit/data/)
DEFAULT_PHYSICS_ERROR_FILE = "physics_error_5000_5500.npz"

#: shipped physics errors by name (files under stellarfit/data/): ``default`` measured with the
#: Gaia-ESO log gf values (the physics of ``payne-default`` and the TransformerPayne), ``astro``
#: with the log gf values fitted to the Sun and Arcturus (the physics of ``payne-astro``)
SHIPPED_PHYSICS_ERRORS = {"default": DEFAULT_PHYSICS_ERROR_FILE, "astro": "physics_error_astro_5000_5500.npz"}


@dataclasses.dataclass(frozen=True)
class PhysicsError:
    """sigma (n,) [normalized flux] of the physics' mismatch with nature at rest-frame
    vacuum ``wavelength`` (n,) [A], increasing; ``stars``: the stars it was measured on."""

    wavelength: np.ndarray
    sigma: np.ndarray
    stars: tuple[str, ...] = ()
    source: str = ""

    def __post_init__(self) -> None:
        wavelength = np.asarray(self.wavelength, np.float64)
        sigma = np.asarray(self.sigma, np.float64)
        if wavelength.ndim != 1 or wavelength.shape != sigma.shape or wavelength.size < 2:
            raise ValueError(f"physics error: wavelength and sigma must be 1-D of one length >= 2, got "
                             f"{wavelength.shape} and {sigma.shape}")
        if not (np.all(np.isfinite(sigma)) and np.all(sigma >= 0) and np.all(np.diff(wavelength) > 0)):
            raise ValueError("physics error: sigma must be finite and >= 0, wavelength strictly increasing")
        object.__setattr__(self, "wavelength", wavelength)
        object.__setattr__(self, "sigma", sigma)
        object.__setattr__(self, "stars", tuple(str(s) for s in self.stars))

    def at(self, wavelength: np.ndarray) -> np.ndarray:
        """sigma at rest-frame vacuum ``wavelength`` [A] (any shape); 0 outside the measured range."""
        wavelength = np.asarray(wavelength, np.float64)
        inside = (wavelength >= self.wavelength[0]) & (wavelength <= self.wavelength[-1])
        return np.where(inside, np.interp(wavelength, self.wavelength, self.sigma), 0.0)

    def describe(self) -> dict:
        return {"source": self.source, "stars": list(self.stars),
                "range": [float(self.wavelength[0]), float(self.wavelength[-1])],
                "median_sigma": float(np.median(self.sigma))}


def shipped_physics_error_present(name: str = "default") -> bool:
    """Whether this installation has the shipped physics error ``name`` (:data:`SHIPPED_PHYSICS_ERRORS`)."""
    return (resources.files("stellarfit") / "data" / SHIPPED_PHYSICS_ERRORS[name]).is_file()


def load_physics_error(name_or_path: str | os.PathLike = "default") -> PhysicsError:
    """A shipped physics error by name (``"default"``, ``"astro"``: :data:`SHIPPED_PHYSICS_ERRORS`) or one
    written by ``scripts/calibrate_physics_error.py``."""
    text = os.fspath(name_or_path)
    if text in SHIPPED_PHYSICS_ERRORS:
        path = resources.files("stellarfit") / "data" / SHIPPED_PHYSICS_ERRORS[text]
        source = f"stellarfit/data/{SHIPPED_PHYSICS_ERRORS[text]}"
    else:
        path, source = text, text
        if not os.path.isfile(text):
            raise FileNotFoundError(f"physics error file {text!r} does not exist; make one with "
                                    "scripts/calibrate_physics_error.py, or use 'default'")
    with path.open("rb") if hasattr(path, "open") else open(path, "rb") as handle, np.load(handle, allow_pickle=False) as data:
        missing = {"wavelength", "sigma"} - set(data.files)
        if missing:
            raise ValueError(f"{source}: not a physics error file (missing arrays {sorted(missing)})")
        stars = tuple(str(s) for s in data["stars"]) if "stars" in data.files else ()
        return PhysicsError(data["wavelength"], data["sigma"], stars=stars, source=source)
