"""MapSettings and NutsSettings: they check their fields, fit_star's individual keywords resolve into
them in one place (a setting given both ways is refused), and both paths fit alike."""

import dataclasses
import inspect

import jax.numpy as jnp
import numpy as np
import pytest

from _toy_emulator import NATIVE, NATIVE_R, ToyEmulator, toy_flux
import stellarfit
from stellarfit.forward import ForwardModel
from stellarfit.inference import MapSettings, NutsSettings, fit_star, fit_stars
from stellarfit.inference.settings import _Default, resolve_settings
from stellarfit.spectra import ObservedSpectrum
from stellarfit.wavelengths import log_lambda_grid

RESOLUTION = 22_500.0
TRUTH = np.array([5600.0, 3.8, -0.7])
QUICK = dict(rv_range=(-100.0, 100.0), vsini_max=20.0, continuum_degree=2)


def toy_spectrum(rv: float = 10.0, seed: int = 5) -> ObservedSpectrum:
    wavelength = log_lambda_grid(5170.0, 5330.0, RESOLUTION, 3.0)
    model = ForwardModel(toy_flux, NATIVE, NATIVE_R, wavelength, RESOLUTION, rv_range=(rv - 20.0, rv + 20.0))
    clean = 50.0 * np.asarray(model(jnp.asarray(TRUTH), rv, 0.0), dtype=np.float64)
    sigma = clean.mean() / 200.0 * np.ones_like(clean)
    flux = clean + np.random.default_rng(seed).normal(size=clean.size) * sigma
    return ObservedSpectrum.from_arrays(wavelength, flux, ivar=1.0 / sigma**2, resolution=RESOLUTION)


@pytest.mark.parametrize(("settings", "message"), [
    (dict(n_starts=0), "MapSettings.n_starts must be an integer >= 1"),
    (dict(n_starts=True), "MapSettings.n_starts must be an integer >= 1"),
    (dict(adam_steps=-1), "MapSettings.adam_steps must be an integer >= 0"),
    (dict(polish_steps=2.5), "MapSettings.polish_steps must be an integer >= 0"),
    (dict(init="fastest"), r"MapSettings.init must be None, one of \('auto', 'fast', 'encoder'\)"),
])
def test_map_settings_check_their_fields(settings, message):
    with pytest.raises(ValueError, match=message):
        MapSettings(**settings)


@pytest.mark.parametrize(("settings", "message"), [
    (dict(num_warmup=0), "NutsSettings.num_warmup must be an integer >= 1"),
    (dict(num_samples=1), "NutsSettings.num_samples must be an integer >= 2"),
    (dict(num_chains=2.0), "NutsSettings.num_chains must be an integer >= 1"),
    (dict(max_tree_depth=16), r"NutsSettings.max_tree_depth must be an integer in \[1, 15\]"),
    (dict(target_accept=1.0), "NutsSettings.target_accept must lie strictly between 0 and 1"),
    (dict(target_accept="high"), "NutsSettings.target_accept must be a number"),
    (dict(mass_matrix="unit"), "NutsSettings.mass_matrix must be one of"),
    (dict(chain_method="threads"), "NutsSettings.chain_method must be one of"),
    (dict(sample_with="fastest"), "NutsSettings.sample_with must be one of"),
    (dict(z_transform="tanh"), "NutsSettings.z_transform must be one of"),
])
def test_nuts_settings_check_their_fields(settings, message):
    with pytest.raises(ValueError, match=message):
        NutsSettings(**settings)


def test_settings_are_frozen_values_exported_at_the_top():
    assert stellarfit.MapSettings is MapSettings and stellarfit.NutsSettings is NutsSettings
    assert {"MapSettings", "NutsSettings"} <= set(stellarfit.__all__)
    assert MapSettings(n_starts=4) == MapSettings(n_starts=4) != MapSettings(n_starts=5)
    assert NutsSettings(num_chains=2) == NutsSettings(num_chains=2) != NutsSettings()
    assert len({MapSettings(), MapSettings(), NutsSettings(), NutsSettings()}) == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        MapSettings().n_starts = 3
    start = np.array([5600.0, 3.8, -0.7, 10.0, 5.0])
    # an array start compares by identity (an array has no single truth value)
    assert MapSettings(init=start) == MapSettings(init=start) != MapSettings(init=start.copy())
    assert NutsSettings(num_warmup=10).sampler_options() == dict(
        num_warmup=10, num_samples=500, num_chains=4, max_tree_depth=8, target_accept=0.8, mass_matrix="laplace-pooled")


