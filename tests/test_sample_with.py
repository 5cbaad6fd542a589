"""NUTS through an emulator's fast path (fit_star(sample_with=...)), the Gauss-Newton z-mode and
the Levenberg-Marquardt step cap that lets a polish leave a box edge."""

import jax.numpy as jnp
import numpy as np
import pytest

import stellarfit as sf
from stellarfit.cli.main import main as cli_main
from stellarfit.inference import fit_star, fit_stars
from stellarfit.inference.fit import _prepare, _resolve_sample_with, recentred_posterior
from stellarfit.inference.map import polish_map
from stellarfit.inference.nuts import unconstrained_laplace

OPTIONS = dict(priors=None, rv_range=(-1000.0, 1000.0), rv_window=50.0, vsini_max=100.0, continuum_degree=2)
SHORT = dict(num_warmup=100, num_samples=100, num_chains=2, chain_method="sequential")


@pytest.fixture(scope="module")
def problem(payne, spectrum):
    return _prepare(spectrum, payne, **OPTIONS).problem


@pytest.fixture(scope="module")
def payne_map(payne, spectrum):
    return fit_star(spectrum, payne)


@pytest.fixture(scope="module")
def fast_map(spectrum):
    return fit_star(spectrum, sf.load_emulator("default-fast"))


def _theta(result):
    return np.array([result.labels[name]["map"] for name in result.names])


def test_recentred_posterior_moves_draws_in_z_and_keeps_them_in_the_box(problem, payne_map):
    theta = _theta(payne_map)
    rng = np.random.default_rng(0)
    # draws inside the label polytope (members bound [alpha/Fe]): made in z
    z_map = np.asarray(problem.to_unconstrained(jnp.asarray(theta, jnp.float32)), np.float64)
    z = z_map + 0.05 * rng.standard_normal((2, 50, theta.size))
    draws = np.asarray(problem.to_theta(jnp.asarray(z, jnp.float32)), np.float64)
    mode = np.zeros(theta.size)
    same = recentred_posterior(problem, draws, mode, mode)
    np.testing.assert_allclose(same, draws, rtol=1e-5, atol=1e-3)
    shift = np.zeros(theta.size)
    teff, rv = problem.names.index("teff"), problem.names.index("rv")
    shift[teff], shift[rv] = 0.5, -0.01
    moved = recentred_posterior(problem, draws, mode, shift)
    moved_z = np.asarray(problem.to_unconstrained(jnp.asarray(moved, jnp.float32)), np.float64)
    np.testing.assert_allclose(moved_z[..., teff] - z[..., teff], 0.5, atol=2e-3)
    assert np.all(moved[..., teff] > draws[..., teff])
    assert np.all(moved[..., rv] < draws[..., rv])
    # a huge shift piles the draws against the upper edge; none leaves the box
    shift[teff] = 40.0
    far = recentred_posterior(problem, draws, mode, shift)
    assert np.all(far[..., teff] <= problem.upper[teff]) and np.all(far[..., teff] > problem.upper[teff] - 1.0)
    with pytest.raises(ValueError, match="finite"):
        recentred_posterior(problem, draws, mode, np.full(theta.size, np.nan))


