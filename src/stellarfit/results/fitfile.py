"""Fit results and fit files: :class:`FitResult` (the result of one fit, its flag bits and
summaries) and its FITS file (no pickle).

Everything needed to rebuild the result (and its report) is stored as plain
arrays and JSON, so the file can be read by any FITS reader:

=============  ===========================================================================
HDU            contents
=============  ===========================================================================
PRIMARY        no data; header ``SFKIND = 'FITRESULT'``, ``SFSCHEMA`` (format version),
               ``METHOD``, ``EMULATOR``, ``NPARAM``, ``CHI2``, ``SNR``, ``FLAGS`` (for people
               looking at the file)
``RESULT``     uint8 image holding UTF-8 JSON: method, labels (name -> value, error, lower,
               upper, map, crb), parameter names in order, chi2, reduced_chi2, snr, n_pixels,
               flags, diagnostics, emulator, elapsed_s, stellarfit version.  Non-finite
               floats are written as ``{"$float": "nan"|"inf"|"-inf"}`` (strict JSON)
``SPECTRUM``   binary table: ``WAVELENGTH`` [A, vacuum], ``FLUX``, ``IVAR``, ``MODEL_FLUX``
               (float64, one row per pixel)
``COVARIANCE`` float64 image (p, p), parameters in ``labels`` order (``PARAM<i>`` keys)
``SAMPLES``    NUTS fits only: binary table with ``CHAIN``, ``DRAW`` and one column per
               parameter (n_chains * n_draws rows, chain-major); header ``NCHAINS``, ``NDRAWS``
``SAMPLE_STATS``  NUTS fits only, when recorded: ``CHAIN``, ``DRAW`` and one column per
               per-draw statistic (``diverging``, ``n_steps``, ``tree_depth``, ...)
=============  ===========================================================================

:func:`write_fit` writes atomically (temporary file, then ``os.replace``);
:func:`read_fit` checks the kind and schema version and raises
:class:`FitFileError` (a ValueError) that says what is wrong with a foreign,
corrupt or newer file.  ``FitResult.save`` / ``FitResult.load`` call these.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from stellarfit._io import atomic_path, to_jsonable

__all__ = ["FLAGS", "FitResult", "FIT_FILE_KIND", "FIT_FILE_SCHEMA", "FitFileError", "is_fit_file", "read_fit", "read_fit_metadata", "write_fit"]

#: value of the primary-header keyword ``SFKIND`` of a fit file
FIT_FILE_KIND = "FITRESULT"
#: version of the layout written by :func:`write_fit`; :func:`read_fit` reads versions <= this one
FIT_FILE_SCHEMA = 1

#: FitResult fields stored in the RESULT JSON (the arrays have their own HDUs)
_SCALAR_FIELDS = ("method", "chi2", "reduced_chi2", "snr", "n_pixels", "flags", "emulator", "elapsed_s")
_ARRAY_FIELDS = ("wavelength", "flux", "ivar", "model_flux", "covariance", "samples", "sample_stats")
_SPECTRUM_COLUMNS = {"wavelength": "WAVELENGTH", "flux": "FLUX", "ivar": "IVAR", "model_flux": "MODEL_FLUX"}


class FitFileError(ValueError):
    """A file that is not a readable stellarfit fit file (foreign, corrupt, truncated or newer)."""


# -- the result ----------------------------------------------------------------------

#: flag name -> bit
FLAGS = {"grid_edge": 1, "fit_failed": 2, "low_snr": 4, "high_chi2": 8, "not_converged": 16, "rv_edge": 32, "sampler_warning": 64,
         "degraded_to_emulator_resolution": 128, "model_mismatch": 256, "vsini_unresolved": 512}


@dataclasses.dataclass
class FitResult:
    """Result of :func:`fit_star` for one spectrum.

    ``labels`` maps each parameter (labels, then rv and vsini) to a dict with
    ``value``, ``error``, ``lower``, ``upper``, ``map`` and ``crb``; for MAP fits
    value = map, error = the Laplace sigma and lower/upper = value -/+ error.
    For NUTS fits value = the posterior median, lower/upper = the 16th/84th
    percentiles, error = half their difference, and ``samples`` holds the
    draws (n_chains, n_draws, p) in physical units, parameters in ``labels``
    order; ``covariance`` is then the sample covariance.  ``chi2`` and
    ``model_flux`` are at the MAP for every method.
    """

    method: str
    labels: dict[str, dict[str, float]]
    chi2: float
    reduced_chi2: float
    snr: float
    n_pixels: int
    flags: int
    diagnostics: dict[str, Any]
    wavelength: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray
    model_flux: np.ndarray
    covariance: np.ndarray
    emulator: str = ""
    elapsed_s: float = 0.0
    samples: np.ndarray | None = None
    sample_stats: dict[str, np.ndarray] | None = None

    @property
    def names(self) -> list[str]:
        return list(self.labels)

    def to_arviz(self):
        """The posterior as an ArviZ ``DataTree`` (``arviz_base.from_dict``): one variable per
        parameter with dims (chain, draw), plus ``sample_stats`` when the sampler recorded them.

        Raises ValueError for fits without samples (``method="map"``).
        """
        if self.samples is None:
            raise ValueError(f"this {self.method!r} fit has no posterior samples; fit with method='nuts' or 'blackjax'")
        from arviz_base import from_dict

        posterior = {name: np.asarray(self.samples[:, :, i]) for i, name in enumerate(self.names)}
        data = {"posterior": posterior}
        if self.sample_stats:
            data["sample_stats"] = {key: np.asarray(value) for key, value in self.sample_stats.items()}
        return from_dict(data, attrs={"/": {"method": self.method, "emulator": self.emulator}})

    @property
    def flag_names(self) -> list[str]:
        return [name for name, bit in FLAGS.items() if self.flags & bit]

    def value(self, name: str) -> float:
        return self.labels[name]["value"]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (the CLI's ``--json`` document)."""
        from stellarfit import __version__

        return {
            "method": self.method,
            "labels": {k: {kk: _finite_or_none(vv) for kk, vv in v.items()} for k, v in self.labels.items() if k not in ("rv", "vsini")},
            "rv": {k: _finite_or_none(v) for k, v in self.labels["rv"].items()},
            "vsini": {k: _finite_or_none(v) for k, v in self.labels["vsini"].items()},
            "chi2": self.chi2,
            "reduced_chi2": self.reduced_chi2,
            "snr": self.snr,
            "n_pixels": self.n_pixels,
            "flags": self.flags,
            "flag_names": self.flag_names,
            "diagnostics": _json_safe(self.diagnostics),
            "emulator": self.emulator,
            "elapsed_s": self.elapsed_s,
            "stellarfit_version": __version__,
        }

    def summary(self) -> str:
        """A human-readable table."""
        lines = [f"{'parameter':<10} {'value':>12} {'error':>10} {'CRB':>10}"]
        for name, row in self.labels.items():
            lines.append(f"{name:<10} {row['value']:>12.4f} {row['error']:>10.4f} {row['crb']:>10.4f}")
        lines.append(f"chi2 = {self.chi2:.1f} over {self.n_pixels} pixels (reduced {self.reduced_chi2:.3f}), S/N = {self.snr:.1f}")
        lines.append(f"flags = {self.flags} {self.flag_names}")
        windows = (self.diagnostics or {}).get("windows")
        if windows:  # a composite emulator's fit (stellarfit.emulators.composite): the windows it used
            used = ", ".join(f"{w['window'][0]:.0f}-{w['window'][1]:.0f} ({w['n_pixels']} px)" for w in windows["used"])
            outside = windows.get("n_pixels_outside", 0)
            lines.append(f"used windows: {used}" + (f"; {outside} good pixels outside every window (masked)" if outside else ""))
        return "\n".join(lines)

    def write(self, path) -> None:
        """Write :meth:`to_dict` as JSON."""
        with open(path, "w") as handle:
            json.dump(self.to_dict(), handle, indent=2)

    def save(self, path, *, overwrite: bool = True, metadata: dict | None = None):
        """Save the whole result (arrays, samples, diagnostics) to a FITS fit file, no pickle
        (:func:`stellarfit.results.fitfile.write_fit`; ``metadata``: optional JSON-able facts such as
        ``{"source": "star.fits"}``); :meth:`load` reads it back."""
        return write_fit(self, path, overwrite=overwrite, metadata=metadata)

    @classmethod
    def load(cls, path) -> "FitResult":
        """Read a fit file written by :meth:`save` (:func:`stellarfit.results.fitfile.read_fit`);
        raises ``FitFileError`` (a ValueError) for foreign or damaged files."""
        return read_fit(path)


