"""fit_star(init=...): a MAP polished from a given start or from the emulator's fast path."""

import numpy as np
import pytest

import stellarfit as sf
from stellarfit.data import example_truth
from stellarfit.inference import fit_star, fit_stars
from stellarfit.inference.fit import fast_path_emulator
from stellarfit.inference.map import polish_map
from stellarfit.inference.fit import _prepare


@pytest.fixture(scope="module")
def multi_start(payne, spectrum):
    return fit_star(spectrum, payne, init=None)


def _values(result):
    return np.array([result.labels[name]["value"] for name in result.names])


def _polish_from_afar(payne, spectrum, multi_start, scale):
    """Plain and chord polishes (20 iterations) from the multi-start MAP with Teff, logg and [Fe/H]
    moved by scale x (1.25, -1, 1) of their errors; returns (plain, chord, the errors)."""
    prepared = _prepare(spectrum, payne, priors=None, rv_range=(-1000.0, 1000.0), rv_window=50.0, vsini_max=100.0,
                        continuum_degree=2)
    problem = prepared.problem
    theta = np.array([multi_start.labels[name]["map"] for name in problem.names])
    sigma = np.array([multi_start.labels[name]["error"] for name in problem.names])
    start = theta.copy()
    for name, offset in (("teff", 1.25), ("logg", -1.0), ("fe_h", 1.0)):
        start[problem.names.index(name)] += scale * offset * sigma[problem.names.index(name)]
    return polish_map(problem, start, max_steps=20, chord=False), polish_map(problem, start, max_steps=20), sigma


def test_payne_default_has_no_fast_path_so_auto_is_the_multi_start_search(payne, spectrum, multi_start):
    assert fast_path_emulator(payne) is None
    assert multi_start.diagnostics["init"] == {"source": "multi-start"}
    assert multi_start.diagnostics["laplace"] == "hessian"
    with pytest.raises(ValueError, match="names no fast path"):
        fit_star(spectrum, payne, init="fast")


def test_polish_from_a_distant_start_reaches_the_multi_start_map(payne, spectrum, multi_start):
    """From 60 K, 0.08 dex in logg and 0.04 dex in [Fe/H] away (no RV given: it is searched), a few
    Levenberg-Marquardt steps land on the multi-start MAP.  (The polish is local: from 150 K and
    0.2 dex away it settles in another minimum of this star's chi2, 12 higher.)"""
    start = {name: multi_start.labels[name]["map"] for name in payne.label_names}
    start.update(teff=start["teff"] + 60.0, logg=start["logg"] + 0.08, fe_h=start["fe_h"] - 0.04)
    result = fit_star(spectrum, payne, init=start, polish_steps=20)
    assert result.diagnostics["init"]["source"] == "given"
    assert result.diagnostics["init"]["values"]["teff"] == pytest.approx(start["teff"], abs=1e-2)
    assert result.diagnostics["laplace"] == "gauss-newton"
    assert result.diagnostics["converged"]
    assert 2 <= result.diagnostics["map_iterations"] <= 20
    assert result.chi2 <= multi_start.chi2 + 1.0
    for name in ("teff", "logg", "fe_h", "mg_fe", "rv"):
        row, ref = result.labels[name], multi_start.labels[name]
        assert abs(row["value"] - ref["value"]) < 0.3 * ref["error"], (name, row, ref)
        # the Gauss-Newton Laplace errors agree with the Hessian's of the multi-start fit
        assert row["error"] == pytest.approx(ref["error"], rel=0.15), name


def test_init_from_a_fit_result_stays_put_and_stops_early(payne, spectrum, multi_start):
    result = fit_star(spectrum, payne, init=multi_start)
    assert result.diagnostics["map_iterations"] <= 4 and result.diagnostics["converged"]
    errors = np.array([multi_start.labels[name]["error"] for name in multi_start.names])
    assert np.all(np.abs(_values(result) - _values(multi_start)) < 0.05 * errors)
    assert result.diagnostics["init"]["values"]["rv"] == pytest.approx(multi_start.labels["rv"]["map"], abs=1e-3)