def test_gauss_newton_z_mode_agrees_with_the_newton_mode(problem, payne_map):
    theta = _theta(payne_map)
    full = unconstrained_laplace(problem, theta)
    gauss_newton = unconstrained_laplace(problem, theta, gauss_newton=True)
    sigma = np.sqrt(np.diag(full.covariance))
    assert np.all(np.abs(gauss_newton.mode - full.mode) < 0.2 * sigma)
    ratio = np.sqrt(np.diag(gauss_newton.covariance)) / sigma
    assert np.median(ratio) == pytest.approx(1.0, abs=0.1)
    # the data's curvature (one Jacobian through the emulator each) is recomputed only after a
    # shortened step; the other iterations take a gradient.  Recomputed at every iteration (the
    # full Gauss-Newton iteration) it takes more Jacobians; both end near the mode that full
    # iterations reach with a 50x smaller tolerance.  The stopping rule (Newton decrement below
    # 0.05 nats) promises a density within ~0.05 nats of the mode's, i.e. a Mahalanobis distance
    # below ~sqrt(2 x 0.05); the default iteration, which asks for a tenth of that with a
    # curvature from an earlier iterate, also ends within 0.1 sigma in every parameter.  (A
    # tolerance of 1e-4 nats is below the float32 round-off of a density of ~2000 nats: it never
    # converges.)
    always = unconstrained_laplace(problem, theta, gauss_newton=True, curvature_refresh="always")
    tight = unconstrained_laplace(problem, theta, gauss_newton=True, curvature_refresh="always", tolerance=1e-3,
                                  max_iterations=30)
    assert always.converged and gauss_newton.converged and tight.converged
    assert always.curvature_evaluations == always.iterations
    assert 1 <= gauss_newton.curvature_evaluations < always.curvature_evaluations, (gauss_newton, always)
    precision = np.linalg.inv(full.covariance)
    for result in (gauss_newton, always):
        offset = result.mode - tight.mode
        assert result.log_density > tight.log_density - 0.05
        assert np.sqrt(offset @ precision @ offset) < np.sqrt(2 * 0.05), result
    assert np.all(np.abs(gauss_newton.mode - tight.mode) < 0.1 * sigma)
    with pytest.raises(ValueError, match="curvature_refresh"):
        unconstrained_laplace(problem, theta, gauss_newton=True, curvature_refresh="never")
    for bad in (np.zeros(3), np.full(theta.size, np.nan)):
        with pytest.raises(ValueError, match="start must be a finite z"):
            unconstrained_laplace(problem, theta, gauss_newton=True, start=bad)


def test_z_laplace_keeps_the_last_finite_curvature_and_reports_none(problem, payne_map, monkeypatch):
    """Derivatives that turn non-finite during the Newton iterations (float32 overflow far into a box's
    tail, say) leave the approximation at the last finite point; with none finite the covariance is NaN
    and the chain starts fall back to the MAP (a batch on the GPU once failed here, in eigh)."""
    from stellarfit.inference import nuts
    from stellarfit.inference.sampling import laplace

    theta = _theta(payne_map)
    real, calls = nuts._log_density_and_derivatives, []

    def flaky(problem, z, after=1):
        value, gradient, hessian = real(problem, z)
        calls.append(np.asarray(z, np.float64))
        return value, gradient, hessian * (jnp.nan if len(calls) > after else 1.0)

    monkeypatch.setattr(laplace, "_log_density_and_derivatives", flaky)
    kept = unconstrained_laplace(problem, theta)
    assert len(calls) >= 2, "the first Newton step was not taken: the test does not reach the non-finite curvature"
    assert not kept.converged and np.all(np.isfinite(kept.covariance))
    np.testing.assert_array_equal(kept.mode, calls[0])  # the start, where the curvature was finite
    assert np.all(np.linalg.eigvalsh(kept.covariance) > 0)
    monkeypatch.setattr(laplace, "_log_density_and_derivatives", lambda problem, z: flaky(problem, z, after=-1))
    none = unconstrained_laplace(problem, theta)
    assert np.all(np.isnan(none.covariance)) and not none.converged
    start = nuts._prepare(problem, theta, None, 2, "laplace", 1.0, 0)
    assert np.all(np.isfinite(start.center)) and np.all(np.isfinite(start.factor)) and np.all(np.isfinite(start.w_init))


