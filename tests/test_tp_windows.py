"""One TransformerPayne over several windows: joined grids, the split by design row, the split of the
network into a composite, `stellarfit train --grid A --grid B`, and a joint fit with it (tiny scale)."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

import stellarfit as sf
from stellarfit.cli.main import main
from stellarfit.emulators import (
    CompositeEmulator,
    PayneEmulator,
    TrainingData,
    TransformerPayneEmulator,
    join_windows,
    load_emulator,
    match_rows,
    split_by_design_row,
    split_windows,
    transformer_payne_config,
)
from stellarfit.emulators.toy import toy_label_spec, toy_spectra
from stellarfit.grids import SpectralGrid, split_indices
from stellarfit.inference import forward_model_for
from stellarfit.labels import Label, LabelSpec
from stellarfit.wavelengths import log_lambda_grid

from _window_toy import observe

NATIVE_R = 30_000.0
WINDOWS = ((5000.0, 5020.0), (6300.0, 6320.0))
TINY = transformer_payne_config(dim=32, n_layers=1, n_tokens=4)


def _labels(n, seed=3):
    spec = toy_label_spec()
    return spec.lower + np.random.default_rng(seed).uniform(size=(n, len(spec))) * (spec.upper - spec.lower)


def _window_data(labels, window, continuum=True):
    wavelength = log_lambda_grid(window[0], window[1], NATIVE_R, 3.0)
    flux, cont = toy_spectra(labels, wavelength)
    return TrainingData(labels, flux, wavelength, cont if continuum else None, toy_label_spec())


def _grid_file(path, labels, window, keep=None):
    data = _window_data(labels, window)
    grid = SpectralGrid(data.labels, data.wavelength, data.flux, data.label_spec, continuum=10.0**data.log10_continuum,
                        metadata={"engine": {"engine": "toy", "resolution": NATIVE_R}})
    if keep is not None:
        grid = grid.subset(keep)  # rows lost to failed syntheses; design_index keeps their place in the design
    grid.write(path)
    return path


# ------------------------------------------------------------------------------------------------ join
def test_join_matches_rows_by_labels_and_drops_the_missing():
    labels = _labels(12)
    blue = _window_data(labels, WINDOWS[0])
    red = _window_data(labels, WINDOWS[1]).subset([0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11][::-1])  # star 4 failed, other order
    red.labels = red.labels * (1.0 + 1e-12)  # the same design read back through other arithmetic
    with pytest.warns(UserWarning, match=r"11 stars are in every window grid; dropped 1 of 12 rows"):
        joined = join_windows([red, blue])  # any order: pixels come out in wavelength order
    assert joined.n_spectra == 11 and joined.n_pixels == blue.n_pixels + red.n_pixels
    np.testing.assert_array_equal(joined.wavelength, np.concatenate([blue.wavelength, red.wavelength]))
    rows = match_rows([blue, red]).rows
    np.testing.assert_array_equal(rows[:, 0], [0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11])
    np.testing.assert_array_equal(red.labels[rows[:, 1]], labels[rows[:, 0]] * (1.0 + 1e-12))
    # each row's pixels are its star's in both windows (rows in the first part's order: red's)
    np.testing.assert_allclose(joined.flux[:, :blue.n_pixels], _window_data(joined.labels, WINDOWS[0]).flux, atol=1e-6)
    np.testing.assert_allclose(joined.flux[:, blue.n_pixels:], _window_data(joined.labels, WINDOWS[1]).flux, atol=1e-6)
    assert joined.log10_continuum is not None and joined.label_spec == toy_label_spec()
    # the continuum only where every window has it
    assert join_windows([blue, _window_data(labels, WINDOWS[1], continuum=False)]).log10_continuum is None


def test_join_refuses_overlap_other_labels_and_strangers():
    labels = _labels(6)
    blue = _window_data(labels, WINDOWS[0])
    with pytest.raises(ValueError, match="overlap in wavelength"):
        join_windows([blue, _window_data(labels, (5010.0, 5030.0))])
    other = LabelSpec([Label("temp", "", 0.0, 1.0), Label("metal", "", -2.0, 1.0), Label("shift", "", -1.0, 1.0)])
    red = _window_data(labels, WINDOWS[1])
    red.label_spec = other
    with pytest.raises(ValueError, match="different labels.*metal"):
        join_windows([blue, red])
    with pytest.raises(ValueError, match="no star is in every window grid"):
        join_windows([blue, _window_data(_labels(6, seed=9), WINDOWS[1])])


def test_split_by_design_row_keeps_each_star_in_one_part():
    # no failures: exactly the grid's own split
    for n in (10, 37):
        for got, want in zip(split_by_design_row(np.arange(n), n, seed=4), split_indices(n, seed=4)):
            np.testing.assert_array_equal(got, want)
    # failures differ per window: a star's part depends on its design row alone
    blue_rows, red_rows = np.delete(np.arange(40), [3, 17]), np.delete(np.arange(40), [5])
    blue_parts = split_by_design_row(blue_rows, 40, seed=1)
    red_parts = split_by_design_row(red_rows, 40, seed=1)
    for b, r in zip(blue_parts, red_parts):
        assert set(blue_rows[b]) - {5} == set(red_rows[r]) - {3, 17}


# ------------------------------------------------------------------------------------------------ split
def test_split_windows_predicts_what_the_joined_network_predicts():
    labels = _labels(12)
    joined = join_windows([_window_data(labels, w) for w in WINDOWS])
    emulator = TransformerPayneEmulator.create(joined.label_spec, joined.wavelength, TINY, resolution=NATIVE_R,
                                               with_continuum=True, seed=1)
    emulator = emulator.with_pixel_error(np.linspace(0.001, 0.002, emulator.n_pixels))
    composite = split_windows(emulator)  # windows found from the gap
    assert isinstance(composite, CompositeEmulator) and len(composite.members) == 2
    np.testing.assert_array_equal(composite.wavelength, emulator.wavelength)
    split = composite.members[0].n_pixels
    expected = emulator.predict(labels[:3])
    np.testing.assert_allclose(composite.predict(labels[:3]), expected, rtol=1e-6, atol=1e-6)
    for member, where in zip(composite.members, (slice(0, split), slice(split, None))):
        np.testing.assert_allclose(member.predict(labels[:3]), expected[:, where], rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(member.pixel_error, emulator.pixel_error[where])
        assert member.params["head_out"]["kernel"] is emulator.params["head_out"]["kernel"]  # shared, not copied
    flux, continuum = composite.predict_with_continuum(labels[:2])
    np.testing.assert_allclose(continuum, emulator.predict_with_continuum(labels[:2])[1], rtol=1e-6)
    # the fitter refuses the gapped grid itself, and The Payne cannot be split
    with pytest.raises(ValueError, match="have gaps.*split_windows"):
        forward_model_for(emulator, log_lambda_grid(5002.0, 5018.0, 20_000.0, 2.5), 20_000.0, rv_range=(-50.0, 50.0))
    payne = PayneEmulator.create(joined.label_spec, joined.wavelength, {"hidden": [4]}, resolution=NATIVE_R)
    with pytest.raises(TypeError, match="one unit per pixel.*one per window"):
        split_windows(payne)


# ------------------------------------------------------------------------------------------------ CLI + fit
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny TransformerPayne trained from the command line on two windows' grids of one design (a star
    missing from the red one), saved as a composite."""
    tmp = tmp_path_factory.mktemp("tpwindows")
    labels = _labels(60)
    blue = _grid_file(tmp / "blue.h5", labels, WINDOWS[0])
    red = _grid_file(tmp / "red.h5", labels, WINDOWS[1], keep=np.delete(np.arange(60), 7))
    out = tmp / "tp"
    code = main(["train", "--grid", str(blue), "--grid", str(red), "--out", str(out), "--model", "transformer-payne",
                 "--dim", "32", "--layers", "1", "--tokens", "4", "--n-wavelengths", "32", "--steps", "50",
                 "--batch-size", "8", "--learning-rate", "3e-3", "--no-progress", "--json"])
    return tmp, blue, red, out, code


