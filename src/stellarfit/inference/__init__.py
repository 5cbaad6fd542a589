"""Inference: Fisher information and Cramér-Rao bounds (likelihoods, MAP and NUTS to come).

- :func:`fisher_matrix`: F = J^T C^-1 J by forward-mode autodiff, float64.
- :func:`cramer_rao_from_fisher`: bounds with priors, nuisance marginalization
  and unconstrained-parameter detection.
"""

from stellarfit.inference.fisher import FisherResult as FisherResult
from stellarfit.inference.fisher import cramer_rao_from_fisher as cramer_rao_from_fisher
from stellarfit.inference.fisher import fisher_matrix as fisher_matrix

__all__ = ["FisherResult", "cramer_rao_from_fisher", "fisher_matrix"]
