"""Cramér-Rao bounds for a planned observation: how precisely could the labels be measured?

:func:`cramer_rao` builds the observation (log-lambda pixels at the given
resolving power, ``sampling`` pixels per resolution element, by default over
the emulator's coverage minus margins for the RV and the kernels), the full
model

    f(theta) = (D @ c) * F(labels, rv, vsini),

with D the Legendre continuum design matrix (:func:`~stellarfit.forward.continuum_design_matrix`)
and F the broadened, shifted emulator flux (:func:`~stellarfit.inference.forward_model_for`),
and the Fisher matrix F_ij = sum_k J_ki J_kj / sigma_k^2 with sigma = 1/snr
for the normalized flux (continuum = 1).  RV, the continuum coefficients and
(when ``vsini`` exceeds ``vsini_threshold``) vsini are nuisance parameters:
they are part of theta, so the label bounds are marginalized over them, as
in the Cramér-Rao framework of e.g. Sandford et al. 2020 (ApJS 250, 42;
Chem-I-Calc).  Below the threshold the rotation kernel is narrower than a
pixel and d f / d vsini vanishes at vsini = 0, so vsini is held fixed.

The Jacobian J = d f / d theta is taken once by ``jax.jacfwd`` (float32 like
the emulator; the Fisher sum is in float64, as in
:func:`~stellarfit.inference.fisher_matrix`) and returned as the derivative
spectra.  With independent pixels of equal noise, F scales as snr^2, so every
bound scales exactly as 1/snr.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from stellarfit.inference.fisher import FisherResult, cramer_rao_from_fisher

__all__ = ["CramerRaoResult", "cramer_rao", "cramer_rao_by_window", "default_labels", "planned_wavelength", "window_name"]

SPEED_OF_LIGHT_KMS = 299_792.458


@dataclasses.dataclass(frozen=True)
class CramerRaoResult:
    """Cramér-Rao bounds of one planned observation.

    Attributes:
        names: all parameters (p,): labels, then ``rv``, [``vsini``], ``continuum_0..``.
        label_names: the labels (first entries of ``names``).
        theta: (p,) parameter values at which the bounds hold.
        sigma: (p,) bounds (inf for unconstrained parameters), labels in their units, rv/vsini in km/s.
        correlation: (p, p) correlation matrix.
        derivatives: (n_pixels, p) dF/dtheta of the normalized model (per unit of each parameter), float64.
        wavelength: (n_pixels,) vacuum Angstrom.
        model_flux: (n_pixels,) normalized model flux.
        snr: S/N per pixel (sigma = 1/snr on the normalized flux).
        resolution: resolving power.
        fisher: the :class:`FisherResult` (Fisher matrix, covariance, unconstrained parameters, condition number).
    """

    names: tuple[str, ...]
    label_names: tuple[str, ...]
    theta: np.ndarray
    sigma: np.ndarray
    correlation: np.ndarray
    derivatives: np.ndarray
    wavelength: np.ndarray
    model_flux: np.ndarray
    snr: float
    resolution: float
    rv: float
    vsini: float
    continuum_degree: int
    fisher: FisherResult

    def as_dict(self) -> dict[str, float]:
        """{label: sigma} (labels only)."""
        return {name: float(self.sigma[i]) for i, name in enumerate(self.label_names)}

    def nuisance(self) -> dict[str, float]:
        """{name: sigma} of rv and vsini (when free)."""
        return {name: float(self.sigma[i]) for i, name in enumerate(self.names) if name in ("rv", "vsini")}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``crb`` {label: sigma}, ``nuisance``, the labels, settings and the correlation matrix."""

        def finite(value):
            value = float(value)
            return value if np.isfinite(value) else None

        return {
            "crb": {k: finite(v) for k, v in self.as_dict().items()},
            "nuisance": {k: finite(v) for k, v in self.nuisance().items()},
            "labels": {name: float(self.theta[i]) for i, name in enumerate(self.label_names)},
            "snr": self.snr,
            "resolution": self.resolution,
            "rv": self.rv,
            "vsini": self.vsini,
            "continuum_degree": self.continuum_degree,
            "n_pixels": int(self.wavelength.size),
            "wavelength_range": [float(self.wavelength[0]), float(self.wavelength[-1])],
            "parameters": list(self.names),
            "correlation": [[finite(v) for v in row] for row in self.correlation],
            "unconstrained": list(self.fisher.unconstrained),
            "fisher_condition_number": finite(self.fisher.condition_number),
        }


def default_labels(label_spec) -> dict[str, float]:
    """Values for labels not given: the centre of the box; [X/Fe] offsets follow alpha_fe (or 0)."""
    values = {}
    for label in label_spec:
        values[label.name] = 0.5 * (label.lower + label.upper)
    for label in label_spec:
        if label.offset_from is not None:
            values[label.name] = values.get(label.offset_from, 0.0) if label.offset_from else 0.0
    return values