def test_train_on_two_windows_writes_a_composite(trained, capsys):
    tmp, blue, red, out, code = trained
    assert code == 0 and (out / "composite.json").is_file()
    composite = load_emulator(out)
    assert isinstance(composite, CompositeEmulator) and composite.metadata["shared_network"]
    assert [m.model_type for m in composite.members] == ["transformer_payne"] * 2
    assert composite.members[0].metadata["training_split"]["by"] == "design_row"
    assert composite.metadata["windows"][0][0] == pytest.approx(5000.0)
    for grid in (blue, red):  # evaluate per window, on the stars held out of training in every window
        assert main(["evaluate", "--emulator", str(out), "--grid", str(grid), "--json"]) == 0
        document = json.loads(capsys.readouterr().out)
        assert np.isfinite(document["mae"]) and document["n_pixels"] == SpectralGrid.read(grid).n_pixels
    # The Payne refuses several windows, with the way that works
    assert main(["train", "--grid", str(blue), "--grid", str(red), "--out", str(tmp / "p"), "--steps", "1"]) == 2
    assert "one Payne per window" in capsys.readouterr().err


def test_crb_command_reports_each_windows_bounds(trained, capsys):
    tmp, _, _, out, _ = trained
    composite = load_emulator(out)
    labels = [f"--label={name}={0.5 * (lo + hi)}" for name, lo, hi in
              zip(composite.label_names, composite.label_spec.lower, composite.label_spec.upper)]
    assert main(["crb", "--emulator", str(out), *labels, "--resolution", "20000", "--snr", "50", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    by_window = document["by_window"]
    assert list(by_window)[0] == "joint" and len(by_window) == 3
    for window in list(by_window)[1:]:
        for name, joint in by_window["joint"].items():
            assert joint <= by_window[window][name] * (1 + 1e-6), (window, name)
    assert main(["crb", "--emulator", str(out), *labels, "--resolution", "20000"]) == 0
    assert "bound of each window alone" in capsys.readouterr().out


def test_the_composite_models_a_two_window_spectrum(trained):
    """What a fit builds: one forward model per window on its observed pixels, from the shared network."""
    composite = load_emulator(trained[3])
    theta = np.array([0.5, 0.1, -0.2])
    spectrum = observe(composite.members, theta=theta, rv=5.0, snr=100.0, resolution=20_000.0)
    model = forward_model_for(composite, spectrum.wavelength, 20_000.0, rv_range=(-50.0, 50.0), vsini_max=0.0)
    assert len(model.members) == 2
    flux = np.asarray(model(jnp.asarray(theta, jnp.float32), 5.0, 0.0))
    for index in model.indices:
        assert index.size > 50 and np.isfinite(flux[index]).all() and flux[index].min() < 0.99


@pytest.mark.slow
def test_map_fit_of_a_two_window_spectrum_uses_both(trained):
    """~40 s on a 2-core CPU, nearly all of it compiling the MAP's programs for two TransformerPayne members."""
    out = trained[3]
    composite = load_emulator(out)
    theta = np.array([0.5, 0.1, -0.2])
    spectrum = observe(composite.members, theta=theta, rv=5.0, snr=100.0, resolution=20_000.0)
    # one start near the truth keeps the compilations few (a multi-start search compiles ~3x longer on a CPU)
    start = {"temp": 0.45, "metal": 0.15, "shift": -0.15, "rv": 3.0}
    result = sf.fit_star(spectrum, composite, "map", init=start, polish_steps=5, continuum_degree=1,
                         rv_range=(-50.0, 50.0), vsini_max=0.0)
    used = result.diagnostics["windows"]["used"]
    assert [round(w["window"][0]) for w in used] == [5000, 6300] and all(w["n_pixels"] > 50 for w in used)
    assert all(np.isfinite(result.labels[name]["value"]) for name in composite.label_names)
    # the spectrum was simulated from this emulator: the MAP fits it to the noise and finds the truth
    assert result.reduced_chi2 < 2.0
    for name, value in zip(composite.label_names, theta):
        assert abs(result.labels[name]["value"] - value) < 5.0 * result.labels[name]["error"], (name, result.labels[name])


def test_one_grid_trains_as_before(tmp_path, capsys):
    labels = _labels(30)
    grid = _grid_file(tmp_path / "blue.h5", labels, WINDOWS[0])
    out = tmp_path / "one"
    assert main(["train", "--grid", str(grid), "--out", str(out), "--model", "transformer-payne", "--dim", "32",
                 "--layers", "1", "--tokens", "4", "--n-wavelengths", "16", "--steps", "3", "--batch-size", "4",
                 "--no-progress", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_train"] == 24
    emulator = load_emulator(out)
    assert emulator.model_type == "transformer_payne" and emulator.metadata["grid"] == str(grid)
    assert np.isfinite(np.asarray(emulator.flux_fn()(jnp.asarray(labels[0])))).all()
