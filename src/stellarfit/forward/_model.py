"""The observation model: emulator spectrum -> what the instrument records.

:class:`ForwardModel` maps ``(labels, rv, vsini)`` to the continuum-normalized
model flux at the observed pixels, in this order:

1. the emulator's normalized flux on its native log-lambda pixels (only the
   slice the observation needs, for every RV in ``rv_range``);
2. rotational broadening (vsini, linear limb darkening);
3. the instrumental LSF, broadened *differentially* from the emulator's native
   resolving power R_native to the observation's R_obs:
   sigma_v^2 = (c / 2.3548)^2 (1 / R_obs^2 - 1 / R_native^2); an observation
   sharper than the emulator is an error;
4. the top-hat of an observed pixel when observed pixels are wider than native ones;
5. the Doppler shift: the broadened rest-frame spectrum is interpolated (Keys
   cubic) at lambda_obs / D(rv), D the relativistic Doppler factor.

The continuum is separate (:mod:`stellarfit.forward._continuum`): a polynomial
per arm multiplying this model, linear in its coefficients, so it can be
profiled or marginalized analytically.

All of it is pure JAX in the labels, rv and vsini (jit, vmap, grad, jacfwd).
The native grid must be uniform in ln(lambda) (the emulators' grids are).
Observations with per-pixel resolution use the median R (a documented
approximation; per-pixel LSFs are future work).
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

from stellarfit.forward._broadening import (
    box_kernel,
    convolve_same,
    cubic_interpolate,
    doppler_factor,
    gaussian_kernel,
    log_doppler_factor,
    rotation_kernel,
)
from stellarfit.wavelengths import FWHM_TO_SIGMA, SPEED_OF_LIGHT_KMS

__all__ = ["ForwardModel", "ObservationOutsideEmulatorError"]


class ObservationOutsideEmulatorError(ValueError):
    """The observed wavelengths or resolution cannot be modelled by this emulator."""


class ForwardModel:
    """Observation model for one observed pixel grid.

    Args:
        flux_fn: ``flux_fn(labels (n_labels,), wavelength (m,)) -> (m,)``
            normalized flux of the emulator at native wavelengths (pure JAX).
        native_wavelength: (n_native,) emulator pixels [A, vacuum], uniform in ln(lambda).
        native_resolution: R of the emulator's grid.
        observed_wavelength: (n_obs,) [A, vacuum], increasing within each arm.
        observed_resolution: R of the observation (scalar or per-pixel; the median is used).
        rv_range: (min, max) radial velocities [km/s] the model must cover.
        vsini_max: largest vsini [km/s] the rotation kernel can represent.
        limb_darkening: linear limb-darkening coefficient of the rotation profile.
    """

    def __init__(
        self,
        flux_fn: Callable,
        native_wavelength: np.ndarray,
        native_resolution: float,
        observed_wavelength: np.ndarray,
        observed_resolution: float | np.ndarray | None,
        *,
        rv_range: tuple[float, float] = (-1000.0, 1000.0),
        vsini_max: float = 300.0,
        limb_darkening: float = 0.6,
    ):
        native = np.asarray(native_wavelength, dtype=np.float64)
        observed = np.asarray(observed_wavelength, dtype=np.float64)
        log_step = np.diff(np.log(native))
        if native.ndim != 1 or native.size < 8 or not np.allclose(log_step, log_step[0], rtol=1e-6, atol=0):
            raise ValueError("the emulator's native wavelengths must be uniform in ln(lambda) (as stellarfit grids are)")
        if observed.ndim != 1 or observed.size == 0 or not np.all(np.isfinite(observed)):
            raise ValueError("observed wavelengths must be a non-empty 1-D array of finite values [A, vacuum]")
        if observed_resolution is None:
            raise ObservationOutsideEmulatorError(
                "the observation's resolving power is unknown: give it (e.g. --resolution R or resolution= in Python)"
            )
        resolution = float(np.median(np.asarray(observed_resolution, dtype=np.float64)))
        if not np.isfinite(resolution) or resolution <= 0:
            raise ValueError(f"observed resolving power must be positive, got {resolution}")
        if resolution > native_resolution * (1 + 1e-6):
            raise ObservationOutsideEmulatorError(
                f"the observation (R={resolution:.0f}) is sharper than the emulator (native R={native_resolution:.0f}); "
                "an emulator can only be broadened, not sharpened: use an emulator trained at R >= the observation's"
            )
        rv_min, rv_max = (float(v) for v in rv_range)
        if not -3e4 < rv_min <= rv_max < 3e4:
            raise ValueError(f"rv_range must satisfy -30000 < min <= max < 30000 km/s, got {rv_range}")
        self.log_step = float(log_step[0])
        self.velocity_step = SPEED_OF_LIGHT_KMS * self.log_step  # km/s per native pixel (small-step limit)
        self.native_resolution = float(native_resolution)
        self.observed_resolution = resolution
        self.rv_range = (rv_min, rv_max)
        self.vsini_max = float(vsini_max)
        self.limb_darkening = float(limb_darkening)

        # static kernels: differential LSF (x) observed-pixel top-hat
        sigma_velocity = SPEED_OF_LIGHT_KMS * FWHM_TO_SIGMA * np.sqrt(max(1.0 / resolution**2 - 1.0 / native_resolution**2, 0.0))
        lsf = gaussian_kernel(sigma_velocity / self.velocity_step)
        observed_log_step = np.median(np.abs(np.diff(np.log(observed)))) if observed.size > 1 else 0.0
        pixel = box_kernel(observed_log_step / self.log_step)
        instrument = np.convolve(lsf, pixel)
        self.instrument_kernel = jnp.asarray(instrument / instrument.sum())
        self.rotation_half_width = int(np.ceil(self.vsini_max / self.velocity_step)) + 1

        # the slice of native pixels needed for every rv in rv_range, plus kernel margins
        margin_pixels = self.rotation_half_width + instrument.size // 2 + 3
        lo_rest = observed.min() / float(doppler_factor(rv_max))
        hi_rest = observed.max() / float(doppler_factor(rv_min))
        first = int(np.floor(np.log(lo_rest / native[0]) / self.log_step)) - margin_pixels
        last = int(np.ceil(np.log(hi_rest / native[0]) / self.log_step)) + margin_pixels
        self.native_slice = slice(max(first, 0), min(last + 1, native.size))
        self.native_wavelength = native[self.native_slice]
        # observed pixels modelled with full kernels for every rv in rv_range
        edge = (instrument.size // 2 + self.rotation_half_width) * self.log_step
        self._coverage_edges = (np.log(native[0]) + edge, np.log(native[-1]) - edge)
        self._log_observed = np.log(observed)
        self.covered = self.coverage(self.rv_range)
        if not np.any(self.covered):
            raise ObservationOutsideEmulatorError(
                f"no observed pixel ({observed.min():.1f}-{observed.max():.1f} A) lies inside the emulator's coverage "
                f"({native[0]:.1f}-{native[-1]:.1f} A, vacuum, rest frame) for radial velocities {rv_min:g}..{rv_max:g} km/s; "
                "use an emulator that covers these wavelengths or narrow the RV range"
            )
        self.observed_wavelength = observed
        # pixel positions of the observed wavelengths on the native slice at rv = 0, computed in
        # float64 (ln lambda in float32 would be off by ~0.8 pixel); the rv term is added in the model dtype
        self._base_position = jnp.asarray((np.log(observed) - np.log(self.native_wavelength[0])) / self.log_step)
        self._flux_fn = flux_fn
        self._native_wavelength_jax = jnp.asarray(self.native_wavelength)

    @classmethod
    def from_emulator(cls, emulator, observed_wavelength, observed_resolution, **options) -> "ForwardModel":
        """A forward model whose rest-frame flux is ``emulator`` on its native pixels
        (the emulator is evaluated only on the native slice the observation needs)."""
        if emulator.native_resolution is None:
            raise ValueError("the emulator does not record its native resolution; it cannot be broadened to an observation")
        model = cls(None, emulator.wavelength, emulator.native_resolution, observed_wavelength, observed_resolution, **options)
        native_flux = emulator.flux_fn(model.native_wavelength)
        model._flux_fn = lambda labels, wavelength: native_flux(labels)
        return model

    def coverage(self, rv_range: tuple[float, float]) -> np.ndarray:
        """(n_obs,) bool: observed pixels modelled with full kernels for every RV in ``rv_range``
        (which must lie inside this model's ``rv_range``)."""
        rv_min, rv_max = (float(v) for v in rv_range)
        if not (self.rv_range[0] - 1e-9 <= rv_min <= rv_max <= self.rv_range[1] + 1e-9):
            raise ValueError(f"rv_range {rv_range} must lie inside the forward model's {self.rv_range} km/s")
        lo_ok, hi_ok = self._coverage_edges
        log_rest_lo = self._log_observed - np.log(float(doppler_factor(rv_max)))
        log_rest_hi = self._log_observed - np.log(float(doppler_factor(rv_min)))
        return (log_rest_lo >= lo_ok) & (log_rest_hi <= hi_ok)

    @property
    def n_native(self) -> int:
        return int(self.native_wavelength.size)

    def rest_frame(self, labels):
        """Emulator flux on the native slice, (n_native,)."""
        return self._flux_fn(labels, self._native_wavelength_jax)

    def broaden(self, rest_flux, vsini):
        """Rotation and instrument applied to native-pixel flux (n_native,)."""
        kernel = rotation_kernel(vsini, self.velocity_step, self.rotation_half_width, self.limb_darkening)
        rotated = convolve_same(rest_flux, kernel)
        return convolve_same(rotated, self.instrument_kernel.astype(rotated.dtype))

    def shift_to_observed(self, broadened, rv):
        """Doppler shift and interpolation onto the observed pixels, (n_obs,)."""
        position = self._base_position.astype(broadened.dtype) - log_doppler_factor(rv) / self.log_step
        return cubic_interpolate(broadened, position)

    def __call__(self, labels, rv=0.0, vsini=0.0):
        """Normalized model flux at the observed pixels, (n_obs,), for labels (n_labels,)."""
        return self.shift_to_observed(self.broaden(self.rest_frame(labels), vsini), rv)
