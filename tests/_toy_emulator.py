"""A tiny analytic 'emulator' for inference tests: Gaussian lines whose depths and widths follow the labels."""

import jax.numpy as jnp
import numpy as np

from stellarfit.labels import Label, LabelSpec
from stellarfit.wavelengths import FWHM_TO_SIGMA, log_lambda_grid

NATIVE_R = 30_000.0
NATIVE = log_lambda_grid(5000.0, 5500.0, NATIVE_R, 3.0)
TOY_SPEC = LabelSpec([Label("teff", "K", 4000.0, 7000.0), Label("logg", "dex", 1.0, 5.0), Label("fe_h", "dex", -2.5, 0.5)])
_RNG = np.random.default_rng(42)
CENTRES = np.sort(_RNG.uniform(5010.0, 5490.0, 120))
KIND = _RNG.integers(0, 3, CENTRES.size)          # 0: neutral-like, 1: ion-like, 2: temperature-sensitive
STRENGTH = _RNG.uniform(0.1, 0.9, CENTRES.size)


def toy_flux(labels, wavelength):
    """Normalized flux (m,) at wavelength (m,) for labels (teff, logg, fe_h)."""
    teff, logg, fe_h = labels[0], labels[1], labels[2]
    t = (teff - 5500.0) / 1500.0
    abundance = 10.0 ** (0.4 * fe_h)
    depth = STRENGTH * abundance * jnp.where(KIND == 0, 1.0 - 0.3 * t, jnp.where(KIND == 1, 1.0 + 0.15 * (logg - 3.0) * 0 + 0.2 * t - 0.1 * (logg - 3.0), jnp.exp(-1.2 * t)))
    depth = depth / (1.0 + depth)  # saturation
    sigma = CENTRES / NATIVE_R * FWHM_TO_SIGMA * (1.0 + 0.05 * (logg - 3.0) * (KIND == 0))
    profile = jnp.exp(-0.5 * ((wavelength[:, None] - CENTRES[None, :]) / sigma[None, :]) ** 2)
    return jnp.prod(1.0 - depth[None, :] * profile, axis=1)


class ToyEmulator:
    """Just what fit_star needs of an emulator, around :func:`toy_flux`."""

    label_spec = TOY_SPEC
    label_names = TOY_SPEC.names
    native_resolution = NATIVE_R
    wavelength = NATIVE
    pixel_error = None
    metadata = {"name": "toy-lines"}

    def flux_fn(self, wavelength):
        wavelength = jnp.asarray(wavelength)
        return lambda labels: toy_flux(labels, wavelength)
