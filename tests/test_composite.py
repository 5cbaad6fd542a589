"""Composite emulators: several windows' emulators used as one, and fits of all windows at once."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

import stellarfit as sf
from stellarfit.emulators import CompositeEmulator, PayneEmulator, load_emulator
from stellarfit.forward import CompositeForwardModel, ObservationOutsideEmulatorError
from stellarfit.inference import forward_model_for
from stellarfit.inference._composite import continuum_segments, segment_degrees
from stellarfit.labels import Label, LabelSpec
from stellarfit.wavelengths import log_lambda_grid

from _window_toy import SPEC, TRUTH, WINDOWS, WindowToyEmulator, observe, toy_members

FIT = dict(n_starts=2, adam_steps=60, continuum_degree=1, rv_range=(-200.0, 200.0), vsini_max=20.0)


def _payne_members():
    """Two tiny random Paynes (real, savable Emulators) over two windows with the same labels."""
    return [PayneEmulator.create(SPEC, log_lambda_grid(lo, lo + 10.0, 30_000.0, 3.0), {"hidden": [8]},
                                 resolution=30_000.0, seed=seed).replace(metadata={"name": f"payne-{lo:.0f}"})
            for seed, (lo, _) in enumerate(WINDOWS)]


# ---------------------------------------------------------------------------------------------- (e) refusals
def test_members_with_other_labels_are_refused():
    other = LabelSpec([Label("teff", "K", 4000.0, 7000.0), Label("logg", "dex", 1.0, 5.0), Label("fe_h", "dex", -2.0, 0.5)])
    members = [WindowToyEmulator(WINDOWS[0], 0), WindowToyEmulator(WINDOWS[1], 1, spec=other)]
    with pytest.raises(ValueError, match="different labels.*fe_h"):
        CompositeEmulator(members)
    renamed = LabelSpec([Label("teff", "K", 4000.0, 7000.0), Label("logg", "dex", 1.0, 5.0), Label("m_h", "dex", -2.5, 0.5)])
    with pytest.raises(ValueError, match="same label spec"):
        CompositeEmulator([WindowToyEmulator(WINDOWS[0], 0), WindowToyEmulator(WINDOWS[1], 1, spec=renamed)])


def test_overlapping_members_are_refused():
    members = [WindowToyEmulator((5000.0, 5100.0), 0), WindowToyEmulator((5090.0, 5190.0), 1)]
    with pytest.raises(ValueError, match="overlap in wavelength.*5090"):
        CompositeEmulator(members)
    with pytest.raises(ValueError, match="at least one"):
        CompositeEmulator([])


# ---------------------------------------------------------------------------------------------- (a) predictions
def test_composite_predictions_are_each_members_on_its_pixels():
    members = _payne_members()
    composite = CompositeEmulator(members[::-1])  # kept in wavelength order whatever the order given
    assert composite.windows == tuple((float(m.wavelength[0]), float(m.wavelength[-1])) for m in members)
    assert composite.label_spec == SPEC and composite.n_pixels == sum(m.n_pixels for m in members)
    labels = np.array([[5500.0, 4.0, -0.2], [6200.0, 2.5, 0.1]])
    native = composite.predict(labels)
    split = members[0].n_pixels
    np.testing.assert_array_equal(native[:, :split], members[0].predict(labels))
    np.testing.assert_array_equal(native[:, split:], members[1].predict(labels))
    # chosen wavelengths, interleaved on purpose: each goes to the member whose window holds it
    wavelength = np.array([6302.0, 5001.0, 6305.5, 5007.25])
    flux = composite.predict(labels, wavelength)
    np.testing.assert_allclose(flux[:, [1, 3]], members[0].predict(labels, wavelength[[1, 3]]), rtol=1e-6)
    np.testing.assert_allclose(flux[:, [0, 2]], members[1].predict(labels, wavelength[[0, 2]]), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(composite.flux_fn(wavelength)(jnp.asarray(labels[0]))), flux[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(composite.member_of(np.array([4000.0, 5005.0, 6305.0, 5200.0])), [-1, 0, 1, -1])
    with pytest.raises(ValueError, match="outside every member's window"):
        composite.predict(labels, np.array([5005.0, 5500.0]))


def test_composite_forward_model_is_each_members_on_its_pixels():
    members = toy_members()
    composite = CompositeEmulator(members)
    spectrum = observe(members, gap=True)
    options = dict(rv_range=(-200.0, 200.0), vsini_max=20.0)
    model = forward_model_for(composite, spectrum.wavelength, 20_000.0, **options)
    assert isinstance(model, CompositeForwardModel) and len(model.members) == 2
    assert forward_model_for(composite, spectrum.wavelength, 20_000.0, **options) is model  # cached
    theta = jnp.asarray(TRUTH, jnp.float32)
    joined = np.asarray(model(theta, 12.0, 3.0))
    for member, index in zip(members, model.indices):
        alone = forward_model_for(member, spectrum.wavelength[index], 20_000.0, **options)
        np.testing.assert_array_equal(joined[index], np.asarray(alone(theta, 12.0, 3.0)))
    outside = model.member_index < 0
    assert outside.sum() > 100 and np.all(joined[outside] == 1.0) and not model.covered[outside].any()
    # a continuum per arm and window: arm 0 holds window 1 and the gap (which joins its segment), arm 1 window 2;
    # one arm over both windows gets a polynomial per window
    segments = continuum_segments(model, spectrum.arm)
    np.testing.assert_array_equal(segments, np.asarray(spectrum.arm))
    one_arm = continuum_segments(model, np.zeros(spectrum.wavelength.size, int))
    assert set(one_arm.tolist()) == {0, 1} and np.all(one_arm[model.member_index >= 0] == model.member_index[model.member_index >= 0])
    assert segment_degrees((1, 3), np.array([0, 0, 0, 1]), np.array([0, 1, 1, 2])) == (1, 1, 3)
    # the RV search's path (rest frame, broadening, shift) agrees with the fused call
    stepwise = np.asarray(model.shift_to_observed(model.broaden(model.rest_frame(theta), 3.0), 12.0))
    np.testing.assert_allclose(stepwise[model.covered], joined[model.covered], atol=2e-3)


def test_per_pixel_resolution_reaches_each_member():
    members = toy_members()
    spectrum = observe(members)
    resolution = np.where(spectrum.wavelength < 6000.0, 15_000.0, 24_000.0)  # one R per arm, as two spectrographs
    model = forward_model_for(CompositeEmulator(members), spectrum.wavelength, resolution, rv_range=(-200.0, 200.0))
    assert [m.observed_resolution for m in model.members] == [15_000.0, 24_000.0]


# ---------------------------------------------------------------------------------------------- (b) save / load
@pytest.mark.parametrize("how", ["copy", "reference"])
def test_save_and_load(tmp_path, how):
    members = _payne_members()
    for i, member in enumerate(members):
        member.save(tmp_path / f"window_{i}")
    composite = CompositeEmulator.from_directories([tmp_path / "window_0", tmp_path / "window_1"],
                                                   metadata={"name": "two-windows"})
    composite.save(tmp_path / "composite", members=how)
    document = json.loads((tmp_path / "composite" / "composite.json").read_text())
    assert document["format"] == "stellarfit-composite-emulator" and len(document["members"]) == 2
    loaded = load_emulator(tmp_path / "composite")
    assert isinstance(loaded, CompositeEmulator) and loaded.metadata["name"] == "two-windows"
    assert loaded.windows == composite.windows and loaded.label_spec == composite.label_spec
    labels = np.array([[5100.0, 3.0, -1.0]])
    np.testing.assert_array_equal(loaded.predict(labels), composite.predict(labels))
    with pytest.raises(FileExistsError):
        composite.save(tmp_path / "composite", members=how)
    with pytest.raises(ValueError, match="cannot be referenced"):
        CompositeEmulator(members).save(tmp_path / "unsourced", members="reference")


# ---------------------------------------------------------------------------------------------- (d) outside
def test_a_spectrum_outside_every_window_is_refused():
    members = toy_members()
    composite = CompositeEmulator(members)
    for lo, hi in ((7000.0, 7100.0), (5600.0, 5700.0)):  # beyond both windows, and between them
        wavelength = log_lambda_grid(lo, hi, 20_000.0, 2.5)
        spectrum = sf.ObservedSpectrum.from_arrays(wavelength, np.ones(wavelength.size), ivar=np.full(wavelength.size, 1e4),
                                                   resolution=20_000.0)
        with pytest.raises(ObservationOutsideEmulatorError, match="any window of the composite.*5000.0-5100.0 A"):
            sf.fit_star(spectrum, composite, "map", **FIT)


# ---------------------------------------------------------------------------------------------- (c) joint fits
@pytest.fixture(scope="module")
def fits():
    members = toy_members()
    composite = CompositeEmulator(members)
    spectrum = observe(members, gap=True, snr=60.0, seed=3)
    joint = sf.fit_star(spectrum, composite, "map", **FIT)
    alone = [sf.fit_star(spectrum, member, "map", **FIT) for member in members]
    return spectrum, joint, alone


def test_joint_map_fit_recovers_the_truth_with_smaller_errors(fits):
    spectrum, joint, alone = fits
    for i, name in enumerate(SPEC.names):
        row = joint.labels[name]
        assert abs(row["value"] - TRUTH[i]) < 4.0 * row["error"], (name, row)
        # the point of a joint fit: every label better determined than from either window alone
        assert all(row["error"] < fit.labels[name]["error"] for fit in alone), (name, row, [f.labels[name] for f in alone])
        assert all(row["crb"] < fit.labels[name]["crb"] for fit in alone)
    assert abs(joint.labels["rv"]["value"] - 12.0) < 4.0 * joint.labels["rv"]["error"]
    assert "fit_failed" not in joint.flag_names and joint.diagnostics["converged"]


def test_joint_fit_reports_its_windows_and_masks_the_rest(fits):
    spectrum, joint, _ = fits
    windows = joint.diagnostics["windows"]
    assert [w["window"][0] for w in windows["used"]] == [5000.0, 6300.0]
    gap = (spectrum.wavelength > 5120.0) & (spectrum.wavelength < 6280.0)
    assert windows["n_pixels_outside"] >= gap.sum() > 100
    assert sum(w["n_pixels"] for w in windows["used"]) == joint.n_pixels
    assert np.all(joint.ivar[gap] == 0)  # kept in the result, masked in the fit
    summary = joint.summary()
    assert "used windows: 5000-5100 (" in summary and "6300-6400 (" in summary
    json.dumps(joint.to_dict())


def test_cramer_rao_of_a_composite_is_tighter_than_either_window():
    members = toy_members()
    composite = CompositeEmulator(members)
    labels = dict(zip(SPEC.names, TRUTH))
    joint = sf.cramer_rao(composite, labels, resolution=20_000.0, snr=50.0)
    alone = [sf.cramer_rao(member, labels, resolution=20_000.0, snr=50.0) for member in members]
    assert joint.wavelength.size == sum(a.wavelength.size for a in alone)
    for i in range(len(SPEC)):
        assert joint.sigma[i] < min(a.sigma[i] for a in alone)


def test_bounds_by_window_say_which_window_constrains_which_label(tmp_path):
    from stellarfit.reports import crb_report

    members = toy_members()
    # the second window's lines all of the kind whose depth depends on Teff and [Fe/H] only: no logg there
    members[1].kind = np.full_like(members[1].kind, 2)
    composite = CompositeEmulator(members)
    labels = dict(zip(SPEC.names, TRUTH))
    results = sf.cramer_rao_by_window(composite, labels, resolution=20_000.0, snr=50.0)
    assert list(results) == ["joint", "5000-5100", "6300-6400"]
    joint, blue, red = (results[k] for k in results)
    for name in SPEC.names:
        i = joint.names.index(name)
        assert joint.sigma[i] <= min(blue.sigma[i], red.sigma[i]) * (1 + 1e-6), name
    logg = joint.names.index("logg")
    # logg comes from the blue window alone; the red one barely knows it
    assert blue.sigma[logg] < 1.05 * joint.sigma[logg]
    assert red.sigma[logg] > 10.0 * joint.sigma[logg]
    with pytest.raises(TypeError, match="several windows"):
        sf.cramer_rao_by_window(members[0], labels, resolution=20_000.0)
    report = crb_report(composite, labels, tmp_path / "crb.html", snr=50.0, resolution=20_000.0,
                        snr_values=[50.0], resolution_values=[20_000.0])
    assert set(report["by_window"]) == {"joint", "5000-5100", "6300-6400"}
    assert report["by_window"]["6300-6400"]["logg"] > 10.0 * report["by_window"]["joint"]["logg"]
    assert "Which window constrains which label" in (tmp_path / "crb.html").read_text()


@pytest.mark.slow
def test_joint_nuts_fit_samples_all_windows():
    members = toy_members()
    spectrum = observe(members, snr=60.0, seed=3)
    result = sf.fit_star(spectrum, CompositeEmulator(members), "nuts", num_warmup=150, num_samples=150, num_chains=2,
                         chain_method="sequential", **FIT)
    assert result.samples.shape == (2, 150, 5) and result.diagnostics["divergences"] == 0
    for i, name in enumerate(SPEC.names):
        row = result.labels[name]
        assert abs(row["value"] - TRUTH[i]) < 4.0 * row["error"] and row["error"] < 1.5 * row["crb"], (name, row)
    assert "used windows: 5000-5100" in result.summary()
