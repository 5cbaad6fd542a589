"""stellarfit compare: the same spectra fitted with several emulators (compare_emulators,
observe_grid, the CLI)."""

import jax.numpy as jnp
import numpy as np
import pytest

from _toy_emulator import NATIVE, NATIVE_R, TOY_SPEC, ToyEmulator, toy_flux
from stellarfit.cli.main import main as cli_main
from stellarfit.forward import ForwardModel
from stellarfit.grids import SpectralGrid
from stellarfit.inference import compare_emulators, observe_grid
from stellarfit.inference.compare import comparison_table
from stellarfit.spectra import ObservedSpectrum
from stellarfit.wavelengths import log_lambda_grid

RESOLUTION = 22_500.0
FE_SHIFT = 0.1


class ShiftedToy(ToyEmulator):
    """The toy emulator with its metallicity scale off by FE_SHIFT dex: it fits [Fe/H] FE_SHIFT low."""

    metadata = {"name": "toy-shifted"}

    def flux_fn(self, wavelength):
        wavelength = jnp.asarray(wavelength)
        return lambda labels: toy_flux(labels + jnp.array([0.0, 0.0, FE_SHIFT]), wavelength)


def _spectra(n=6, seed=2):
    rng = np.random.default_rng(seed)
    wavelength = log_lambda_grid(5170.0, 5330.0, RESOLUTION, 3.0)
    truths, spectra = [], []
    for _ in range(n):
        labels = np.array([rng.uniform(5000.0, 6200.0), rng.uniform(3.0, 4.5), rng.uniform(-1.2, 0.0)])
        rv = rng.uniform(-60.0, 60.0)
        model = ForwardModel(toy_flux, NATIVE, NATIVE_R, wavelength, RESOLUTION, rv_range=(rv - 20.0, rv + 20.0))
        clean = 500.0 * np.asarray(model(jnp.asarray(labels), rv, 0.0), dtype=np.float64)
        sigma = clean.mean() / 150.0
        flux = clean + rng.normal(size=clean.size) * sigma
        spectra.append(ObservedSpectrum.from_arrays(wavelength, flux, ivar=np.full(clean.size, sigma**-2), resolution=RESOLUTION))
        truths.append([*labels, rv])
    return spectra, np.array(truths), [*TOY_SPEC.names, "rv"]


#: batch_size=1: one small program per emulator (65 s -> 42 s for the fixture; batching is checked in test_fit_star.py)
OPTIONS = dict(n_starts=2, adam_steps=100, rv_range=(-100.0, 100.0), vsini_max=20.0, batch_size=1)
#: one instance each, so that the tests share their compiled fits (forward models are cached per emulator)
TOY, SHIFTED = ToyEmulator(), ShiftedToy()


@pytest.fixture(scope="module")
def compared():
    spectra, truths, names = _spectra()
    outside = ObservedSpectrum.from_arrays(np.linspace(6000.0, 6100.0, 400), np.ones(400), ivar=np.ones(400),
                                           resolution=RESOLUTION)  # no pixel the emulators reach: fails
    truths = np.vstack([truths, truths[:1]])
    document = compare_emulators([*spectra, outside], {"toy": TOY, "shifted": SHIFTED},
                                 truths=truths, names=names, **OPTIONS)
    return document, truths, names


@pytest.mark.slow  # its fixture fits 14 spectra (45-75 s); the path without truths runs by default (below)
def test_compare_emulators_with_truths_reports_each_emulators_bias_and_calibration(compared):
    document, truths, names = compared
    assert document["emulators"] == ["toy", "shifted"] and document["with_truths"] and document["n_spectra"] == 7
    for name in ("toy", "shifted"):
        result = document["results"][name]
        # the spectrum outside the emulators' window is one failure each; the rest are fitted
        assert result["n_fitted"] == 6 and result["n_failed"] == 1
        assert result["failures"][0]["index"] == 6 and result["values"][6] is None
        fe = result["parameters"]["fe_h"]
        values = np.array([row["fe_h"] for row in result["values"][:6]])
        delta = values - truths[:6, names.index("fe_h")]
        assert fe["bias"] == pytest.approx(np.median(delta))
        assert fe["scatter"] == pytest.approx(1.4826 * np.median(np.abs(delta - np.median(delta))))
        assert fe["median_error"] > 0 and fe["median_crb"] > 0 and fe["n"] == 6
        assert "bias" in result["parameters"]["rv"] and "bias" not in result["parameters"]["vsini"]  # no rv truth for vsini
    toy, shifted = (document["results"][name]["parameters"]["fe_h"] for name in ("toy", "shifted"))
    assert abs(toy["bias"]) < 3 * toy["median_error"]
    assert shifted["bias"] == pytest.approx(-FE_SHIFT, abs=3 * shifted["median_error"])
    assert shifted["bias"] < toy["bias"] - 0.05
    assert toy["inside_95"] > 0.5 and shifted["inside_68"] < toy["inside_68"]  # the shifted fits miss their truths
    pair = document["pairs"]["toy vs shifted"]["fe_h"]
    assert pair["n"] == 6 and pair["median_difference"] == pytest.approx(FE_SHIFT, abs=0.03)
    assert pair["median_abs_z"] > 2.0 and document["pairs"]["toy vs shifted"]["teff"]["median_abs_z"] < pair["median_abs_z"]
    text = comparison_table(document)
    assert "toy / shifted" in text and "fe_h" in text and "shifted failed on spectrum 6" in text


