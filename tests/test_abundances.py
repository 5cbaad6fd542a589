import numpy as np
import pytest

from stellarfit.synth.abundances import SOLAR_ABUNDANCES, abundance_matrix, abundances_from_labels, atomic_number


def test_solar_scale_key_values():
    assert SOLAR_ABUNDANCES.shape == (92,)
    assert SOLAR_ABUNDANCES[atomic_number("Fe") - 1] == 7.50
    assert SOLAR_ABUNDANCES[atomic_number("Mg") - 1] == 7.60
    assert SOLAR_ABUNDANCES[atomic_number("H") - 1] == 12.00


def test_pattern_from_labels():
    fe, mg, o, na, ca, ba = (atomic_number(s) - 1 for s in ("Fe", "Mg", "O", "Na", "Ca", "Ba"))
    a = abundances_from_labels({"fe_h": -1.0, "alpha_fe": 0.4, "mg_fe": 0.1, "na_fe": -0.2, "teff": 5000.0})
    assert a[fe] == pytest.approx(6.50)
    assert a[o] == pytest.approx(8.69 - 1.0 + 0.4)        # alpha element without its own label
    assert a[ca] == pytest.approx(6.34 - 1.0 + 0.4)
    assert a[mg] == pytest.approx(7.60 - 1.0 + 0.1)        # own total [Mg/Fe] replaces [alpha/Fe]
    assert a[na] == pytest.approx(6.24 - 1.0 - 0.2)
    assert a[ba] == pytest.approx(2.18 - 1.0)
    assert a[0] == 12.0 and a[1] == 10.93                  # H, He untouched


def test_matrix_is_linear_map():
    names = ["teff", "fe_h", "alpha_fe", "ti_fe"]
    solar, matrix = abundance_matrix(names)
    labels = np.array([5000.0, -0.5, 0.3, 0.2])
    expected = abundances_from_labels(dict(zip(names, labels)))
    np.testing.assert_allclose(solar + matrix @ labels, expected)
    assert np.all(matrix[:, 0] == 0)
    with pytest.raises(ValueError, match="fe_h"):
        abundance_matrix(["fe_fe"])
