"""Attention maps (issue 46): where a TransformerPayne's wavelength queries and an encoder's label
queries look, grouped by the element of the strongest line at each pixel, against d flux / d label.

- :func:`run_attention`: the whole study into a directory (``attention.json`` + PNG figures);
  ``stellarfit attention`` on the command line.
- :func:`transformer_payne_attention`, :func:`flux_jacobian`, :func:`encoder_attention`: the maps.
- :func:`assign_pixel_elements`, :func:`line_strength`: the element of each pixel's strongest line.
- :func:`enrichment`, :func:`shift_baseline`, :func:`pixel_correlation`: the numbers.

Attention is not attribution: see docs/guide/attention.md for what the maps do and do not show.
"""

from stellarfit.attention._analysis import SOLAR_LABELS as SOLAR_LABELS
from stellarfit.attention._analysis import analyze_encoder as analyze_encoder
from stellarfit.attention._analysis import analyze_transformer_payne as analyze_transformer_payne
from stellarfit.attention._analysis import simulate_spectrum as simulate_spectrum
from stellarfit.attention._elements import LABEL_ELEMENTS as LABEL_ELEMENTS
from stellarfit.attention._elements import PixelElements as PixelElements
from stellarfit.attention._elements import assign_pixel_elements as assign_pixel_elements
from stellarfit.attention._elements import line_strength as line_strength
from stellarfit.attention._enrichment import enrichment as enrichment
from stellarfit.attention._enrichment import pixel_correlation as pixel_correlation
from stellarfit.attention._enrichment import shift_baseline as shift_baseline
from stellarfit.attention._maps import EncoderAttention as EncoderAttention
from stellarfit.attention._maps import TransformerPayneAttention as TransformerPayneAttention
from stellarfit.attention._maps import encoder_attention as encoder_attention
from stellarfit.attention._maps import flux_jacobian as flux_jacobian
from stellarfit.attention._maps import transformer_payne_attention as transformer_payne_attention
from stellarfit.attention._run import default_labels as default_labels
from stellarfit.attention._run import run_attention as run_attention

__all__ = [
    "LABEL_ELEMENTS",
    "SOLAR_LABELS",
    "EncoderAttention",
    "PixelElements",
    "TransformerPayneAttention",
    "analyze_encoder",
    "analyze_transformer_payne",
    "assign_pixel_elements",
    "default_labels",
    "encoder_attention",
    "enrichment",
    "flux_jacobian",
    "line_strength",
    "pixel_correlation",
    "run_attention",
    "shift_baseline",
    "simulate_spectrum",
    "transformer_payne_attention",
]