@pytest.mark.parametrize("function", [fit_star, fit_stars])
def test_keyword_defaults_are_the_settings_defaults(function):
    """The keywords' defaults are read from the dataclasses: one source for both."""
    fields = {field.name: field.default for cls in (MapSettings, NutsSettings) for field in dataclasses.fields(cls)}
    parameters = inspect.signature(function).parameters
    marked = {name: p.default for name, p in parameters.items() if isinstance(p.default, _Default)}
    assert set(marked) == set(fields) - ({"chain_method"} if function is fit_stars else set())
    for name, default in marked.items():
        assert default.value == fields[name] and repr(default) == repr(fields[name]), name
    assert resolve_settings(None, None, marked) == (MapSettings(), NutsSettings())
    assert resolve_settings(None, None, {**marked, "n_starts": 3, "num_chains": 2}) == (
        MapSettings(n_starts=3), NutsSettings(num_chains=2))


def test_a_setting_given_both_ways_is_refused_before_fitting():
    # checked before the spectrum or the emulator is touched
    with pytest.raises(ValueError, match=r"n_starts given both as keyword\(s\) and in map_settings"):
        fit_star(None, None, n_starts=4, map_settings=MapSettings(n_starts=8))
    with pytest.raises(ValueError, match="n_starts given both"):  # agreeing values too: say it once
        fit_star(None, None, n_starts=4, map_settings=MapSettings(n_starts=4))
    with pytest.raises(ValueError, match=r"num_chains, num_warmup given both as keyword\(s\) and in nuts_settings"):
        fit_stars([], None, method="nuts", num_warmup=10, num_chains=2, nuts_settings=NutsSettings())
    with pytest.raises(TypeError, match="map_settings must be a MapSettings"):
        fit_star(None, None, map_settings={"n_starts": 4})
    with pytest.raises(ValueError, match="NutsSettings.num_chains must be an integer >= 1"):
        fit_star(None, None, "nuts", num_chains=0)


@pytest.mark.slow
def test_keywords_and_settings_fit_alike():
    spectrum = toy_spectrum()
    emulator = ToyEmulator()
    # the settings of test_nuts_settings_reach_the_sampler's MAPs: the same compiled programs
    by_keywords = fit_star(spectrum, emulator, n_starts=2, adam_steps=50, **QUICK)
    by_settings = fit_star(spectrum, emulator, map_settings=MapSettings(n_starts=2, adam_steps=50), **QUICK)
    # the settings were used, not the defaults (8 starts)
    assert by_keywords.diagnostics["n_starts"] == by_settings.diagnostics["n_starts"] == 2
    for name in by_keywords.names:
        assert by_settings.labels[name] == by_keywords.labels[name], name
    assert abs(by_settings.labels["teff"]["value"] - TRUTH[0]) < 5 * by_settings.labels["teff"]["error"]
    batched = fit_stars([spectrum], emulator, map_settings=MapSettings(n_starts=2, adam_steps=50), **QUICK)
    keyword_batched = fit_stars([spectrum], emulator, n_starts=2, adam_steps=50, **QUICK)
    assert batched[0].diagnostics["n_starts"] == 2
    for name in by_keywords.names:
        assert batched[0].labels[name] == keyword_batched[0].labels[name], name


def test_nuts_settings_reach_the_sampler(monkeypatch):
    """Both ways, the sampler is called with the same settings (the sampling itself is left out)."""
    from stellarfit.inference import nuts

    calls = []

    class Stop(Exception):
        pass

    def record(problem, theta, covariance, **options):
        calls.append(options)
        raise Stop

    monkeypatch.setattr(nuts, "sample_numpyro", record)
    monkeypatch.setattr(nuts, "sample_blackjax", record)
    spectrum, emulator = toy_spectrum(), ToyEmulator()
    sampler = dict(num_warmup=20, num_samples=10, num_chains=2, max_tree_depth=5, target_accept=0.9,
                   mass_matrix="diagonal", chain_method="sequential", z_transform="probit")
    for method in ("nuts", "blackjax"):
        with pytest.raises(Stop):
            fit_star(spectrum, emulator, method, n_starts=2, adam_steps=50, seed=3, **sampler, **QUICK)
        with pytest.raises(Stop):
            fit_star(spectrum, emulator, method, map_settings=MapSettings(n_starts=2, adam_steps=50), seed=3,
                     nuts_settings=NutsSettings(**sampler), **QUICK)
    expected = {key: value for key, value in sampler.items() if key != "z_transform"}
    assert calls == [{**expected, "seed": 3}] * 4


def test_one_core_workers_run_chains_one_after_another():
    from stellarfit.inference._batch_backends import _one_core_options

    settings = NutsSettings(num_chains=2)
    assert _one_core_options("nuts", {"nuts_settings": settings})["nuts_settings"] == dataclasses.replace(
        settings, chain_method="sequential")
    vectorized = {"nuts_settings": NutsSettings(chain_method="vectorized")}
    assert _one_core_options("blackjax", vectorized) is vectorized
    assert _one_core_options("nuts", {})["chain_method"] == "sequential"
    assert _one_core_options("map", {"nuts_settings": settings}) == {"nuts_settings": settings}
