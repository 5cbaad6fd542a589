"""Small FITS files in the real HDU layouts of each survey format, for the spectra tests.

Each ``write_*`` function writes a file at ``path`` and returns a dict of the
truth the tests compare against (wavelengths computed independently of the
readers, flux, sigma/ivar, which pixels should be masked ...).  Sizes follow
the real formats where that is cheap (APOGEE 8575 pixels, DESI arm ranges at
0.8 A, Gaia 2401 points) and are smaller elsewhere.
"""

from __future__ import annotations

import numpy as np
from astropy.io import fits

LN10 = np.log(10.0)


def _primary(**cards) -> fits.PrimaryHDU:
    hdu = fits.PrimaryHDU()
    for key, value in cards.items():
        hdu.header[key.replace("_DASH_", "-")] = value
    return hdu


def _one_row_table(name: str, columns: dict[str, np.ndarray], formats: dict[str, str] | None = None) -> fits.BinTableHDU:
    cols = []
    for key, values in columns.items():
        values = np.asarray(values)
        code = (formats or {}).get(key) or ("D" if values.dtype == np.float64 else {"f": "E", "i": "J", "b": "L"}[values.dtype.kind])
        cols.append(fits.Column(name=key, format=f"{values.size}{code}", array=values[None]))
    return fits.BinTableHDU.from_columns(cols, name=name)


