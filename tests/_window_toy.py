"""Toy emulators of two separate wavelength windows with the same labels, and a spectrum observed in both.

Each window has its own Gaussian lines whose depths and widths follow (teff, logg, fe_h) as in
tests/_toy_emulator.py, so either window alone constrains every label and both together do better.
"""

import jax.numpy as jnp
import numpy as np

from stellarfit.forward import simulate_observation
from stellarfit.labels import Label, LabelSpec
from stellarfit.spectra import ObservedSpectrum
from stellarfit.wavelengths import FWHM_TO_SIGMA, log_lambda_grid

NATIVE_R = 30_000.0
SPEC = LabelSpec([Label("teff", "K", 4000.0, 7000.0), Label("logg", "dex", 1.0, 5.0), Label("fe_h", "dex", -2.5, 0.5)])
WINDOWS = ((5000.0, 5100.0), (6300.0, 6400.0))
TRUTH = np.array([5600.0, 3.6, -0.4])


class WindowToyEmulator:
    """What fit_star needs of an emulator: Gaussian lines in ``window`` (vacuum A), labels ``spec``."""

    native_resolution = NATIVE_R
    pixel_error = None

    def __init__(self, window, seed: int, spec: LabelSpec = SPEC, n_lines: int = 30, wavelength=None):
        self.label_spec = spec
        self.label_names = spec.names
        self.wavelength = log_lambda_grid(window[0], window[1], NATIVE_R, 3.0) if wavelength is None else wavelength
        self.metadata = {"name": f"toy-{window[0]:.0f}-{window[1]:.0f}"}
        rng = np.random.default_rng(seed)
        lo, hi = window
        self.centres = np.sort(rng.uniform(lo + 0.08 * (hi - lo), hi - 0.08 * (hi - lo), n_lines))
        self.kind = rng.integers(0, 3, n_lines)
        self.strength = rng.uniform(0.1, 0.9, n_lines)

    def _flux(self, labels, wavelength):
        teff, logg, fe_h = labels[..., 0:1], labels[..., 1:2], labels[..., 2:3]
        t = (teff - 5500.0) / 1500.0
        depth = self.strength * 10.0 ** (0.4 * fe_h) * jnp.where(
            self.kind == 0, 1.0 - 0.3 * t, jnp.where(self.kind == 1, 1.0 + 0.2 * t - 0.1 * (logg - 3.0), jnp.exp(-1.2 * t)))
        depth = depth / (1.0 + depth)
        sigma = self.centres / NATIVE_R * FWHM_TO_SIGMA * (1.0 + 0.05 * (logg - 3.0) * (self.kind == 0))
        profile = jnp.exp(-0.5 * ((wavelength[:, None] - self.centres) / sigma[..., None, :]) ** 2)
        return jnp.prod(1.0 - depth[..., None, :] * profile, axis=-1)

    def flux_fn(self, wavelength=None):
        wavelength = jnp.asarray(self.wavelength if wavelength is None else wavelength)
        return lambda labels: self._flux(jnp.asarray(labels), wavelength)

    def predict(self, labels, wavelength=None, **options):
        labels = self.label_spec.to_array(labels).reshape(-1, len(self.label_spec))
        return np.asarray(self.flux_fn(wavelength)(labels), np.float32)


def toy_members(spec: LabelSpec = SPEC):
    return [WindowToyEmulator(window, seed, spec) for seed, window in enumerate(WINDOWS)]


def observe(members, *, theta=TRUTH, rv=12.0, vsini=0.0, snr=80.0, resolution=20_000.0, seed=0, gap: bool = False,
            arms: bool = True) -> ObservedSpectrum:
    """The toy star seen in both windows (observed pixels 2.5 per resolution element at ``resolution``),
    continua sloped differently per window.  ``gap``: also pixels between the windows (in the first
    arm's block, flux 1, good ivar) that no member covers; ``arms``: one arm per window, else one arm."""
    pieces = []
    for i, member in enumerate(members):
        lo, hi = member.wavelength[0], member.wavelength[-1]
        wavelength = log_lambda_grid(lo + 1.0, hi - 1.0, resolution, 2.5)
        native_flux = np.asarray(member.flux_fn()(jnp.asarray(theta, jnp.float32)), np.float64)
        x = (wavelength - wavelength.mean()) / (wavelength.max() - wavelength.min())
        continuum = (1.0 + 0.3 * i) * (1.0 + 0.1 * x)
        pieces.append(simulate_observation(member.wavelength, native_flux, NATIVE_R, wavelength, resolution, rv=rv,
                                           vsini=vsini, snr=snr, continuum=continuum, rng=seed + i))
    wavelength = [p.wavelength for p in pieces]
    flux = [p.flux for p in pieces]
    ivar = [p.ivar for p in pieces]
    if gap:
        between = log_lambda_grid(members[0].wavelength[-1] + 20.0, members[1].wavelength[0] - 20.0, resolution, 2.5)
        wavelength.insert(1, between)
        flux.insert(1, np.ones(between.size))
        ivar.insert(1, np.full(between.size, snr**2))
    arm = np.concatenate([np.full(w.size, i, dtype=int) for i, w in enumerate(wavelength)]) if arms else None
    if arms and gap:  # the gap pixels belong to the first arm
        arm = np.concatenate([np.zeros(wavelength[0].size + wavelength[1].size, int), np.ones(wavelength[2].size, int)])
    return ObservedSpectrum.from_arrays(np.concatenate(wavelength), np.concatenate(flux), ivar=np.concatenate(ivar),
                                        resolution=resolution, arm=arm)
