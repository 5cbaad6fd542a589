"""Differentiable LTE spectral synthesis in JAX: the ``simple`` physics engine.

Modules:

- :mod:`.atomic`: partition functions, Saha ionization, molecule-free EOS;
- :mod:`.continuum`: H-, H I, Rayleigh and Thomson opacity, Planck function;
- :mod:`.voigt`: Humlicek W4 Voigt/Faddeeva function;
- :mod:`.lines`: line data, damping constants, per-layer line quantities;
- :mod:`.transfer`: optical depth and the formal solution (flux);
- :mod:`.synthesizer`: :class:`JaxLTESynthesizer` (windowed line opacity,
  jit/vmap/grad) and :func:`synthesize`;
- :mod:`.engine`: :class:`JaxLteEngine`, labels -> spectrum on output pixels
  (the ``jax`` engine of ``stellarfit synth`` / ``stellarfit grid``);
- :mod:`.reference`: Kurucz model reader and the shipped solar model.

See ``docs/jaxlte.md`` for the physics, approximations and measured accuracy.
"""

from .engine import JaxLteEngine as JaxLteEngine
from .engine import pixel_operator as pixel_operator
from .reference import read_kurucz_atmosphere as read_kurucz_atmosphere
from .reference import solar_reference_atmosphere as solar_reference_atmosphere
from .synthesizer import JaxLTESynthesizer as JaxLTESynthesizer
from .synthesizer import WindowOptions as WindowOptions
from .synthesizer import check_atmosphere as check_atmosphere
from .synthesizer import synthesize as synthesize

__all__ = [
    "JaxLTESynthesizer",
    "JaxLteEngine",
    "WindowOptions",
    "check_atmosphere",
    "pixel_operator",
    "read_kurucz_atmosphere",
    "solar_reference_atmosphere",
    "synthesize",
]
