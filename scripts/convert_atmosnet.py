#!/usr/bin/env python
"""Convert the atmosnet C3K "cool" model-atmosphere network to a plain npz.

Source: the ``atmosnet`` 1.0.1 sdist on PyPI (MIT licence, (c) 2021 David
Nidever), file ``atmosnet/data/atmosnet_c3k_300neurons_cool.pkl``.  That file
is a ``dill`` pickle of a list of 8 dicts, one per output column (RHOX, T, P,
XNE, ABROSS, ACCRAD, FLXCNV, VCONV), each a 4 -> 300 -> 300 -> 80 MLP with
leaky-ReLU(0.01) over (Teff, logg, [Fe/H], [alpha/Fe]).

This script is the only place that unpickles anything: the library reads the
npz written here with ``allow_pickle=False``.  It needs ``dill`` (a
development-time dependency only)::

    pip download --no-deps --no-binary :all: atmosnet==1.0.1   # -> sdist
    tar xzf atmosnet-1.0.1.tar.gz
    pip install dill
    python scripts/convert_atmosnet.py --sdist atmosnet-1.0.1

It checks the pickle's structure (shapes, identical scaling and ranges in
all 8 networks, column order), checks the output transform on the Sun
(log10(x + 1e-16): T must come out at 3000-12000 K, not the 35-60 K that
the package's own exp() decode gives), and writes

- ``src/stellarfit/data/atmosnet_c3k_cool.npz`` (float32 weights stacked
  over the 8 columns, float64 scaling and bounds, names, schema version);
- ``src/stellarfit/data/atmosnet_c3k_cool.md`` (provenance + licence note).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np

SCHEMA_VERSION = 1
SOURCE_PACKAGE = "atmosnet"
SOURCE_VERSION = "1.0.1"
SOURCE_MEMBER = "atmosnet/data/atmosnet_c3k_300neurons_cool.pkl"
COLUMN_NAMES = ("RHOX", "T", "P", "XNE", "ABROSS", "ACCRAD", "FLXCNV", "VCONV")
LABEL_NAMES = ("teff", "logg", "fe_h", "alpha_fe")
SOURCE_LABEL_NAMES = ("TEFF", "LOGG", "FE_H", "ALPHA_FE")
LOG_OFFSET = 1e-16
N_HIDDEN = 300
N_DEPTH = 80

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "src" / "stellarfit" / "data" / "atmosnet_c3k_cool.npz"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _leaky_relu(z: np.ndarray) -> np.ndarray:
    return np.where(z > 0, z, 0.01 * z)


def load_source(pkl: Path) -> list[dict]:
    try:
        import dill  # noqa: PLC0415  (conversion-time only)
    except ImportError:  # pragma: no cover - depends on the environment
        sys.exit("convert_atmosnet.py needs 'dill' to read the atmosnet pickle: pip install dill")
    with open(pkl, "rb") as handle:
        networks = dill.load(handle)
    return networks


def check_and_stack(networks: list[dict]) -> dict[str, np.ndarray]:
    if not isinstance(networks, list) or len(networks) != len(COLUMN_NAMES):
        raise SystemExit(f"expected a list of {len(COLUMN_NAMES)} networks, got {type(networks).__name__}")
    first = networks[0]
    expected_shapes = {
        "w_array_0": (N_HIDDEN, 4),
        "w_array_1": (N_HIDDEN, N_HIDDEN),
        "w_array_2": (N_DEPTH, N_HIDDEN),
        "b_array_0": (N_HIDDEN,),
        "b_array_1": (N_HIDDEN,),
        "b_array_2": (N_DEPTH,),
    }
    for index, net in enumerate(networks):
        if int(net["column"]) != index:
            raise SystemExit(f"network {index} says it is column {net['column']}")
        if tuple(net["labels"]) != SOURCE_LABEL_NAMES:
            raise SystemExit(f"unexpected labels {net['labels']!r}")
        for key, shape in expected_shapes.items():
            if np.shape(net[key]) != shape:
                raise SystemExit(f"network {index}: {key} has shape {np.shape(net[key])}, expected {shape}")
        for key in ("x_min", "x_max", "ranges"):
            if not np.array_equal(net[key], first[key]):
                raise SystemExit(f"network {index}: {key} differs from network 0")

    stacked = {
        "w0": np.stack([np.asarray(n["w_array_0"], np.float32) for n in networks]),
        "b0": np.stack([np.asarray(n["b_array_0"], np.float32) for n in networks]),
        "w1": np.stack([np.asarray(n["w_array_1"], np.float32) for n in networks]),
        "b1": np.stack([np.asarray(n["b_array_1"], np.float32) for n in networks]),
        "w2": np.stack([np.asarray(n["w_array_2"], np.float32) for n in networks]),
        "b2": np.stack([np.asarray(n["b_array_2"], np.float32) for n in networks]),
        "x_min": np.asarray(first["x_min"], np.float64),
        "x_max": np.asarray(first["x_max"], np.float64),
        "label_min": np.asarray(first["ranges"], np.float64)[:, 0].copy(),
        "label_max": np.asarray(first["ranges"], np.float64)[:, 1].copy(),
    }
    return stacked


def raw_outputs(stacked: dict[str, np.ndarray], labels: np.ndarray) -> np.ndarray:
    """Network outputs y (8, 80) for one label vector, float64."""
    x = (np.asarray(labels, np.float64) - stacked["x_min"]) / (stacked["x_max"] - stacked["x_min"]) - 0.5
    h = _leaky_relu(np.einsum("chi,i->ch", stacked["w0"].astype(np.float64), x) + stacked["b0"])
    h = _leaky_relu(np.einsum("chk,ck->ch", stacked["w1"].astype(np.float64), h) + stacked["b1"])
    return np.einsum("cdk,ck->cd", stacked["w2"].astype(np.float64), h) + stacked["b2"]


def sanity_check(stacked: dict[str, np.ndarray]) -> None:
    """The Sun must decode to a physical atmosphere with log10(x + 1e-16)."""
    y = raw_outputs(stacked, np.array([5777.0, 4.44, 0.0, 0.0]))
    decoded = 10.0**y - LOG_OFFSET
    rhox, temperature = decoded[0], decoded[1]
    if not np.all(np.diff(rhox) > 0):
        raise SystemExit("RHOX does not increase with depth index: the depth ordering assumption is wrong")
    if not (3000.0 < temperature[0] < 4500.0 and 7000.0 < temperature[-1] < 12000.0):
        raise SystemExit(f"solar T decodes to {temperature[0]:.0f}..{temperature[-1]:.0f} K: decode is wrong")
    wrong = np.exp(y[1]) - LOG_OFFSET  # the package's own decode, for the record
    print(
        f"solar check: RHOX {rhox[0]:.3e}..{rhox[-1]:.3e} g/cm2, "
        f"T {temperature[0]:.0f}..{temperature[-1]:.0f} K (exp() decode would give {wrong[-1]:.0f} K)"
    )


LICENCE_HEADER = """# atmosnet C3K cool model-atmosphere network (converted)

