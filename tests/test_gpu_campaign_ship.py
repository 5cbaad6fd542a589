"""`scripts/gpu_campaign.py ship`: what a re-shipped emulator keeps and what it drops."""

import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_campaign.py"


def _campaign(monkeypatch, root):
    spec = importlib.util.spec_from_file_location("gpu_campaign_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # ship into a scratch package tree, never into the real one
    monkeypatch.setattr(module, "HERE", root / "scripts")
    return module


def test_ship_records_the_fast_path_and_drops_old_floors(tmp_path, monkeypatch, payne):
    from stellarfit.emulators import load_emulator
    from stellarfit.emulators.registry import SHIPPED_EMULATORS

    assert payne.metadata.get("label_error_floor"), "payne-default ships with floors (this test needs an emulator with some)"
    work = tmp_path / "work"
    work.mkdir()
    payne.save(str(work / "candidate"))
    rng = np.random.default_rng(1)
    spec = payne.label_spec
    labels = (spec.lower + rng.uniform(0.45, 0.55, (3, len(spec.lower))) * (spec.upper - spec.lower)).astype(np.float32)
    flux = np.asarray(payne.predict(labels)) + 0.01
    np.savez(work / "heldout.npz", labels=labels, flux=flux, wavelength=np.asarray(payne.wavelength))
    (work / "template.md").write_text("held-out MAE {heldout_mae:.4f} on {n_heldout} spectra\n")
    campaign = _campaign(monkeypatch, tmp_path)

    args = argparse.Namespace(workdir=str(work), emulator="candidate", name="default", heldout="heldout.npz",
                              provenance=str(work / "template.md"), fast_path="default-fast")
    campaign.cmd_ship(args)
    target = tmp_path / "src" / "stellarfit" / "data" / "emulators" / SHIPPED_EMULATORS["default"]
    shipped = load_emulator(str(target))
    assert shipped.metadata["fast_path"] == "default-fast"
    assert shipped.metadata["shipped_name"] == "default"
    # floors measured for another emulator are not carried over
    assert "label_error_floor" not in shipped.metadata and "label_error_floor_source" not in shipped.metadata
    assert abs(shipped.metadata["metrics"]["heldout_mae"] - 0.01) < 1e-4
    assert "held-out MAE 0.0100 on 3 spectra" in (target / "PROVENANCE.md").read_text()
    assert json.loads((target / "emulator.json").read_text())["metadata"]["fast_path"] == "default-fast"

    # without a fast path none is recorded
    campaign.cmd_ship(argparse.Namespace(**{**vars(args), "name": "payne-default", "fast_path": None}))
    other = load_emulator(str(tmp_path / "src" / "stellarfit" / "data" / "emulators" / SHIPPED_EMULATORS["payne-default"]))
    assert "fast_path" not in other.metadata


def test_ship_defaults_the_fast_path_of_default(monkeypatch, tmp_path):
    campaign = _campaign(monkeypatch, tmp_path)
    seen = {}
    monkeypatch.setattr(campaign, "cmd_ship", lambda args: seen.update(vars(args)))
    for name, expected in (("default", "default-fast"), ("payne-default", None)):
        monkeypatch.setattr("sys.argv", ["gpu_campaign.py", "ship", "--name", name, "--provenance", "p.md",
                                         "--workdir", str(tmp_path / "w")])
        campaign.main()
        assert seen["fast_path"] == expected