def planned_wavelength(emulator, resolution: float, *, window: Sequence[float] | None = None, rv: float = 0.0,
                       vsini: float = 0.0, sampling: float = 3.0) -> np.ndarray:
    """Log-lambda pixels at ``resolution`` with ``sampling`` pixels per resolution element [A, vacuum].

    Default range: the emulator's coverage shrunk on each side by a margin
    of |rv| + vsini + 5 c/R + 20 km/s, so that the shifted, broadened model
    stays inside the emulator.  ``window`` (lo, hi) restricts it further.
    """
    from stellarfit.wavelengths import log_lambda_grid

    members = getattr(emulator, "members", None)
    if members is not None and window is None:  # a composite emulator: each window's own pixels, one after the other
        return np.concatenate([planned_wavelength(m, resolution, rv=rv, vsini=vsini, sampling=sampling) for m in members])
    native = np.asarray(emulator.wavelength, dtype=np.float64)
    margin = (abs(rv) + abs(vsini) + 5.0 * SPEED_OF_LIGHT_KMS / resolution + 20.0) / SPEED_OF_LIGHT_KMS
    lo, hi = native[0] * (1 + margin), native[-1] * (1 - margin)
    if window is not None:
        w_lo, w_hi = (float(v) for v in window)
        if not w_hi > w_lo:
            raise ValueError(f"window must be (lo, hi) with hi > lo, got {tuple(window)}")
        if w_hi <= lo or w_lo >= hi:
            raise ValueError(
                f"window {w_lo:g}-{w_hi:g} A lies outside the usable emulator range {lo:.2f}-{hi:.2f} A "
                f"(emulator {native[0]:.2f}-{native[-1]:.2f} A minus margins for RV and broadening)"
            )
        lo, hi = max(lo, w_lo), min(hi, w_hi)
    if not hi > lo:
        raise ValueError(f"the emulator range {native[0]:.2f}-{native[-1]:.2f} A is too short for R={resolution:g} with its margins")
    wavelength = log_lambda_grid(lo, hi, float(resolution), float(sampling))
    if wavelength.size < 8:
        raise ValueError(f"only {wavelength.size} pixels between {lo:.2f} and {hi:.2f} A at R={resolution:g}; widen the window")
    return wavelength


