"""The settings of :func:`~stellarfit.inference.fit_star` and :func:`~stellarfit.inference.fit_stars`
as two frozen dataclasses: :class:`MapSettings` (where the MAP starts and how long it steps) and
:class:`NutsSettings` (the NUTS methods' sampler).  Each checks its fields when made, so that a bad
value fails at once, with the field's name and what it accepts, before any fit.

``fit_star(spectrum, emulator, map_settings=MapSettings(n_starts=4))`` and
``fit_star(spectrum, emulator, n_starts=4)`` are the same fit: the individual keywords of
``fit_star`` and ``fit_stars`` are resolved into these objects in one place,
:func:`resolve_settings`, which refuses a field given both ways.

Example::

    quick = MapSettings(n_starts=4, adam_steps=100)
    short = NutsSettings(num_warmup=200, num_samples=200, num_chains=2)
    result = fit_star(spectrum, emulator, "nuts", map_settings=quick, nuts_settings=short)
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from typing import Any

import numpy as np

from stellarfit.inference.likelihood import TRANSFORMS
from stellarfit.inference.sampling.common import CHAIN_METHODS, MASS_MATRICES, check_sampler_settings

__all__ = ["MapSettings", "NutsSettings", "resolve_settings", "INITS", "SAMPLE_WITH", "NUTS_Z_TRANSFORM"]

#: the named MAP starts (``MapSettings.init``); otherwise None, a FitResult, a mapping or an array
INITS = ("auto", "fast", "encoder")
#: which emulator NUTS samples with (``NutsSettings.sample_with``)
SAMPLE_WITH = ("auto", "self", "fast")
#: the NUTS methods' default map from z to the boxes (``NutsSettings.z_transform``; FitProblem.with_transform)
NUTS_Z_TRANSFORM = "logit"


def _check_integer(owner: str, name: str, value, minimum: int, meaning: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{owner}.{name} must be an integer >= {minimum} ({meaning}), got {value!r}")


@dataclasses.dataclass(frozen=True, eq=False)
class MapSettings:
    """How :func:`~stellarfit.inference.fit_star` finds the MAP.

    Attributes:
        n_starts: starts of the multi-start search (>= 1; a Sobol set over teff, logg, fe_h).
        adam_steps: Adam steps from each start before Levenberg-Marquardt (>= 0).
        polish_steps: Levenberg-Marquardt iterations (>= 0); None: 50 after the multi-start
            search, at most ``INIT_POLISH_STEPS`` (20) from a given ``init``.
        init: where the MAP starts: "auto" (default), "fast", "encoder", None (the multi-start
            search), a previous FitResult, a mapping name -> value, an array or a trained
            :class:`~stellarfit.encoders.Encoder` (fit_star's ``init``); for
            :func:`~stellarfit.inference.fit_stars` also one start per spectrum.

    Equality compares ``init`` by identity unless it is None or a name (arrays have no single
    truth value).
    """

    n_starts: int = 8
    adam_steps: int = 150
    polish_steps: int | None = None
    init: Any = "auto"

    def __post_init__(self) -> None:
        _check_integer("MapSettings", "n_starts", self.n_starts, 1, "the number of MAP starts")
        _check_integer("MapSettings", "adam_steps", self.adam_steps, 0, "Adam steps from each start")
        if self.polish_steps is not None:
            _check_integer("MapSettings", "polish_steps", self.polish_steps, 0,
                           "Levenberg-Marquardt iterations; None for the default")
        if isinstance(self.init, str) and self.init not in INITS:
            raise ValueError(f"MapSettings.init must be None, one of {INITS}, a FitResult, a mapping or an array; "
                             f"got {self.init!r}")

    def _key(self) -> tuple:
        init = self.init if self.init is None or isinstance(self.init, str) else id(self.init)
        return (self.n_starts, self.adam_steps, self.polish_steps, init)

    def __eq__(self, other) -> bool:
        if not isinstance(other, MapSettings):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())


@dataclasses.dataclass(frozen=True)
class NutsSettings:
    """How the NUTS methods of :func:`~stellarfit.inference.fit_star` sample (``method="nuts"`` or
    ``"blackjax"``; :func:`~stellarfit.inference.fit_stars` with ``method="nuts"``).

    Attributes:
        num_warmup: warm-up steps per chain (>= 1).
        num_samples: kept draws per chain (>= 2).
        num_chains: number of chains (>= 1).
        max_tree_depth: NUTS trajectories of at most 2^depth - 1 leapfrog steps (1-15).
        target_accept: the step size adaptation's target acceptance, in (0, 1).
        mass_matrix: one of :data:`~stellarfit.inference.sampling.common.MASS_MATRICES`
            (default "laplace-pooled"; :func:`~stellarfit.inference.sample_numpyro`).
        chain_method: how the chains run: "auto", "processes", "sequential", "vectorized", or
            (NumPyro only) "parallel".  ``fit_stars`` samples all chains of a batch in one
            program and does not use it.
        sample_with: which emulator the chains sample with: "auto", "self" or "fast" (fit_star's
            ``sample_with``).
        z_transform: the map from the unconstrained z to each box: "logit" (default), "probit"
            or "probit-labels".
    """

    num_warmup: int = 500
    num_samples: int = 500
    num_chains: int = 4
    max_tree_depth: int = 8
    target_accept: float = 0.8
    mass_matrix: str = "laplace-pooled"
    chain_method: str = "auto"
    sample_with: str = "auto"
    z_transform: str = NUTS_Z_TRANSFORM

    def __post_init__(self) -> None:
        if self.chain_method not in CHAIN_METHODS:
            raise ValueError(f"NutsSettings.chain_method must be one of {CHAIN_METHODS}, got {self.chain_method!r}")
        if self.mass_matrix not in MASS_MATRICES:
            raise ValueError(f"NutsSettings.mass_matrix must be one of {MASS_MATRICES}, got {self.mass_matrix!r}")
        if isinstance(self.target_accept, bool) or not isinstance(self.target_accept, (int, float, np.floating)):
            raise ValueError(f"NutsSettings.target_accept must be a number in (0, 1) (0.8 is usual), "
                             f"got {self.target_accept!r}")
        try:
            check_sampler_settings(None, self.num_warmup, self.num_samples, self.num_chains, self.max_tree_depth,
                                   self.target_accept, self.mass_matrix, chain_method=self.chain_method)
        except ValueError as error:
            raise ValueError(f"NutsSettings.{error}") from None
        if self.sample_with not in SAMPLE_WITH:
            raise ValueError(f"NutsSettings.sample_with must be one of {SAMPLE_WITH}, got {self.sample_with!r}")
        if self.z_transform not in TRANSFORMS:
            raise ValueError(f"NutsSettings.z_transform must be one of {TRANSFORMS}, got {self.z_transform!r}")

    def sampler_options(self) -> dict[str, Any]:
        """The keywords of :func:`~stellarfit.inference.sample_numpyro`, ``sample_blackjax`` and
        ``sample_numpyro_batch`` that these settings hold (not ``seed`` nor ``chain_method``)."""
        return dict(num_warmup=self.num_warmup, num_samples=self.num_samples, num_chains=self.num_chains,
                    max_tree_depth=self.max_tree_depth, target_accept=self.target_accept, mass_matrix=self.mass_matrix)


class _Default:
    """A keyword of fit_star / fit_stars left at its default, told apart from the same value given.
    Its repr is the value's, so that signatures and the reference docs read as plain defaults."""

    __slots__ = ("value",)

    def __init__(self, value) -> None:
        self.value = value

    def __repr__(self) -> str:
        return repr(self.value)


def _field_names(cls) -> tuple[str, ...]:
    return tuple(field.name for field in dataclasses.fields(cls))


#: the defaults of fit_star's / fit_stars' individual keywords: each settings field's default, marked as
#: not given (``n_starts: int = _DEFAULT.n_starts``), so that both read their defaults from one place
_DEFAULT = types.SimpleNamespace(**{field.name: _Default(field.default)
                                    for cls in (MapSettings, NutsSettings) for field in dataclasses.fields(cls)})


def _resolve(cls, argument: str, settings, keywords: Mapping[str, Any]):
    given = {name: keywords[name] for name in _field_names(cls)
             if name in keywords and not isinstance(keywords[name], _Default)}
    if settings is None:
        return cls(**given)
    if not isinstance(settings, cls):
        raise TypeError(f"{argument} must be a {cls.__name__} (stellarfit.{cls.__name__}) or None, "
                        f"got {type(settings).__name__}")
    if given:
        names = sorted(given)
        raise ValueError(f"{', '.join(names)} given both as keyword(s) and in {argument}; give each setting in one "
                         f"place, e.g. {argument}=dataclasses.replace({argument}, {names[0]}={given[names[0]]!r})")
    return settings


def resolve_settings(map_settings: MapSettings | None, nuts_settings: NutsSettings | None,
                     keywords: Mapping[str, Any]) -> tuple[MapSettings, NutsSettings]:
    """The settings of one fit from fit_star's / fit_stars' arguments.

    ``keywords``: the individual keywords by name, those left at their defaults as ``_Default``.
    Without a settings object, the keywords given make it (the others take its defaults); with
    one, a keyword given for one of its fields is a ValueError (which of the two was meant?), and
    a settings object of the wrong type a TypeError.
    """
    return (_resolve(MapSettings, "map_settings", map_settings, keywords),
            _resolve(NutsSettings, "nuts_settings", nuts_settings, keywords))
