"""``xaiscope run``: the runner (:mod:`xaiscope.run.runner`) followed by the run's analyses.

The runner computes and commits the work units; the analyses
(:func:`xaiscope.commands.analyses_job.run_analyses`: ranking, sensitivity, global maps
+ PEPPR, variability, SIS) read the consolidated results and write their tables.
"""

from __future__ import annotations

from pathlib import Path

from xaiscope.commands.analyses_job import run_analyses
from xaiscope.run import runner
from xaiscope.run.config import RunConfig


def run(cfg: RunConfig, **options) -> Path:
    """Run (or resume) the configured grid and its analyses; return the run folder.

    ``options`` are :func:`xaiscope.run.runner.run`'s (``out``, ``force``, ``refresh``,
    ``console``, ``backend``, ``address``, ``plan_only``).
    """
    return runner.run(cfg, analyses=run_analyses, **options)