@pytest.mark.slow
def test_the_z_mode_search_starts_from_the_curvature_the_map_polish_ended_with(problem, payne_map):
    """polish_map (chord) returns the data's curvature of its last Jacobian; unconstrained_laplace
    started from it needs one Jacobian fewer and ends at the same mode."""
    from stellarfit.inference.map import polish_map

    theta = _theta(payne_map)
    sigma = np.sqrt(np.diag(unconstrained_laplace(problem, theta).covariance))
    polished = polish_map(problem, theta)
    assert polished.curvature is not None and polished.curvature.shape == (theta.size, theta.size)
    assert polish_map(problem, theta, chord=False).curvature is None
    own = unconstrained_laplace(problem, polished.theta, gauss_newton=True)
    given = unconstrained_laplace(problem, polished.theta, gauss_newton=True, curvature=polished.curvature)
    assert given.converged and own.converged
    assert given.curvature_evaluations < own.curvature_evaluations
    assert np.all(np.abs(given.mode - own.mode) < 0.1 * sigma)
    # the batched polish (full Levenberg-Marquardt under vmap) keeps its last Jacobian's curvature too,
    # which fit_stars' fast path hands to the same mode search; none without a Jacobian (max_steps=0)
    from stellarfit.inference.map import polish_map_batch

    [batched] = polish_map_batch([problem], theta[None])
    assert batched.curvature is not None and batched.jacobians >= 1
    scale = np.sqrt(np.outer(np.diag(polished.curvature), np.diag(polished.curvature)))
    assert np.max(np.abs(batched.curvature - polished.curvature) / scale) < 0.05
    from_batch = unconstrained_laplace(problem, batched.theta, gauss_newton=True, curvature=batched.curvature)
    assert from_batch.converged and from_batch.curvature_evaluations < own.curvature_evaluations
    assert np.all(np.abs(from_batch.mode - own.mode) < 0.1 * sigma)
    assert polish_map_batch([problem], theta[None], max_steps=0)[0].curvature is None
    with pytest.raises(ValueError, match="curvature must be"):
        unconstrained_laplace(problem, theta, gauss_newton=True, curvature=np.ones((3, 3)))
    with pytest.raises(ValueError, match="curvature must be"):
        unconstrained_laplace(problem, theta, curvature=polished.curvature)


@pytest.mark.slow
def test_gauss_newton_hessian_from_the_curvature_in_theta_is_minus_jtj_in_z(problem, payne_map):
    """The Gauss-Newton pieces in z: the value and gradient of the profiled density, and, with the
    data's curvature from the same z, the Hessian -J^T J (J = dr/dz) plus the log Jacobian's
    Hessian and the negative part of the chain rule's second-order term sum_j g_j d^2 theta_j / dz^2
    (g: the data's gradient in theta, here from the residuals in theta), computed here directly
    in z; ``second_order=False`` leaves that term out."""
    import jax

    from stellarfit.inference.nuts import _gauss_newton_chord, _residual_curvature

    theta = _theta(payne_map)
    for alpha_offset in (0.0, -0.15):  # the second moves [alpha/Fe] within its members' interval
        start = theta.copy()
        start[problem.names.index("alpha_fe")] += alpha_offset
        z = problem.to_unconstrained(jnp.asarray(start, jnp.float32)) + 0.1
        value, gradient, hessian = (np.asarray(v, np.float64) for v in
                                    _gauss_newton_chord(problem, z, _residual_curvature(problem, z)))
        r = problem.residuals_unconstrained(z)
        jacobian = np.asarray(jax.jacfwd(problem.residuals_unconstrained)(z), np.float64)
        expected_value = -0.5 * float(jnp.sum(r * r)) + float(problem.log_abs_det_jacobian(z))
        expected_gradient = -jacobian.T @ np.asarray(r, np.float64) + np.asarray(jax.grad(problem.log_abs_det_jacobian)(z))
        plain_hessian = -jacobian.T @ jacobian + np.asarray(jax.hessian(problem.log_abs_det_jacobian)(z), np.float64)
        data_in_theta = lambda t: -0.5 * jnp.sum(problem.residuals(t) ** 2)  # noqa: E731
        theta_gradient = np.asarray(jax.grad(data_in_theta)(problem.to_theta(z)), np.float64)
        second = np.einsum("j,jab->ab", theta_gradient, np.asarray(jax.hessian(problem.to_theta)(z), np.float64))
        eigenvalues, vectors = np.linalg.eigh(0.5 * (second + second.T))
        assert eigenvalues.min() < -0.1 * np.abs(np.diag(plain_hessian)).min(), "the second-order term is negligible here"
        expected_hessian = plain_hessian + (vectors * np.minimum(eigenvalues, 0.0)) @ vectors.T
        assert value == pytest.approx(expected_value, rel=1e-5)
        scale = np.sqrt(np.abs(np.diag(expected_hessian)))
        np.testing.assert_allclose(gradient / scale, expected_gradient / scale, atol=2e-3 * np.abs(expected_gradient / scale).max())
        np.testing.assert_allclose(hessian / np.outer(scale, scale), expected_hessian / np.outer(scale, scale), atol=2e-3)
        *_, plain = _gauss_newton_chord(problem, z, _residual_curvature(problem, z), second_order=False)
        np.testing.assert_allclose(np.asarray(plain, np.float64) / np.outer(scale, scale), plain_hessian / np.outer(scale, scale),
                                   atol=2e-3)


