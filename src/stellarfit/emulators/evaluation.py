"""Emulator accuracy on held-out spectra: MAE, MSE, worst pixels, residual trends.

:func:`evaluate_emulator` predicts the given spectra at their wavelengths and
summarizes the residuals (emulator - truth) of normalized flux:

- ``mae``, ``mse``, ``max_abs_error`` over all pixels and spectra;
- ``mae_per_pixel`` (n_pixels,): residuals against wavelength;
- ``mae_per_spectrum`` (n_spectra,) and :meth:`EmulatorEvaluation.residuals_vs_label`
  (MAE in label bins): residuals against labels;
- ``worst_pixels``: the wavelengths with the largest MAE;
- ``continuum_mae`` of log10 continuum where both sides have one.

``to_dict()`` gives the JSON document of ``stellarfit evaluate --json``
(``mae``, ``mse``, ``n_spectra``, ``n_pixels`` and more);
:func:`plot_evaluation` draws the residual trends (matplotlib, optional).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from stellarfit.emulators.base import Emulator
from stellarfit.emulators.training import TrainingData

__all__ = ["EmulatorEvaluation", "evaluate_emulator", "plot_evaluation"]


@dataclasses.dataclass
class EmulatorEvaluation:
    """Residual statistics of an emulator on a set of spectra (see the module docstring).

    Arrays: wavelength (n_pixels,) A; labels (n_spectra, n_labels);
    mae_per_pixel (n_pixels,); mae_per_spectrum (n_spectra,).
    """

    mae: float
    mse: float
    max_abs_error: float
    n_spectra: int
    n_pixels: int
    label_names: tuple[str, ...]
    wavelength: np.ndarray
    labels: np.ndarray
    mae_per_pixel: np.ndarray
    mae_per_spectrum: np.ndarray
    worst_pixels: list[dict[str, float]]
    continuum_mae: float | None = None
    model_type: str = ""

    def residuals_vs_label(self, name: str, n_bins: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(bin centres, MAE per bin, spectra per bin) of the per-spectrum MAE against label ``name``."""
        if name not in self.label_names:
            raise KeyError(f"unknown label {name!r}; known: {self.label_names}")
        values = self.labels[:, self.label_names.index(name)]
        edges = np.linspace(values.min(), values.max(), n_bins + 1)
        if edges[0] == edges[-1]:
            edges = np.array([edges[0] - 0.5, edges[0] + 0.5])
        which = np.clip(np.digitize(values, edges) - 1, 0, len(edges) - 2)
        counts = np.bincount(which, minlength=len(edges) - 1)
        sums = np.bincount(which, weights=self.mae_per_spectrum, minlength=len(edges) - 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            mae = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
        return 0.5 * (edges[1:] + edges[:-1]), mae, counts

    def to_dict(self, *, n_bins: int = 5) -> dict[str, Any]:
        """JSON-able summary: mae, mse, n_spectra, n_pixels, max_abs_error,
        continuum_mae, worst_pixels, mae_vs_label {name: {bin_centres, mae, counts}}."""
        trends = {}
        for name in self.label_names:
            centres, mae, counts = self.residuals_vs_label(name, n_bins)
            trends[name] = {
                "bin_centres": [float(c) for c in centres],
                "mae": [None if not np.isfinite(m) else float(m) for m in mae],
                "counts": [int(c) for c in counts],
            }
        return {
            "model_type": self.model_type,
            "mae": self.mae,
            "mse": self.mse,
            "max_abs_error": self.max_abs_error,
            "n_spectra": self.n_spectra,
            "n_pixels": self.n_pixels,
            "continuum_mae": self.continuum_mae,
            "worst_pixels": self.worst_pixels,
            "mae_vs_label": trends,
        }


def evaluate_emulator(
    emulator: Emulator,
    data: TrainingData,
    *,
    batch_size: int | None = None,
    n_worst: int = 10,
    check_bounds: bool = False,
) -> EmulatorEvaluation:
    """Compare ``emulator`` with the spectra in ``data`` at ``data.wavelength``.

    The wavelengths must lie inside the emulator's coverage; for The Payne,
    wavelengths other than its native grid are linearly interpolated.
    """
    if data.labels.shape[1] != emulator.n_labels:
        raise ValueError(f"data have {data.labels.shape[1]} labels; the emulator takes {emulator.n_labels}: {emulator.label_names}")
    if data.label_spec is not None and data.label_spec.names != emulator.label_names:
        raise ValueError(f"data labels {data.label_spec.names} differ from the emulator's {emulator.label_names}")
    use_continuum = emulator.has_continuum and data.log10_continuum is not None
    if use_continuum:
        flux, cont = emulator.predict_with_continuum(data.labels, data.wavelength, batch_size=batch_size, check_bounds=check_bounds)
    else:
        flux = emulator.predict(data.labels, data.wavelength, batch_size=batch_size, check_bounds=check_bounds)
    err = flux.astype(np.float64) - data.flux
    abs_err = np.abs(err)
    per_pixel = abs_err.mean(axis=0)
    worst = np.argsort(per_pixel)[::-1][: max(0, int(n_worst))]
    return EmulatorEvaluation(
        mae=float(abs_err.mean()),
        mse=float(np.mean(err**2)),
        max_abs_error=float(abs_err.max()),
        n_spectra=data.n_spectra,
        n_pixels=data.n_pixels,
        label_names=tuple(emulator.label_names),
        wavelength=data.wavelength.copy(),
        labels=data.labels.copy(),
        mae_per_pixel=per_pixel,
        mae_per_spectrum=abs_err.mean(axis=1),
        worst_pixels=[{"wavelength": float(data.wavelength[i]), "mae": float(per_pixel[i]), "max_abs_error": float(abs_err[:, i].max())} for i in worst],
        continuum_mae=float(np.mean(np.abs(cont - data.log10_continuum))) if use_continuum else None,
        model_type=emulator.model_type,
    )


def plot_evaluation(evaluation: EmulatorEvaluation, path: str | None = None, *, labels: tuple[str, ...] | None = None) -> Any:
    """Figure of MAE against wavelength and against up to 4 labels; saved to ``path`` if given."""
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    names = list(labels or evaluation.label_names[:4])
    fig, axes = plt.subplots(1 + len(names), 1, figsize=(8, 2.2 * (1 + len(names))), squeeze=False)
    ax = axes[0, 0]
    ax.plot(evaluation.wavelength, evaluation.mae_per_pixel, lw=0.6)
    ax.set_xlabel("vacuum wavelength [A]")
    ax.set_ylabel("MAE")
    ax.set_title(f"{evaluation.model_type}: MAE {evaluation.mae:.2e} over {evaluation.n_spectra} spectra")
    for ax, name in zip(axes[1:, 0], names):
        centres, mae, _ = evaluation.residuals_vs_label(name)
        ax.plot(centres, mae, "o-")
        ax.set_xlabel(name)
        ax.set_ylabel("MAE")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def estimate_pixel_error(emulator: Emulator, data: TrainingData, *, batch_size: int | None = None) -> np.ndarray:
    """The emulator's error per native pixel: RMS over ``data`` (held-out spectra on the
    emulator's native grid; use a validation split, not the test split you report) of the
    normalized-flux residuals, (n_pixels,) float32.  Attach it with
    ``emulator.with_pixel_error(...)`` so that fits count it as noise."""
    if data.n_pixels != emulator.n_pixels or not np.allclose(data.wavelength, emulator.wavelength, rtol=1e-12, atol=0):
        raise ValueError("estimate_pixel_error needs spectra on the emulator's native wavelengths")
    if data.n_spectra < 10:
        raise ValueError(f"need at least 10 held-out spectra to estimate the pixel error, got {data.n_spectra}")
    flux = emulator.predict(data.labels, batch_size=batch_size, check_bounds=False)
    return np.sqrt(np.mean((flux.astype(np.float64) - data.flux) ** 2, axis=0)).astype(np.float32)


def estimate_error_modes(
    emulator: Emulator, data: TrainingData, *, n_modes: int = 16, batch_size: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The correlated part of the emulator's error: principal components of its residuals.

    On ``data`` (held-out spectra on the native grid: a validation split, not
    the test split you report) the normalized-flux residuals R (n_spectra,
    n_pixels) are decomposed as R = U S V^T; the modes are S_k V_k / sqrt(n)
    for the ``n_modes`` largest S_k, so that ``modes.T @ modes`` is the
    covariance of the residuals restricted to those components.

    Returns ``(modes, pixel_error)``: modes (n_modes, n_pixels) float32 and the
    per-pixel RMS of what the modes leave, (n_pixels,) float32.  Attach both
    (``emulator.with_error_modes(modes).with_pixel_error(pixel_error)``) so that
    fits marginalize the modes and add the rest to the noise.
    """
    if data.n_pixels != emulator.n_pixels or not np.allclose(data.wavelength, emulator.wavelength, rtol=1e-12, atol=0):
        raise ValueError("estimate_error_modes needs spectra on the emulator's native wavelengths")
    if not 1 <= n_modes < data.n_spectra:
        raise ValueError(f"n_modes must be between 1 and n_spectra - 1 ({data.n_spectra - 1}), got {n_modes}")
    flux = emulator.predict(data.labels, batch_size=batch_size, check_bounds=False)
    residual = flux.astype(np.float64) - data.flux
    _, singular, vt = np.linalg.svd(residual, full_matrices=False)
    modes = singular[:n_modes, None] * vt[:n_modes] / np.sqrt(data.n_spectra)
    captured = residual @ vt[:n_modes].T @ vt[:n_modes]
    rest = np.sqrt(np.mean((residual - captured) ** 2, axis=0))
    return modes.astype(np.float32), rest.astype(np.float32)
