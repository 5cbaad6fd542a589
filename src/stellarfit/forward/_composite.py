"""One observation model over several emulators' windows: :class:`CompositeForwardModel`.

A spectrum observed in several wavelength windows, each with its own emulator
(:class:`stellarfit.emulators.composite.CompositeEmulator`), is modelled by one
:class:`~stellarfit.forward.ForwardModel` per window on the observed pixels that window covers,
all evaluated at the same labels, RV and vsini, their outputs joined into the observed pixels'
order.  Each member keeps everything a single model does on its pixels: its own native grid and
resolution, the observation's per-pixel resolution there (anchor LSFs), and its coverage.
Observed pixels that belong to no member get the flat model 1 and no coverage (a fit gives them
zero weight).  The continuum is not part of it (a polynomial per arm and window multiplies it;
:func:`stellarfit.inference.fit_star`).

The class offers what the fits use of a ForwardModel (``__call__``, ``rest_frame``, ``broaden``,
``shift_to_observed``, ``coverage``, ``covered``, ``lsf_data``, ``shared``, ``rv_range``,
``vsini_max``, ``velocity_step``, ``observed_wavelength``), so a
:class:`~stellarfit.inference.FitProblem`, the RV search, MAP, NUTS and the Fisher bounds take it
as they are.  The rest-frame and broadened spectra are tuples, one entry per member.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from stellarfit._precision import full_precision

__all__ = ["CompositeForwardModel"]


class CompositeForwardModel:
    """Several :class:`~stellarfit.forward.ForwardModel` on disjoint subsets of the observed pixels.

    Args:
        members: one ForwardModel per used window, each made for ``observed_wavelength[index]``
            with its ``index``; all with the same ``rv_range`` and ``vsini_max``.
        indices: (n_i,) int positions in the observed pixels of each member's pixels (disjoint).
        observed_wavelength: (n_obs,) all observed pixels [A, vacuum].
        windows: optional (lo, hi) [A] native range of each member's emulator (for reports).

    Attributes: ``member_index`` ((n_obs,) int, the member of each pixel, -1 for none), ``shared``
    (the composite whose compiled programs this one uses: itself, or one made before on the same
    pixels whose members share programs, see :func:`stellarfit.inference.forward_model_for`).
    """

    is_composite = True

    def __init__(self, members: Sequence, indices: Sequence[np.ndarray], observed_wavelength: np.ndarray,
                 windows: Sequence[tuple[float, float]] | None = None):
        members = tuple(members)
        observed = np.asarray(observed_wavelength, dtype=np.float64)
        if not members or len(members) != len(indices):
            raise ValueError(f"a composite forward model needs one pixel index per member, got {len(members)} members "
                             f"and {len(indices)} indices")
        member_index = np.full(observed.size, -1, dtype=np.int64)
        for i, (model, index) in enumerate(zip(members, indices)):
            index = np.asarray(index, dtype=np.int64)
            if index.ndim != 1 or model.observed_wavelength.shape != index.shape or np.any(member_index[index] >= 0):
                raise ValueError(f"member {i}: its pixel index must be disjoint from the others' and match its "
                                 f"{model.observed_wavelength.size} observed pixels")
            if not np.allclose(observed[index], model.observed_wavelength, rtol=1e-12, atol=0):
                raise ValueError(f"member {i} was made for other wavelengths than its pixels'")
            member_index[index] = i
        rv_ranges = {tuple(m.rv_range) for m in members}
        vsini_maxes = {float(m.vsini_max) for m in members}
        if len(rv_ranges) != 1 or len(vsini_maxes) != 1:
            raise ValueError(f"the members must share rv_range and vsini_max, got {sorted(rv_ranges)} and {sorted(vsini_maxes)}")
        self.members = members
        self.indices = tuple(np.asarray(index, dtype=np.int64) for index in indices)
        self.observed_wavelength = observed
        self.member_index = member_index
        self.windows = None if windows is None else tuple((float(lo), float(hi)) for lo, hi in windows)
        self.rv_range = members[0].rv_range
        self.vsini_max = members[0].vsini_max
        self.velocity_step = min(m.velocity_step for m in members)
        self.interpolation = members[0].interpolation
        self.covered = self.coverage(self.rv_range)
        #: what rebuilds this model in worker processes: nothing (a composite stays in this process)
        self.source = None
        self.shared = self
        # the members' outputs, one after the other, then the unmodelled pixels' 1s -> observed order
        outside = np.flatnonzero(member_index < 0)
        self._n_outside = int(outside.size)
        self._order = np.argsort(np.concatenate(list(self.indices) + [outside]), kind="stable").astype(np.int32)

    @property
    def n_obs(self) -> int:
        return int(self.observed_wavelength.size)

    @property
    def resolution_varies(self) -> bool:
        """True when any member's LSF varies from pixel to pixel."""
        return any(m.resolution_varies for m in self.members)

    def lsf_data(self):
        """Each member's per-pixel LSF part (:meth:`ForwardModel.lsf_data`), a tuple (entries None for one LSF)."""
        return tuple(m.lsf_data() for m in self.members)

    def coverage(self, rv_range: tuple[float, float]) -> np.ndarray:
        """(n_obs,) bool: pixels some member models with full kernels for every RV in ``rv_range``."""
        out = np.zeros(self.n_obs, dtype=bool)
        for model, index in zip(self.members, self.indices):
            out[index] = model.coverage(rv_range)
        return out

    def _join(self, pieces):
        """Members' outputs (n_i,) -> (n_obs,) in observed order (1 at pixels of no member)."""
        dtype = jnp.result_type(*[piece.dtype for piece in pieces])
        parts = [piece.astype(dtype) for piece in pieces] + [jnp.ones((self._n_outside,), dtype)]
        return jnp.take(jnp.concatenate(parts), jnp.asarray(self._order))

    def _lsf(self, lsf):
        return self.lsf_data() if lsf is None else lsf

    @full_precision
    def rest_frame(self, labels):
        """Each member's emulator flux on its native slice: a tuple of (n_native_i,)."""
        return tuple(m.shared.rest_frame(labels) for m in self.members)

    @full_precision
    def broaden(self, rest_flux, vsini):
        """Rotation and instrument per member: a tuple of what each :meth:`ForwardModel.broaden` returns."""
        return tuple(m.shared.broaden(flux, vsini) for m, flux in zip(self.members, rest_flux))

    @full_precision
    def shift_to_observed(self, broadened, rv, lsf=None):
        """Doppler shift and interpolation onto the observed pixels, (n_obs,)."""
        return self._join([m.shared.shift_to_observed(b, rv, lsf=part)
                           for m, b, part in zip(self.members, broadened, self._lsf(lsf))])

    @full_precision
    def __call__(self, labels, rv=0.0, vsini=0.0, lsf=None):
        """Normalized model flux at the observed pixels, (n_obs,): every member at the same labels
        (n_labels,), rv and vsini [km/s].  ``lsf``: another composite's :meth:`lsf_data` on the same pixels."""
        return self._join([m.shared(labels, rv, vsini, lsf=part) for m, part in zip(self.members, self._lsf(lsf))])

    def describe_windows(self, weights: np.ndarray | None = None) -> list[dict]:
        """Per member: ``window`` [lo, hi] A and ``n_pixels``, its pixels with ``weights`` > 0
        ((n_obs,), e.g. a fit's ivar; None: its covered pixels)."""
        used = self.covered if weights is None else np.asarray(weights) > 0
        out = []
        for i, index in enumerate(self.indices):
            window = self.windows[i] if self.windows is not None else (
                float(self.observed_wavelength[index].min()), float(self.observed_wavelength[index].max()))
            out.append({"window": [float(window[0]), float(window[1])], "n_pixels": int(np.sum(used[index]))})
        return out