def test_gauss_newton_curvature_of_a_label_in_the_sigmoids_tail_includes_the_second_order_term(problem, payne_map):
    """The example star's [alpha/Fe] MAP sits at the edge of its members' interval (z ~ 14); its mode
    in z is inside (z ~ 2.8), in the sigmoid's tail, where the data still pull on theta.  There the
    chain rule's second-order term is a third of the curvature in z: without it the Gauss-Newton
    Hessian puts [alpha/Fe]'s width 1.67x too wide, and the Newton steps towards the mode overshoot."""
    import jax

    from stellarfit.inference.nuts import _gauss_newton_chord, _gauss_newton_log_density, _residual_curvature

    theta = _theta(payne_map)
    i = problem.names.index("alpha_fe")
    assert abs(float(problem.to_unconstrained(jnp.asarray(theta, jnp.float32))[i])) > 6.0  # the MAP at an edge
    mode = unconstrained_laplace(problem, theta, gauss_newton=True)
    assert mode.converged and 1.0 < mode.mode[i] < 5.0
    z = jnp.asarray(mode.mode, jnp.float32)
    exact = np.asarray(jax.hessian(lambda x: _gauss_newton_log_density(problem, x))(z), np.float64)
    curvature = _residual_curvature(problem, z)
    width = lambda hessian: np.sqrt(np.diag(np.linalg.inv(-np.asarray(hessian, np.float64))))  # noqa: E731
    with_term = _gauss_newton_chord(problem, z, curvature)[2]
    without = _gauss_newton_chord(problem, z, curvature, second_order=False)[2]
    assert float(with_term[i, i]) == pytest.approx(exact[i, i], rel=0.1)
    assert float(without[i, i]) > 0.8 * exact[i, i]  # (negative numbers) a fifth or more of the curvature missing
    assert width(with_term)[i] / width(exact)[i] == pytest.approx(1.0, abs=0.1)
    assert width(without)[i] / width(exact)[i] > 1.3
    # fit_star starts such a label's search at the fast path's mode, the others at the MAP's z
    from stellarfit.inference.fit import _mode_search_start

    elsewhere = np.full(theta.size, 0.5)
    start = _mode_search_start(problem, theta, elsewhere)
    z_map = np.asarray(problem.to_unconstrained(jnp.asarray(theta, jnp.float32)), np.float64)
    assert start[i] == 0.5
    others = np.abs(z_map) <= 6.0
    np.testing.assert_allclose(start[others], z_map[others])
    assert _mode_search_start(problem, theta, np.full(theta.size, np.nan)) is None
    # from the MAP's clipped z the term saves Newton iterations and Jacobians, to the same mode
    plain = unconstrained_laplace(problem, theta, gauss_newton=True, second_order=False)
    assert plain.converged and mode.curvature_evaluations < plain.curvature_evaluations
    assert abs(plain.mode[i] - mode.mode[i]) < 0.1 * width(exact)[i]