File: `atmosnet_c3k_cool.npz` (read by `stellarfit.synth.atmospheres`).

## Source

- Package: `{package}` {version} (PyPI sdist `{package}-{version}.tar.gz`),
  authors David Nidever and Yuan-Sen Ting, https://github.com/dnidever/atmosnet
- Member: `{member}`
- sha256 of that pickle: `{sha256}`
- Converted by `scripts/convert_atmosnet.py` (schema version {schema}).

## What was converted

The pickle is a list of 8 networks, one per output column
({columns}), each mapping (Teff [K], logg [cgs dex], [Fe/H], [alpha/Fe])
to that column at 80 depths.  Architecture (verified against the weights):
labels scaled as (x - x_min)/(x_max - x_min) - 0.5, then
Dense(4 -> 300), leaky-ReLU(0.01), Dense(300 -> 300), leaky-ReLU(0.01),
Dense(300 -> 80).  Outputs are log10(value + 1e-16); decode with
10**y - 1e-16 (the package's own code uses exp(y) - 1e-16, which is wrong:
it gives T of 35-60 K for the Sun).  Depth index 0 is the top of the atmosphere
(smallest RHOX).  The last two columns are not documented by atmosnet; by
their values they are the ATLAS convective flux (FLXCNV) and convective
velocity (VCONV).  There is no microturbulence column.

