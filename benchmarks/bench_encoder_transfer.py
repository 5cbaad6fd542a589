"""Cross-survey transfer of the spectrum encoder (issue 46; after Zhao, Ting, Wyse et al. 2026).

Survey A (pre-training): spectra simulated from the shipped ``payne-default`` emulator at
LAMOST-LRS-like R 1,700-1,900, S/N 20-200.  Survey B (adaptation): the Turbospectrum grid
``ts_astro_sa_600.h5`` (other physics: Turbospectrum with astrophysical log gf values)
observed DESI-like at R 3,800-4,200, S/N 30-100, through the same forward model.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import stellarfit as sf
from stellarfit.encoders import EncoderConfig, SimulationSettings, TrainingSettings, train_encoder

CONFIG = EncoderConfig(patch_size=8, dim=64, heads=4, blocks=3, cross_blocks=2, mlp_ratio=2)
BUCKETS = (16, 24, 32, 48, 64, 80, 96, 112, 128, 144, 160)
SURVEY_A = SimulationSettings(resolution_range=(1700.0, 1900.0), pixels_per_fwhm_range=(2.0, 3.0), snr_range=(20.0, 200.0),
                              token_buckets=BUCKETS)
PRETRAINING = TrainingSettings(steps=6000, batch_size=32, learning_rate=1e-3, warmup_steps=200, seed=0,
                               validate_every=500, checkpoint_every=250)


def cache_directory() -> Path:
    root = os.environ.get("STELLARFIT_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "stellarfit")
    return Path(root) / "transfer"


def pretrain(directory: Path):
    import dataclasses
    emulator = sf.load_emulator("payne-default")
    settings = dataclasses.replace(PRETRAINING, checkpoint_dir=str(directory))
    encoder, history = train_encoder(emulator, settings, config=CONFIG, simulation=SURVEY_A)
    return encoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=["pretrain", "all"], default="all")
    args = parser.parse_args()
    directory = cache_directory() / "survey_a"
    pretrain(directory)
    if args.stage == "pretrain":
        return


if __name__ == "__main__":
    main()
