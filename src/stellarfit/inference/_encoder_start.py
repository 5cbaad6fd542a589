"""``init="encoder"``: the MAP starts from a spectrum encoder's labels (:mod:`stellarfit.encoders`).

The encoder predicts every label in one network call; the fit then runs Adam and
Levenberg-Marquardt from that one point (the RV search still runs, with the encoder's labels
as its template) instead of from ``n_starts`` Sobol points. A spectrum the encoder cannot read
(no pixels in its window) falls back to the multi-start search, said in ``diagnostics["init"]``.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

__all__ = ["EncoderStart", "resolve_encoder", "encoder_starts"]


@dataclasses.dataclass(frozen=True)
class EncoderStart:
    """An encoder to start fits from, and the name diagnostics call it by."""

    encoder: Any
    name: str


def _is_encoder(value) -> bool:
    from stellarfit.encoders import Encoder

    return isinstance(value, Encoder)


def resolve_encoder(init, emulator) -> EncoderStart | None:
    """``init`` -> EncoderStart when it is "encoder" or an Encoder; None otherwise."""
    if isinstance(init, str) and init == "encoder":
        from stellarfit.encoders import encoder_for

        encoder = encoder_for(emulator)
        if encoder is None:
            raise ValueError("init='encoder': no shipped encoder predicts this emulator's labels over its window; "
                             "pass a trained encoder (init=stellarfit.encoders.load_encoder(path)) or use init=None")
        return EncoderStart(encoder, str((encoder.metadata or {}).get("shipped_as", "encoder")))
    if not isinstance(init, (str, type(None))) and _is_encoder(init):
        shared = set(init.label_spec.names) & set(emulator.label_spec.names)
        if not shared:
            raise ValueError(f"the encoder predicts {list(init.label_spec.names)}, none of the emulator's labels "
                             f"{list(emulator.label_spec.names)}")
        return EncoderStart(init, str((init.metadata or {}).get("shipped_as", "encoder")))
    return None


def encoder_starts(start: EncoderStart, spectra, spec) -> list[tuple[dict[str, float] | None, dict]]:
    """Per spectrum: (start labels name -> value inside ``spec``'s box, or None to fall back to the
    multi-start search; the diagnostics of the start)."""
    from stellarfit.encoders import UnusableSpectrumError, predict, prepare_pixels

    begin = time.perf_counter()
    usable, out = [], []
    for i, spectrum in enumerate(spectra):
        try:
            prepare_pixels(start.encoder, spectrum)
        except UnusableSpectrumError as error:
            out.append((None, {"source": "multi-start", "fallback": f"encoder {start.name} cannot read the spectrum: {error}"}))
            continue
        usable.append(i)
        out.append(None)
    predictions = predict(start.encoder, [spectra[i] for i in usable]) if usable else []
    share = (time.perf_counter() - begin) / max(len(spectra), 1)
    lower, upper = spec.lower, spec.upper
    margin = 0.02 * (upper - lower)  # a start on a face of the box has no gradient across it in z
    for i, prediction in zip(usable, predictions):
        values = {}
        for k, name in enumerate(spec.names):
            if name in prediction:
                values[name] = float(np.clip(prediction[name][0], lower[k] + margin[k], upper[k] - margin[k]))
        for label in spec.labels:  # relative bounds ([Mg/Fe] within +-0.4 of [alpha/Fe]), inside by the same share
            if label.offset_from is not None and label.name in values:
                reference = values.get(label.offset_from, 0.0) if label.offset_from else 0.0
                reach = 0.96 * label.offset_halfwidth
                k = spec.index(label.name)
                values[label.name] = float(np.clip(np.clip(values[label.name], reference - reach, reference + reach),
                                                   lower[k], upper[k]))
        info = {"source": f"encoder {start.name}", "elapsed_s": share,
                "predicted": {name: [float(v), float(e)] for name, (v, e) in prediction.items()}}
        out[i] = (values, info)
    return out
