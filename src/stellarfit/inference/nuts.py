"""NUTS posterior sampling of a :class:`~stellarfit.inference.FitProblem` with NumPyro or BlackJAX.

This module owns:

- :func:`numpyro_fit_model` (the problem as its argument) and
  :func:`numpyro_model` (bound to one problem): the NumPyro model of a fit,
  which users can extend;
- :func:`sample_numpyro`: NumPyro's NUTS kernel (``numpyro.infer.hmc.hmc``)
  on that model, warm-up and draws of all chains in one jitted program of the
  problem (chains one after another on a CPU, vectorized on an accelerator),
  compiled once per forward model like the BlackJAX path; on a multi-core CPU
  the chains are handed one at a time to worker processes pinned one per
  core, whichever is free, each running them in that program
  (``chain_method="processes"``);
- :func:`sample_blackjax`: BlackJAX Stan-style window adaptation followed by
  NUTS, draws by ``lax.scan``;
- :func:`unconstrained_laplace`: mode and Laplace covariance of the sampled
  density in z (Newton iterations from the MAP), which whiten the coordinates
  the samplers move in and place the chain starts;
- :func:`laplace_inverse_mass_matrix`, :func:`initial_positions`: the physical
  Laplace covariance mapped to z at the MAP, and starts drawn from it (kept as
  utilities; the samplers use :func:`unconstrained_laplace`);
- :func:`sampling_diagnostics`, :func:`summarize_samples`: R-hat, bulk and tail
  ESS and percentile summaries (ArviZ-stats array functions).

Both samplers work on the unconstrained vector z of the FitProblem (the
sigmoid map of each parameter's box, see
:mod:`stellarfit.inference.likelihood`) with the target density
``FitProblem.log_density_unconstrained(z)`` = log L + log prior + log|d theta/d z|,
i.e. a uniform prior in each box times any user Gaussian priors.  Use a
problem built with ``continuum="marginalize"`` so that the continuum
polynomial is integrated out analytically rather than profiled.  Samples are
returned in physical units, shape (n_chains, n_draws, p), parameters in
``problem.names`` order.

Warm start and coordinates (every ``mass_matrix="laplace..."``): the
Laplace approximation of the sampled density in z, N(mode, Sigma) with
Sigma = L L^T (:func:`unconstrained_laplace`), whitens the coordinates: the
samplers move w with z = mode + L w / sqrt(0.001), so that the Laplace
covariance is 0.001 I in w.  Posterior widths in z span three decades
(rv: ~0.0015, a parameter at a box edge: ~1), while Stan-style window
adaptation (NumPyro's and BlackJAX's alike) shrinks every window's covariance
estimate toward 0.001 I with weight 5 / (n + 5); in w that target *is* the
Laplace approximation, so the dense adapted matrix is shrunk toward it instead
of being swamped by an identity far wider than the posterior (for the shipped
example star with ``payne-default``, 4 chains x (200 + 200): 151 leapfrog
steps per warm-up iteration and 40 per draw before, 27 and 23 after).  Chains
start at mode + jitter N(0, Sigma) in z.  ``mass_matrix="dense"`` and
``"diagonal"`` sample z itself from an identity (unit) inverse mass matrix.

Warm-up schedule, the default ``"laplace-pooled"`` (:func:`pooled_phases`): 75
iterations adapt the step size with the Laplace metric; the next 125 run at
that step size, and their positions in *all* chains together (500 draws for 4
chains, each chain centred on its own mean) estimate one dense metric, shrunk
toward the Laplace one as Stan shrinks a window's; the chains then go on from
where they are with that metric, adapting the step size in the last 300
warm-up iterations.  The first 200 iterations take at most 2^6 - 1 = 63 leapfrog steps each
(:func:`first_phase_depth`): where the Laplace metric fits the posterior badly, their
trajectories ran ~100 steps and took half the fit's gradients; capped, those fits take
0.63-0.81x the gradients and the others are unchanged (a cap of 31 cut more but mixed one
star worse; docs/validation/speed.md).  Each chain estimating its own metric from its own 375
draws (``"laplace"``) left the chains' step sizes 0.26-0.45 on a noisy star
and their trees long; the pooled metric gives them all ~0.4, and the fit 16-20%
fewer gradients (docs/validation/speed.md).  The chains must meet once in the
middle of the warm-up, so a fit runs two programs.

Other schedules (:func:`adaptation_windows`): ``"laplace"`` re-estimates the
mass matrix once, from one long window between Stan's 75- and 50-iteration
step-size buffers; ``"laplace-windows"`` (the former default), ``"dense"`` and
``"diagonal"`` use Stan's doubling windows (25, 50, 100, ... iterations).
Started from the Laplace metric, the short windows only degraded it, and each
window end restarted the step-size search: one window needs about a fifth
fewer warm-up gradients (a third on the example star) at the same or better
draw efficiency (docs/validation/speed.md).

References: NUTS, Hoffman & Gelman (2014, JMLR 15, 1593); window adaptation as
in Stan (Stan Reference Manual, "HMC algorithm parameters"); rank-normalized
split R-hat and bulk/tail ESS, Vehtari et al. (2021, Bayesian Analysis 16, 667).
Tree-depth hits are counted as trajectories that used the maximum number of
doublings (2^max_tree_depth - 1 leapfrog steps).
"""

from __future__ import annotations

# the sampling modules' names, importable from here as before the split
from stellarfit.inference.sampling.blackjax_driver import _blackjax_chains, _blackjax_chains_fn, sample_blackjax  # noqa: F401
from stellarfit.inference.sampling.common import (  # noqa: F401
    CHAIN_METHODS,
    MASS_MATRICES,
    SamplerResult,
    _finish,
    _prepare,
    _resolve_chain_method,
    _Start,
    check_sampler_settings,
)
from stellarfit.inference.sampling.diagnostics import sampling_diagnostics, summarize_samples
from stellarfit.inference.sampling.laplace import (  # noqa: F401
    UnconstrainedLaplace,
    _gauss_newton_chord,
    _gauss_newton_log_density,
    _log_density_and_derivatives,
    _residual_curvature,
    initial_positions,
    laplace_inverse_mass_matrix,
    unconstrained_laplace,
)
from stellarfit.inference.sampling.numpyro_driver import (  # noqa: F401
    _numpyro_chains,
    numpyro_fit_model,
    numpyro_model,
    sample_numpyro,
    sample_numpyro_batch,
)
from stellarfit.inference.sampling.schedule import (  # noqa: F401
    _FIRST_PHASE_DEPTH,
    _blackjax_schedule,
    adaptation_windows,
    first_phase_depth,
    pooled_inverse_mass,
    pooled_phases,
)

__all__ = [
    "MASS_MATRICES",
    "adaptation_windows",
    "first_phase_depth",
    "pooled_phases",
    "sample_numpyro_batch",
    "SamplerResult",
    "check_sampler_settings",
    "initial_positions",
    "laplace_inverse_mass_matrix",
    "numpyro_fit_model",
    "numpyro_model",
    "sample_blackjax",
    "sample_numpyro",
    "sampling_diagnostics",
    "summarize_samples",
]
