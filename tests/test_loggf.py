"""Astrophysical log gf corrections: applied to the line they describe, refused for another list."""

import dataclasses
import json

import numpy as np
import pytest

from stellarfit.synth.linelist import load_default_linelist, read_turbospectrum_linelist
from stellarfit.synth.loggf import apply_loggf_corrections, load_astrophysical_linelist, load_loggf_corrections


def test_shipped_corrections_change_exactly_their_lines():
    base, astro = load_default_linelist(), load_astrophysical_linelist()
    rows = load_loggf_corrections()["lines"]
    index = np.array([r["index"] for r in rows])
    assert len(rows) > 2000 and np.unique(index).size == index.size
    changed = np.flatnonzero(np.asarray(astro.log_gf) != np.asarray(base.log_gf))
    np.testing.assert_array_equal(changed, np.sort(index))
    np.testing.assert_allclose(np.asarray(astro.log_gf)[index] - np.asarray(base.log_gf)[index], [r["dloggf"] for r in rows],
                               atol=1e-12)
    np.testing.assert_array_equal(astro.wavelength_air, base.wavelength_air)
    np.testing.assert_array_equal(astro.excitation_potential, base.excitation_potential)
    # the calibrated lines are mostly Fe-peak lines made weaker (docs/validation/real_stars.md)
    fe = np.array([r["atomic_number"] == 26 for r in rows])
    assert np.median([r["dloggf"] for r, f in zip(rows, fe) if f]) < 0


def test_corrections_made_for_another_list_are_refused(tmp_path):
    base = load_default_linelist()
    document = load_loggf_corrections()
    shifted = dict(document, lines=[dict(r) for r in document["lines"]])
    shifted["lines"][5]["index"] += 1  # the row now points at a neighbour of its line
    with pytest.raises(ValueError, match="another line list"):
        apply_loggf_corrections(base, shifted)
    other = dataclasses.replace(base, log_gf=np.asarray(base.log_gf) + 0.01)
    with pytest.raises(ValueError, match="another line list"):
        apply_loggf_corrections(other, document)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"lines": [{"index": 3}]}))
    with pytest.raises(ValueError, match="not a log gf corrections file"):
        load_loggf_corrections(bad)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_loggf_corrections(tmp_path / "missing.json")


def test_turbospectrum_engine_reads_the_corrected_list_by_name(tmp_path, monkeypatch):
    from stellarfit.synth.engines import make_engine

    monkeypatch.setenv("STELLARFIT_CACHE", str(tmp_path))
    engine = make_engine("turbospectrum", linelist="astro")
    assert "astrophysical log gf" in engine.metadata()["linelist"]
    written = read_turbospectrum_linelist(engine.linelist_path)
    np.testing.assert_allclose(written.log_gf, load_astrophysical_linelist().log_gf, atol=6e-4)
    plain = make_engine("turbospectrum")
    assert "astrophysical" not in plain.metadata()["linelist"] and plain.linelist_path != engine.linelist_path
