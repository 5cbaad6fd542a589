"""Emulator files: round trip, and clear errors for wrong schema, labels or arrays."""

from __future__ import annotations

import json
import os

from pathlib import Path

import numpy as np
import pytest

from stellarfit.emulators import (
    CheckpointError,
    PayneEmulator,
    TransformerPayneEmulator,
    load_emulator,
    read_emulator,
    save_emulator,
)
from stellarfit.emulators.registry import available_emulators, shipped_emulator_path
from stellarfit.labels import Label, LabelSpec

SPEC = LabelSpec([Label("teff", "K", 4000.0, 7000.0), Label("logg", "dex", 1.0, 5.0), Label("fe_h", "dex", -2.5, 0.5)])
WAVE = np.geomspace(5000.0, 5005.0, 24)
LABELS = np.array([[5000.0, 3.0, -1.0], [6500.0, 4.5, 0.2]])


@pytest.fixture(scope="module", params=["payne", "transformer_payne"])
def saved(request, tmp_path_factory):
    if request.param == "payne":
        emu = PayneEmulator.create(SPEC, WAVE, {"hidden": [8, 8]}, with_continuum=True, resolution=30000, seed=3)
    else:
        emu = TransformerPayneEmulator.create(SPEC, WAVE, {"dim": 32, "n_layers": 1, "n_tokens": 2, "head_dim": 16}, with_continuum=True, resolution=30000, seed=3)
    emu.metadata.update({"training_grid_hash": "abc123", "metrics": {"val_mae": 0.01}})
    path = str(tmp_path_factory.mktemp(request.param) / "emu")
    save_emulator(emu, path)
    return emu, path


def _rewrite(path: str, tmp_path, edit) -> str:
    """Copy the emulator at ``path`` to tmp_path with its JSON edited by ``edit(meta)``."""
    out = tmp_path / "edited"
    out.mkdir()
    with open(os.path.join(path, "emulator.json")) as handle:
        meta = json.load(handle)
    edit(meta)
    (out / "emulator.json").write_text(json.dumps(meta))
    with open(os.path.join(path, "arrays.npz"), "rb") as handle:
        (out / "arrays.npz").write_bytes(handle.read())
    return str(out)


def test_round_trip_identical_outputs(saved):
    emu, path = saved
    loaded = load_emulator(path)
    assert type(loaded) is type(emu)
    assert loaded.label_spec == SPEC and loaded.native_resolution == 30000
    assert loaded.config == emu.config
    assert loaded.metadata["training_grid_hash"] == "abc123" and loaded.metadata["metrics"]["val_mae"] == 0.01
    np.testing.assert_array_equal(loaded.wavelength, WAVE)
    f0, c0 = emu.predict_with_continuum(LABELS)
    f1, c1 = loaded.predict_with_continuum(LABELS)
    np.testing.assert_array_equal(f0, f1)
    np.testing.assert_array_equal(c0, c1)
    # plain npz + JSON: readable without pickle, with the documented keys
    with np.load(os.path.join(path, "arrays.npz"), allow_pickle=False) as data:
        assert "wavelength" in data.files and any(name.startswith("params/") for name in data.files)
    with open(os.path.join(path, "emulator.json")) as handle:
        meta = json.load(handle)
    for key in ("schema_version", "model_type", "config", "label_spec", "wavelength_coverage", "native_resolution", "training_grid_hash", "metrics"):
        assert key in meta
    assert meta["wavelength_coverage"] == [WAVE[0], WAVE[-1]]


def test_existing_directory_needs_overwrite(saved):
    emu, path = saved
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_emulator(emu, path)


def test_wrong_schema_version(saved, tmp_path):
    _, path = saved
    newer = _rewrite(path, tmp_path, lambda m: m.update(schema_version=99))
    with pytest.raises(CheckpointError, match="schema version 99.*upgrade stellarfit"):
        read_emulator(newer)