# ---------------------------------------------------------------------------- APOGEE
def write_apstar(path, *, n_rows: int = 3, n_pixels: int = 8575, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    shape = (n_rows, n_pixels) if n_rows > 1 else (n_pixels,)
    flux = (100.0 * (1.0 + 0.05 * rng.standard_normal(shape))).astype(np.float32)
    sigma = np.full(shape, 2.0, dtype=np.float32)
    mask = np.zeros(shape, dtype=np.int16)
    combined = (0,) if n_rows > 1 else ()
    mask[combined + (10,)] = 1 << 0  # BADPIX
    mask[combined + (20,)] = 1 << 12  # SIG_SKYLINE
    mask[combined + (30,)] = 1 << 9  # PERSIST_HIGH: not bad by default
    header = fits.Header()
    header["CRVAL1"] = 4.179
    header["CDELT1"] = 6e-6
    header["CRPIX1"] = 1
    header["CTYPE1"] = "LOG-LINEAR"
    header["DC-FLAG"] = 1
    header["BUNIT"] = "Flux (10^-17 erg/s/cm^2/Ang)"
    hdus = [
        _primary(OBJID="2M12345678+1234567", TELESCOP="apo25m", NVISITS=max(n_rows - 2, 1)),
        fits.ImageHDU(flux, header=header.copy(), name="FLUX"),
        fits.ImageHDU(sigma, header=header.copy(), name="ERROR"),
        fits.ImageHDU(mask, header=header.copy(), name="MASK"),
        fits.ImageHDU(np.zeros(shape, np.float32), name="SKY"),
        fits.ImageHDU(np.zeros(shape, np.float32), name="SKYERR"),
        fits.ImageHDU(np.ones(shape, np.float32), name="TELLURIC"),
        fits.ImageHDU(np.zeros(shape, np.float32), name="TELLERR"),
        fits.BinTableHDU.from_columns([fits.Column(name="VHELIO", format="E", array=np.zeros(max(n_rows - 2, 1)))], name="RV"),
    ]
    fits.HDUList(hdus).writeto(path, overwrite=True)
    wavelength = 10.0 ** (4.179 + 6e-6 * np.arange(n_pixels))
    return {"wavelength": wavelength, "flux": flux, "sigma": sigma, "mask_bits": mask}


def write_aspcapstar(path, *, n_pixels: int = 8575, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    flux = (1.0 + 0.02 * rng.standard_normal(n_pixels)).astype(np.float32)
    error = np.full(n_pixels, 0.01, dtype=np.float32)
    gap = np.zeros(n_pixels, dtype=bool)
    gap[3000:3100] = True  # a chip gap: zero flux and error
    flux[gap] = 0.0
    error[gap] = 0.0
    header = fits.Header()
    header["CRVAL1"] = 4.179
    header["CDELT1"] = 6e-6
    header["CRPIX1"] = 1
    header["CTYPE1"] = "LOG-LINEAR"
    hdus = [
        _primary(OBJID="2M00000002+7417074"),
        fits.ImageHDU(flux, header=header.copy()),
        fits.ImageHDU(error, header=header.copy()),
        fits.ImageHDU(flux.copy(), header=header.copy()),
        fits.BinTableHDU.from_columns([fits.Column(name="TEFF", format="E", array=np.array([4800.0]))]),
    ]
    fits.HDUList(hdus).writeto(path, overwrite=True)
    return {"wavelength": 10.0 ** (4.179 + 6e-6 * np.arange(n_pixels)), "flux": flux, "error": error, "gap": gap}


# ---------------------------------------------------------------------------- SDSS/BOSS
def write_boss(path, *, n_pixels: int = 800, upper: bool = False, wdisp: float = 1.1, seed: int = 0,
               n_rows: int | None = None, ivar_value: float = 4.0) -> dict:
    rng = np.random.default_rng(seed)
    loglam = (3.5800 + 1e-4 * np.arange(n_pixels)).astype(np.float32)
    flux = (20.0 + rng.standard_normal(n_pixels)).astype(np.float32)
    ivar = np.full(n_pixels, ivar_value, dtype=np.float32)
    and_mask = np.zeros(n_pixels, dtype=np.int32)
    or_mask = np.zeros(n_pixels, dtype=np.int32)
    and_mask[50] = 1 << 23  # BRIGHTSKY in every exposure
    or_mask[60] = 1 << 16  # NEARBADPIXEL in one exposure only
    ivar[70] = 0.0
    wd = np.full(n_pixels, wdisp, dtype=np.float32)
    wd[80] = 0.0  # missing dispersion, filled by interpolation
    names = ["flux", "loglam", "ivar", "and_mask", "or_mask", "wdisp", "sky", "model"]
    if upper:
        names = [name.upper() for name in names]
    arrays = [flux, loglam, ivar, and_mask, or_mask, wd, np.zeros(n_pixels, np.float32), flux.copy()]
    if n_rows is not None:
        arrays = [a[:n_rows] for a in arrays]
    codes = ["E", "E", "E", "J", "J", "E", "E", "E"]
    coadd = fits.BinTableHDU.from_columns(
        [fits.Column(name=n, format=c, array=a) for n, c, a in zip(names, codes, arrays)], name="COADD"
    )
    primary = (
        _primary(FIELD=101077, MJD=59630, BUNIT="1E-17 erg/cm^2/s/Ang")
        if upper
        else _primary(PLATEID=3606, MJD=55182, FIBERID=537, BUNIT="1E-17 erg/cm^2/s/Ang")
    )
    spall_cols = [fits.Column(name="Z", format="E", array=np.array([0.0]))]
    if upper:
        spall_cols.append(fits.Column(name="CATALOGID", format="K", array=np.array([27021597917837494])))
    spall = fits.BinTableHDU.from_columns(spall_cols, name="SPALL")
    fits.HDUList([primary, coadd, spall]).writeto(path, overwrite=True)
    return {"wavelength": 10.0 ** loglam.astype(np.float64), "flux": flux, "ivar": ivar, "wdisp": wdisp}


# ---------------------------------------------------------------------------- LAMOST
def _lamost_grid(n_pixels: int) -> np.ndarray:
    return 10.0 ** (3.5682 + 1e-4 * np.arange(n_pixels))


def write_lamost_lrs_image(path, *, n_pixels: int = 600, seed: int = 0, vacuum: bool = True) -> dict:
    rng = np.random.default_rng(seed)
    wavelength = _lamost_grid(n_pixels)
    flux = 500.0 + 10.0 * rng.standard_normal(n_pixels)
    ivar = np.full(n_pixels, 0.01)
    andmask = np.zeros(n_pixels)
    andmask[5] = 2  # BADPROFILE
    ormask = np.zeros(n_pixels)
    ormask[6] = 1
    image = np.stack([flux, ivar, wavelength, andmask, ormask]).astype(np.float32)
    primary = fits.PrimaryHDU(image)
    primary.header["TELESCOP"] = "LAMOST"
    primary.header["OBSID"] = 101001
    primary.header["DESIG"] = "LAMOST J000000.00+000000.0"
    primary.header["CRVAL1"] = 3.5682
    primary.header["CD1_1"] = 1e-4
    primary.header["DC-FLAG"] = 1
    primary.header["VACUUM"] = vacuum
    fits.HDUList([primary]).writeto(path, overwrite=True)
    return {"wavelength": image[2].astype(np.float64), "flux": image[0], "ivar": image[1], "bad": np.array([5])}


def write_lamost_lrs_table(path, *, n_pixels: int = 600, seed: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    wavelength = _lamost_grid(n_pixels).astype(np.float32)
    flux = (300.0 + 5.0 * rng.standard_normal(n_pixels)).astype(np.float32)
    ivar = np.full(n_pixels, 0.04, dtype=np.float32)
    andmask = np.zeros(n_pixels, dtype=np.int32)
    andmask[100] = 8
    table = _one_row_table(
        "COADD",
        {"FLUX": flux, "IVAR": ivar, "WAVELENGTH": wavelength, "ANDMASK": andmask, "ORMASK": andmask.copy(),
         "NORMALIZATION": np.ones(n_pixels, np.float32)},
    )
    primary = _primary(TELESCOP="LAMOST", OBSID=202002, VACUUM=True)
    fits.HDUList([primary, table]).writeto(path, overwrite=True)
    return {"wavelength": wavelength.astype(np.float64), "flux": flux, "ivar": ivar, "bad": np.array([100])}


def write_lamost_mrs(path, *, seed: int = 2) -> dict:
    rng = np.random.default_rng(seed)
    truth = {}
    hdus = [_primary(TELESCOP="LAMOST", OBSID=303003, DESIG="J123456.78+123456.7")]
    for arm, (lo, hi) in (("B", (4950.0, 5350.0)), ("R", (6300.0, 6800.0))):
        n = int(np.log(hi / lo) / (1.0 / (7500 * 2.5)))
        wavelength = lo * np.exp(np.arange(n) / (7500 * 2.5))
        flux = (1000.0 + 20 * rng.standard_normal(n)).astype(np.float32)
        ivar = np.full(n, 0.0025, dtype=np.float32)
        pixmask = np.zeros(n, dtype=np.int32)
        pixmask[7] = 1
        hdus.append(
            _one_row_table(
                f"COADD_{arm}",
                {"FLUX": flux, "IVAR": ivar, "WAVELENGTH": wavelength, "PIXMASK": pixmask, "ORMASK": pixmask.copy(),
                 "NORMALIZATION": np.ones(n, np.float32)},
            )
        )
        truth[arm] = {"wavelength": wavelength, "flux": flux, "ivar": ivar}
    # a single-exposure extension, as in real files
    hdus.append(_one_row_table("B-84420345", {"FLUX": np.ones(10, np.float32), "WAVELENGTH": np.arange(10.0) + 5000}))
    fits.HDUList(hdus).writeto(path, overwrite=True)
    return truth


# ---------------------------------------------------------------------------- DESI
DESI_ARMS = {"B": (3600.0, 5800.0), "R": (5760.0, 7620.0), "Z": (7520.0, 9824.0)}


def gaussian_resolution_diagonals(sigma_pixels: float, n_pixels: int, n_diag: int = 11) -> np.ndarray:
    """(n_diag, n_pixels) resolution-matrix diagonals of a Gaussian LSF, columns normalized (DESI layout)."""
    offsets = n_diag // 2 - np.arange(n_diag)
    kernel = np.exp(-0.5 * (offsets / sigma_pixels) ** 2)
    kernel /= kernel.sum()
    return np.repeat(kernel[:, None], n_pixels, axis=1)


def write_desi(path, *, n_spec: int = 3, sigma_pixels=(1.0, 1.2, 1.5), seed: int = 0, dead_row: int | None = None,
               drop: str | None = None, bad_shape: str | None = None, step: float = 0.8) -> dict:
    rng = np.random.default_rng(seed)
    targetids = np.array([39627000000000000 + i for i in range(n_spec)], dtype=np.int64)
    fibermap = fits.BinTableHDU.from_columns(
        [
            fits.Column(name="TARGETID", format="K", array=targetids),
            fits.Column(name="TARGET_RA", format="D", array=np.linspace(10, 11, n_spec)),
            fits.Column(name="TARGET_DEC", format="D", array=np.linspace(-5, -4, n_spec)),
            fits.Column(name="COADD_FIBERSTATUS", format="J", array=np.zeros(n_spec, np.int32)),
            fits.Column(name="OBJTYPE", format="3A", array=np.array(["TGT"] * n_spec)),
        ],
        name="FIBERMAP",
    )
    hdus = [_primary(SURVEY="main", PROGRAM="bright"), fibermap]
    truth = {"targetid": targetids, "arms": {}}
    for (arm, (lo, hi)), sigma_pix in zip(DESI_ARMS.items(), sigma_pixels):
        wavelength = np.round(np.arange(lo, hi + step / 2, step), 3)
        n = wavelength.size
        flux = (5.0 + rng.standard_normal((n_spec, n))).astype(np.float32)
        ivar = np.full((n_spec, n), 9.0, dtype=np.float32)
        mask = np.zeros((n_spec, n), dtype=np.int32)
        mask[:, 3] = 1
        if dead_row is not None:
            ivar[dead_row] = 0.0
        resolution = np.repeat(gaussian_resolution_diagonals(sigma_pix, n)[None], n_spec, axis=0).astype(np.float32)
        if bad_shape == arm:
            flux = flux[:, :-5]
        for kind, data in (("WAVELENGTH", wavelength), ("FLUX", flux), ("IVAR", ivar), ("MASK", mask), ("RESOLUTION", resolution)):
            if drop == f"{arm}_{kind}":
                continue
            hdu = fits.ImageHDU(data, name=f"{arm}_{kind}")
            if kind == "FLUX":
                hdu.header["BUNIT"] = "10**-17 erg/(s cm2 Angstrom)"
            hdus.append(hdu)
        truth["arms"][arm] = {"wavelength": wavelength, "flux": flux, "ivar": ivar, "sigma_pixels": sigma_pix, "step": step}
    hdus.append(fits.BinTableHDU.from_columns([fits.Column(name="TARGETID", format="K", array=targetids)], name="SCORES"))
    fits.HDUList(hdus).writeto(path, overwrite=True)
    return truth


# ---------------------------------------------------------------------------- Gaia RVS
def write_gaia_rvs_pixels(path, *, seed: int = 0, n_nan: int = 5) -> dict:
    """DataLink-style: one row per pixel, wavelength in nm."""
    rng = np.random.default_rng(seed)
    wavelength = 846.0 + 0.01 * np.arange(2401)
    flux = (1.0 - 0.3 * np.exp(-0.5 * ((wavelength - 849.8) / 0.05) ** 2) + 0.01 * rng.standard_normal(2401)).astype(np.float32)
    flux[:n_nan] = np.nan
    error = np.full(2401, 0.02, dtype=np.float32)
    error[:n_nan] = np.nan
    table = fits.BinTableHDU.from_columns(
        [
            fits.Column(name="source_id", format="K", array=np.full(2401, 4295806720, dtype=np.int64)),
            fits.Column(name="wavelength", format="D", unit="nm", array=wavelength),
            fits.Column(name="flux", format="E", array=flux),
            fits.Column(name="flux_error", format="E", array=error),
        ]
    )
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(path, overwrite=True)
    return {"wavelength_nm": wavelength, "flux": flux, "error": error, "n_nan": n_nan}


def write_gaia_rvs_rows(path, *, seed: int = 0) -> dict:
    """Bulk-style: one row per source with 2401-element flux / flux_error arrays and no wavelength column."""
    rng = np.random.default_rng(seed)
    ids = np.array([1000, 2000], dtype=np.int64)
    flux = (1.0 + 0.01 * rng.standard_normal((2, 2401))).astype(np.float32)
    error = np.full((2, 2401), 0.05, dtype=np.float32)
    table = fits.BinTableHDU.from_columns(
        [
            fits.Column(name="source_id", format="K", array=ids),
            fits.Column(name="solution_id", format="K", array=np.zeros(2, np.int64)),
            fits.Column(name="flux", format="2401E", array=flux),
            fits.Column(name="flux_error", format="2401E", array=error),
        ]
    )
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(path, overwrite=True)
    return {"ids": ids, "flux": flux, "error": error}


# ---------------------------------------------------------------------------- generic
def write_generic_table(path, *, wavelength, flux, error=None, ivar=None, names=("WAVE", "FLUX", "ERROR"),
                        wave_unit: str | None = None, header: dict | None = None, mask=None) -> None:
    cols = [
        fits.Column(name=names[0], format="D", unit=wave_unit, array=np.asarray(wavelength, np.float64)),
        fits.Column(name=names[1], format="D", array=np.asarray(flux, np.float64)),
    ]
    if error is not None:
        cols.append(fits.Column(name=names[2], format="D", array=np.asarray(error, np.float64)))
    if ivar is not None:
        cols.append(fits.Column(name="IVAR", format="D", array=np.asarray(ivar, np.float64)))
    if mask is not None:
        cols.append(fits.Column(name="MASK", format="J", array=np.asarray(mask, np.int32)))
    table = fits.BinTableHDU.from_columns(cols, name="SPEC")
    for key, value in (header or {}).items():
        table.header[key] = value
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(path, overwrite=True)


def write_generic_image(path, *, flux, header: dict, error=None, ivar=None, error_name: str = "ERROR") -> None:
    primary = fits.PrimaryHDU(np.asarray(flux, np.float32))
    for key, value in header.items():
        primary.header[key] = value
    hdus = [primary]
    if error is not None:
        hdus.append(fits.ImageHDU(np.asarray(error, np.float32), name=error_name))
    if ivar is not None:
        hdus.append(fits.ImageHDU(np.asarray(ivar, np.float32), name="IVAR"))
    fits.HDUList(hdus).writeto(path, overwrite=True)


def write_text_spectrum(path, *, wavelength, flux, error=None, names=("wavelength", "flux", "error"),
                        delimiter: str = " ", comments=(), header: bool = True, extra: dict | None = None) -> None:
    """A plain-text/CSV spectrum: optional '#' comment lines, an optional header line, one row per pixel.

    ``extra`` adds columns (name -> values, written first, like Gaia's source_id); NaN is written as 'nan'.
    """
    columns = dict(extra or {})
    columns[names[0]] = np.asarray(wavelength, np.float64)
    columns[names[1]] = np.asarray(flux, np.float64)
    if error is not None:
        columns[names[2]] = np.asarray(error, np.float64)
    lines = [f"# {line}" for line in comments]
    if header:
        lines.append(delimiter.join(columns))
    n = len(columns[names[0]])
    for i in range(n):
        lines.append(delimiter.join(repr(float(v[i])) if np.asarray(v).dtype.kind == "f" else str(v[i]) for v in columns.values()))
    with open(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")


def truncate(path) -> None:
    """Cut a file in half (a download that stopped midway)."""
    with open(path, "rb") as handle:
        data = handle.read()
    with open(path, "wb") as handle:
        handle.write(data[: len(data) // 2])