Stored arrays: `w0` (8, 300, 4), `b0` (8, 300), `w1` (8, 300, 300),
`b1` (8, 300), `w2` (8, 80, 300), `b2` (8, 80) as float32 (the pickle's own
dtype, unchanged); `x_min`, `x_max` (4,) label scaling; `label_min`,
`label_max` (4,) the validity ranges stored in the pickle (`ranges`);
`label_names`, `column_names`, `log_offset`, `schema_version`, `source`.  Nothing
else (optimizer settings and the 17,038 training labels) was kept.

Label ranges: Teff {tmin:.0f}-{tmax:.0f} K, logg {gmin:g}..{gmax:g},
[Fe/H] {fmin:g}..{fmax:g}, [alpha/Fe] {amin:g}..{amax:g}.  The training
grid (C3K ATLAS12 models, Conroy, Kurucz et al.; see Cargile et al. 2020,
ApJ 900, 28; 17,038 models on Teff steps of 250 K, logg 0.5, [Fe/H]
0.25-0.5, [alpha/Fe] 0.2, reaching Teff 8500 K) does not fill this box: for
Teff >= 4500 K it stops at logg 5.0, and its lowest logg is -1 for
Teff <= 4250 K but 0-1.0 above; about a quarter of the nodes inside
stellarfit's default box are missing (presumably unconverged models).
stellarfit's default labels (Teff 4000-7000 K, logg 1-5) lie inside the
covered region.

## Licence of the source (MIT), reproduced as required

```
{licence}
```
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sdist",
        type=Path,
        default=Path("/tmp/sdists/atmosnet-1.0.1"),
        help="unpacked atmosnet-1.0.1 sdist directory (default: %(default)s)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="npz to write (default: %(default)s)")
    args = parser.parse_args(argv)

    pkl = args.sdist / SOURCE_MEMBER
    licence_file = args.sdist / "LICENSE"
    if not pkl.is_file() or not licence_file.is_file():
        sys.exit(f"{pkl} or {licence_file} not found: give the unpacked atmosnet {SOURCE_VERSION} sdist with --sdist")
    pkg_info = (args.sdist / "PKG-INFO").read_text()
    if f"Version: {SOURCE_VERSION}" not in pkg_info:
        sys.exit(f"{args.sdist} is not atmosnet {SOURCE_VERSION} (see its PKG-INFO)")

    sha = _sha256(pkl)
    stacked = check_and_stack(load_source(pkl))
    sanity_check(stacked)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        args.out,
        **stacked,
        label_names=np.array(LABEL_NAMES),
        column_names=np.array(COLUMN_NAMES),
        log_offset=np.float64(LOG_OFFSET),
        schema_version=np.int64(SCHEMA_VERSION),
        source=np.array(f"{SOURCE_PACKAGE} {SOURCE_VERSION} {SOURCE_MEMBER} sha256:{sha}"),
    )
    lo, hi = stacked["label_min"], stacked["label_max"]
    note = LICENCE_HEADER.format(
        package=SOURCE_PACKAGE,
        version=SOURCE_VERSION,
        member=SOURCE_MEMBER,
        sha256=sha,
        schema=SCHEMA_VERSION,
        columns=", ".join(COLUMN_NAMES),
        tmin=lo[0], tmax=hi[0], gmin=lo[1], gmax=hi[1], fmin=lo[2], fmax=hi[2], amin=lo[3], amax=hi[3],
        licence=licence_file.read_text().strip(),
    )
    args.out.with_suffix(".md").write_text(note)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB) and {args.out.with_suffix('.md').name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
