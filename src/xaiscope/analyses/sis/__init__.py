"""Sufficient input subsets (Carter et al. 2019, arXiv:1810.03805) and their clustering.

- :func:`backselect`, :func:`gradient_backselect`: backward selection (removal order and
  the value of ``f`` after each removal) over pixel or patch units.
- :func:`find_sis`, :func:`sis_collection`: one SIS, or disjoint sufficient subsets.
- :func:`cluster`: energy distance between SIS pixel sets + DBSCAN.
- :func:`class_score`: ``f`` = a classifier's softmax probability (or logit) of one class.
"""

from xaiscope.analyses.sis.backselect import BackselectResult, backselect, gradient_backselect
from xaiscope.analyses.sis.cluster import Cluster, ClusterResult, cluster, energy_distances
from xaiscope.analyses.sis.collection import (
    SISResult,
    check_probability_tau,
    find_sis,
    sis_collection,
    sis_from_backselect,
)
from xaiscope.analyses.sis.score import class_score
from xaiscope.analyses.units import Units, make_units, masked, parse_unit

__all__ = [
    "BackselectResult",
    "Cluster",
    "ClusterResult",
    "SISResult",
    "Units",
    "backselect",
    "check_probability_tau",
    "class_score",
    "cluster",
    "energy_distances",
    "find_sis",
    "gradient_backselect",
    "make_units",
    "masked",
    "parse_unit",
    "sis_collection",
    "sis_from_backselect",
]
