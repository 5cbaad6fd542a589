"""Log-likelihood, priors and the unconstrained parametrization of a fit.

Parameters of a fit, in this order: the emulator's labels (its LabelSpec
order), then ``rv`` [km/s] and ``vsini`` [km/s].  Each has a box: the label
box of the LabelSpec (labels bounded relative to another label, like mg_fe
around alpha_fe, are parametrized as reference + offset), the RV window and
[0, vsini_max].  The sampler and optimizer work on unconstrained z with

    theta = lower + (upper - lower) * sigmoid(z)

so the default prior is uniform in each box; user Gaussian priors multiply it.
Labels bounded relative to a reference label (mg_fe, si_fe, ca_fe, ti_fe
within +-h of alpha_fe) make the allowed region a polytope, not a box.  The
data usually measure the members (total [Mg/Fe], ...) well and the reference
poorly, so the *reference* is the dependent coordinate: each member X_i takes
its box [ref_lower - h_i, ref_upper + h_i] (intersected with its own), and
the reference takes

    ref = lo + (hi - lo) * sigmoid(z_ref),  lo = max(ref_lower, X_i - h_i),  hi = min(ref_upper, X_i + h_i)

with smooth max/min (log-sum-exp at 0.01 dex: the interval is at most
0.007 dex narrower) and hi - lo kept positive by a softplus at that scale
(members more than 2 h apart leave the reference a sliver of exponentially
small prior mass instead of no room).  log |d theta / d z| includes
log(hi - lo), so the prior stays uniform over the polytope.  Parametrizing
the member as reference + offset instead made a funnel in z: with the
reference squeezed between well-measured members, a member's offset z runs
off to +-infinity as the reference nears its interval's end (NUTS draws of
[Mg/Fe] had excess kurtosis 3.3 in z).  Labels bounded relative to 0
(offset_from "", e.g. na_fe) are plain boxes of half-width h.  :class:`FitProblem` holds
the data and returns the pieces every method needs:

- ``log_likelihood(theta)``: Gaussian in ivar, with the continuum polynomial
  either profiled (its best coefficients for these theta) or marginalized
  analytically under a flat prior (adds -log det(A)/2);  with ``error_basis``
  E (n_obs, K; the emulator's correlated error modes in the observed frame),
  the flux model gains E a with a ~ N(0, I), solved for jointly with the
  continuum: min over a of |flux - C m - E a|^2_ivar + |a|^2 equals the
  Gaussian likelihood with covariance diag(1/ivar) + E E^T (whose log
  determinant does not depend on theta);
- ``log_prior(theta)``: Gaussian user priors (the box is implicit in z);
- ``log_density_unconstrained(z)``: log L + log prior + log |d theta / d z| (for NUTS);
- ``objective_unconstrained(z)``: -(log L + log prior), no Jacobian (for MAP).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from stellarfit._precision import full_precision
from stellarfit.forward import ForwardModel, continuum_chi2, profile_continuum
from stellarfit.labels import LabelSpec

__all__ = ["FitProblem", "GaussianPrior", "profile_with_modes"]

#: scale [dex] of the smooth max/min bounding a reference label by its members (see the module docstring)
_SMOOTH = 0.01


def profile_with_modes(model, flux, ivar, design, error_basis, ridge: float = 1e-10):
    """Continuum coefficients c and error-mode amplitudes a, solved jointly (pure JAX).

    Minimizes |flux - (design c) model - E a|^2_ivar + |a|^2 (a unit Gaussian
    prior on each amplitude; c flat), which equals the chi2 of the residual
    under the covariance diag(1/ivar) + E E^T.  The normal matrix is
    Jacobi-scaled before the solve (continuum and mode columns differ by ~1e8
    in float32).

    Returns (c (k,), continuum (n,), chi2 (including |a|^2), log det of the
    normal matrix, a (K,)).
    """
    k = design.shape[1]
    columns = jnp.concatenate([design * model[:, None], error_basis], axis=1)
    weighted = columns * ivar[:, None]
    normal = columns.T @ weighted
    scale = jnp.trace(normal[:k, :k]) / k
    prior = jnp.concatenate([jnp.full((k,), ridge * scale, normal.dtype), jnp.ones((error_basis.shape[1],), normal.dtype)])
    normal = normal + jnp.diag(prior)
    jacobi = 1.0 / jnp.sqrt(jnp.diag(normal))
    solution = jacobi * jnp.linalg.solve(normal * jacobi[:, None] * jacobi[None, :], jacobi * (weighted.T @ flux))
    coefficients, amplitudes = solution[:k], solution[k:]
    continuum = design @ coefficients
    residual = flux - continuum * model - error_basis @ amplitudes
    chi2 = jnp.sum(ivar * residual**2) + jnp.sum(amplitudes**2)
    _, logdet = jnp.linalg.slogdet(normal)
    return coefficients, continuum, chi2, logdet, amplitudes


#: maps from the unconstrained z to each parameter's box (FitProblem.with_transform)
TRANSFORMS = ("logit", "probit", "probit-labels")


@dataclasses.dataclass(frozen=True)
class GaussianPrior:
    """A Gaussian prior on one parameter, e.g. logg from asteroseismology."""

    mean: float
    sigma: float

    def __post_init__(self) -> None:
        if not (np.isfinite(self.mean) and self.sigma > 0):
            raise ValueError(f"a Gaussian prior needs a finite mean and sigma > 0, got {self}")


class _Identity:
    """Hash/equality by identity (static pytree data: one compiled program per object)."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __hash__(self) -> int:
        return id(self.value)

    def __eq__(self, other) -> bool:
        return isinstance(other, _Identity) and other.value is self.value


