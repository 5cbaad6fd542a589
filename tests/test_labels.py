import numpy as np
import pytest

from stellarfit.labels import Label, LabelSpec, default_label_spec


def solar_labels(**overrides):
    labels = dict(teff=5777.0, logg=4.44, vmic=1.0, fe_h=0.0, alpha_fe=0.0, mg_fe=0.0, si_fe=0.0, ca_fe=0.0,
                  ti_fe=0.0, na_fe=0.0, ni_fe=0.0, cr_fe=0.0, mn_fe=0.0)
    labels.update(overrides)
    return labels


def test_default_spec_names_and_bounds():
    spec = default_label_spec()
    assert spec.names == ("teff", "logg", "vmic", "fe_h", "alpha_fe", "mg_fe", "si_fe", "ca_fe", "ti_fe",
                          "na_fe", "ni_fe", "cr_fe", "mn_fe")
    assert spec["teff"].lower == 4000 and spec["teff"].upper == 7000
    assert spec["fe_h"].lower == -2.5 and spec["fe_h"].upper == 0.5
    assert spec["mg_fe"].offset_from == "alpha_fe" and spec["mg_fe"].offset_halfwidth == 0.4


def test_scale_unscale_round_trip_and_range():
    spec = default_label_spec()
    rng = np.random.default_rng(1)
    array = spec.lower + rng.random((50, len(spec))) * (spec.upper - spec.lower)
    scaled = spec.scale(array)
    assert scaled.min() >= -0.5 and scaled.max() <= 0.5
    np.testing.assert_allclose(spec.unscale(scaled), array, rtol=1e-12)
    assert np.allclose(spec.scale(spec.lower), -0.5) and np.allclose(spec.scale(spec.upper), 0.5)


def test_mapping_to_array_and_errors():
    spec = default_label_spec()
    array = spec.to_array(solar_labels())
    assert array.shape == (13,) and array[0] == 5777.0
    with pytest.raises(KeyError, match="unknown label.*'tef'"):
        spec.to_array(solar_labels(tef=5000))
    labels = solar_labels()
    del labels["logg"]
    with pytest.raises(KeyError, match="missing label.*logg"):
        spec.to_array(labels)
    assert spec.to_array(labels, defaults={"logg": 3.0})[1] == 3.0
    with pytest.raises(ValueError, match="expected"):
        spec.to_array(np.zeros(5))


def test_validate_reports_box_relative_and_nan():
    spec = default_label_spec()
    spec.validate(solar_labels())
    with pytest.raises(ValueError, match=r"teff=8000 K is outside \[4000, 7000\]"):
        spec.validate(solar_labels(teff=8000.0))
    with pytest.raises(ValueError, match="mg_fe differs from alpha_fe by 0.5"):
        spec.validate(solar_labels(alpha_fe=0.0, mg_fe=0.5))
    with pytest.raises(ValueError, match="na_fe"):
        spec.validate(solar_labels(na_fe=0.45))
    with pytest.raises(ValueError, match="fe_h is NaN"):
        spec.validate(solar_labels(fe_h=np.nan))


def test_from_unit_cube_respects_relative_constraints():
    spec = default_label_spec()
    rng = np.random.default_rng(2)
    labels = spec.from_unit_cube(rng.random((2000, len(spec))))
    assert spec.violations(labels) == []
    alpha = labels[:, spec.index("alpha_fe")]
    mg = labels[:, spec.index("mg_fe")]
    assert np.abs(mg - alpha).max() <= 0.4 + 1e-12
    # the offsets really use the allowed range, not a degenerate value
    assert np.ptp(mg - alpha) > 0.7


def test_json_round_trip_and_bad_spec():
    spec = default_label_spec()
    assert LabelSpec.from_json(spec.to_json()) == spec
    with pytest.raises(ValueError, match="not a valid label spec"):
        LabelSpec.from_json([{"name": "teff"}])
    with pytest.raises(ValueError, match="lower < upper"):
        Label("teff", "K", 5000.0, 4000.0)
    with pytest.raises(ValueError, match="duplicate"):
        LabelSpec([Label("a", "", 0, 1), Label("a", "", 0, 1)])


def test_subset_drops_dangling_relative_constraint():
    spec = default_label_spec().subset(["teff", "mg_fe"])
    assert spec.names == ("teff", "mg_fe")
    assert spec["mg_fe"].offset_from is None