def _json_safe(value):
    """Nested dicts/lists with NaN and infinities replaced by None (strict JSON; :func:`stellarfit._io.to_jsonable`)."""
    return to_jsonable(value)


def _finite_or_none(value):
    value = float(value)
    return value if np.isfinite(value) else None


# -- JSON with non-finite floats -----------------------------------------------------
def _encode(value: Any) -> Any:
    """JSON-ready copy: numpy scalars/arrays to Python, non-finite floats tagged as {"$float": ...},
    anything else (paths, enums) as its text, never a pickle (:func:`stellarfit._io.to_jsonable`)."""
    return to_jsonable(value, non_finite="tag", other="str")


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$float"}:
            return float(value["$float"])
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


# -- write ------------------------------------------------------------------------------
def write_fit(result, path: str | os.PathLike, *, overwrite: bool = True, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``result`` (a :class:`~stellarfit.inference.FitResult`) to the FITS file ``path``.

    Args:
        result: the fit.
        path: output file (conventionally ``*.fits``); written atomically.
        overwrite: replace an existing file (default True); False raises FileExistsError.
        metadata: optional JSON-able facts about the fit (e.g. ``{"source": "star.fits"}``),
            read back by :func:`read_fit_metadata`.
    Returns: the path written.
    """
    from astropy.io import fits

    from stellarfit import __version__

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    if not path.parent.expanduser().resolve().is_dir():
        raise FileNotFoundError(f"cannot write {path}: the directory {path.parent} does not exist")
    names = list(result.labels)
    p = len(names)
    wavelength = np.asarray(result.wavelength, dtype=np.float64)
    arrays = {key: np.asarray(getattr(result, key), dtype=np.float64) for key in _SPECTRUM_COLUMNS}
    for key, array in arrays.items():
        if array.shape != wavelength.shape:
            raise ValueError(f"result.{key} has shape {array.shape}, result.wavelength {wavelength.shape}; they must match")
    covariance = np.asarray(result.covariance, dtype=np.float64)
    if covariance.shape != (p, p):
        raise ValueError(f"result.covariance has shape {covariance.shape}, expected ({p}, {p}) for parameters {names}")

    document = {
        "kind": FIT_FILE_KIND,
        "schema": FIT_FILE_SCHEMA,
        "stellarfit_version": __version__,
        "names": names,
        "labels": result.labels,
        "diagnostics": result.diagnostics,
        "metadata": dict(metadata or {}),
        **{key: getattr(result, key) for key in _SCALAR_FIELDS},
        # fields a later FitResult may add (plain values only): kept, and restored when the class has them
        "extra": {f.name: getattr(result, f.name) for f in (dataclasses.fields(result) if dataclasses.is_dataclass(result) else ())
                  if f.name not in _SCALAR_FIELDS + _ARRAY_FIELDS + ("labels", "diagnostics")
                  and isinstance(getattr(result, f.name), (type(None), bool, int, float, str, list, tuple, dict))},
    }
    payload = json.dumps(_encode(document), allow_nan=False).encode("utf-8")

    primary = fits.PrimaryHDU()
    header = primary.header
    header["SFKIND"] = (FIT_FILE_KIND, "a stellarfit FitResult")
    header["SFSCHEMA"] = (FIT_FILE_SCHEMA, "stellarfit fit-file format version")
    header["SFVERS"] = (__version__, "stellarfit version that wrote it")
    header["METHOD"] = (str(result.method), "fit method")
    header["EMULATOR"] = (str(result.emulator)[:60], "emulator name")
    header["NPARAM"] = (p, "number of fitted parameters")
    for key, value, comment in (("CHI2", result.chi2, "chi-square at the MAP"), ("SNR", result.snr, "median S/N per pixel")):
        if math.isfinite(float(value)):
            header[key] = (float(value), comment)
    header["FLAGS"] = (int(result.flags), "flag bits (see stellarfit.inference.FLAGS)")

    json_hdu = fits.ImageHDU(np.frombuffer(payload, dtype=np.uint8), name="RESULT")
    json_hdu.header["CONTENT"] = ("JSON", "UTF-8 JSON document (bytes)")
    spectrum = fits.BinTableHDU.from_columns(
        [fits.Column(name=column, format="D", array=arrays[key], unit="Angstrom" if key == "wavelength" else None)
         for key, column in _SPECTRUM_COLUMNS.items()], name="SPECTRUM")
    spectrum.header["AIRORVAC"] = ("vac", "wavelengths are in vacuum")
    covariance_hdu = fits.ImageHDU(covariance, name="COVARIANCE")
    for i, name in enumerate(names):
        covariance_hdu.header[f"PARAM{i}"] = name
    hdus = [primary, json_hdu, spectrum, covariance_hdu]

    if result.samples is not None:
        samples = np.asarray(result.samples)
        if samples.ndim != 3 or samples.shape[2] != p:
            raise ValueError(f"result.samples has shape {samples.shape}, expected (n_chains, n_draws, {p})")
        n_chains, n_draws, _ = samples.shape
        chain, draw = (a.ravel() for a in np.meshgrid(np.arange(n_chains), np.arange(n_draws), indexing="ij"))
        flat = samples.reshape(n_chains * n_draws, p)
        table = _table_hdu({"CHAIN": chain.astype(np.int32), "DRAW": draw.astype(np.int32),
                            **{name: flat[:, i] for i, name in enumerate(names)}}, "SAMPLES")
        table.header["NCHAINS"] = (n_chains, "chains")
        table.header["NDRAWS"] = (n_draws, "kept draws per chain")
        hdus.append(table)
        if result.sample_stats:
            columns = {"CHAIN": chain.astype(np.int32), "DRAW": draw.astype(np.int32)}
            for key, value in result.sample_stats.items():
                value = np.asarray(value)
                if value.shape != (n_chains, n_draws):
                    raise ValueError(f"result.sample_stats[{key!r}] has shape {value.shape}, expected ({n_chains}, {n_draws})")
                if key.upper() in ("CHAIN", "DRAW"):
                    raise ValueError(f"result.sample_stats may not have a statistic named {key!r}")
                columns[key] = value.reshape(-1)
            hdus.append(_table_hdu(columns, "SAMPLE_STATS"))

    with atomic_path(path) as temporary:
        fits.HDUList(hdus).writeto(temporary, overwrite=True)
    return path


def _table_hdu(columns: dict[str, np.ndarray], name: str):
    """A binary table HDU from named 1-D arrays (dtypes kept: bool, integers, floats)."""
    from astropy.io import fits

    lower = [key.lower() for key in columns]
    duplicates = {key for key in lower if lower.count(key) > 1}
    if duplicates:
        raise ValueError(f"column names of {name} must differ ignoring case (FITS); duplicates: {sorted(duplicates)}")
    data = np.empty(len(next(iter(columns.values()))), dtype=[(key, np.asarray(v).dtype) for key, v in columns.items()])
    for key, value in columns.items():
        data[key] = value
    return fits.BinTableHDU(data, name=name)


# -- read -------------------------------------------------------------------------------
def is_fit_file(path: str | os.PathLike) -> bool:
    """True when ``path`` is a FITS file whose primary header says it is a stellarfit fit file."""
    from astropy.io import fits

    try:
        with fits.open(path, memmap=False) as hdus:
            return hdus[0].header.get("SFKIND") == FIT_FILE_KIND
    except Exception:  # noqa: BLE001 - anything unreadable is not a fit file
        return False


def read_fit_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``metadata`` dict given to :func:`write_fit` (empty if none); errors as :func:`read_fit`."""
    metadata = _read(path)[0].get("metadata")
    return dict(metadata) if isinstance(metadata, dict) else {}


def read_fit(path: str | os.PathLike) -> FitResult:
    """Read a fit file written by :func:`write_fit` back into a :class:`~stellarfit.inference.FitResult`.

    Raises:
        FileNotFoundError: no such file.
        FitFileError: not a FITS file, a FITS file that is not a stellarfit fit file, a newer
            format version, or missing/inconsistent parts (truncated or edited file).
    """
    document, arrays, covariance, samples, sample_stats = _read(path)
    names, labels = document.get("names"), document.get("labels")
    if (not isinstance(names, list) or not isinstance(labels, dict) or list(labels) != names
            or not all(isinstance(row, dict) for row in labels.values())):
        raise FitFileError(f"{path}: the RESULT document's labels do not match its parameter names; the file looks corrupt")
    p = len(names)
    if covariance.shape != (p, p):
        raise FitFileError(f"{path}: COVARIANCE has shape {covariance.shape}, expected ({p}, {p}); the file looks corrupt")
    missing = [key for key in _SCALAR_FIELDS + ("diagnostics",) if key not in document]
    if missing:
        raise FitFileError(f"{path}: the RESULT document lacks {missing}; the file looks corrupt")
    field_names = {f.name for f in dataclasses.fields(FitResult)}
    extra = {k: v for k, v in (document.get("extra") or {}).items() if k in field_names}
    try:
        return FitResult(
            method=str(document["method"]),
            labels={name: {k: float("nan") if v is None else float(v) for k, v in row.items()} for name, row in labels.items()},
            chi2=float(document["chi2"]),
            reduced_chi2=float(document["reduced_chi2"]),
            snr=float(document["snr"]),
            n_pixels=int(document["n_pixels"]),
            flags=int(document["flags"]),
            diagnostics=dict(document["diagnostics"] or {}),
            covariance=covariance,
            emulator=str(document["emulator"]),
            elapsed_s=float(document["elapsed_s"]),
            samples=samples,
            sample_stats=sample_stats,
            **arrays,
            **extra,
        )
    except (TypeError, ValueError) as error:
        raise FitFileError(f"{path}: bad values in the RESULT document ({error}); the file looks corrupt") from None


def _read(path: str | os.PathLike):
    """(document, spectrum arrays, covariance, samples, sample_stats) of a fit file, checked for kind and version."""
    from astropy.io import fits

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such fit file: {path}")
    if path.is_dir():
        raise FitFileError(f"{path} is a directory, not a fit file")
    hint = "write one with `stellarfit fit SPECTRUM --save FIT.fits` or FitResult.save(path)"
    # our own file handle, so that it is closed whatever astropy raises on a damaged file
    with open(path, "rb") as handle, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            hdus = fits.open(handle, memmap=False, lazy_load_hdus=False)
        except Exception as error:  # noqa: BLE001 - astropy raises OSError, TypeError, ValueError for junk
            raise FitFileError(f"{path} is not a readable FITS file ({(str(error) or repr(error)).splitlines()[0].strip(chr(39))}); "
                               f"{hint}") from None
        with hdus:
            if len(hdus) == 0:
                raise FitFileError(f"{path} is an empty FITS file; {hint}")
            kind = hdus[0].header.get("SFKIND")
            if kind != FIT_FILE_KIND:
                raise FitFileError(f"{path} is a FITS file but not a stellarfit fit file (primary header SFKIND = {kind!r}, "
                                   f"expected {FIT_FILE_KIND!r}); {hint}")
            schema = hdus[0].header.get("SFSCHEMA")
            if isinstance(schema, bool) or not isinstance(schema, int) or schema < 1:
                raise FitFileError(f"{path}: bad fit-file format version SFSCHEMA = {schema!r}; the file looks corrupt")
            if schema > FIT_FILE_SCHEMA:
                raise FitFileError(f"{path} uses fit-file format version {schema}, newer than this stellarfit reads "
                                   f"({FIT_FILE_SCHEMA}); upgrade stellarfit")
            try:
                document = _decode(json.loads(bytes(np.asarray(_hdu(hdus, "RESULT", path).data, dtype=np.uint8)).decode("utf-8")))
                if not isinstance(document, dict) or not isinstance(document.get("names"), list):
                    raise FitFileError(f"{path}: the RESULT HDU does not hold the fit's JSON document; the file looks corrupt")
                spectrum = _hdu(hdus, "SPECTRUM", path).data
                arrays = {key: np.array(spectrum[column], dtype=np.float64) for key, column in _SPECTRUM_COLUMNS.items()}
                covariance = np.array(_hdu(hdus, "COVARIANCE", path).data, dtype=np.float64)
                samples = sample_stats = None
                if "SAMPLES" in hdus:
                    samples, sample_stats = _read_samples(hdus, document["names"], path)
            except Exception as error:  # noqa: BLE001 - astropy and json raise many kinds for damaged files
                _raise_if_truncated(caught, path)
                if isinstance(error, FitFileError):
                    raise
                raise FitFileError(f"{path}: damaged fit file ({type(error).__name__}: {error}); write it again") from None
    _raise_if_truncated(caught, path)
    return document, arrays, covariance, samples, sample_stats


def _raise_if_truncated(caught, path: Path) -> None:
    damaged = [str(w.message).splitlines()[0] for w in caught
               if any(word in str(w.message).lower() for word in ("truncated", "corrupt", "unexpected end", "not multiple of 2880"))]
    if damaged:
        raise FitFileError(f"{path}: the file is truncated or corrupt ({damaged[0]}); write it again")


def _hdu(hdus, name: str, path: Path):
    if name not in hdus:
        raise FitFileError(f"{path}: the {name} HDU is missing; the file is truncated or not a complete fit file")
    return hdus[name]


def _read_samples(hdus, names: list[str], path: Path):
    """(n_chains, n_draws, p) samples and the per-draw stats dict from the SAMPLES/SAMPLE_STATS tables."""
    table = hdus["SAMPLES"]
    n_chains, n_draws = table.header.get("NCHAINS"), table.header.get("NDRAWS")
    data = table.data
    if not isinstance(n_chains, int) or not isinstance(n_draws, int) or data is None or len(data) != n_chains * n_draws:
        raise FitFileError(f"{path}: SAMPLES has {0 if data is None else len(data)} rows, header NCHAINS={n_chains!r} "
                           f"NDRAWS={n_draws!r}; the file looks corrupt")
    missing = [name for name in names if name not in data.columns.names]
    if missing:
        raise FitFileError(f"{path}: SAMPLES lacks the columns {missing}; the file looks corrupt")
    samples = np.stack([_native(data[name]) for name in names], axis=-1).reshape(n_chains, n_draws, len(names))
    sample_stats = None
    if "SAMPLE_STATS" in hdus:
        stats = hdus["SAMPLE_STATS"].data
        if stats is None or len(stats) != n_chains * n_draws:
            raise FitFileError(f"{path}: SAMPLE_STATS does not have {n_chains * n_draws} rows; the file looks corrupt")
        sample_stats = {column: _native(stats[column]).reshape(n_chains, n_draws)
                        for column in stats.columns.names if column not in ("CHAIN", "DRAW")}
    return samples, sample_stats


def _native(column) -> np.ndarray:
    """A copy of a FITS column in native byte order (FITS stores big-endian), dtype kind kept."""
    array = np.asarray(column)
    return array.astype(array.dtype.newbyteorder("="))
