"""From a fit's MAP (and NUTS draws) to its :class:`~stellarfit.inference.FitResult`: the model at the MAP,
the Laplace covariance and Cramér-Rao bounds, the summaries and the flags."""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from stellarfit.inference._mismatch import chi2_mismatch
from stellarfit.inference.continuum import fixed_info
from stellarfit.inference.fisher import cramer_rao_from_fisher
from stellarfit.inference.likelihood import FitProblem
from stellarfit.inference.map import covariance_is_proper, gauss_newton_covariance
from stellarfit.results.fitfile import FLAGS, FitResult
from stellarfit.inference._fast_path import recentred_posterior
from stellarfit.inference._fit_prepare import _Prepared
from stellarfit.inference.settings import NutsSettings


@jax.jit
def _continuum_and_model(problem: FitProblem, theta):
    coefficients, continuum, _, _ = problem.continuum_fit(theta)
    return coefficients, continuum * problem.model_normalized(theta)


@jax.jit
def _full_model_jacobian(problem: FitProblem, parameters):
    """d(model flux)/d(theta, continuum coefficients), (n_obs, p + k).

    The continuum multiplies the normalized model, so its columns are the design times the model
    and only theta's p tangents go through the emulator (not p + k, of which k would be zeros)."""
    n_theta = problem.n_parameters
    theta, coefficients = parameters[:n_theta], parameters[n_theta:]
    model, tangents = jax.vmap(lambda v: jax.jvp(problem.model_normalized, (theta,), (v,)), out_axes=(None, 1))(
        jnp.eye(n_theta, dtype=theta.dtype))
    continuum = problem.design @ coefficients
    return jnp.concatenate([continuum[:, None] * tangents, problem.design * model[:, None]], axis=1)


def _hold_vsini_near_zero(covariance, theta, index):
    """``covariance`` with the other parameters conditioned on vsini (held at its value) when vsini's
    standard deviation exceeds vsini itself, i.e. its posterior reaches 0.

    Near vsini = 0 the model changes as vsini^2: a linearization at a small vsini sees a direction that
    mimics line-width changes of the labels over a range of vsini the posterior does not have (it stops
    at 0), and inflates their errors. The Cramér-Rao bounds of a planned observation hold vsini fixed
    below 3 km/s for the same reason (:func:`~stellarfit.inference.crb.cramer_rao`). vsini keeps its own
    variance; its covariances with the rest become 0.
    """
    if index is None or covariance is None:
        return covariance
    covariance = np.asarray(covariance, dtype=np.float64)
    variance = covariance[index, index]
    if not (np.isfinite(variance) and variance > 0 and np.sqrt(variance) > theta[index]):
        return covariance
    others = np.arange(covariance.shape[0]) != index
    column = covariance[others, index]
    column = np.where(np.isfinite(column), column, 0.0)
    held = covariance.copy()
    held[np.ix_(others, others)] = covariance[np.ix_(others, others)] - np.outer(column, column) / variance
    held[others, index] = 0.0
    held[index, others] = 0.0
    return held


def _gauss_newton_from_jacobian(problem: FitProblem, jacobian: np.ndarray, names, prior_sigma, scales) -> np.ndarray:
    """The Gauss-Newton covariance of theta, J^T W J with the fit's weights W (noise plus emulator
    pixel error) from the Jacobian in theta and the continuum coefficients that the Cramér-Rao bounds
    use, the continuum marginalized and the priors added; an unconstrained direction gets NaN.

    The same matrix as :func:`stellarfit.inference.map.gauss_newton_covariance` (which profiles
    the continuum out of the residuals: for a continuum linear in its coefficients that is the
    same Schur complement) for a problem without error modes, with no further program to compile.
    """
    fit_weights = np.asarray(problem.ivar, dtype=np.float64)
    bound = cramer_rao_from_fisher(jacobian.T @ (jacobian * fit_weights[:, None]), names,
                                   prior_sigma=prior_sigma, scales=scales)
    n_theta = problem.n_parameters
    covariance = np.array(bound.covariance[:n_theta, :n_theta])
    covariance[np.isinf(bound.sigma[:n_theta]), :] = np.nan
    return covariance