@pytest.mark.slow  # ~2 min on 2 cores; runs in CI's slow step
def test_an_emulator_naming_a_fast_path_fits_in_two_stages(payne, spectrum, multi_start):
    """payne-default naming itself as its fast path: the machinery of the shipped TransformerPayne's
    two-stage fit, at Payne speed."""
    two_stage = payne.replace(metadata={**payne.metadata, "fast_path": "payne-default"})
    result = fit_star(spectrum, two_stage)
    info = result.diagnostics["init"]
    assert info["source"] == "fast path payne-default"
    assert info["reduced_chi2"] == pytest.approx(multi_start.reduced_chi2, rel=1e-4)
    assert result.elapsed_s > info["elapsed_s"] > 0
    assert abs(result.labels["teff"]["value"] - multi_start.labels["teff"]["value"]) < 0.3 * multi_start.labels["teff"]["error"]
    assert info["polish_space"] == "unit"  # from another emulator's MAP: bounded steps in the boxes' coordinates
    batch = fit_stars([spectrum], two_stage)
    assert batch[0].diagnostics["init"]["source"] == "fast path payne-default"
    assert batch[0].labels["teff"]["value"] == pytest.approx(result.labels["teff"]["value"], abs=2.0)
    # two stars in one batch: the vmapped polish (full Levenberg-Marquardt), also in unit coordinates
    pair = fit_stars([spectrum, spectrum], two_stage, batch_size=2)
    for each in pair:
        assert each.diagnostics["init"]["polish_space"] == "unit"
        for name in ("teff", "logg", "fe_h", "alpha_fe", "mg_fe"):
            assert each.labels[name]["value"] == pytest.approx(result.labels[name]["value"],
                                                               abs=0.1 * result.labels[name]["error"]), name


@pytest.mark.slow
def test_fit_stars_takes_one_start_per_spectrum(payne, spectrum, multi_start):
    results = fit_stars([spectrum, spectrum], payne, init=[multi_start, None])
    assert [r.diagnostics["init"]["source"] for r in results] == ["given", "multi-start"]
    assert results[0].diagnostics["init"]["polish_space"] == "z"  # a given start: z copes with distant ones
    for result in results:
        assert result.labels["fe_h"]["value"] == pytest.approx(multi_start.labels["fe_h"]["value"], abs=0.01)
    with pytest.raises(ValueError, match="one start per spectrum"):
        fit_stars([spectrum, spectrum], payne, init=[multi_start])
    # two started spectra share one batched (vmapped, full Levenberg-Marquardt) polish; one alone takes
    # polish_map's chord iterations: the same MAP
    both = fit_stars([spectrum, spectrum], payne, init=[multi_start, multi_start])
    assert both[0].diagnostics["init"]["source"] == "given"
    for name in ("teff", "logg", "fe_h", "mg_fe"):
        for result in both:
            assert result.labels[name]["map"] == pytest.approx(results[0].labels[name]["map"], abs=0.05 * results[0].labels[name]["error"])


@pytest.mark.parametrize("init, match", [
    ({"teff": 5500.0, "gravity": 4.0}, "unknown parameters"),
    ({"teff": float("nan")}, "non-finite"),
    (np.zeros(3), "needs 15 values"),
    ({"rv": 5000.0}, "outside rv_range"),
    ("fastest", "init must be"),
])
def test_bad_init_is_a_clear_error(payne, spectrum, init, match):
    with pytest.raises(ValueError, match=match):
        fit_star(spectrum, payne, init=init)


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_chord_iterations_reach_the_same_map_with_fewer_jacobians(payne, spectrum, multi_start, scale):
    """polish_map keeps the last Jacobian's curvature (chord=True, the default): from a start
    1-1.25 sigma off in Teff, logg and [Fe/H] (the errors include the label error floors: ~420 nats
    above the MAP), and from one 3x as far (~3,300 nats above it), it ends where plain
    Levenberg-Marquardt (a Jacobian every iteration) ends, or higher, with fewer Jacobians.  The far
    start needs the retries from the older curvature with more damping (CHORD_RETRIES): with a
    Jacobian after the first rejection it ran out of its 20 iterations (8 Jacobians)."""
    plain, chord, sigma = _polish_from_afar(payne, spectrum, multi_start, scale)
    assert plain.converged and chord.converged
    assert plain.jacobians == plain.iterations
    assert 1 <= chord.jacobians < plain.jacobians
    assert chord.jacobians < chord.iterations  # some iterations took only a gradient
    # both stop within their convergence tolerance (0.1 nats) of the optimum, so either may be higher
    assert chord.log_posterior > plain.log_posterior - 0.1
    assert np.max(np.abs(chord.theta - plain.theta) / sigma) < 0.35