@pytest.mark.slow
def test_compare_emulators_without_truths_and_bad_input():
    spectra, _, names = _spectra(n=2, seed=5)
    document = compare_emulators(spectra, {"toy": TOY, "shifted": SHIFTED}, **OPTIONS)
    assert not document["with_truths"]
    row = document["results"]["toy"]["parameters"]["teff"]
    assert set(row) == {"median_value", "median_error", "median_crb", "n"}
    assert document["pairs"]["toy vs shifted"]["fe_h"]["median_difference"] == pytest.approx(FE_SHIFT, abs=0.03)
    with pytest.raises(ValueError, match="truths must have shape"):
        compare_emulators(spectra, {"toy": TOY}, truths=np.zeros((3, 4)), names=names)
    with pytest.raises(ValueError, match="no spectra"):
        compare_emulators([], {"toy": TOY})
    with pytest.raises(ValueError, match="method must be"):
        compare_emulators(spectra, {"toy": TOY}, method="blackjax")


def _toy_grid(n=5):
    rng = np.random.default_rng(0)
    labels = np.column_stack([rng.uniform(5000, 6000, n), rng.uniform(3, 4.5, n), rng.uniform(-1, 0, n)])
    flux = np.array([np.asarray(toy_flux(jnp.asarray(row), jnp.asarray(NATIVE))) for row in labels])
    return SpectralGrid(labels, np.asarray(NATIVE), flux, TOY_SPEC, metadata={"engine": {"resolution": NATIVE_R}})


def test_observe_grid_draws_observations_with_their_truths():
    grid = _toy_grid()
    spectra, truths, names = observe_grid(grid, [1, 3], snr=80.0, resolution=20_000.0, seed=4)
    assert names == [*TOY_SPEC.names, "rv", "vsini"] and truths.shape == (2, 5) and len(spectra) == 2
    np.testing.assert_array_equal(truths[:, :3], grid.labels[[1, 3]])
    assert np.all(np.abs(truths[:, 3]) <= 150.0) and np.all((truths[:, 4] >= 0) & (truths[:, 4] <= 8.0))
    spectrum = spectra[0]
    assert spectrum.wavelength[0] >= NATIVE[0] + 10.0 and spectrum.wavelength[-1] <= NATIVE[-1] - 10.0
    assert np.median(spectrum.flux * np.sqrt(spectrum.ivar)) == pytest.approx(80.0, rel=0.3)  # S/N per pixel
    again, truths_again, _ = observe_grid(grid, [1, 3], snr=80.0, resolution=20_000.0, seed=4)
    np.testing.assert_array_equal(again[1].flux, spectra[1].flux)
    np.testing.assert_array_equal(truths_again, truths)
    with pytest.raises(ValueError, match="above the grid's native"):
        observe_grid(grid, [0], resolution=2 * NATIVE_R)
    with pytest.raises(ValueError, match="must lie inside the grid"):
        observe_grid(grid, [0], window=(4000.0, 5200.0))
    with pytest.raises(ValueError, match="grid indices"):
        observe_grid(grid, [99])
    bare = SpectralGrid(grid.labels, grid.wavelength, grid.flux, TOY_SPEC)
    with pytest.raises(ValueError, match="records no resolution"):
        observe_grid(bare, [0])


def test_cli_compare_usage_errors(capsys, tmp_path):
    assert cli_main(["compare", "--emulators", "payne-default", "default-fast"]) == 2
    assert "not both and not neither" in capsys.readouterr().err
    assert cli_main(["compare", "example", "--emulators", "payne-default"]) == 2
    assert "at least two emulators" in capsys.readouterr().err
    assert cli_main(["compare", "example", "--emulators", "payne-default", "payne-default"]) == 2
    assert "twice" in capsys.readouterr().err
    assert cli_main(["compare", "--grid", str(tmp_path / "none.h5"), "--emulators", "payne-default", "default-fast"]) == 2
    assert "cannot read grid" in capsys.readouterr().err
    assert cli_main(["compare", "nothere.fits", "--emulators", "payne-default", "default-fast"]) == 2
    assert "nothere.fits" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_compare_fits_the_example_with_two_shipped_emulators(capsys, tmp_path):
    import json

    out = tmp_path / "compare.json"
    assert cli_main(["compare", "example", "--emulators", "payne-default", "default-fast", "--json", "--no-progress",
                     "--out", str(out)]) == 0
    document = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == document
    assert document["emulators"] == ["payne-default", "default-fast"] and not document["with_truths"]
    for name in document["emulators"]:
        assert document["results"][name]["n_fitted"] == 1
        assert 5400.0 < document["results"][name]["values"][0]["teff"] < 6000.0
    pair = document["pairs"]["payne-default vs default-fast"]
    assert set(pair) >= {"teff", "logg", "fe_h", "rv", "vsini"} and pair["rv"]["median_abs_z"] < 3.0
