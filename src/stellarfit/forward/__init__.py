"""The observation model: Doppler shift, rotation, instrumental LSF, resampling and continuum.

- :class:`ForwardModel`: emulator flux -> model flux at observed pixels (pure JAX).
- :func:`continuum_design_matrix`, :func:`profile_continuum`: the polynomial
  continuum per arm, profiled analytically; :func:`continuum_chi2`: its chi2 and
  log det with derivatives by the envelope theorem (for likelihoods).
- :func:`choose_continuum_degree`, :func:`continuum_log_evidence`: the continuum's degree
  per arm chosen by the evidence of its coefficients under a Gaussian prior
  (``continuum_degree="auto"``; docs/guide/continuum.md).
- :func:`simulate_observation`: a model spectrum observed with noise (injection-recovery).
- kernels: :func:`doppler_factor`, :func:`rotation_kernel`, :func:`cubic_interpolate`,
  :func:`convolve_same_many` and :func:`cubic_interpolate_between` (per-pixel LSF);
  the default Doppler interpolation is the quintic B-spline:
  :func:`spline_coefficients`, :func:`spline_interpolate`, :func:`spline_interpolate_between`.
"""

from stellarfit.forward._broadening import box_kernel as box_kernel
from stellarfit.forward._broadening import convolve_same as convolve_same
from stellarfit.forward._broadening import convolve_same_many as convolve_same_many
from stellarfit.forward._broadening import cubic_interpolate as cubic_interpolate
from stellarfit.forward._broadening import cubic_interpolate_between as cubic_interpolate_between
from stellarfit.forward._broadening import doppler_factor as doppler_factor
from stellarfit.forward._broadening import gaussian_kernel as gaussian_kernel
from stellarfit.forward._broadening import instrument_kernel as instrument_kernel
from stellarfit.forward._broadening import log_doppler_factor as log_doppler_factor
from stellarfit.forward._broadening import rotation_kernel as rotation_kernel
from stellarfit.forward._broadening import rotation_kernel_variance as rotation_kernel_variance
from stellarfit.forward._broadening import rotation_transfer as rotation_transfer
from stellarfit.forward._broadening import spline_coefficients as spline_coefficients
from stellarfit.forward._broadening import spline_interpolate as spline_interpolate
from stellarfit.forward._broadening import spline_interpolate_between as spline_interpolate_between
from stellarfit.forward._continuum import continuum_design_matrix as continuum_design_matrix
from stellarfit.forward._continuum import profile_continuum as profile_continuum
from stellarfit.forward._continuum import continuum_chi2 as continuum_chi2
from stellarfit.forward._continuum_choice import AUTO_DEGREE as AUTO_DEGREE
from stellarfit.forward._continuum_choice import MAX_AUTO_DEGREE as MAX_AUTO_DEGREE
from stellarfit.forward._continuum_choice import ContinuumChoice as ContinuumChoice
from stellarfit.forward._continuum_choice import check_continuum_degree as check_continuum_degree
from stellarfit.forward._continuum_choice import choose_continuum_degree as choose_continuum_degree
from stellarfit.forward._continuum_choice import continuum_log_evidence as continuum_log_evidence
from stellarfit.forward._continuum_choice import continuum_prior_scale as continuum_prior_scale
from stellarfit.forward._composite import CompositeForwardModel as CompositeForwardModel
from stellarfit.forward._model import READOUT_TOLERANCE as READOUT_TOLERANCE
from stellarfit.forward._model import ForwardModel as ForwardModel
from stellarfit.forward._model import ObservationOutsideEmulatorError as ObservationOutsideEmulatorError
from stellarfit.forward._simulate import simulate_observation as simulate_observation

__all__ = [
    "AUTO_DEGREE",
    "MAX_AUTO_DEGREE",
    "READOUT_TOLERANCE",
    "CompositeForwardModel",
    "ContinuumChoice",
    "ForwardModel",
    "ObservationOutsideEmulatorError",
    "box_kernel",
    "check_continuum_degree",
    "choose_continuum_degree",
    "continuum_design_matrix",
    "continuum_log_evidence",
    "continuum_prior_scale",
    "convolve_same",
    "convolve_same_many",
    "cubic_interpolate",
    "cubic_interpolate_between",
    "doppler_factor",
    "gaussian_kernel",
    "instrument_kernel",
    "log_doppler_factor",
    "profile_continuum",
    "continuum_chi2",
    "rotation_kernel",
    "rotation_kernel_variance",
    "rotation_transfer",
    "simulate_observation",
    "spline_coefficients",
    "spline_interpolate",
    "spline_interpolate_between",
]
