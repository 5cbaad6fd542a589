"""The shipped example spectrum: readable, documented truth, consistent with its observation model."""

import numpy as np

import stellarfit as sf
from stellarfit.data import example_path, example_truth


def test_example_spectrum_reads_with_resolution_and_truth():
    spectrum = sf.example_spectrum()
    assert spectrum.resolution == 22_500.0
    lo, hi = spectrum.wavelength_range
    assert 5000.0 < lo < hi < 5500.0 and spectrum.n_pixels > 5000
    assert np.all(spectrum.ivar > 0)
    truth = example_truth()
    assert set(sf.default_label_spec().names) <= set(truth) and {"rv", "vsini"} <= set(truth)
    sf.default_label_spec().validate({k: v for k, v in truth.items() if k not in ("rv", "vsini")})
    # S/N 60 per pixel as documented: median flux * sqrt(ivar) of the continuum-dominated pixels
    snr = np.percentile(spectrum.flux * np.sqrt(spectrum.ivar), 95)
    assert 50 < snr < 75
    # absorption lines: a solar-type star has many pixels well below the continuum
    assert np.mean(spectrum.flux * np.sqrt(spectrum.ivar) < 0.8 * snr) > 0.05
    assert example_path().endswith("example_star.fits")
