"""An analytic toy emulator linear in its labels, and its observed spectrum written out by hand.

The emulator's normalized flux is 1 - sum_j (w_j . theta) g_j(lambda): Gaussian lines at the
native resolution (in velocity, sigma_nat = c FWHM_TO_SIGMA / R_native) whose depths are linear in
the labels, averaged over each native pixel (what an emulator's pixel holds).  Seen at R_obs at velocity rv, each line is still a Gaussian, of width
sigma_obs = c FWHM_TO_SIGMA / R_obs (the differential LSF adds in quadrature), depth scaled by
sigma_nat / sigma_obs (its area is kept), centred at ln(mu_j) + ln D(rv); each observed pixel then
averages it over its width (a top-hat of one pixel, an erf difference).
:func:`observed_normalized` writes that out with numpy, independently of stellarfit's forward
model, so the Cramér-Rao bound of a fit can be computed in a test from first principles.
"""

import jax.numpy as jnp
import numpy as np
from scipy.special import erf

from stellarfit.labels import Label, LabelSpec
from stellarfit.wavelengths import FWHM_TO_SIGMA, SPEED_OF_LIGHT_KMS, log_lambda_grid

C = SPEED_OF_LIGHT_KMS
R_NATIVE = 30_000.0
NATIVE = log_lambda_grid(5000.0, 5100.0, R_NATIVE, 3.0)
SPEC = LabelSpec([Label("a", "", 0.0, 1.0), Label("b", "", 0.0, 1.0), Label("c", "", 0.0, 1.0)])
SIGMA_NATIVE = C * FWHM_TO_SIGMA / R_NATIVE  # [km/s]

_rng = np.random.default_rng(7)
CENTRES = np.sort(_rng.uniform(5012.0, 5088.0, 36))
# each line is driven mostly by one label, a little by the others: correlated, well-determined labels
WEIGHTS = 0.05 * _rng.uniform(size=(CENTRES.size, 3))
WEIGHTS[np.arange(CENTRES.size), np.arange(CENTRES.size) % 3] += 0.45


def _profiles(wavelength, sigma_v, rv=0.0, pixel=0.0):
    """(n_lines, n_pixels) Gaussians in velocity, unit height, centred on each line shifted by rv;
    with ``pixel`` > 0 [km/s], averaged over a pixel of that width."""
    beta = rv / C
    log_d = 0.5 * (np.log1p(beta) - np.log1p(-beta))
    u = C * (np.log(np.asarray(wavelength, np.float64))[None, :] - np.log(CENTRES)[:, None] - log_d)
    if pixel == 0.0:
        return np.exp(-0.5 * (u / sigma_v) ** 2)
    scale = np.sqrt(2.0) * sigma_v
    return sigma_v * np.sqrt(np.pi / 2.0) / pixel * (erf((u + pixel / 2) / scale) - erf((u - pixel / 2) / scale))


class LinearToyEmulator:
    """What fit_star needs of an emulator; flux exactly linear in the labels."""

    label_spec = SPEC
    label_names = SPEC.names
    native_resolution = R_NATIVE
    wavelength = NATIVE
    pixel_error = None
    metadata = {"name": "linear-toy"}

    def flux_fn(self, wavelength):
        # an emulator's pixel holds the spectrum averaged over that native pixel (as grids are made)
        native_pixel = C * np.log(NATIVE[1] / NATIVE[0])
        lines = jnp.asarray(WEIGHTS.T @ _profiles(wavelength, SIGMA_NATIVE, pixel=native_pixel), jnp.float32)  # (3, n)
        return lambda labels: 1.0 - labels @ lines


def observed_normalized(theta, rv, wavelength, resolution):
    """The toy's normalized flux at R_obs = ``resolution`` and velocity ``rv`` on pixels ``wavelength``
    uniform in ln(lambda) (numpy, float64)."""
    sigma_obs = C * FWHM_TO_SIGMA / resolution
    depth = (WEIGHTS @ np.asarray(theta[:3], np.float64)) * SIGMA_NATIVE / sigma_obs
    pixel = C * np.log(wavelength[1] / wavelength[0])
    return 1.0 - depth @ _profiles(wavelength, sigma_obs, rv, pixel)


def observed_jacobian(theta, rv, wavelength, resolution, continuum, degree):
    """d(observed flux)/d(a, b, c, rv, continuum coefficients): (n, 4 + degree + 1), numpy float64.

    Flux = P(x) c * f(theta, rv): the label columns are exact (f is linear in them), rv by a central
    difference of :func:`observed_normalized`, the continuum ones P_k(x) f (x: wavelength mapped to [-1, 1])."""
    f = observed_normalized(theta, rv, wavelength, resolution)
    columns = [continuum * (observed_normalized(np.eye(3)[k], rv, wavelength, resolution) - 1.0) for k in range(3)]
    step = 1e-3
    columns.append(continuum * (observed_normalized(theta, rv + step, wavelength, resolution)
                                - observed_normalized(theta, rv - step, wavelength, resolution)) / (2 * step))
    x = 2.0 * (wavelength - wavelength[0]) / (wavelength[-1] - wavelength[0]) - 1.0
    columns += [np.polynomial.legendre.legval(x, np.eye(degree + 1)[k]) * f for k in range(degree + 1)]
    return np.stack(columns, axis=1)