def test_not_an_emulator_file(saved, tmp_path):
    _, path = saved
    other = _rewrite(path, tmp_path, lambda m: m.update(format="something-else"))
    with pytest.raises(CheckpointError, match="not a stellarfit emulator"):
        read_emulator(other)
    with pytest.raises(FileNotFoundError, match="emulator.json is missing"):
        read_emulator(str(tmp_path))


def test_expected_labels_mismatch(saved):
    _, path = saved
    other = LabelSpec([Label("teff", "K", 4000.0, 7000.0), Label("logg", "dex", 1.0, 5.0), Label("mg_fe", "dex", -1.0, 1.0)])
    with pytest.raises(CheckpointError, match=r"missing \['mg_fe'\], unexpected \['fe_h'\]"):
        load_emulator(path, label_spec=other)
    reordered = LabelSpec([SPEC["logg"], SPEC["teff"], SPEC["fe_h"]])
    with pytest.raises(CheckpointError, match="different order"):
        load_emulator(path, label_spec=reordered)
    wider = LabelSpec([Label("teff", "K", 3000.0, 7000.0), SPEC["logg"], SPEC["fe_h"]])
    with pytest.raises(CheckpointError, match="different bounds"):
        load_emulator(path, label_spec=wider)
    assert load_emulator(path, label_spec=SPEC).label_spec == SPEC


def test_inconsistent_labels_in_file(saved, tmp_path):
    _, path = saved
    bad = _rewrite(path, tmp_path, lambda m: m.update(label_names=["teff", "logg", "mg_fe"]))
    with pytest.raises(CheckpointError, match="disagree with the label spec"):
        read_emulator(bad)


def test_label_spec_that_does_not_fit_the_weights(saved, tmp_path):
    _, path = saved

    def drop_label(meta):
        meta["label_spec"] = meta["label_spec"][:2]
        meta["label_names"] = meta["label_names"][:2]

    bad = _rewrite(path, tmp_path, drop_label)
    with pytest.raises(CheckpointError, match="shape"):
        read_emulator(bad)


def test_missing_array(saved, tmp_path):
    _, path = saved
    out = tmp_path / "missing"
    out.mkdir()
    with np.load(os.path.join(path, "arrays.npz"), allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    dropped = sorted(name for name in arrays if name.startswith("params/"))[0]
    del arrays[dropped]
    np.savez(out / "arrays.npz", **arrays)
    with open(os.path.join(path, "emulator.json")) as handle:
        (out / "emulator.json").write_text(handle.read())
    with pytest.raises(CheckpointError, match="arrays missing.*" + dropped.replace("/", ".")):
        read_emulator(str(out))


def test_registry_names_and_paths(saved):
    _, path = saved
    assert load_emulator(path).n_parameters > 0
    with pytest.raises(FileNotFoundError, match="neither an emulator directory nor a shipped"):
        load_emulator("no-such-emulator")
    with pytest.raises(KeyError, match="no shipped emulator"):
        shipped_emulator_path("nope")
    # the shipped emulators are in the package: the TransformerPayne and its distilled fast path under
    # two names each, The Payne, and The Payne of the astrophysical-log-gf physics (for real spectra)
    assert shipped_emulator_path("default") == shipped_emulator_path("transformer-payne-default")
    assert shipped_emulator_path("default").endswith("transformer_payne_default")
    assert shipped_emulator_path("default-fast") == shipped_emulator_path("payne-distilled-default")
    assert set(available_emulators()) == {"default", "transformer-payne-default", "payne-default", "default-fast",
                                          "payne-distilled-default", "payne-astro"}
    # together small enough to ship (the emulators issue: ~30 MB for the three of the default physics,
    # plus one Payne of the calibrated physics)
    total = sum(f.stat().st_size for name in ("default", "payne-default", "default-fast")
                for f in Path(shipped_emulator_path(name)).iterdir())
    assert total < 31e6
    assert sum(f.stat().st_size for f in Path(shipped_emulator_path("payne-astro")).iterdir()) < 12e6
