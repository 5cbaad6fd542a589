"""The JAX LTE spectral synthesizer: line windows, opacity assembly, entry points.

Owns :class:`JaxLTESynthesizer` (a line list pre-processed for one vacuum
wavelength grid, with a jit-compiled, vmappable, differentiable
``synthesize``), the one-shot function :func:`synthesize` and the defaults
for window planning.

Per star: molecule-free LTE number densities (:mod:`.atomic`), continuum
opacity (:mod:`.continuum`) on a coarse grid (``continuum_step`` A) linearly
interpolated to the pixels, line opacity (below), optical depth on the
column-mass scale and the flux integral (:mod:`.transfer`) with S = B_lambda;
normalized flux = flux with lines / flux of the continuum alone (the latter
also on the coarse grid).

How line opacity is assembled without a dense (lines x wavelengths x depths)
tensor:

1. Planning (NumPy, once per line list and wavelength grid) from *reference*
   atmospheres and abundances that bracket the stars to be synthesized (by
   default: corners of the default label space through the atmosphere
   network, every element at its largest abundance).  Per line: the
   line-centre optical depth the flux sees, sum over layers of
   (kappa_line / kappa_c) exp(-tau_c) d tau_c, and the distance where that
   optical depth falls below ``wing_ratio`` (Gaussian core and Lorentzian
   wing estimates, at least ``min_half_width_doppler`` Doppler widths).
   Lines below ``cull_ratio`` in every reference are dropped.
2. "Weak" lines (below ``weak_ratio``) get one Voigt profile per star, with
   the Doppler width and damping averaged over the layers where the line
   forms (weights d tau_line times the flux response function of the layer),
   multiplied by the per-layer integrated opacity: (lines x pixels) profile
   evaluations instead of (lines x pixels x depths), equivalent widths exact
   for optically thin lines.  "Strong" lines get a Humlicek W4 profile per
   layer.
3. Windows are regular: lines are grouped in tiers of equal half-width
   (2, 3, 4, 6, 8, 12, ... pixels), and each tier is a (lines x pixels)
   block processed by ``lax.scan`` over chunks of ``chunk_pairs`` (line,
   pixel) pairs, scatter-added into the (wavelengths x depths) opacity.
4. Lines that reach beyond their Voigt core (5.5 Doppler widths in the
   hottest reference layer at the largest vmic) get their far wings, up to
   ``max_half_width``, from the asymptotic Lorentzian series, which separates
   into depth factors times 1/dlambda^2 and 1/dlambda^4: one FFT convolution
   of "combs" of line amplitudes for all of them together (uniform
   wavelength grids; on other grids the far-wing Humlicek formula is
   evaluated pixel by pixel).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from scipy import fft as scipy_fft

from . import constants as const
from .atomic import number_densities
from .continuum import continuum_opacity, planck_lambda
from .lines import LineData, line_depth_quantities, prepare_lines
from .transfer import emergent_flux, optical_depth
from .voigt import voigt_h, voigt_wing

__all__ = [
    "JaxLTESynthesizer",
    "WindowOptions",
    "check_atmosphere",
    "default_reference_abundances",
    "default_reference_atmospheres",
    "synthesize",
]

_CORE_HALF_WIDTH_DOPPLER = 5.5  # Humlicek regions 1-2 hold beyond |v| + a >= 5.5
_TAU_REFERENCE_MAX = 5.0


@dataclass(frozen=True)
class WindowOptions:
    """Accuracy/speed knobs of the line windows.

    Attributes:
        cull_ratio: drop lines whose line-centre optical depth seen by the
            flux, sum over layers of (kappa_line / kappa_c) exp(-tau_c) d tau_c,
            stays below this in every reference atmosphere.
        wing_ratio: a line's window ends where that optical depth, evaluated
            at the distance from the line centre, falls below this.
        weak_ratio: lines whose line-centre optical depth (as above) stays
            below this are "weak": one Voigt profile (Doppler width and
            damping averaged over the layers where the line forms) times the
            per-layer integrated opacity, which keeps their equivalent widths
            exact in the optically thin limit.
        max_half_width: cap on a line's window half-width [A].
        min_half_width_doppler: smallest half-width in Doppler widths.
        chunk_pairs: (line, pixel) pairs per scan step.
        vmic_range: (min, max) microturbulence [km/s] the windows must serve.
        continuum_step: spacing of the coarse continuum grid [A].
        n_mu: Gauss-Legendre angles of the flux integral.
    """

    cull_ratio: float = 1e-3
    wing_ratio: float = 1e-3
    weak_ratio: float = 1.0
    max_half_width: float = 30.0
    min_half_width_doppler: float = 3.0
    chunk_pairs: int = 8192
    vmic_range: tuple[float, float] = (0.5, 3.0)
    continuum_step: float = 2.0
    n_mu: int = 4


@dataclass(frozen=True)
class _Segment:
    """One regular block of (line, pixel) pairs, scanned in chunks."""

    line_index: np.ndarray  # (n_chunks, C) int32
    pixel_index: np.ndarray  # (n_chunks, C, K) int32
    offset: np.ndarray  # (n_chunks, C, K) float64, lambda_pixel - lambda_line [A]
    weight: np.ndarray  # (n_chunks, C, K) 1 for a real pair, 0 for padding
    mode: str  # "weak": one profile for all depths; "core": W4 per depth; "wing": far-wing formula per depth

    @property
    def n_pairs(self) -> int:
        return int(self.weight.sum())


def _atmosphere_rows(atmosphere):
    """(column_mass, T, P, n_e) rows of an atmosphere array (..., >=4, n_depth).

    The column mass is made strictly increasing (running maximum of ln m plus
    1e-6 per layer): network atmospheres can wiggle in their deepest layers,
    where it does not matter for the emergent spectrum.
    """
    log_m = jax.lax.cummax(jnp.log(atmosphere[..., 0, :]), axis=atmosphere.ndim - 2)
    ramp = 1e-6 * jnp.arange(atmosphere.shape[-1], dtype=atmosphere.dtype)
    m = jnp.exp(log_m + ramp)
    return m, atmosphere[..., 1, :], atmosphere[..., 2, :], atmosphere[..., 3, :]


def check_atmosphere(atmosphere: np.ndarray) -> None:
    """Raise ValueError if an atmosphere array (..., >=4, n_depth) is unusable.

    Rows: column mass [g/cm2] (positive, increasing from top to bottom; small
    wiggles in deep layers are tolerated), T [K], P_gas [dyn/cm2], n_e [cm^-3].
    """
    atm = np.asarray(atmosphere)
    if atm.ndim < 2 or atm.shape[-2] < 4 or atm.shape[-1] < 3:
        raise ValueError(
            f"atmosphere must have shape (..., >=4, n_depth) with rows column_mass, T, P_gas, n_e "
            f"(top first); got {atm.shape}"
        )
    rows = atm[..., :4, :]
    if not np.all(np.isfinite(rows)):
        raise ValueError("atmosphere contains NaN or inf (check the atmosphere model / its labels)")
    m, t, p, ne = (rows[..., i, :] for i in range(4))
    if np.any(m <= 0) or np.any(m[..., -1] <= m[..., 0]):
        raise ValueError("atmosphere column mass must be positive and increase with depth (top first)")
    if np.any(t < 1000.0) or np.any(t > 100000.0):
        raise ValueError(f"atmosphere temperatures must lie in 1000-100000 K; got {t.min():.0f}-{t.max():.0f} K")
    if np.any(p <= 0) or np.any(ne <= 0):
        raise ValueError("atmosphere gas pressure and electron density must be positive")
    n_total = p / (const.K_BOLTZMANN * t)
    if np.any(ne >= n_total):
        raise ValueError("atmosphere electron density exceeds the total particle density P/(kT)")


def _uniform_virtual_index(wave: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """Nearest pixel index of each wavelength, extrapolated beyond the grid edges."""
    n = wave.size
    idx = np.clip(np.searchsorted(wave, lam), 1, n - 1)
    nearest = np.where(np.abs(lam - wave[idx - 1]) <= np.abs(wave[idx] - lam), idx - 1, idx)
    lo_step = wave[1] - wave[0]
    hi_step = wave[-1] - wave[-2]
    below = lam < wave[0]
    above = lam > wave[-1]
    nearest = np.where(below, -np.round((wave[0] - lam) / lo_step).astype(np.int64), nearest)
    nearest = np.where(above, n - 1 + np.round((lam - wave[-1]) / hi_step).astype(np.int64), nearest)
    return nearest.astype(np.int64)


def _build_segment(wave, lam, center, offsets_k, line_ids, chunk_pairs, mode) -> _Segment:
    """Regular block of lines ``line_ids`` over relative pixels ``offsets_k``."""
    n = wave.size
    k = offsets_k.size
    per_chunk = max(1, chunk_pairs // k)
    n_chunks = -(-line_ids.size // per_chunk)
    padded = n_chunks * per_chunk
    ids = np.zeros(padded, np.int64)
    ids[: line_ids.size] = line_ids
    real = np.zeros(padded, bool)
    real[: line_ids.size] = True
    pix = center[ids][:, None] + offsets_k[None, :]
    valid = (pix >= 0) & (pix < n) & real[:, None]
    pix_c = np.clip(pix, 0, n - 1)
    offset = np.where(valid, wave[pix_c] - lam[ids][:, None], 1.0)
    return _Segment(
        line_index=ids.reshape(n_chunks, per_chunk).astype(np.int32),
        pixel_index=pix_c.reshape(n_chunks, per_chunk, k).astype(np.int32),
        offset=offset.reshape(n_chunks, per_chunk, k),
        weight=valid.reshape(n_chunks, per_chunk, k).astype(np.float64),
        mode=mode,
    )


def _reference_line_extent(lines: LineData, atmospheres, abundances, vmic_range):
    """Line strength and width statistics over reference atmospheres.

    For every (reference, vmic) pair yields ``(tau_centre, lorentz, doppler, hot)``
    with, per line, the line-centre optical depth seen by the emergent flux,
    tau_centre = sum_layers (kappa_line(centre) / kappa_c) exp(-tau_c) d tau_c;
    the Lorentz-wing coefficient lorentz = sum_layers (K / alpha_c) a
    Delta lambda_D^2 / sqrt(pi) exp(-tau_c) d tau_c [A^2] (the wing optical
    depth at a distance d lambda is lorentz / d lambda^2); the largest Doppler
    width [A] among layers with tau_c <= 5; and the hottest such layer [K].
    """
    lam = jnp.asarray(lines.wavelength)

    @jax.jit
    def one(atm, abund, vmic):
        m, t, p, ne = _atmosphere_rows(atm)
        nd = number_densities(t, p, ne, abund)
        log_n = nd["log_stage_density"]
        n_hi = jnp.exp(log_n[:, 0, 0])
        absorption, scattering = continuum_opacity(lam, t, ne, log_n[:, 0, 0], nd["log_u"][:, 0, 0], log_n[:, 0, 1])
        alpha_c = absorption + scattering  # (L, D)
        tau_c = optical_depth(alpha_c / nd["mass_density"], m)
        log_scale, doppler, damping = line_depth_quantities(
            lines, t, ne, log_n, nd["log_u"], n_hi, vmic, jnp.exp(log_n[:, 1, 0])
        )
        ratio = jnp.exp(log_scale) / alpha_c  # line opacity / continuum = ratio * H(a, v)
        weight = jnp.exp(-tau_c) * jnp.gradient(tau_c, axis=-1)
        tau_centre = jnp.sum(ratio * voigt_h(damping, jnp.zeros_like(damping)) * weight, axis=-1)
        lorentz = jnp.sum(ratio * damping * doppler**2 * weight, axis=-1) / math.sqrt(math.pi)
        used = tau_c <= _TAU_REFERENCE_MAX
        hot = jnp.max(jnp.where(used, t[None, :], 0.0))
        return tau_centre, lorentz, jnp.max(jnp.where(used, doppler, 0.0), axis=-1), hot

    for atm, abund in zip(atmospheres, abundances, strict=True):
        for vmic in vmic_range:
            yield tuple(np.asarray(x) for x in one(atm, abund, vmic))


def _fft_wing_plan(wave, lam, center, groups, reach):
    """Static data of the FFT far-wing convolution (uniform grids).

    Far wings (beyond a group's core half-width, >= 5.5 Doppler widths of its
    lines in the hottest reference layer at the largest vmic) use
    H(a, v) ~ (a / sqrt(pi)) (1/v^2 + 3/(2 v^4)) (the asymptotic series of
    Re w(z); relative error < 0.5% at the core edge, less further out),
    separable into a per-line depth factor times 1/dlambda^2 and
    1/dlambda^4: the sum over lines is a convolution of "combs" of line
    amplitudes with fixed kernels, done by FFT.  A line sits at pixel
    c + delta (|delta| <= 1/2); 1/(k - delta)^2 is expanded to
    1/k^2 + 2 delta/k^3 + 3 delta^2/k^4.  Kernels reach ``reach`` pixels.

    groups: list of (line indices, core half-width in pixels).
    """
    h = float(np.mean(np.diff(wave)))
    n = wave.size
    margin = int(reach)
    n_comb = n + 2 * margin + 1
    n_fft = int(scipy_fft.next_fast_len(n_comb + 2 * margin + 1, real=True))
    k = np.arange(-margin, margin + 1)
    out = []
    for ids, core in groups:
        outside = np.abs(k) > core
        kf = np.where(outside, k, 1).astype(np.float64)
        kernels = np.zeros((3, n_fft))
        for row, values in enumerate((1.0 / (h * kf) ** 2, 1.0 / (h**2 * kf**3), 1.0 / (h**2 * kf**4))):
            kernels[row, k % n_fft] = np.where(outside, values, 0.0)
        out.append(
            {
                "line_index": ids.astype(np.int32),
                "comb_index": (center[ids] + margin).astype(np.int32),
                "delta": (lam[ids] - wave[0]) / h - center[ids],  # fractional pixel offset
                "kernel_spectra": np.fft.rfft(kernels, axis=-1),
                "core": core,
            }
        )
    return {"groups": out, "margin": margin, "n_fft": n_fft, "n_comb": n_comb, "step": h}


class JaxLTESynthesizer:
    """A line list pre-processed for one vacuum wavelength grid.

    Call :meth:`synthesize` (jit-compiled, vmappable, differentiable) with
    atmosphere arrays, abundances and vmic; or :meth:`__call__`, which checks
    concrete inputs first and raises on bad ones.

    Args:
        linelist: object or mapping with ``wavelength_vacuum``,
            ``excitation_potential``, ``log_gf``, ``damping``,
            ``gamma_radiative``, ``atomic_number``, ``ion`` arrays (e.g. a
            ``stellarfit.synth.linelist.LineList``).
        wavelengths: (n_wave,) increasing vacuum wavelengths [A].
        reference_atmospheres: (n_ref, >=4, n_depth) atmospheres bracketing
            the stars to synthesize (rows column mass, T, P_gas, n_e), used to
            plan line windows; default: :func:`default_reference_atmospheres`.
        reference_abundances: (n_ref, 92) or (92,) A(X) for the references;
            default: :func:`default_reference_abundances` (every element at
            the top of the default label space), so that no line any star
            needs is dropped.
        options: :class:`WindowOptions`.
        coverage: (lo, hi) vacuum wavelengths [A] the line list is complete
            for; default: its first and last line -/+ 5 A.

    Raises:
        ValueError: wavelengths not increasing, not finite, or outside the
            line list's coverage; a malformed line list.
    """

    def __init__(
        self,
        linelist: Any,
        wavelengths: np.ndarray,
        reference_atmospheres: np.ndarray | None = None,
        reference_abundances: np.ndarray | None = None,
        options: WindowOptions | None = None,
        coverage: tuple[float, float] | None = None,
    ) -> None:
        self.options = options or WindowOptions()
        opts = self.options
        wave = np.asarray(wavelengths, dtype=np.float64)
        if wave.ndim != 1 or wave.size < 2:
            raise ValueError(f"wavelengths must be a 1-D array of at least 2 values; got shape {wave.shape}")
        if not np.all(np.isfinite(wave)) or np.any(np.diff(wave) <= 0):
            raise ValueError("wavelengths must be finite and strictly increasing (vacuum Angstrom)")
        self.wavelengths = wave
        all_lines = prepare_lines(linelist)
        if len(all_lines) == 0:
            raise ValueError("the line list has no usable (non-hydrogen atomic) lines")
        lo, hi = coverage if coverage is not None else (all_lines.wavelength.min() - 5.0, all_lines.wavelength.max() + 5.0)
        if wave[0] < lo or wave[-1] > hi:
            raise ValueError(
                f"wavelengths {wave[0]:.2f}-{wave[-1]:.2f} A (vacuum) reach beyond the line list coverage "
                f"{lo:.2f}-{hi:.2f} A; use a line list covering the window or a narrower window"
            )
        margin = opts.max_half_width
        lines = all_lines.subset((all_lines.wavelength >= wave[0] - margin) & (all_lines.wavelength <= wave[-1] + margin))

        if reference_atmospheres is None:
            reference_atmospheres = default_reference_atmospheres()
        ref_atm = np.asarray(reference_atmospheres, dtype=np.float64)
        if ref_atm.ndim == 2:
            ref_atm = ref_atm[None]
        check_atmosphere(ref_atm)
        if reference_abundances is None:
            reference_abundances = default_reference_abundances()
        ref_ab = np.broadcast_to(np.asarray(reference_abundances, np.float64), (ref_atm.shape[0], 92))

        self._plan(lines, ref_atm, ref_ab)
        self._synthesize_jit = jax.jit(self._synthesize_batch)

    # ------------------------------------------------------------------ planning
    def _plan(self, lines: LineData, ref_atm: np.ndarray, ref_ab: np.ndarray) -> None:
        opts = self.options
        wave = self.wavelengths
        eps = opts.wing_ratio
        strength = np.zeros(len(lines))
        lorentz = np.zeros(len(lines))
        max_doppler = np.zeros(len(lines))
        hottest = 0.0
        with jax.enable_x64(True):
            for tau_centre, lor, doppler, hot in _reference_line_extent(lines, ref_atm, ref_ab, opts.vmic_range):
                strength = np.maximum(strength, tau_centre)
                lorentz = np.maximum(lorentz, lor)
                max_doppler = np.maximum(max_doppler, doppler)
                hottest = max(hottest, float(hot))
        keep = strength >= opts.cull_ratio
        weak = strength < opts.weak_ratio
        # window half-width [A]: where the line's optical depth falls below wing_ratio
        # (Gaussian core and Lorentzian wing estimates), at least a few Doppler widths
        reach = max_doppler * np.sqrt(np.log(np.maximum(strength / eps, 1.0)))
        reach = np.maximum(reach, np.sqrt(lorentz / eps))
        reach = np.maximum(reach, opts.min_half_width_doppler * max_doppler)
        reach = np.minimum(reach, opts.max_half_width)
        # a line matters only if its window reaches the grid
        keep &= (lines.wavelength + reach >= wave[0]) & (lines.wavelength - reach <= wave[-1])
        lines = lines.subset(keep)
        reach = reach[keep]
        weak = weak[keep]
        self.lines = lines
        self.n_lines_input = int(keep.size)
        self.n_lines = len(lines)
        lam = lines.wavelength
        center = _uniform_virtual_index(wave, lam)
        step = np.diff(wave)
        local_step = step[np.clip(center, 0, step.size - 1)]
        half_pixels = np.maximum(np.ceil(reach / local_step).astype(np.int64), 1)
        # Doppler width bound for the core/wing split: hottest used reference layer, largest vmic
        b_max = np.sqrt(2.0 * const.K_BOLTZMANN * hottest / (lines.mass * const.AMU) + (opts.vmic_range[1] * 1e5) ** 2)
        core_pixels = np.ceil(_CORE_HALF_WIDTH_DOPPLER * lam * b_max / const.C_LIGHT / local_step).astype(np.int64)

        steps = np.diff(wave)
        uniform = bool(np.all(np.abs(steps - steps.mean()) <= 1e-6 * steps.mean()))
        strong = ~weak
        # lines reaching beyond their Voigt core get analytic far wings by FFT
        # (uniform grids), all with one common core half-width
        needs_wings = half_pixels > core_pixels
        core_all = int(core_pixels[needs_wings].max()) if np.any(needs_wings) else 0
        fft_lines = (half_pixels > core_all) if uniform else np.zeros_like(weak)

        segments: list[_Segment] = []
        tiers = [2, 3]  # half-widths 2, 3, 4, 6, 8, 12, 16, 24, ... pixels
        while tiers[-1] < half_pixels.max():
            tiers.append(tiers[-2] * 2)
        tier_of = np.searchsorted(np.array(tiers), half_pixels)
        tier_info = []
        for t, width in enumerate(tiers):
            k_all = np.arange(-width, width + 1)
            ids = np.nonzero((tier_of == t) & weak & ~fft_lines)[0]
            if ids.size:
                segments.append(_build_segment(wave, lam, center, k_all, ids, opts.chunk_pairs, "weak"))
                tier_info.append(("weak", width, int(ids.size), 0))
            ids = np.nonzero((tier_of == t) & strong & ~fft_lines)[0]
            if ids.size == 0:
                continue
            core = int(min(width, core_pixels[ids].max()))
            k_core = np.arange(-core, core + 1)
            segments.append(_build_segment(wave, lam, center, k_core, ids, opts.chunk_pairs, "core"))
            if width > core:  # non-uniform grids only: far wings pixel by pixel
                k_wing = np.concatenate([np.arange(-width, -core), np.arange(core + 1, width + 1)])
                segments.append(_build_segment(wave, lam, center, k_wing, ids, opts.chunk_pairs, "wing"))
            tier_info.append(("strong", width, int(ids.size), core))
        self._fft = None
        if np.any(fft_lines):
            # two groups by core width (most lines need less than the light elements)
            fft_ids = np.nonzero(fft_lines)[0]
            split = int(np.ceil(np.quantile(core_pixels[fft_ids], 0.9)))
            groups = []
            for members in (core_pixels[fft_ids] <= split, core_pixels[fft_ids] > split):
                ids = fft_ids[members]
                if ids.size == 0:
                    continue
                core_g = int(core_pixels[ids].max())
                k_core = np.arange(-core_g, core_g + 1)
                for mode, kind in (("weak", weak), ("core", strong)):
                    sel = ids[kind[ids]]
                    if sel.size:
                        segments.append(_build_segment(wave, lam, center, k_core, sel, opts.chunk_pairs, mode))
                groups.append((ids, core_g))
                tier_info.append(("fft wings", int(half_pixels.max()), int(ids.size), core_g))
            self._fft = _fft_wing_plan(wave, lam, center, groups, int(half_pixels.max()))
        self.segments = segments
        self.tiers = tier_info

        # coarse continuum grid and linear interpolation weights
        n_coarse = max(2, int(math.ceil((wave[-1] - wave[0]) / opts.continuum_step)) + 1)
        coarse = np.linspace(wave[0], wave[-1], n_coarse)
        j = np.clip(np.searchsorted(coarse, wave) - 1, 0, n_coarse - 2)
        w = (wave - coarse[j]) / (coarse[j + 1] - coarse[j])
        self._coarse = coarse
        self._interp_index = j.astype(np.int32)
        self._interp_weight = w
        lam_c = np.clip(lam, coarse[0], coarse[-1])
        lj = np.clip(np.searchsorted(coarse, lam_c) - 1, 0, n_coarse - 2)
        self._line_coarse_index = lj.astype(np.int32)
        self._line_coarse_weight = (lam_c - coarse[lj]) / (coarse[lj + 1] - coarse[lj])

    def summary(self) -> dict:
        """Counts that describe the plan (lines kept, (line, pixel) pairs per kind, tiers)."""
        pairs = {mode: sum(g.n_pairs for g in self.segments if g.mode == mode) for mode in ("weak", "core", "wing")}
        return {
            "n_wavelengths": int(self.wavelengths.size),
            "n_lines_in_range": self.n_lines_input,
            "n_lines_kept": self.n_lines,
            "n_lines_weak": int(len({int(i) for g in self.segments if g.mode == "weak" for i in np.unique(g.line_index[g.weight.sum(-1) > 0])})),
            "pairs": pairs,
            "tiers": [
                {"kind": kind, "half_width_pixels": w, "n_lines": n, "core_half_width_pixels": c}
                for kind, w, n, c in self.tiers
            ],
        }

    # ---------------------------------------------------------------- synthesis
    def _line_opacity(self, dtype, log_strength, doppler, damping, layer_weight, n_wave):
        """Line opacity per unit mass, (n_wave, n_depth).

        log_strength: (L, D) ln of the integrated line opacity per unit mass
        [cm^2 g^-1 A]; doppler, damping: (L, D); layer_weight: (L, D) weights
        (summing to 1 over layers) of the layers where each line forms, which
        set the single profile of weak lines.
        """
        n_depth = log_strength.shape[-1]
        strength = jnp.exp(log_strength)
        norm = 1.0 / (math.sqrt(math.pi) * doppler)  # (L, D) profile normalization [1/A]
        doppler_rep = jnp.sqrt(jnp.sum(doppler**2 * layer_weight, axis=-1))  # (L,) rms over layers
        damping_rep = jnp.sum(damping * layer_weight, axis=-1)
        acc = jnp.zeros((n_wave, n_depth), dtype)
        for seg in self.segments:

            def body(acc, chunk, mode=seg.mode):
                ids, pix, off, wgt = chunk
                s_l = strength[ids]  # (C, D)
                if mode == "weak":
                    dw = doppler_rep[ids][:, None]  # (C, 1)
                    phi = voigt_h(damping_rep[ids][:, None], off / dw) * (wgt / (math.sqrt(math.pi) * dw))
                    contrib = phi[:, :, None] * s_l[:, None, :]
                else:
                    dw = doppler[ids][:, None, :]  # (C, 1, D)
                    a = damping[ids][:, None, :]
                    profile_fn = voigt_wing if mode == "wing" else voigt_h
                    h = profile_fn(a, off[:, :, None] / dw)
                    contrib = h * (s_l * norm[ids])[:, None, :] * wgt[:, :, None]
                return acc.at[pix].add(contrib), None

            xs = (
                jnp.asarray(seg.line_index),
                jnp.asarray(seg.pixel_index),
                jnp.asarray(seg.offset, dtype),
                jnp.asarray(seg.weight, dtype),
            )
            acc, _ = jax.lax.scan(body, acc, xs)
        if self._fft is not None:
            acc = acc + self._fft_wings(dtype, strength, doppler, damping)
        return acc

    def _fft_wings(self, dtype, strength, doppler, damping):
        """Far-wing opacity (n_wave, n_depth) of the FFT lines, see :func:`_fft_wing_plan`."""
        plan = self._fft
        n_depth = strength.shape[-1]
        h = plan["step"]
        total = None
        for group in plan["groups"]:
            ids = jnp.asarray(group["line_index"])
            s_l, dw, a = strength[ids], doppler[ids], damping[ids]  # (Lg, D)
            # a / (sqrt(pi) (v^2 + a^2)) at the core edge v_c, so layers with a >~ 1
            # (deep, Stark-broadened) stay bounded; exact to O(a^2 / v_c^2) elsewhere
            v_core = group["core"] * h / dw
            a2 = s_l * a * dw / (math.pi * (1.0 + (a / v_core) ** 2))  # amplitude of 1/dlambda^2
            a4 = 1.5 * a2 * dw * dw  # amplitude of 1/dlambda^4
            delta = jnp.asarray(group["delta"], dtype)[:, None]
            pos = jnp.asarray(group["comb_index"])
            combs = jnp.zeros((3, plan["n_comb"], n_depth), dtype)
            combs = combs.at[0, pos].add(a2)
            combs = combs.at[1, pos].add(2.0 * delta * a2)
            combs = combs.at[2, pos].add(3.0 * delta * delta * a2 + a4 / h**2)
            spectra = jnp.fft.rfft(combs, n=plan["n_fft"], axis=1)  # (3, F, D)
            kernel = jnp.asarray(group["kernel_spectra"]).astype(spectra.dtype)[:, :, None]
            product = jnp.sum(spectra * kernel, axis=0)
            total = product if total is None else total + product
        result = jnp.fft.irfft(total, n=plan["n_fft"], axis=0)  # (n_fft, D)
        n = self.wavelengths.size
        return result[plan["margin"] : plan["margin"] + n].astype(dtype)

    def _synthesize_single(self, atmosphere, abundances, vmic):
        dtype = atmosphere.dtype
        m, t, p, ne = _atmosphere_rows(atmosphere)
        nd = number_densities(t, p, ne, abundances)
        log_n = nd["log_stage_density"]
        rho = nd["mass_density"]
        n_hi = jnp.exp(log_n[:, 0, 0])
        wave = jnp.asarray(self.wavelengths, dtype)
        coarse = jnp.asarray(self._coarse, dtype)
        absorption, scattering = continuum_opacity(coarse, t, ne, log_n[:, 0, 0], nd["log_u"][:, 0, 0], log_n[:, 0, 1])
        kappa_c_coarse = (absorption + scattering) / rho  # (Nc, D)
        j = jnp.asarray(self._interp_index)
        w = jnp.asarray(self._interp_weight, dtype)[:, None]
        kappa_c = kappa_c_coarse[j] * (1.0 - w) + kappa_c_coarse[j + 1] * w  # (N, D)
        tau_c = optical_depth(kappa_c_coarse, m)  # (Nc, D)

        log_scale, doppler, damping = line_depth_quantities(self.lines, t, ne, log_n, nd["log_u"], n_hi, vmic, jnp.exp(log_n[:, 1, 0]))
        # integrated line opacity per unit mass: K sqrt(pi) Delta lambda_D / rho
        log_strength = log_scale + jnp.log(math.sqrt(math.pi) * doppler) - jnp.log(rho)[None, :]
        # where each weak line forms: weights d tau_line exp(-tau_c) over layers
        lj = jnp.asarray(self._line_coarse_index)
        lw = jnp.asarray(self._line_coarse_weight, dtype)[:, None]
        tau_line_c = tau_c[lj] * (1.0 - lw) + tau_c[lj + 1] * lw  # (L, D) continuum tau at each line
        log_dm = jnp.log(jnp.gradient(m))
        s_line = planck_lambda(jnp.asarray(self.lines.wavelength, dtype)[:, None], t[None, :])  # (L, D)
        ds = jnp.diff(s_line, axis=-1)
        tmid = 0.5 * (tau_line_c[:, 1:] + tau_line_c[:, :-1])
        e2 = jnp.exp(-tmid) / (tmid + 1.0)
        g = jnp.cumsum((ds * e2)[:, ::-1], axis=-1)[:, ::-1]
        g = jnp.concatenate([g, jnp.zeros_like(g[:, :1])], axis=-1)
        g = jnp.maximum(g, 1e-30 * s_line)
        layer_weight = jax.nn.softmax(log_strength + log_dm[None, :] + jnp.log(g), axis=-1)  # (L, D)
        kappa_l = self._line_opacity(dtype, log_strength, doppler, damping, layer_weight, wave.shape[0])

        tau = optical_depth(kappa_c + kappa_l, m)
        source = planck_lambda(wave[:, None], t[None, :])
        flux = emergent_flux(source, tau, self.options.n_mu)
        flux_c_coarse = emergent_flux(planck_lambda(coarse[:, None], t[None, :]), tau_c, self.options.n_mu)
        flux_c = flux_c_coarse[j] * (1.0 - w[:, 0]) + flux_c_coarse[j + 1] * w[:, 0]
        return flux / flux_c, flux_c

    def _synthesize_batch(self, atmosphere, abundances, vmic):
        batch = atmosphere.shape[:-2]
        if not batch:
            return self._synthesize_single(atmosphere, abundances, vmic)
        atm = atmosphere.reshape((-1,) + atmosphere.shape[-2:])
        ab = jnp.broadcast_to(abundances, batch + (92,)).reshape(-1, 92)
        vm = jnp.broadcast_to(vmic, batch).reshape(-1)
        norm, cont = jax.vmap(self._synthesize_single)(atm, ab, vm)
        return norm.reshape(batch + norm.shape[-1:]), cont.reshape(batch + cont.shape[-1:])

    def synthesize(self, atmosphere, abundances, vmic):
        """Normalized and continuum flux (jit-compiled; vmappable; differentiable).

        Args:
            atmosphere: (..., >=4, n_depth) rows column mass [g cm^-2], T [K],
                P_gas [dyn cm^-2], n_e [cm^-3] (further rows are ignored), top
                first; e.g. the (..., 8, 80) output of the atmosphere network.
            abundances: (..., 92) or (92,) A(X) on the package's solar scale.
            vmic: (...) or scalar microturbulence [km/s].

        Returns:
            normalized_flux: (..., n_wave) flux with lines / continuum flux.
            continuum_flux: (..., n_wave) surface flux F_lambda = 2 pi int I mu dmu
                of the continuum alone [erg s^-1 cm^-2 A^-1].

        dtype follows ``atmosphere`` (float32 by default; float64 under x64).
        No input checks happen here (they cannot inside jit): use ``__call__``.
        """
        atmosphere = jnp.asarray(atmosphere)
        if not jnp.issubdtype(atmosphere.dtype, jnp.floating):
            atmosphere = atmosphere.astype(jnp.result_type(float))
        abundances = jnp.asarray(abundances, atmosphere.dtype)
        vmic = jnp.asarray(vmic, atmosphere.dtype)
        return self._synthesize_jit(atmosphere, abundances, vmic)

    def __call__(self, atmosphere, abundances, vmic):
        """:meth:`synthesize` after checking concrete inputs; raises on NaN output."""
        if not isinstance(atmosphere, jax.core.Tracer):
            check_atmosphere(atmosphere)
        if not isinstance(abundances, jax.core.Tracer):
            ab = np.asarray(abundances)
            if ab.shape[-1:] != (92,) or not np.all(np.isfinite(ab)):
                raise ValueError(f"abundances must be finite A(X) values with last axis 92; got shape {ab.shape}")
        if not isinstance(vmic, jax.core.Tracer):
            vm = np.asarray(vmic)
            if not np.all(np.isfinite(vm)) or np.any(vm < 0) or np.any(vm > 10):
                raise ValueError(f"vmic must be finite and within 0-10 km/s; got {vm}")
        norm, cont = self.synthesize(atmosphere, abundances, vmic)
        if not isinstance(norm, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(norm))):
            raise FloatingPointError(
                "the synthesized spectrum contains NaN/inf although the inputs passed the checks; "
                "please report this with the inputs"
            )
        return norm, cont


def default_reference_atmospheres() -> np.ndarray:
    """Atmospheres bracketing the default label space, for window planning.

    The atmosphere network (``stellarfit.synth.atmospheres``) at the corners
    and centre lines of Teff 4000-7000 K, logg 1-5, [Fe/H] -2.5/+0.5
    ([alpha/Fe] = 0).  Returns (18, 4, 80).
    """
    from ..atmospheres import default_atmosphere_network

    corners = np.array(
        [[teff, logg, fe_h, 0.0] for teff in (4000.0, 5500.0, 7000.0) for logg in (1.0, 3.0, 5.0) for fe_h in (-2.5, 0.5)]
    )
    arrays = default_atmosphere_network().predict_arrays(jnp.asarray(corners, jnp.float32))
    return np.asarray(arrays, dtype=np.float64)[:, :4, :]


def default_reference_abundances(label_spec=None) -> np.ndarray:
    """Largest A(X) of every element over the box of a label spec, (92,).

    The abundance map is linear (A = solar + M @ labels), so each element's
    maximum is solar + sum_j max(M_ij lower_j, M_ij upper_j).  Default: the
    package's default label spec.
    """
    from stellarfit.labels import default_label_spec

    from ..abundances import abundance_matrix

    spec = label_spec if label_spec is not None else default_label_spec()
    solar, matrix = abundance_matrix(spec.names)
    lower = np.asarray(spec.lower, np.float64)[None, :]
    upper = np.asarray(spec.upper, np.float64)[None, :]
    return solar + np.sum(np.maximum(matrix * lower, matrix * upper), axis=1)


def synthesize(
    atmosphere,
    abundances,
    vmic,
    wavelengths_vacuum: Sequence[float] | np.ndarray,
    linelist: Any,
    reference_atmospheres: np.ndarray | None = None,
    options: WindowOptions | None = None,
):
    """One-shot synthesis: plan windows for these stars, then synthesize.

    Args:
        atmosphere: (..., >=4, n_depth) rows column mass, T, P_gas, n_e.
        abundances: (..., 92) A(X).
        vmic: microturbulence [km/s].
        wavelengths_vacuum: (n_wave,) [A].
        linelist: see :class:`JaxLTESynthesizer`.
        reference_atmospheres: atmospheres for window planning; by default the
            input atmospheres themselves (so windows fit exactly these stars).
        options: :class:`WindowOptions`.

    Returns:
        (normalized_flux, continuum_flux), each (..., n_wave).

    For many calls on the same grid build a :class:`JaxLTESynthesizer` once.
    """
    atm = np.asarray(atmosphere, dtype=np.float64)
    check_atmosphere(atm)
    ab = np.asarray(abundances, dtype=np.float64)
    if reference_atmospheres is None:
        reference_atmospheres = atm.reshape((-1,) + atm.shape[-2:])
        ref_ab = np.broadcast_to(ab, atm.shape[:-2] + (92,)).reshape(-1, 92) if atm.ndim > 2 else ab
    else:
        ref_ab = None
    vm = np.asarray(vmic, dtype=np.float64)
    opts = options or WindowOptions()
    if reference_atmospheres is not None and ref_ab is not None:
        lo, hi = float(np.min(vm)), float(np.max(vm))
        opts = WindowOptions(**{**opts.__dict__, "vmic_range": (lo, hi)})
    synth = JaxLTESynthesizer(linelist, wavelengths_vacuum, reference_atmospheres, ref_ab, opts)
    return synth(atmosphere, abundances, vmic)