def cramer_rao(
    emulator,
    labels: Mapping[str, float] | np.ndarray,
    *,
    wavelength: np.ndarray | None = None,
    resolution: float | None = None,
    snr: float = 100.0,
    rv: float = 0.0,
    vsini: float = 0.0,
    continuum_degree: int = 2,
    window: Sequence[float] | None = None,
    sampling: float = 3.0,
    vsini_threshold: float = 3.0,
    prior_sigma: Mapping[str, float] | None = None,
) -> CramerRaoResult:
    """Cramér-Rao bounds on the labels for a planned observation.

    Args:
        emulator: a stellarfit emulator (``load_emulator(...)``).
        labels: {name: value} (labels not given take :func:`default_labels`) or an array in the emulator's label order.
        wavelength: (n,) observed pixels [A, vacuum]; default :func:`planned_wavelength`.  Pixels the
            emulator does not cover at ``rv`` (with the kernels' margins) are left out: the
            result's ``wavelength`` holds those used.
        resolution: resolving power of the observation (default: the emulator's native R).
        snr: S/N per pixel of the continuum-normalized spectrum (sigma = 1/snr for every pixel).
        rv, vsini: radial velocity and projected rotation [km/s] of the star.
        continuum_degree: Legendre degree of the continuum (its coefficients are nuisance parameters).
        window: (lo, hi) [A] to restrict the default wavelengths.
        sampling: pixels per resolution element for the default wavelengths.
        vsini_threshold: vsini [km/s] above which vsini is a free nuisance parameter.
        prior_sigma: optional Gaussian prior widths by parameter name.
    Returns: a :class:`CramerRaoResult`.
    """
    from stellarfit.forward import continuum_design_matrix
    from stellarfit.inference.fit import forward_model_for

    spec = emulator.label_spec
    if resolution is None:
        if emulator.native_resolution is None:
            raise ValueError("give resolution=: the emulator does not record its native resolution")
        resolution = emulator.native_resolution
    resolution = float(resolution)
    if not resolution > 0:
        raise ValueError(f"resolution must be positive, got {resolution}")
    if not snr > 0 or not np.isfinite(snr):
        raise ValueError(f"snr must be a positive number, got {snr}")
    if vsini < 0:
        raise ValueError(f"vsini must be >= 0, got {vsini}")
    theta_labels = spec.to_array(labels, defaults=default_labels(spec)) if isinstance(labels, Mapping) else spec.to_array(labels)
    theta_labels = np.asarray(theta_labels, dtype=np.float64).reshape(-1)
    problems = spec.violations(theta_labels)
    if problems:
        raise ValueError("labels outside the emulator's box: " + "; ".join(problems))
    if wavelength is None:
        wavelength = planned_wavelength(emulator, resolution, window=window, rv=rv, vsini=vsini, sampling=sampling)
    wavelength = np.asarray(wavelength, dtype=np.float64)
    free_vsini = vsini > vsini_threshold
    model_options = dict(rv_range=(rv - 5.0, rv + 5.0), vsini_max=max(2.0 * vsini, 10.0))
    model = forward_model_for(emulator, wavelength, resolution, **model_options)
    if not np.all(model.covered):
        # pixels the emulator does not model at this RV carry no information (the model there is
        # its edge value, whose derivatives would count as spurious information): leave them out
        wavelength = wavelength[model.covered]
        if wavelength.size < 2:
            raise ValueError(f"fewer than 2 of the wavelengths lie inside the emulator's coverage "
                             f"({emulator.wavelength[0]:.1f}-{emulator.wavelength[-1]:.1f} A, rest frame) at rv {rv:g} km/s")
        model = forward_model_for(emulator, wavelength, resolution, **model_options)
    design = continuum_design_matrix(wavelength, None, continuum_degree)
    n_labels = theta_labels.size
    coefficients = np.zeros(continuum_degree + 1)
    coefficients[0] = 1.0  # continuum = 1: P_0 = 1
    design_jax = jnp.asarray(design, jnp.float32)
    fixed_vsini = jnp.float32(vsini)

    def full_model(parameters):
        labels_ = parameters[:n_labels]
        rv_ = parameters[n_labels]
        if free_vsini:
            vsini_ = parameters[n_labels + 1]
            c = parameters[n_labels + 2:]
        else:
            vsini_ = fixed_vsini
            c = parameters[n_labels + 1:]
        return (design_jax @ c) * model(labels_, rv_, vsini_)

    names = list(spec.names) + ["rv"] + (["vsini"] if free_vsini else []) + [f"continuum_{i}" for i in range(continuum_degree + 1)]
    theta = np.concatenate([theta_labels, [rv], [vsini] if free_vsini else [], coefficients])
    theta_jax = jnp.asarray(theta, jnp.float32)
    jacobian = np.asarray(jax.jit(jax.jacfwd(full_model))(theta_jax), dtype=np.float64)
    if not np.all(np.isfinite(jacobian)):
        raise FloatingPointError("the model's derivatives have NaN or infinite entries at these labels")
    flux = np.asarray(jax.jit(full_model)(theta_jax), dtype=np.float64)
    ivar = np.full(wavelength.size, float(snr) ** 2)
    fisher = jacobian.T @ (jacobian * ivar[:, None])  # F = J^T C^-1 J (float64), as fisher_matrix computes it
    fisher = 0.5 * (fisher + fisher.T)
    priors = [None] * len(names)
    for name, sigma in dict(prior_sigma or {}).items():
        if name not in names:
            raise KeyError(f"prior on unknown parameter {name!r}; parameters: {', '.join(names)}")
        priors[names.index(name)] = float(sigma)
    scales = np.concatenate([spec.upper - spec.lower, [100.0], [max(vsini, 10.0)] if free_vsini else [], np.ones(continuum_degree + 1)])
    bounds = cramer_rao_from_fisher(fisher, names, prior_sigma=priors, scales=scales)
    return CramerRaoResult(
        names=tuple(names), label_names=tuple(spec.names), theta=theta, sigma=np.asarray(bounds.sigma),
        correlation=bounds.correlation, derivatives=jacobian, wavelength=wavelength, model_flux=flux,
        snr=float(snr), resolution=resolution, rv=float(rv), vsini=float(vsini), continuum_degree=int(continuum_degree),
        fisher=bounds,
    )


def window_name(emulator) -> str:
    """A window's name from its coverage, e.g. ``"5000-5500"`` [A, vacuum]."""
    wavelength = np.asarray(emulator.wavelength, dtype=np.float64)
    return f"{wavelength[0]:.0f}-{wavelength[-1]:.0f}"


def cramer_rao_by_window(emulator, labels: Mapping[str, float] | np.ndarray, **options: Any) -> dict[str, CramerRaoResult]:
    """Which window constrains which label: the bounds of each window of a composite emulator alone,
    and of all windows together (``"joint"``, first).

    ``emulator`` is a :class:`~stellarfit.emulators.composite.CompositeEmulator` (several windows);
    ``options`` as for :func:`cramer_rao` (``window`` is not allowed: each member is its own window).
    Returns {``"joint"``: result, window name (:func:`window_name`): result, ...}.  A label a window
    barely constrains has a bound there far above its joint bound; the window whose bound is
    closest to the joint one carries most of that label's information.
    """
    members = getattr(emulator, "members", None)
    if members is None:
        raise TypeError("cramer_rao_by_window needs an emulator of several windows (a CompositeEmulator); "
                        "for one window call cramer_rao")
    if options.get("window") is not None:
        raise ValueError("cramer_rao_by_window takes no window=: each member of the composite is one window")
    options.pop("window", None)
    results = {"joint": cramer_rao(emulator, labels, **options)}
    for member in members:
        results[window_name(member)] = cramer_rao(member, labels, **options)
    return results
