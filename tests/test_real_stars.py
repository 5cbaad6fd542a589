"""The real Sun fitted through the CLI as a user would (../shared/real, present in CI):
the shipped payne-astro emulator with its physics error, from the HARPS file at native resolution."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "real"
SUN = {"teff": 5772.0, "logg": 4.44, "fe_h": 0.0}


@pytest.mark.slow  # one MAP fit of a 115,000-resolution spectrum degraded to the emulator (~1 min)
def test_real_sun_with_payne_astro_and_its_physics_error():
    path = REAL / "Sun_HARPS_GBS.fits"
    if not path.is_file():
        pytest.fail(f"{path} is missing: the real spectra of ../shared/real are needed (see its README)")
    done = subprocess.run([sys.executable, "-m", "stellarfit.cli.main", "fit", str(path), "--emulator", "payne-astro",
                           "--physics-error", "default", "--resolution", "115000", "--air", "--json"],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    document = json.loads(done.stdout)
    labels = document["labels"]
    # the calibrated physics: [Fe/H] within 0.1 dex, Teff within 200 K, logg within 0.25 dex
    assert abs(labels["fe_h"]["value"] - SUN["fe_h"]) < 0.1, labels["fe_h"]
    assert abs(labels["teff"]["value"] - SUN["teff"]) < 200.0, labels["teff"]
    assert abs(labels["logg"]["value"] - SUN["logg"]) < 0.25, labels["logg"]
    # honest errors: every offset within 3 reported errors (the physics error is in the noise)
    for name, value in SUN.items():
        assert abs(labels[name]["value"] - value) < 3.0 * labels[name]["error"], (name, labels[name])
    assert "degraded_to_emulator_resolution" in document["flag_names"]
    assert document["diagnostics"]["physics_error"]["stars"] == ["Sun", "Arcturus"]
