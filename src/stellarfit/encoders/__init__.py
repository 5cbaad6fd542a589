"""Spectrum encoders: spectra from any instrument -> labels with uncertainties (amortized inference).

- :class:`Encoder`, :func:`load_encoder`: a trained network and its file format (npz + JSON).
- :class:`EncoderConfig`, :class:`SpectrumEncoder`: the architecture (patch tokens with a
  float64 wavelength encoding, self-attention, one query per label cross-attending).
- :func:`train_encoder`, :class:`TrainingSettings`: training on spectra simulated on the fly
  (:class:`TrainingSimulator`, :class:`SimulationSettings`) from a shipped emulator.
- :func:`predict`: ObservedSpectrum(s) -> {name: (value, error)}.
- :func:`adapt_encoder`, :class:`AdaptSettings`: adapting a trained encoder to another survey or
  physics from a few labelled spectra (:class:`GridSpectra`, e.g. a Turbospectrum grid): head only,
  residual adapters, LoRA, full fine-tuning, or from scratch; :func:`train_spectrum_mlp`
  (:class:`SpectrumMLP`, :class:`MLPSettings`): the MLP-on-the-raw-spectrum baseline.
"""

from stellarfit.encoders._baseline import MLPSettings as MLPSettings
from stellarfit.encoders._baseline import SpectrumMLP as SpectrumMLP
from stellarfit.encoders._baseline import train_spectrum_mlp as train_spectrum_mlp
from stellarfit.encoders._encoder import DEFAULT_ENCODER as DEFAULT_ENCODER
from stellarfit.encoders._encoder import SHIPPED_ENCODERS as SHIPPED_ENCODERS
from stellarfit.encoders._encoder import Encoder as Encoder
from stellarfit.encoders._encoder import encoder_for as encoder_for
from stellarfit.encoders._encoder import EncoderFileError as EncoderFileError
from stellarfit.encoders._encoder import load_encoder as load_encoder
from stellarfit.encoders._model import EncoderConfig as EncoderConfig
from stellarfit.encoders._model import SpectrumEncoder as SpectrumEncoder
from stellarfit.encoders._model import patch_features as patch_features
from stellarfit.encoders._model import wavelength_encoding as wavelength_encoding
from stellarfit.encoders._predict import PreparedSpectrum as PreparedSpectrum
from stellarfit.encoders._predict import UnusableSpectrumError as UnusableSpectrumError
from stellarfit.encoders._predict import predict as predict
from stellarfit.encoders._predict import predict_tokens as predict_tokens
from stellarfit.encoders._predict import prepare_pixels as prepare_pixels
from stellarfit.encoders._simulate import PixelBatch as PixelBatch
from stellarfit.encoders._simulate import SimulationSettings as SimulationSettings
from stellarfit.encoders._simulate import TrainingBatch as TrainingBatch
from stellarfit.encoders._simulate import TrainingSimulator as TrainingSimulator
from stellarfit.encoders._sources import EmulatorSpectra as EmulatorSpectra
from stellarfit.encoders._sources import GridSpectra as GridSpectra
from stellarfit.encoders._training import TrainingSettings as TrainingSettings
from stellarfit.encoders._training import gaussian_nll as gaussian_nll
from stellarfit.encoders._training import train_encoder as train_encoder
from stellarfit.encoders._transfer import ADAPT_MODES as ADAPT_MODES
from stellarfit.encoders._transfer import AdaptSettings as AdaptSettings
from stellarfit.encoders._transfer import adapt_encoder as adapt_encoder

__all__ = [
    "ADAPT_MODES",
    "AdaptSettings",
    "DEFAULT_ENCODER",
    "EmulatorSpectra",
    "GridSpectra",
    "MLPSettings",
    "PixelBatch",
    "SpectrumMLP",
    "adapt_encoder",
    "train_spectrum_mlp",
    "SHIPPED_ENCODERS",
    "encoder_for",
    "Encoder",
    "EncoderConfig",
    "EncoderFileError",
    "PreparedSpectrum",
    "SimulationSettings",
    "SpectrumEncoder",
    "TrainingBatch",
    "TrainingSettings",
    "TrainingSimulator",
    "UnusableSpectrumError",
    "gaussian_nll",
    "load_encoder",
    "patch_features",
    "predict",
    "predict_tokens",
    "prepare_pixels",
    "train_encoder",
    "wavelength_encoding",
]
