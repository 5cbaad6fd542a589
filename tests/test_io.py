"""stellarfit._io: one JSON helper (to_jsonable) and one atomic writer for every file the package writes."""

import dataclasses
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from stellarfit._io import atomic_path, atomic_write, default_file_mode, to_jsonable, write_json_atomic


@dataclasses.dataclass
class _Point:
    x: float
    tags: tuple


def test_to_jsonable_makes_numpy_and_nested_values_json_types():
    value = {
        "f32": np.float32(1.5), "i64": np.int64(7), "flag": np.bool_(True), "arr": np.arange(3, dtype=np.int16),
        "nested": {"list": [np.float64(0.25), (np.int32(1), "a")], np.int64(3): "numpy key", (1, 2): "tuple key"},
        "path": Path("/tmp/x.fits"), "set": {3, 1, 2}, "point": _Point(np.float32(2.0), (1, None)), "none": None,
    }
    out = to_jsonable(value)
    assert out == {
        "f32": 1.5, "i64": 7, "flag": True, "arr": [0, 1, 2],
        "nested": {"list": [0.25, [1, "a"]], 3: "numpy key", "(1, 2)": "tuple key"},
        "path": "/tmp/x.fits", "set": [1, 2, 3], "point": {"x": 2.0, "tags": [1, None]}, "none": None,
    }
    assert type(out["f32"]) is float and type(out["i64"]) is int and type(out["flag"]) is bool
    assert type(next(iter(k for k in out["nested"] if k == 3))) is int
    json.dumps(out, allow_nan=False)  # strict JSON


def test_to_jsonable_non_finite_floats_as_asked():
    value = [np.nan, np.float32(np.inf), -np.inf, 1.0, np.array([np.nan, 2.0])]
    assert to_jsonable(value) == [None, None, None, 1.0, [None, 2.0]]  # strict JSON (the default)
    assert to_jsonable(value, non_finite="tag") == [
        {"$float": "nan"}, {"$float": "inf"}, {"$float": "-inf"}, 1.0, [{"$float": "nan"}, 2.0]]
    kept = to_jsonable(value, non_finite="keep")
    assert np.isnan(kept[0]) and kept[1] == np.inf and kept[2] == -np.inf and np.isnan(kept[4][0])
    with pytest.raises(ValueError, match="non_finite must be one of"):
        to_jsonable(1.0, non_finite="zero")


def test_to_jsonable_values_of_no_json_type():
    thing = object()
    assert to_jsonable({"a": thing})["a"] is thing  # "keep": json refuses it later
    assert to_jsonable({"a": thing}, other="str")["a"] == str(thing)
    with pytest.raises(TypeError, match="cannot be stored as JSON"):
        to_jsonable({"a": [thing]}, other="error")
    with pytest.raises(ValueError, match="other must be one of"):
        to_jsonable(1, other="drop")


def test_the_earlier_helpers_are_to_jsonable():
    from stellarfit.grids._format import _json_default
    from stellarfit.results.catalog import _clean
    from stellarfit.results.fitfile import _decode, _encode, _json_safe

    assert _json_safe({"a": np.float32(np.nan), "b": [np.int8(2)]}) == {"a": None, "b": [2]}
    assert _clean(np.float64(np.inf)) is None and _clean(np.int32(4)) == 4
    encoded = _encode({"x": np.array([1.0, np.nan]), "p": Path("a")})
    assert encoded == {"x": [1.0, {"$float": "nan"}], "p": "a"}
    assert np.isnan(_decode(json.loads(json.dumps(encoded)))["x"][1])
    # grid metadata keeps NaN (as before: its hashes and files stay the same) and refuses the unknown
    assert json.dumps({"a": np.float32(np.nan)}, default=_json_default) == '{"a": NaN}'
    with pytest.raises(TypeError, match="cannot be stored as JSON"):
        json.dumps({"a": object()}, default=_json_default)


def test_atomic_write_replaces_the_file_whole(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    assert atomic_write(target, lambda handle: handle.write(b"new contents")) == target
    assert target.read_bytes() == b"new contents"
    assert os.listdir(tmp_path) == ["out.bin"]
    assert stat.S_IMODE(target.stat().st_mode) == default_file_mode()  # not mkstemp's 0o600


def test_atomic_write_that_raises_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")

    def half(handle):
        handle.write(b'{"half": ')
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        atomic_write(target, half)
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["out.json"]
    fresh = tmp_path / "fresh.json"
    with pytest.raises(RuntimeError):
        atomic_write(fresh, half)
    assert not fresh.exists() and os.listdir(tmp_path) == ["out.json"]
    with pytest.raises(RuntimeError, match="by name"):
        with atomic_path(target) as temporary:
            temporary.write_text("partial")
            raise RuntimeError("by name")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["out.json"]


def test_write_json_atomic_writes_strict_json(tmp_path):
    target = tmp_path / "state.json"
    write_json_atomic(target, {"step": np.int64(3), "loss": np.float32(np.nan), "history": np.array([1.0, 2.0])})
    assert json.loads(target.read_text()) == {"step": 3, "loss": None, "history": [1.0, 2.0]}
    assert target.read_text().startswith('{\n "step"')  # indent=1, as the training checkpoints were
    from stellarfit.emulators.checkpoint import write_json_atomic as from_checkpoint

    assert from_checkpoint is write_json_atomic  # the name training code imported


def test_io_imports_nothing_from_stellarfit():
    """Any module may import stellarfit._io, so it may import none of them (no import circle can pass through it)."""
    import ast

    import stellarfit._io

    tree = ast.parse(Path(stellarfit._io.__file__).read_text())
    imported = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    imported += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    assert not [name for name in imported if name.split(".")[0] == "stellarfit"], imported


def test_turbospectrum_line_lists_reach_the_cache_whole(tmp_path, monkeypatch):
    """The line lists Turbospectrum reads are written into the cache atomically, once."""
    import gzip
    from importlib import resources

    from stellarfit.synth import turbospectrum

    monkeypatch.setenv("STELLARFIT_CACHE", str(tmp_path))
    plain = turbospectrum._default_linelist_path()
    shipped = resources.files("stellarfit.data").joinpath(turbospectrum._DEFAULT_LINELIST).read_bytes()
    assert plain.read_bytes() == gzip.decompress(shipped)
    astro = turbospectrum._astro_linelist_path()
    assert astro.stat().st_size > 0 and astro != plain
    assert sorted(p.name for p in plain.parent.iterdir()) == sorted([plain.name, astro.name])  # no temporary left
    assert turbospectrum._default_linelist_path() == plain  # written once