@jax.tree_util.register_pytree_node_class
class FitProblem:
    """Data, forward model and parametrization of one spectrum's fit.

    A FitProblem is a JAX pytree: the data (flux, ivar, design, parameter
    boxes, prior means and widths) are its leaves and the forward model, label
    spec and continuum treatment its static part.  Jitted functions that take
    the problem as an argument (as :func:`~stellarfit.inference.fit_map` does)
    therefore compile once per forward model and are reused for every spectrum
    on the same pixels, and problems with equal static parts can be stacked and
    ``vmap``-ed (:func:`~stellarfit.inference.fit_map_batch`).

    Args:
        forward_model: :class:`~stellarfit.forward.ForwardModel` for the observed pixels.
        label_spec: the emulator's labels.
        flux, ivar: (n_obs,) observed flux and inverse variance (0 where masked).
        design: (n_obs, k) continuum design matrix.
        priors: optional mapping parameter name -> :class:`GaussianPrior`.
        continuum: "profile" or "marginalize".
        vsini_max: largest vsini fitted (at most the forward model's).
        rv_range: the RV box [km/s] (default the forward model's ``rv_range``; it must lie
            inside it).  Pixels the emulator does not cover for every RV in the box get
            zero weight.
    """

    def __init__(
        self,
        forward_model: ForwardModel,
        label_spec: LabelSpec,
        flux: np.ndarray,
        ivar: np.ndarray,
        design: np.ndarray,
        *,
        priors: Mapping[str, GaussianPrior] | None = None,
        continuum: str = "profile",
        vsini_max: float | None = None,
        rv_range: tuple[float, float] | None = None,
        error_basis: np.ndarray | None = None,
    ):
        if continuum not in ("profile", "marginalize"):
            raise ValueError(f"continuum must be 'profile' or 'marginalize', got {continuum!r}")
        flux = np.asarray(flux, dtype=np.float64)
        rv_range = forward_model.rv_range if rv_range is None else (float(rv_range[0]), float(rv_range[1]))
        ivar = np.where(forward_model.coverage(rv_range), np.asarray(ivar, dtype=np.float64), 0.0)
        if flux.shape != forward_model.observed_wavelength.shape or ivar.shape != flux.shape:
            raise ValueError("flux and ivar must have the observed wavelengths' shape")
        if not np.any(ivar > 0):
            raise ValueError("no usable pixel: every pixel is masked, has zero ivar or lies outside the emulator")
        # the model whose programs this problem uses (for a varying LSF on the anchor ladder, possibly
        # another spectrum's on the same pixels) and this spectrum's per-pixel LSF part, a leaf
        self.forward_model = forward_model.shared
        self.lsf = forward_model.lsf_data()
        self.label_spec = label_spec
        self.names: tuple[str, ...] = tuple(label_spec.names) + ("rv", "vsini")
        self.continuum = continuum
        self.transform = "logit"
        self.n_labels = len(label_spec)
        self.n_parameters = len(self.names)
        self.flux = jnp.asarray(flux, dtype=jnp.float32)
        self.ivar = jnp.asarray(ivar, dtype=jnp.float32)
        self.design = jnp.asarray(design, dtype=jnp.float32)
        if error_basis is not None:
            error_basis = np.asarray(error_basis, dtype=np.float64)
            if error_basis.ndim != 2 or error_basis.shape[0] != flux.size or not np.all(np.isfinite(error_basis)):
                raise ValueError(f"error_basis must be finite with shape ({flux.size}, n_modes), got {error_basis.shape}")
            error_basis = jnp.asarray(np.where(ivar[:, None] > 0, error_basis, 0.0), dtype=jnp.float32)
        self.error_basis = error_basis
        vsini_max = forward_model.vsini_max if vsini_max is None else min(vsini_max, forward_model.vsini_max)
        lower = list(label_spec.lower) + [rv_range[0], 0.0]
        upper = list(label_spec.upper) + [rv_range[1], vsini_max]
        self.lower = np.array(lower)
        self.upper = np.array(upper)
        # offsets: column -> (reference column or -1 for zero, half-width)
        self._offset_reference = np.full(self.n_parameters, -2, dtype=int)  # -2: plain box
        self._offset_halfwidth = np.zeros(self.n_parameters)
        for i, label in enumerate(label_spec):
            if label.offset_from is not None:
                self._offset_reference[i] = label_spec.index(label.offset_from) if label.offset_from else -1
                self._offset_halfwidth[i] = label.offset_halfwidth
        priors = dict(priors or {})
        unknown = sorted(set(priors) - set(self.names))
        if unknown:
            raise KeyError(f"priors given for unknown parameter(s) {unknown}; parameters are {self.names}")
        self._prior_names = tuple(priors)
        self._prior_index = np.array([self.names.index(n) for n in priors], dtype=int)
        self._prior_mean = np.array([p.mean for p in priors.values()])
        self._prior_sigma = np.array([p.sigma for p in priors.values()])

    # -- pytree ----------------------------------------------------------------------
    def tree_flatten(self):
        children = (self.flux, self.ivar, self.design, self.lower, self.upper, self._prior_mean, self._prior_sigma,
                    self.error_basis, self.lsf)
        static = (
            self.forward_model, _Identity(self.label_spec), self.continuum, self._prior_names,
            tuple(int(v) for v in self._offset_reference), tuple(float(v) for v in self._offset_halfwidth),
            self.transform,
        )
        return children, static

    @classmethod
    def tree_unflatten(cls, static, children):
        problem = object.__new__(cls)
        forward_model, spec, continuum, prior_names, reference, halfwidth, transform = static
        (problem.flux, problem.ivar, problem.design, problem.lower, problem.upper,
         problem._prior_mean, problem._prior_sigma, problem.error_basis, problem.lsf) = children
        problem.forward_model = forward_model
        problem.label_spec = spec.value
        problem.continuum = continuum
        problem.transform = transform
        problem.names = tuple(spec.value.names) + ("rv", "vsini")
        problem.n_labels = len(spec.value)
        problem.n_parameters = len(problem.names)
        problem._prior_names = prior_names
        problem._prior_index = np.array([problem.names.index(n) for n in prior_names], dtype=int)
        problem._offset_reference = np.array(reference, dtype=int)
        problem._offset_halfwidth = np.array(halfwidth, dtype=np.float64)
        return problem

    @property
    def priors(self) -> dict[str, GaussianPrior]:
        """The user's Gaussian priors by parameter name (host values only)."""
        return {name: GaussianPrior(float(m), float(s)) for name, m, s in zip(self._prior_names, self._prior_mean, self._prior_sigma)}

    def with_continuum(self, continuum: str) -> "FitProblem":
        """The same problem with the continuum "profile"d or "marginalize"d."""
        if continuum not in ("profile", "marginalize"):
            raise ValueError(f"continuum must be 'profile' or 'marginalize', got {continuum!r}")
        children, static = self.tree_flatten()
        return FitProblem.tree_unflatten((static[0], static[1], continuum) + static[3:], children)

    def with_design(self, design: np.ndarray) -> "FitProblem":
        """The same problem with another continuum design (n_obs, k') (another degree, e.g. the one
        ``continuum_degree="auto"`` chose; :mod:`stellarfit.inference.continuum`)."""
        design = np.asarray(design, dtype=np.float64)
        if design.ndim != 2 or design.shape[0] != self.flux.shape[0] or not np.all(np.isfinite(design)):
            raise ValueError(f"design must be finite with shape ({self.flux.shape[0]}, k), got {design.shape}")
        children, static = self.tree_flatten()
        return FitProblem.tree_unflatten(static, children[:2] + (jnp.asarray(design, dtype=jnp.float32),) + children[3:])

    def with_transform(self, transform: str) -> "FitProblem":
        """The same problem with another map from z to each box: "logit" (theta = lower + width *
        sigmoid(z)) or "probit" (lower + width * Phi(z), Phi the standard normal CDF)."""
        if transform not in TRANSFORMS:
            raise ValueError(f"transform must be one of {TRANSFORMS}, got {transform!r}")
        children, static = self.tree_flatten()
        return FitProblem.tree_unflatten(static[:-1] + (transform,), children)

    def _probit_mask(self) -> np.ndarray:
        """(p,) True where the map is probit."""
        mask = np.full(self.n_parameters, self.transform == "probit")
        if self.transform == "probit-labels":
            mask[: self.n_labels] = True
        return mask

    def _unit(self, z):
        mask = self._probit_mask()
        if not mask.any():
            return jax.nn.sigmoid(z)
        return jnp.where(mask, jax.scipy.special.ndtr(z), jax.nn.sigmoid(z))

    def _z_of_unit(self, unit):
        mask = self._probit_mask()
        logit = jnp.log(unit) - jnp.log1p(-unit)
        return logit if not mask.any() else jnp.where(mask, jax.scipy.special.ndtri(unit), logit)

    def _log_unit_derivative(self, z):
        mask = self._probit_mask()
        logit = jax.nn.log_sigmoid(z) + jax.nn.log_sigmoid(-z)
        return logit if not mask.any() else jnp.where(mask, -0.5 * z * z - 0.5 * np.log(2.0 * np.pi), logit)

    @property
    def n_good(self) -> int:
        """Number of pixels with ivar > 0 (host values only)."""
        return int(np.sum(np.asarray(self.ivar) > 0))

    # -- parametrization ---------------------------------------------------------
    def _groups(self) -> dict[int, np.ndarray]:
        """Reference column -> its member columns (labels bounded relative to another label)."""
        return {int(k): np.flatnonzero(self._offset_reference == k) for k in np.unique(self._offset_reference) if k >= 0}

    def _boxes(self):
        """(lower, upper) (p,) of every coordinate but the references: members get their reference's box +- h."""
        lower, upper = jnp.asarray(self.lower), jnp.asarray(self.upper)
        for i in np.flatnonzero(self._offset_reference == -1):  # relative to 0: a plain box of half-width h
            lower = lower.at[i].set(-self._offset_halfwidth[i])
            upper = upper.at[i].set(self._offset_halfwidth[i])
        for k, members in self._groups().items():
            h = jnp.asarray(self._offset_halfwidth[members], lower.dtype)
            lower = lower.at[members].set(jnp.maximum(lower[members], lower[k] - h))
            upper = upper.at[members].set(jnp.minimum(upper[members], upper[k] + h))
        return lower, upper

    def near_edges(self, theta, tolerance: float = 0.005) -> np.ndarray:
        """(p,) bool, host values: parameters within ``tolerance`` of their box's width from an
        edge -- the label box, or for a label bounded relative to another (``offset_from``, e.g. an
        [alpha/Fe]-relative abundance) the +-h interval around its reference, which is also the
        edge of the emulator's training grid."""
        theta = np.asarray(theta, dtype=np.float64)
        lower, upper = np.asarray(self.lower, np.float64), np.asarray(self.upper, np.float64)
        width = upper - lower
        near = (theta - lower < tolerance * width) | (upper - theta < tolerance * width)
        for i in np.flatnonzero(self._offset_reference != -2):
            k, h = int(self._offset_reference[i]), float(self._offset_halfwidth[i])
            if h <= 0:
                continue
            offset = theta[i] - (theta[k] if k >= 0 else 0.0)
            near[i] |= bool(h - abs(offset) < tolerance * 2.0 * h)
        return near

    def _reference_interval(self, theta, k, members):
        """(lo, width) (...,) of reference column k given its members' values in theta."""
        h = jnp.asarray(self._offset_halfwidth[members], theta.dtype)
        lower, upper = jnp.asarray(self.lower, theta.dtype)[k], jnp.asarray(self.upper, theta.dtype)[k]
        shape = theta.shape[:-1] + (1,)
        lows = jnp.concatenate([jnp.broadcast_to(lower, shape), theta[..., members] - h], axis=-1)
        highs = jnp.concatenate([jnp.broadcast_to(upper, shape), theta[..., members] + h], axis=-1)
        lo = _SMOOTH * jax.nn.logsumexp(lows / _SMOOTH, axis=-1)
        hi = -_SMOOTH * jax.nn.logsumexp(-highs / _SMOOTH, axis=-1)
        width = _SMOOTH * jax.nn.softplus((hi - lo) / _SMOOTH)
        fixed = ~(upper > lower)  # a fixed reference (zero-width box) stays at its value
        return jnp.where(fixed, lower, lo), jnp.where(fixed, 0.0, width)

    def to_theta(self, z):
        """Unconstrained z (..., p) -> physical theta (..., p)."""
        return self.theta_of_unit(self._unit(z))

    def theta_of_unit(self, unit):
        """Unit coordinates (..., p) in [0, 1] -> physical theta (..., p): each coordinate's place in
        its box (for a reference label, in the interval its members leave it).  The allowed region,
        a polytope in theta, is the unit cube here; z maps onto its interior."""
        lower, upper = self._boxes()
        theta = lower + (upper - lower) * unit
        for k, members in self._groups().items():
            lo, width = self._reference_interval(theta, k, members)
            theta = theta.at[..., k].set(lo + width * unit[..., k])
        return theta

    def to_unconstrained(self, theta):
        """Physical theta (..., p) -> z (..., p) (inverse of :meth:`to_theta`; values are clipped inside the box)."""
        return self._z_of_unit(jnp.clip(self.unit_of_theta(theta), 1e-6, 1.0 - 1e-6))

    def unit_of_theta(self, theta):
        """Physical theta (..., p) -> unit coordinates (inverse of :meth:`theta_of_unit`; not clipped)."""
        theta = jnp.asarray(theta)
        lower, upper = self._boxes()
        width = upper - lower
        unit = (theta - lower) / jnp.where(width > 0, width, 1.0)  # zero width (a fixed parameter): any value
        for k, members in self._groups().items():
            lo, span = self._reference_interval(theta, k, members)
            unit = unit.at[..., k].set((theta[..., k] - lo) / jnp.where(span > 0, span, 1.0))
        return unit

    def log_abs_det_jacobian(self, z):
        """log |d theta / d z| for the density in z (sum over parameters).

        d theta / d z is triangular (a reference depends on its members, nothing depends
        on a reference), so this is the sum of the logs of its diagonal."""
        lower, upper = self._boxes()
        width = jnp.broadcast_to(upper - lower, z.shape)
        if self._groups():
            theta = self.to_theta(z)
            for k, members in self._groups().items():
                width = width.at[..., k].set(self._reference_interval(theta, k, members)[1])
        width = jnp.where(width > 0, width, 1.0)  # a fixed parameter (zero width) adds a constant
        if not self._probit_mask().any():  # the sigmoid's terms added in this order (bit-identical to before)
            return jnp.sum(jnp.log(width) + jax.nn.log_sigmoid(z) + jax.nn.log_sigmoid(-z), axis=-1)
        return jnp.sum(jnp.log(width) + self._log_unit_derivative(z), axis=-1)

    # -- densities -----------------------------------------------------------------
    @full_precision
    def model_normalized(self, theta):
        """Normalized model at the observed pixels (n_obs,) for theta (p,)."""
        return self.forward_model(theta[: self.n_labels], theta[self.n_labels], theta[self.n_labels + 1], lsf=self.lsf)

    @full_precision
    def continuum_fit(self, theta):
        """(coefficients, continuum (n_obs,), chi2, log det A) for theta (p,).

        With an ``error_basis`` chi2 includes the error modes (|r - E a|^2 + |a|^2 at their best a)."""
        if self.error_basis is None:
            return profile_continuum(self.model_normalized(theta), self.flux, self.ivar, self.design)
        return profile_with_modes(self.model_normalized(theta), self.flux, self.ivar, self.design, self.error_basis)[:4]

    @full_precision
    def model_flux(self, theta):
        """Model flux including the best continuum, (n_obs,)."""
        _, continuum, _, _ = self.continuum_fit(theta)
        return continuum * self.model_normalized(theta)

    @full_precision
    def log_likelihood(self, theta):
        if self.error_basis is None:  # derivatives by the envelope theorem, not through the solve
            chi2, logdet = continuum_chi2(self.model_normalized(theta), self.flux, self.ivar, self.design)
        else:
            _, _, chi2, logdet = self.continuum_fit(theta)
        value = -0.5 * chi2
        if self.continuum == "marginalize":
            value = value - 0.5 * logdet
        return value

    @full_precision
    def log_prior(self, theta):
        if self._prior_index.size == 0:
            return jnp.zeros(())
        values = theta[..., self._prior_index]
        return -0.5 * jnp.sum(((values - self._prior_mean) / self._prior_sigma) ** 2, axis=-1)

    @full_precision
    def log_density_unconstrained(self, z):
        """Log posterior density in z (for NUTS): log L + log prior + log Jacobian."""
        theta = self.to_theta(z)
        return self.log_likelihood(theta) + self.log_prior(theta) + self.log_abs_det_jacobian(z)

    @full_precision
    def objective_unconstrained(self, z):
        """Negative log posterior in theta, evaluated through z (for MAP; no Jacobian)."""
        theta = self.to_theta(z)
        return -(self.log_likelihood(theta) + self.log_prior(theta))

    @full_precision
    def residuals_unconstrained(self, z):
        """Whitened residuals at z: sqrt(ivar) (flux - continuum * model) with the continuum profiled,
        then (value - mean) / sigma for each Gaussian prior; half their sum of squares is
        :meth:`objective_unconstrained` (profiled continuum).  For Levenberg-Marquardt."""
        return self.residuals(self.to_theta(z))

    @full_precision
    def residuals(self, theta):
        """:meth:`residuals_unconstrained` at physical ``theta`` (for Gauss-Newton curvature in theta)."""
        model = self.model_normalized(theta)
        if self.error_basis is None:
            _, continuum, _, _ = profile_continuum(model, self.flux, self.ivar, self.design)
            residual = jnp.sqrt(self.ivar) * (self.flux - continuum * model)
        else:
            _, continuum, _, _, amplitudes = profile_with_modes(model, self.flux, self.ivar, self.design, self.error_basis)
            residual = jnp.sqrt(self.ivar) * (self.flux - continuum * model - self.error_basis @ amplitudes)
            residual = jnp.concatenate([residual, amplitudes])
        if self._prior_index.size:
            residual = jnp.concatenate([residual, (theta[self._prior_index] - self._prior_mean) / self._prior_sigma])
        return residual

    def prior_sigmas(self) -> list[float | None]:
        """Per-parameter Gaussian prior widths (None where there is none), for Fisher bounds."""
        out: list[float | None] = [None] * self.n_parameters
        for name, sigma in zip(self._prior_names, np.asarray(self._prior_sigma)):
            out[self.names.index(name)] = float(sigma)
        return out

    def box_widths(self) -> np.ndarray:
        return np.asarray(self.upper, dtype=np.float64) - np.asarray(self.lower, dtype=np.float64)

    def describe(self, theta: Sequence[float]) -> dict[str, float]:
        return {name: float(value) for name, value in zip(self.names, np.asarray(theta))}
