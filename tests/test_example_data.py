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


def test_readme_main_job_fits_example_with_shipped_payne(capsys):
    """The README's first command: `stellarfit fit example --emulator payne-default`."""
    import json

    from stellarfit.cli.main import main

    assert main(["fit", "example", "--emulator", "payne-default", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    truth = example_truth()
    labels = document["labels"]
    assert document["emulator"] == "payne-default"
    assert abs(labels["teff"]["value"] - truth["teff"]) < 150.0
    assert abs(labels["logg"]["value"] - truth["logg"]) < 0.3
    assert abs(labels["fe_h"]["value"] - truth["fe_h"]) < 0.1
    assert abs(document["rv"]["value"] - truth["rv"]) < 0.5
    assert 0.5 < document["reduced_chi2"] < 1.5
    # errors include the emulator's own error: larger than the photon-noise bound
    assert labels["fe_h"]["error"] > labels["fe_h"]["crb"]