@pytest.mark.slow
def test_the_polish_takes_no_second_jacobian_at_the_same_point(payne, spectrum, multi_start):
    """A Gaussian prior that pulls [alpha/Fe] far below its box (the polish chases it into the
    sigmoid's tail, where many steps are rejected): every Jacobian after the first is taken at a
    new point, i.e. after an accepted step -- a rejected retry from a point that had its Jacobian
    reuses it with more damping (it used to take the same Jacobian again)."""
    from stellarfit.inference.likelihood import GaussianPrior

    prepared = _prepare(spectrum, payne, priors={"alpha_fe": GaussianPrior(-0.5, 0.05)}, rv_range=(-1000.0, 1000.0),
                        rv_window=50.0, vsini_max=100.0, continuum_degree=2,
                        start={name: multi_start.labels[name]["map"] for name in multi_start.labels})
    problem = prepared.problem
    theta = np.array([multi_start.labels[name]["map"] for name in problem.names])
    result = polish_map(problem, np.clip(theta, problem.lower, problem.upper), max_steps=20)
    assert result.iterations > result.accepted_steps + 1  # rejections happened
    assert 1 <= result.jacobians <= result.accepted_steps + 1
    assert -result.log_posterior < -polish_map(problem, np.clip(theta, problem.lower, problem.upper), max_steps=2).log_posterior


def test_polish_map_checks_its_start(payne, spectrum):
    prepared = _prepare(spectrum, payne, priors=None, rv_range=(-1000.0, 1000.0), rv_window=50.0, vsini_max=100.0,
                        continuum_degree=2)
    with pytest.raises(ValueError, match="start must have shape"):
        polish_map(prepared.problem, np.zeros(4))


def test_the_shipped_transformer_payne_names_its_distilled_fast_path():
    default = sf.load_emulator("default")
    fast = fast_path_emulator(default)
    assert default.metadata["fast_path"] == "default-fast"
    assert fast.model_type == "payne" and fast.label_names == default.label_names
    assert fast.pixel_error is not None and fast.native_resolution == default.native_resolution
    assert fast.metadata["distilled_from"].startswith("default")
    assert fast_path_emulator(default) is fast  # loaded once: its compiled fits are reused
    # both carry label error floors from two-stage fits of held-out Turbospectrum stars (heldout-a);
    # the polished TransformerPayne's are the smaller, label by label, for the main labels
    for emulator in (default, fast):
        floors = emulator.metadata["label_error_floor"]
        assert set(floors) == {*default.label_names, "rv", "vsini"} and all(v >= 0 for v in floors.values())
        assert floors["vsini"] > 0  # vsini is under-covered without one (docs/fitting.md)
        assert emulator.metadata["label_error_floor_source"]["split"] == "heldout-a"
    for name in ("teff", "logg", "fe_h", "mg_fe"):
        assert default.metadata["label_error_floor"][name] < fast.metadata["label_error_floor"][name]


@pytest.mark.slow
def test_two_stage_transformer_payne_fit_of_the_example_star(spectrum):
    """The default TransformerPayne fitted on a CPU through its fast path: close to the truth of the
    held-out example star (Turbospectrum, S/N 60), and at least as close in Teff and [Fe/H] as its
    distilled first stage."""
    result = fit_star(spectrum, sf.load_emulator("default"))
    truth = example_truth()
    assert result.diagnostics["init"]["source"] == "fast path default-fast"
    assert result.diagnostics["laplace"] == "gauss-newton"
    assert 0.8 < result.reduced_chi2 < 1.1
    floor = sf.load_emulator("default").metadata["label_error_floor"]["teff"]
    assert result.labels["teff"]["error"] >= floor > 0
    for name, tolerance in (("teff", 60.0), ("logg", 0.1), ("fe_h", 0.05), ("mg_fe", 0.05), ("rv", 0.2)):
        assert abs(result.labels[name]["value"] - truth[name]) < tolerance, name


def test_cli_init_fast_needs_a_fast_path(capsys):
    from stellarfit.cli.main import main

    assert main(["fit", "example", "--emulator", "payne-default", "--init", "fast"]) == 2
    assert "names no fast path" in capsys.readouterr().err


def test_the_kept_curvature_learns_along_its_steps_from_far_away(payne, spectrum, multi_start):
    """From a start 8x as far as in the test above (~9,000 nats above the MAP), plain
    Levenberg-Marquardt needs a Jacobian per iteration (19 of its 20 on the example star); the chord
    polish, whose kept curvature gets a BFGS correction after every accepted step (CHORD_SECANT),
    converges within the 20 iterations on a quarter of the Jacobians and ends at least as high
    (measured: 17 iterations, 5 Jacobians; plain 19 and 19).  Without the correction it ran out of its
    20 iterations (6 Jacobians, 0.17 nats below plain) on the earlier example file."""
    plain, chord, sigma = _polish_from_afar(payne, spectrum, multi_start, 8.0)
    assert plain.jacobians == plain.iterations >= 15
    assert chord.converged and chord.iterations < 20
    assert chord.jacobians <= plain.jacobians / 2
    assert chord.log_posterior > plain.log_posterior - 0.05
    assert np.max(np.abs(chord.theta - plain.theta) / sigma) < 0.35
