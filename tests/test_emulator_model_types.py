"""The registry of emulator model types and the FittableEmulator protocol: a new model type,
registered in one call, saves, loads and is fitted like the built-in ones
(docs/design/adding_an_emulator.md walks through this file's model)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from _toy_emulator import ToyEmulator
from stellarfit.emulators import Emulator, FittableEmulator, available_model_types, read_emulator, register_model_type
from stellarfit.emulators import model_types
from stellarfit.emulators.base import is_concrete
from stellarfit.emulators.checkpoint import CheckpointError
from stellarfit.emulators.toy import toy_label_spec
from stellarfit.inference import fit_star, forward_model_for
from stellarfit.spectra import ObservedSpectrum
from stellarfit.wavelengths import log_lambda_grid

NATIVE = log_lambda_grid(5000.0, 5100.0, 30_000.0, 3.0)


class _LineDepths(nnx.Module):
    """Scaled labels (B, n_labels) -> line depths (B, n_lines) in (0, 1)."""

    def __init__(self, n_labels: int, n_lines: int, *, rngs: nnx.Rngs):
        self.depths = nnx.Linear(n_labels, n_lines, rngs=rngs)

    def __call__(self, scaled):
        return jax.nn.sigmoid(2.0 * self.depths(scaled) - 1.0)


class LineDepthEmulator(Emulator):
    """Gaussian lines at fixed centres whose depths are a logistic function of a linear map of the labels."""

    model_type = "test_line_depths"
    default_config = {"centres": [], "width": 0.1}  # line centres and Gaussian sigma [A]

    def _complete_config(self, config):
        config["centres"] = [float(c) for c in config["centres"]]
        if not config["centres"]:
            raise ValueError("centres: give the line centres [A]")
        config["width"] = float(config["width"])
        return config

    def _build_module(self, rngs):
        return _LineDepths(self.n_labels, len(self.config["centres"]), rngs=rngs)

    def _prepare_wavelength(self, wavelength):
        """The line profiles (n_lines, n_wavelengths) at ``wavelength`` (None: the native grid)."""
        wavelength = self.wavelength if wavelength is None else wavelength
        centres = np.asarray(self.config["centres"])
        if is_concrete(wavelength):
            offset = np.asarray(wavelength, np.float64)[None, :] - centres[:, None]
            return np.exp(-0.5 * (offset / self.config["width"]) ** 2).astype(np.float32)
        offset = jnp.asarray(wavelength)[None, :] - jnp.asarray(centres, jnp.asarray(wavelength).dtype)[:, None]
        return jnp.exp(-0.5 * (offset / self.config["width"]) ** 2)

    @staticmethod
    def _raw(graphdef, params, scaled, plan):
        depths = nnx.merge(graphdef, params)(scaled)  # (B, n_lines)
        return (1.0 - depths @ plan)[..., None]  # (B, n_wavelengths, 1): normalized flux


@pytest.fixture
def registered(monkeypatch):
    """LineDepthEmulator registered for one test (the registry is restored afterwards)."""
    monkeypatch.setattr(model_types, "_REGISTRY", dict(model_types._REGISTRY))
    assert register_model_type(LineDepthEmulator) is LineDepthEmulator
    return LineDepthEmulator


def _line_emulator(cls=LineDepthEmulator):
    centres = np.linspace(5010.0, 5090.0, 24)
    return cls(toy_label_spec(), NATIVE, {"centres": centres.tolist()}, resolution=30_000.0, seed=3,
               metadata={"name": "lines"})


def test_the_built_in_types_are_registered_and_unknown_ones_refused(tmp_path):
    from stellarfit.emulators import PayneEmulator, TransformerPayneEmulator
    from stellarfit.emulators.base import MODEL_TYPES

    assert available_model_types()[:2] == ["payne", "transformer_payne"]
    assert model_types.get_model_type("payne") is PayneEmulator
    assert MODEL_TYPES["transformer_payne"] is TransformerPayneEmulator
    register_model_type(PayneEmulator)  # the same class again: nothing changes
    with pytest.raises(ValueError, match="'payne' is already registered"):
        register_model_type("payne", LineDepthEmulator)
    with pytest.raises(KeyError, match="unknown emulator model type 'test_line_depths'"):
        model_types.get_model_type("test_line_depths")
    with pytest.raises(TypeError, match="needs an Emulator subclass with a model_type"):
        register_model_type(object)
    _line_emulator().save(str(tmp_path / "lines"))  # saved, but its type is not registered: not readable
    with pytest.raises(CheckpointError, match="unknown model type 'test_line_depths'.*register_model_type"):
        read_emulator(tmp_path / "lines")


def test_emulators_and_analytic_models_satisfy_the_protocol(payne):
    assert isinstance(payne, FittableEmulator) and isinstance(ToyEmulator(), FittableEmulator)
    assert isinstance(_line_emulator(), FittableEmulator)
    assert not isinstance(object(), FittableEmulator)


def test_a_registered_model_type_saves_loads_and_fits(registered, tmp_path):
    emulator = _line_emulator(registered)
    assert "test_line_depths" in available_model_types()
    emulator.save(str(tmp_path / "lines"))
    loaded = read_emulator(tmp_path / "lines")
    assert type(loaded) is LineDepthEmulator and loaded.config == emulator.config
    truth = np.array([0.6, 0.3, -0.4])
    np.testing.assert_array_equal(loaded.predict(truth), emulator.predict(truth))
    # an observation of the loaded emulator's own spectrum at R 20,000, RV 30 km/s, S/N 300
    wavelength = log_lambda_grid(5008.0, 5092.0, 20_000.0, 3.0)
    model = forward_model_for(loaded, wavelength, 20_000.0, rv_range=(29.0, 31.0))
    normalized = np.asarray(model(jnp.asarray(truth, jnp.float32), 30.0, 0.0), dtype=np.float64)
    continuum = 40.0 * (1.0 + 0.03 * (wavelength - 5050.0) / 40.0)
    noise = continuum / 300.0
    flux = continuum * normalized + np.random.default_rng(1).normal(size=wavelength.size) * noise
    spectrum = ObservedSpectrum.from_arrays(wavelength, flux, sigma=noise, resolution=20_000.0)
    result = fit_star(spectrum, loaded, n_starts=2, adam_steps=50, rv_range=(-100.0, 100.0), vsini_max=20.0,
                      continuum_degree=2)
    assert result.labels["rv"]["value"] == pytest.approx(30.0, abs=0.5)
    for name, value in zip(loaded.label_names, truth):
        row = result.labels[name]
        assert 0 < row["error"] < 0.05 and abs(row["value"] - value) < 4 * row["error"], (name, row)
