"""Analyses: global maps + PEPPR, model-collection variability, SIS, activation maximisation,
hyperparameter sensitivity, method ranking, transfer study."""

from xaiscope.analyses.global_maps import GlobalMaps, global_maps  # noqa: E402,F401
from xaiscope.analyses.peppr import PepprResult, peppr  # noqa: E402,F401
from xaiscope.analyses.transfer import TransferResult, transfer_study  # noqa: E402,F401
from xaiscope.analyses.variability import VariabilityResult, variability  # noqa: E402,F401