def _finish(prepared: _Prepared, result, method: str, emulator, start_time: float, *, n_starts: int, seed: int,
            nuts: NutsSettings | None = None, surrogate=None, error_floor: bool = True, draws=None,
            init_info: dict | None = None) -> FitResult:
    """Cramér-Rao bounds, optional NUTS, flags and the FitResult from a MAP result.

    ``nuts``: the sampler's settings for a NUTS method (None for "map"); ``surrogate``: the fast
    path's MAP and modes (``_Surrogate``) when the chains sample the fast path; ``draws``: the
    SamplerResult when the star was sampled already (in a batch, :func:`fit_stars`)."""
    problem = prepared.problem
    spec = problem.label_spec
    flux, ivar, wavelength, rv0 = prepared.flux, prepared.ivar, prepared.wavelength, prepared.rv0
    spectrum = prepared.spectrum
    theta = result.theta
    theta_jax = jnp.asarray(theta, jnp.float32)
    coefficients, model_flux = (np.asarray(v, dtype=np.float64) for v in _continuum_and_model(problem, theta_jax))

    # Cramér-Rao bounds at the MAP, continuum coefficients as nuisance parameters
    jacobian = np.asarray(_full_model_jacobian(problem, jnp.concatenate([theta_jax, jnp.asarray(coefficients, jnp.float32)])),
                          dtype=np.float64)
    fisher = jacobian.T @ (jacobian * ivar[:, None])
    names = list(problem.names) + [f"continuum_{i}" for i in range(coefficients.size)]
    prior_sigma = problem.prior_sigmas() + [None] * coefficients.size
    scales = np.concatenate([problem.box_widths(), np.maximum(np.abs(coefficients), 1e-30)])
    crb = cramer_rao_from_fisher(fisher, names, prior_sigma=prior_sigma, scales=scales)
    laplace = "hessian"

    def gauss_newton() -> np.ndarray:
        if problem.error_basis is not None:  # error modes are not in W: the residuals hold them
            return gauss_newton_covariance(problem, theta)
        return _gauss_newton_from_jacobian(problem, jacobian, names, prior_sigma, scales)

    if result.covariance is None and problem.error_basis is not None:  # error modes: the full Hessian
        from stellarfit.inference.map import laplace_covariance

        result = dataclasses.replace(result, covariance=laplace_covariance(problem, theta))
    elif result.covariance is None:
        # a MAP polished from an init (polish_map) has no Hessian: the Laplace covariance is the
        # Gauss-Newton one (exact for a model linear near the MAP; it omits the residual-weighted
        # curvature, small when the fit is good)
        result = dataclasses.replace(result, covariance=gauss_newton())
        laplace = "gauss-newton"
    elif not covariance_is_proper(result.covariance, problem.box_widths()):
        # a MAP pressed against a box edge (or an [alpha/Fe]-relative abundance against the interval
        # its reference leaves it) is no stationary point: the Hessian there can be indefinite, and
        # its inverse gave negative variances, which read as errors of 0; J^T W J cannot
        result = dataclasses.replace(result, covariance=gauss_newton())
        laplace = "gauss-newton-indefinite-hessian"
    # a vsini consistent with 0 is far from Gaussian (the model changes as vsini^2): hold it at the MAP
    # for the other parameters' errors and bounds instead of letting its linearized coupling inflate them
    vsini_index = problem.names.index("vsini") if "vsini" in problem.names else None
    result = dataclasses.replace(result, covariance=_hold_vsini_near_zero(result.covariance, theta, vsini_index))
    crb_sigma = np.array(crb.sigma, dtype=np.float64)
    if vsini_index is not None and np.isfinite(crb_sigma[vsini_index]) and crb_sigma[vsini_index] > 0:
        constrained = np.isfinite(crb.sigma) & (crb.sigma > 0)
        held = _hold_vsini_near_zero(np.where(np.outer(constrained, constrained), crb.covariance, 0.0),
                                     np.concatenate([theta, coefficients]), vsini_index)
        crb_sigma = np.where(constrained, np.sqrt(np.clip(np.diag(held), 0.0, None)), crb_sigma)
    sigma = result.sigma
    labels = {}
    for i, name in enumerate(problem.names):
        error = float(sigma[i]) if np.isfinite(sigma[i]) else float("nan")
        labels[name] = {
            "value": float(theta[i]), "error": error, "lower": float(theta[i] - error), "upper": float(theta[i] + error),
            "map": float(theta[i]), "crb": float(crb_sigma[i]),
        }
    samples = None
    covariance = result.covariance
    sampler_diagnostics: dict = {}
    if method != "map":
        from stellarfit.inference.nuts import sample_blackjax, sample_numpyro, summarize_samples

        options = dict(nuts.sampler_options(), seed=seed, chain_method=nuts.chain_method)
        z_transform = nuts.z_transform
        sampling_problem = problem.with_continuum("marginalize").with_transform(z_transform)
        num_chains, num_samples = nuts.num_chains, nuts.num_samples
        start_theta, start_covariance = theta, result.covariance
        if surrogate is not None:  # sample the fast path's posterior, then move it to this MAP
            sampling_problem = surrogate.problem.with_continuum("marginalize")
            start_theta, start_covariance = surrogate.map.theta, None
        if draws is not None:  # sampled already, in a batch of stars (fit_stars)
            pass
        elif method == "nuts":
            draws = sample_numpyro(sampling_problem, start_theta, start_covariance, **options)
        else:
            draws = sample_blackjax(sampling_problem, start_theta, start_covariance, **options)
        if surrogate is not None:
            draws = dataclasses.replace(draws, samples=recentred_posterior(surrogate.problem, draws.samples,
                                                                           surrogate.mode, surrogate.target_mode))
            posterior_info = {
                "sampled_with": surrogate.name, "recentred_on": "mode in z", "z_transform": z_transform,
                "shift_z": dict(zip(problem.names, map(float, surrogate.target_mode - surrogate.mode))),
                "sampled_map": dict(zip(problem.names, map(float, surrogate.map.theta))),
            }
        else:
            posterior_info = {"sampled_with": "self", "z_transform": z_transform}
        samples = draws.samples
        covariance = np.cov(samples.reshape(-1, samples.shape[-1]), rowvar=False)
        for name, row in summarize_samples(samples, problem.names).items():
            labels[name].update(value=row["value"], error=row["error"], lower=row["lower"], upper=row["upper"])
        sampler_diagnostics = dict(draws.diagnostics)
        sampler_diagnostics["posterior"] = posterior_info
        ess = min(sampler_diagnostics["ess_bulk"].values())
        sampler_diagnostics["gradient_evaluations_per_effective_sample"] = sampler_diagnostics["gradient_evaluations_per_ess"]
        sampler_warning = (
            max(sampler_diagnostics["r_hat"].values()) > 1.05 or not np.isfinite(ess) or ess < 100
            or sampler_diagnostics["divergences"] > 0.01 * num_chains * num_samples
        )
    floors = (getattr(emulator, "metadata", {}) or {}).get("label_error_floor") if error_floor else None
    for name, floor in (floors or {}).items():
        # a parameter held fixed (error 0, e.g. vsini with vsini_max=0) gets no floor
        if name in labels and floor and np.isfinite(labels[name]["error"]) and labels[name]["error"] > 0:
            row = labels[name]
            statistical = row["error"]
            row["error_statistical"] = statistical
            row["error"] = float(np.hypot(statistical, floor))
            row["lower"] = float(row["value"] - np.hypot(row["value"] - row["lower"], floor))
            row["upper"] = float(row["value"] + np.hypot(row["upper"] - row["value"], floor))
            if name == "vsini":  # a floor widens the interval, but vsini stays >= 0
                row["lower"] = max(row["lower"], 0.0)
    n_pixels = problem.n_good
    dof = max(n_pixels - theta.size - coefficients.size, 1)
    snr = float(np.median((np.abs(flux) * np.sqrt(ivar))[ivar > 0]))
    flags = 0
    # label boxes, and the +-h interval of a label bounded relative to another (the grid's edge too)
    near_edge = problem.near_edges(theta)
    if np.any(near_edge[: len(spec)]):
        flags |= FLAGS["grid_edge"]
    if near_edge[len(spec)]:
        flags |= FLAGS["rv_edge"]
    if snr < 10:
        flags |= FLAGS["low_snr"]
    if result.chi2 / dof > 3:
        flags |= FLAGS["high_chi2"]
    if not np.all(np.isfinite(theta)):
        flags |= FLAGS["fit_failed"]
    if not result.converged:
        flags |= FLAGS["not_converged"]
    if method != "map" and sampler_warning:
        flags |= FLAGS["sampler_warning"]
    factor = (prepared.degraded or {}).get("ivar_correlation_factor", 1.0)
    mismatch = chi2_mismatch(result.chi2, dof, problem.ivar, ivar, factor)
    flags |= FLAGS["model_mismatch"] if mismatch.pop("model_mismatch") else 0
    flags |= FLAGS["degraded_to_emulator_resolution"] if prepared.degraded else 0
    flags |= FLAGS["vsini_unresolved"] if getattr(prepared, "vsini_unresolved", False) else 0
    return FitResult(
        method=method,
        labels=labels,
        chi2=result.chi2,
        reduced_chi2=result.chi2 / dof,
        snr=snr,
        n_pixels=n_pixels,
        flags=flags,
        diagnostics={
            "rv_search": float(rv0),
            "n_starts": int(n_starts),
            "start_objectives": [float(v) for v in result.all_objectives],
            "converged": bool(result.converged),
            "crb_unconstrained": list(crb.unconstrained),
            "fisher_condition_number": crb.condition_number,
            "seed": seed,
            "init": init_info or {"source": "multi-start"},
            "laplace": laplace,
            "map_iterations": result.iterations,
            "map_jacobians": result.jacobians,
            "physics_error": prepared.physics_error,
            # NaN/inf pixels the reader masked (ObservedSpectrum.from_arrays); catalogs copy it
            "n_nonfinite_masked": int(spectrum.metadata.get("n_nonfinite_masked", 0)),
            **mismatch, **({"degraded": prepared.degraded} if prepared.degraded else {}),
            "continuum": prepared.continuum or fixed_info(prepared.degree),
            # a composite emulator's windows: pixels fitted in each, and those outside all (stellarfit.inference._composite)
            **({"windows": prepared.windows} if prepared.windows else {}),
            **{("sampler_" + k if k in ("seed", "elapsed_s") else k): v for k, v in sampler_diagnostics.items()},
        },
        wavelength=wavelength,
        flux=np.asarray(spectrum.flux, dtype=np.float64),
        ivar=ivar,
        model_flux=model_flux,
        covariance=covariance,
        emulator=str(emulator.metadata.get("name", type(emulator).__name__)),
        elapsed_s=time.perf_counter() - start_time,
        samples=samples,
        sample_stats=None if method == "map" else draws.sample_stats,
    )
