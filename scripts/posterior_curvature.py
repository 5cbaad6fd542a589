"""How Gaussian is the sampled density in the Laplace-whitened coordinates?

NUTS in ``fit_star`` samples w with z = mode + L w (L the Cholesky factor of
the Laplace covariance in z, :func:`stellarfit.inference.nuts.unconstrained_laplace`).
For a Gaussian posterior the log density along any unit direction u in w
would be -t^2 / 2: curvature -1 everywhere and a drop of 2 nats at t = +-2.
This script fits the shipped example spectrum with ``payne-default`` (MAP),
builds that whitening for the sampled problem (continuum marginalized) and,
along random unit directions in w, prints the directional second derivative
(autodiff, float32) over t in [-2, 2] and the drop of the log density at
t = -2 and +2.  Curvatures well below -1 in places force small leapfrog steps
(docs/fitting.md, "Speed").

    python scripts/posterior_curvature.py [n_directions]
"""

from __future__ import annotations

import sys

import numpy as np


def main(n_directions: int = 4) -> None:
    import jax
    import jax.numpy as jnp

    import stellarfit as sf
    from stellarfit.inference.fit import _prepare
    from stellarfit.inference.nuts import unconstrained_laplace
    from stellarfit.spectra import example_spectrum

    emulator = sf.load_emulator("payne-default")
    spectrum = example_spectrum()
    result = sf.fit_star(spectrum, emulator, method="map")
    prepared = _prepare(spectrum, emulator, priors=None, rv_range=(-1000.0, 1000.0), rv_window=50.0, vsini_max=100.0,
                        continuum_degree=2)
    problem = prepared.problem.with_continuum("marginalize")
    laplace = unconstrained_laplace(problem, np.array([result.value(name) for name in problem.names], float))
    factor = np.linalg.cholesky(laplace.covariance)
    log_density = jax.jit(lambda z, p: p.log_density_unconstrained(z))
    curvature = jax.jit(lambda z, v, p: jax.jvp(lambda q: jax.grad(p.log_density_unconstrained)(q) @ v, (z,), (v,))[1])
    rng = np.random.default_rng(0)
    steps = np.linspace(-2.0, 2.0, 201)
    for k in range(n_directions):
        unit = rng.normal(size=factor.shape[0])
        direction = factor @ (unit / np.linalg.norm(unit))
        points = [jnp.asarray(laplace.mode + t * direction, jnp.float32) for t in steps]
        second = np.array([float(curvature(z, jnp.asarray(direction, jnp.float32), problem)) for z in points])
        values = np.array([float(log_density(z, problem)) for z in points])
        centre = values[steps.size // 2]
        print(f"direction {k}: curvature median {np.median(second):.2f}, range [{second.min():.2f}, {second.max():.2f}] "
              f"(Gaussian: -1); drop at t = -2, +2: {centre - values[0]:.2f}, {centre - values[-1]:.2f} nats (Gaussian: 2)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 4)
