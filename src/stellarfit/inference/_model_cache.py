"""Forward models cached by emulator, observed pixels, resolution and options (:func:`forward_model_for`),
so that every jitted function of a model compiles once for all spectra on the same pixels."""

from __future__ import annotations

import collections
import hashlib
from typing import Any

import numpy as np

from stellarfit.forward import ForwardModel
from stellarfit.inference._composite import composite_forward_model_for, is_composite

__all__ = ["forward_model_for"]

_FORWARD_MODEL_CACHE: "collections.OrderedDict[tuple, tuple[Any, ForwardModel]]" = collections.OrderedDict()
_FORWARD_MODEL_CACHE_SIZE = 16
#: (emulator, wavelengths, anchor rungs, options) -> the model whose programs varying-LSF spectra share
_SHARED_LSF_MODELS: "collections.OrderedDict[tuple, tuple[Any, ForwardModel]]" = collections.OrderedDict()


#: ln(lambda) quantum of forward_model_for's cache key: wavelengths that agree to it share a model
_PIXEL_KEY_QUANTUM = 1e-10


def forward_model_for(emulator, wavelength: np.ndarray, resolution, **options) -> ForwardModel:
    """A :class:`ForwardModel` whose rest-frame flux comes from ``emulator`` (on its native pixels only).

    Models are cached by (emulator, observed wavelengths, resolution, options):
    spectra on the same pixels (to 1e-10 in ln lambda) share one forward model, so every jitted
    function of it (RV search, MAP, Hessian, Fisher) compiles once and is
    reused for the next spectrum.  With a per-pixel resolution on the anchor
    ladder (the default), spectra on the same pixels whose R(lambda) needs the
    same ladder rungs also share compiled programs: the model's ``shared`` is the
    first such model, which their FitProblems evaluate with their own ``lsf_data``.

    For a :class:`~stellarfit.emulators.composite.CompositeEmulator`, a
    :class:`~stellarfit.forward.CompositeForwardModel` of one such model per window
    (:func:`stellarfit.inference._composite.composite_forward_model_for`).
    """
    # several windows' emulators used as one: a model per member on its pixels, joined (stellarfit.inference._composite)
    if is_composite(emulator):
        return composite_forward_model_for(emulator, wavelength, resolution, member_model_for=forward_model_for, **options)
    if emulator.native_resolution is None:
        raise ValueError("the emulator does not record its native resolution; it cannot be broadened to an observation")
    wavelength = np.ascontiguousarray(wavelength, dtype=np.float64)
    resolution_key = np.ascontiguousarray(np.asarray(resolution, dtype=np.float64))
    # wavelengths equal to 1e-10 in ln(lambda) (3e-5 km/s) are the same pixels: the same lattice point
    # computed from another file's first pixel (e.g. 10**(coeff0 + i coeff1)) can differ in the last bits
    pixels = np.round(np.log(wavelength) / _PIXEL_KEY_QUANTUM).astype(np.int64) if np.all(wavelength > 0) else wavelength
    key = (id(emulator), hashlib.sha1(np.ascontiguousarray(pixels).tobytes()).hexdigest(), wavelength.size,
           hashlib.sha1(resolution_key.tobytes()).hexdigest(), tuple(sorted((k, repr(v)) for k, v in options.items())))
    cached = _FORWARD_MODEL_CACHE.get(key)
    if cached is not None and cached[0] is emulator:
        _FORWARD_MODEL_CACHE.move_to_end(key)
        return cached[1]
    model = ForwardModel.from_emulator(emulator, wavelength, resolution, **options)
    if model.lsf_rungs is not None:
        # a varying LSF on the anchor ladder: spectra on these pixels with the same rungs share the
        # first such model's programs (FitProblem evaluates it with each spectrum's lsf_data)
        shared_key = key[:3] + (model.lsf_rungs, key[4])
        shared = _SHARED_LSF_MODELS.get(shared_key)
        if shared is not None and shared[0] is emulator:
            _SHARED_LSF_MODELS.move_to_end(shared_key)
            model.shared = shared[1]
        else:
            _SHARED_LSF_MODELS[shared_key] = (emulator, model)
            while len(_SHARED_LSF_MODELS) > _FORWARD_MODEL_CACHE_SIZE:
                _SHARED_LSF_MODELS.popitem(last=False)
    _FORWARD_MODEL_CACHE[key] = (emulator, model)
    while len(_FORWARD_MODEL_CACHE) > _FORWARD_MODEL_CACHE_SIZE:
        _FORWARD_MODEL_CACHE.popitem(last=False)
    return model