def test_polish_leaves_a_start_pressed_against_a_box_edge(problem, payne_map):
    """[alpha/Fe] at its lower edge: a saturated sigmoid, whose Marquardt-scaled step is huge.
    Capped at MAX_LM_STEP in z, the polish moves off the edge and most of the way down to the MAP
    (from 120 above its -log posterior to within 20; uncapped, a start like this one made the
    fast path's polish from the TransformerPayne's MAP reject every step and stop where it began)."""
    theta = _theta(payne_map)
    i = problem.names.index("alpha_fe")
    start = theta.copy()
    start[i] = problem.lower[i]
    start_objective = float(problem.objective_unconstrained(problem.to_unconstrained(jnp.asarray(start, jnp.float32))))
    result = polish_map(problem, start, max_steps=20)
    map_objective = min(payne_map.diagnostics["start_objectives"])
    assert -result.log_posterior < start_objective - 50.0
    assert -result.log_posterior < map_objective + 20.0
    assert result.theta[i] > problem.lower[i] + 0.05


def test_polish_from_labels_pressed_against_box_edges_moves_and_reports_convergence_honestly(problem, payne_map):
    """Labels started at a box edge have ~1e-10 curvature in z; Marquardt's damping in proportion
    to that alone made their steps ~1e6 in z, the steps were rejected, and two rejections counted
    as convergence: the polish stopped where it began and called that the MAP (the TransformerPayne's
    MAP polished from the fast path's stayed 45-300 nats short on held-out stars).  Now the damping
    has a floor, and a rejection counts towards convergence only by the decrease its step promised:
    the polish moves, and reports convergence only where it has arrived."""
    from stellarfit.inference.fit import INIT_POLISH_STEPS

    theta = _theta(payne_map)
    map_objective = min(payne_map.diagnostics["start_objectives"])
    moved = []
    for edges in ((("mn_fe", "lower"), ("si_fe", "lower")), (("na_fe", "lower"), ("si_fe", "upper"))):
        start = theta.copy()
        for name, edge in edges:
            i = problem.names.index(name)
            start[i] = getattr(problem, edge)[i]
        start_objective = float(problem.objective_unconstrained(problem.to_unconstrained(jnp.asarray(start, jnp.float32))))
        assert start_objective > map_objective + 100.0  # a start the polish has to work for
        result = polish_map(problem, start, max_steps=INIT_POLISH_STEPS)
        assert result.iterations > 2, edges
        if result.converged:
            assert -result.log_posterior < map_objective + 1.0, (edges, -result.log_posterior, map_objective)
        moved.append((start_objective + result.log_posterior) / (start_objective - map_objective))
    assert moved[0] > 0.5 and moved[1] > 0.1, moved


def test_sample_with_auto_takes_the_fast_path_on_a_gpu_too(monkeypatch):
    """On an H200 exact TransformerPayne NUTS costs minutes per star and the fast path ~10 s
    (benchmarks/results/gpu_fits_h200.md), so "auto" does not depend on the backend."""
    import jax

    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    chosen = _resolve_sample_with("auto", sf.load_emulator("default"), "nuts")
    assert chosen is not None and chosen.name == "default-fast"
    assert _resolve_sample_with("self", sf.load_emulator("default"), "nuts") is None


def test_sample_with_resolution_and_errors(payne):
    assert _resolve_sample_with("auto", payne, "nuts") is None  # a Payne samples itself
    assert _resolve_sample_with("fast", sf.load_emulator("default"), "map") is None  # MAP samples nothing
    chosen = _resolve_sample_with("auto", sf.load_emulator("default"), "nuts")  # TransformerPayne on a CPU
    assert chosen is not None and chosen.name == "default-fast"
    with pytest.raises(ValueError, match="names no fast path"):
        _resolve_sample_with("fast", payne, "nuts")
    with pytest.raises(ValueError, match="sample_with must be one of"):
        _resolve_sample_with("fastest", payne, "nuts")


