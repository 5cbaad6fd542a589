"""`stellarfit train` and `stellarfit evaluate` on a small grid file."""

import json

import numpy as np

from stellarfit.cli.main import main
from stellarfit.emulators.toy import make_toy_grid
from stellarfit.grids import SpectralGrid


def _grid_file(tmp_path):
    toy = make_toy_grid(120, 80, seed=3)
    grid = SpectralGrid(toy.labels, toy.wavelength, toy.flux, toy.label_spec, continuum=10.0**toy.log10_continuum,
                        metadata={"engine": {"engine": "toy", "resolution": 20000.0}})
    path = tmp_path / "toy.h5"
    grid.write(path)
    return path


def test_train_then_evaluate(tmp_path, capsys):
    grid = _grid_file(tmp_path)
    out = tmp_path / "emu"
    assert main(["train", "--grid", str(grid), "--out", str(out), "--steps", "300", "--batch-size", "32",
                 "--learning-rate", "3e-3", "--no-progress", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_train"] == 96 and summary["final_step"] == 300
    assert main(["evaluate", "--emulator", str(out), "--grid", str(grid), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["n_spectra"] == 12 and document["n_pixels"] == 80
    # a trained emulator beats predicting the mean spectrum on held-out spectra
    flux = SpectralGrid.read(grid).flux
    baseline = float(np.mean(np.abs(flux - flux.mean(axis=0))))
    assert document["mae"] < 0.6 * baseline
    # the emulator's error per pixel, measured on the validation split, comes with it (fits add it to the noise)
    from stellarfit.emulators import TrainingData, load_emulator

    grid_data = SpectralGrid.read(grid)
    emulator = load_emulator(str(out))
    validation = TrainingData.from_grid(grid_data, grid_data.split((0.8, 0.1, 0.1), seed=0)[1])
    expected = np.sqrt(np.mean((emulator.predict(validation.labels, check_bounds=False) - validation.flux) ** 2, axis=0))
    assert emulator.pixel_error is not None and np.allclose(emulator.pixel_error, expected, rtol=1e-4, atol=1e-7)
    # refuses to overwrite; clear errors for bad files
    assert main(["train", "--grid", str(grid), "--out", str(out), "--steps", "1"]) == 2
    assert main(["train", "--grid", str(grid), "--out", str(tmp_path / "t"), "--model", "transformer-payne",
                 "--activation-sharpness", "100", "--steps", "1"]) == 2
    assert "--activation-sharpness applies to" in capsys.readouterr().err
    bad = tmp_path / "bad.h5"
    bad.write_text("not hdf5")
    assert main(["evaluate", "--emulator", str(out), "--grid", str(bad)]) == 2
    assert "cannot read grid" in capsys.readouterr().err


def test_train_init_finetunes_a_pretrained_emulator(tmp_path, capsys):
    from stellarfit.emulators import load_emulator
    from stellarfit.emulators._params import flatten_params

    grid = _grid_file(tmp_path)
    parent = tmp_path / "parent"
    assert main(["train", "--grid", str(grid), "--out", str(parent), "--steps", "200", "--batch-size", "32",
                 "--learning-rate", "3e-3", "--no-progress", "--json"]) == 0
    parent_mae = json.loads(capsys.readouterr().out)["best_val_mae"]
    for mode in ("full", "lora"):
        child = tmp_path / f"child_{mode}"
        assert main(["train", "--grid", str(grid), "--out", str(child), "--init", str(parent), "--finetune", mode,
                     "--steps", "150", "--learning-rate", "1e-3", "--no-progress", "--json"]) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["mode"] == mode and summary["init"] == str(parent)
        # fine-tuning starts from the parent: never worse than the parent on validation (best-step checkpoint)
        assert summary["best_val_mae"] <= parent_mae * 1.02
        emulator = load_emulator(str(child))
        assert emulator.metadata["finetuned_from"]["mode"] == mode
        assert emulator.pixel_error is not None and emulator.pixel_error.shape == (80,)
        # LoRA adapters are merged on save: the saved emulator has the parent's architecture
        assert emulator.config.get("lora_rank", 0) == 0
        assert not any("lora" in name for name in flatten_params(emulator.params))
    assert main(["train", "--grid", str(grid), "--out", str(tmp_path / "x"), "--init", str(tmp_path / "missing")]) == 2
    assert "cannot load --init" in capsys.readouterr().err


def test_evaluate_on_an_empty_part_names_it(tmp_path, capsys):
    toy = make_toy_grid(4, 80, seed=5)
    grid = SpectralGrid(toy.labels, toy.wavelength, toy.flux, toy.label_spec, continuum=10.0**toy.log10_continuum,
                        metadata={"engine": {"engine": "toy", "resolution": 20000.0}})
    path = tmp_path / "four.h5"
    grid.write(path)
    _, _, test = grid.split((0.8, 0.1, 0.1), seed=0)
    assert len(test) == 0  # four spectra leave nothing for the test part
    out = tmp_path / "emu"
    assert main(["train", "--grid", str(_grid_file(tmp_path)), "--out", str(out), "--steps", "5", "--no-progress",
                 "--activation-sharpness", "50"]) == 0
    capsys.readouterr()
    from stellarfit.emulators import load_emulator

    assert load_emulator(str(out)).config["activation_sharpness"] == 50.0
    assert main(["evaluate", "--emulator", str(out), "--grid", str(path)]) == 2
    err = capsys.readouterr().err
    assert "test part" in err and "--part all" in err
    assert main(["evaluate", "--emulator", str(out), "--grid", str(path), "--part", "all", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_spectra"] == 4


def test_train_transformer_payne_from_the_command_line(tmp_path, capsys):
    """The TransformerPayne path: its architecture options reach the model and its training runs."""
    from stellarfit.emulators import load_emulator

    grid = _grid_file(tmp_path)
    out = tmp_path / "tp"
    assert main(["train", "--grid", str(grid), "--out", str(out), "--model", "transformer-payne", "--dim", "32",
                 "--layers", "1", "--tokens", "4", "--n-wavelengths", "16", "--steps", "20", "--batch-size", "8",
                 "--no-continuum", "--no-progress", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["model"] == "transformer-payne" and summary["final_step"] == 20
    emulator = load_emulator(str(out))
    assert emulator.model_type == "transformer_payne"
    assert emulator.config["dim"] == 32 and emulator.config["n_layers"] == 1 and emulator.config["n_tokens"] == 4
    assert np.isfinite(emulator.predict(SpectralGrid.read(grid).labels[:2], check_bounds=False)).all()
