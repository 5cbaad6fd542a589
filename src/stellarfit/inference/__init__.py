"""Inference: likelihood and parametrization, RV search, MAP, NUTS (NumPyro, BlackJAX), Fisher information and Cramér-Rao bounds.

- :func:`fisher_matrix`: F = J^T C^-1 J by forward-mode autodiff, float64.
- :func:`cramer_rao_from_fisher`: bounds with priors, nuisance marginalization
  and unconstrained-parameter detection.
"""

from stellarfit.inference.fisher import FisherResult as FisherResult
from stellarfit.inference._mismatch import MODEL_MISMATCH_RATIO as MODEL_MISMATCH_RATIO
from stellarfit.inference.fit import FitResult as FitResult
from stellarfit.inference.fit import fit_star as fit_star
from stellarfit.inference.fit import forward_model_for as forward_model_for
from stellarfit.inference.fit import modelled_pixels as modelled_pixels
from stellarfit.inference.fit import fit_batch as fit_batch
from stellarfit.inference.fit import fit_stars as fit_stars
from stellarfit.inference.likelihood import FitProblem as FitProblem
from stellarfit.inference.settings import MapSettings as MapSettings
from stellarfit.inference.settings import NutsSettings as NutsSettings
from stellarfit.inference.likelihood import GaussianPrior as GaussianPrior
from stellarfit.inference.compare import compare_emulators as compare_emulators
from stellarfit.inference.compare import observe_grid as observe_grid
from stellarfit.inference.crb import cramer_rao as cramer_rao
from stellarfit.inference.crb import cramer_rao_by_window as cramer_rao_by_window
from stellarfit.inference.map import MapResult as MapResult
from stellarfit.inference.map import estimate_rv as estimate_rv
from stellarfit.inference.map import fit_map as fit_map
from stellarfit.inference.map import fit_map_batch as fit_map_batch
from stellarfit.inference.map import stack_problems as stack_problems
from stellarfit.inference.nuts import SamplerResult as SamplerResult
from stellarfit.inference.nuts import numpyro_model as numpyro_model
from stellarfit.inference.nuts import sample_blackjax as sample_blackjax
from stellarfit.inference.nuts import sample_numpyro as sample_numpyro
from stellarfit.inference.nuts import sample_numpyro_batch as sample_numpyro_batch
from stellarfit.inference.fisher import cramer_rao_from_fisher as cramer_rao_from_fisher
from stellarfit.inference.fisher import fisher_matrix as fisher_matrix

__all__ = [
    "MODEL_MISMATCH_RATIO",
    "FisherResult",
    "FitProblem",
    "FitResult",
    "GaussianPrior",
    "MapResult",
    "MapSettings",
    "NutsSettings",
    "SamplerResult",
    "cramer_rao",
    "cramer_rao_by_window",
    "cramer_rao_from_fisher",
    "estimate_rv",
    "fisher_matrix",
    "fit_map",
    "fit_map_batch",
    "compare_emulators",
    "fit_batch",
    "observe_grid",
    "fit_stars",
    "stack_problems",
    "fit_star",
    "forward_model_for",
    "modelled_pixels",
    "numpyro_model",
    "sample_blackjax",
    "sample_numpyro",
    "sample_numpyro_batch",
]