@pytest.mark.parametrize("z_transform", ["logit", pytest.param("probit", marks=pytest.mark.slow)])
def test_nuts_through_a_fast_path_takes_the_emulators_location(payne, spectrum, payne_map, fast_map, z_transform):
    """payne-default naming default-fast as its fast path: the chains sample default-fast's
    posterior and the draws move to payne-default's mode, so the medians follow payne-default
    where the two emulators disagree (vmic, [Si/Fe]: 1.4 and 1.7 sigma apart on this star),
    in either coordinates z (the modes and the shift are taken in the coordinates sampled)."""
    emulator = payne.replace(metadata={**payne.metadata, "fast_path": "default-fast"})
    result = fit_star(spectrum, emulator, "nuts", sample_with="fast", init=None, z_transform=z_transform, **SHORT)
    info = result.diagnostics["posterior"]
    assert info["sampled_with"] == "default-fast" and info["recentred_on"] == "mode in z"
    assert info["z_transform"] == z_transform
    assert result.samples.shape == (2, 100, len(result.names))
    for name in ("vmic", "si_fe"):
        median = result.labels[name]["value"]
        assert abs(median - payne_map.labels[name]["map"]) < abs(median - fast_map.labels[name]["map"]), name
    # the widths are the sampled posterior's: close to the Laplace widths of either emulator
    for name in ("teff", "logg", "fe_h", "rv"):
        assert result.labels[name]["error"] == pytest.approx(payne_map.labels[name]["error"], rel=0.5), name
    assert max(result.diagnostics["r_hat"].values()) < 1.1


@pytest.mark.slow
def test_batched_nuts_through_a_fast_path_and_sampling_itself(payne, spectrum):
    emulator = payne.replace(metadata={**payne.metadata, "fast_path": "default-fast"})
    one = fit_star(spectrum, emulator, "nuts", sample_with="fast", init=None, **SHORT)
    batched = {k: v for k, v in SHORT.items() if k != "chain_method"}  # fit_stars vectorizes the chains
    batch = fit_stars([spectrum], emulator, method="nuts", sample_with="fast", init=None, **batched)
    assert batch[0].diagnostics["posterior"]["sampled_with"] == "default-fast"
    for name in ("teff", "fe_h", "si_fe"):
        assert batch[0].labels[name]["value"] == pytest.approx(one.labels[name]["value"], abs=0.5 * one.labels[name]["error"])
    selfish = fit_star(spectrum, emulator, "nuts", sample_with="self", init=None, **SHORT)
    assert selfish.diagnostics["posterior"] == {"sampled_with": "self", "z_transform": "logit"}


@pytest.mark.slow
def test_nuts_with_the_shipped_transformer_payne_on_a_cpu(spectrum):
    """fit_star(example, "default", "nuts") on a CPU: default-fast's posterior at the
    TransformerPayne's mode, close to the truth of the held-out example star."""
    from stellarfit.data import example_truth

    result = fit_star(spectrum, sf.load_emulator("default"), "nuts")
    truth = example_truth()
    assert result.diagnostics["posterior"]["sampled_with"] == "default-fast"
    assert result.diagnostics["divergences"] < 20 and max(result.diagnostics["r_hat"].values()) < 1.05
    for name, tolerance in (("teff", 60.0), ("logg", 0.1), ("fe_h", 0.05), ("mg_fe", 0.05), ("rv", 0.2)):
        assert abs(result.labels[name]["value"] - truth[name]) < tolerance, name
        assert abs(result.labels[name]["value"] - truth[name]) < 3 * result.labels[name]["error"], name


def test_cli_sample_with_fast_needs_a_fast_path(capsys):
    assert cli_main(["fit", "example", "--emulator", "payne-default", "--method", "nuts", "--sample-with", "fast"]) == 2
    assert "--sample-with fast: this emulator names no fast path" in capsys.readouterr().err
