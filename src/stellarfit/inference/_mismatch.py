"""The ``model_mismatch`` flag: the fit's chi^2 says the model does not describe the star.

The statistic is the fit's chi^2 at the MAP, with the weights the fit used (the observational
noise *plus* the emulator's recorded per-pixel error, when the emulator has one and
``emulator_error`` is on), divided by what that chi^2 would be for a model that describes the
star to within that noise budget:

    ratio = chi2 / (E[chi2] dof / N),  E[chi2] = sum_i [1 - (w_i / ivar_i)(1 - 1 / f)],

over the N fitted pixels, with ivar_i the observation's inverse variance, w_i the fit's weight
and f the spectrum's ivar correlation factor (1 unless it was degraded to the emulator's
resolution: then each pixel's noise variance was counted f times, so that a perfect fit has
E[chi2] ~ N / f; :func:`stellarfit.spectra.degrade_resolution`).  Without degradation and
emulator error the ratio is the reduced chi^2.

Why with the emulator's error: that error is part of the model as the fit uses it -- the
errors already include it -- so the flag says "the residuals exceed the whole error budget",
i.e. the reported errors (statistical only) are too small.  Without it, every spectrum at
S/N above ~1 / (the emulator error) would be flagged for the emulator's known imperfection.

The threshold.  For N ~ 10^4 pixels a reduced chi^2 of 1.05 is already 3.5 sigma from 1
(sigma = sqrt(2 / dof)), yet harmless: errors 2.5% too small.  A ratio above
:data:`MODEL_MISMATCH_RATIO` = 1.5 means residual variance at least half the noise budget
beyond it, errors too small by >= 22% even if that excess were white noise, and by much more
as it is not (it sits in lines, correlated over pixels).  It must also be significant for
small N: ratio > 1 + :data:`MODEL_MISMATCH_SIGMAS` sqrt(2 f / dof), a 5-sigma excess
(correlated pixels: the chi^2's variance grows by up to f).
"""

from __future__ import annotations

import numpy as np

__all__ = ["MODEL_MISMATCH_RATIO", "MODEL_MISMATCH_SIGMAS", "chi2_mismatch"]

#: chi^2 / its expectation above which a fit is flagged ``model_mismatch`` (see the module docstring)
MODEL_MISMATCH_RATIO = 1.5
#: ... and only when it is also this many standard deviations above 1 (small numbers of pixels)
MODEL_MISMATCH_SIGMAS = 5.0


def chi2_mismatch(chi2: float, dof: int, fit_ivar, ivar, correlation_factor: float = 1.0) -> dict:
    """The model-mismatch statistic of a fit and its verdict.

    Args:
        chi2: the fit's chi^2 at the MAP (weights ``fit_ivar``).
        dof: degrees of freedom (fitted pixels less fitted parameters).
        fit_ivar: (n,) the fit's weights (noise and emulator error; 0 = not fitted).
        ivar: (n,) the observation's inverse variance (0 = not fitted).
        correlation_factor: f, the ivar correlation factor of a degraded spectrum (1 otherwise).

    Returns {"chi2_ratio", "reduced_chi2_expected", "chi2_ratio_threshold", "model_mismatch"}:
    the ratio of chi^2 to its expectation, the reduced chi^2 a describing model would have,
    the threshold the ratio was held against, and whether it exceeds it.
    """
    fit_ivar = np.asarray(fit_ivar, dtype=np.float64)
    ivar = np.asarray(ivar, dtype=np.float64)
    used = (fit_ivar > 0) & (ivar > 0)
    f = float(correlation_factor) if np.isfinite(correlation_factor) and correlation_factor >= 1.0 else 1.0
    n = int(used.sum())
    per_pixel = 1.0 - fit_ivar[used] / ivar[used] * (1.0 - 1.0 / f)
    expected_reduced = float(per_pixel.mean()) if n else 1.0
    dof = max(int(dof), 1)
    ratio = float(chi2) / dof / expected_reduced if expected_reduced > 0 else float("nan")
    threshold = max(MODEL_MISMATCH_RATIO, 1.0 + MODEL_MISMATCH_SIGMAS * np.sqrt(2.0 * f / dof))
    return {"chi2_ratio": ratio, "reduced_chi2_expected": expected_reduced, "chi2_ratio_threshold": float(threshold),
            "model_mismatch": bool(np.isfinite(ratio) and ratio > threshold)}
