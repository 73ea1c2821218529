"""Sweeps: one teacher run, many students.

A sweep file (``spec``) names a base run config and the distillation, training and student settings
to vary; ``plan`` expands it into validated trial configs that all replay one soft-label cache
entry; ``report`` turns the trials' validation results into a table and a plot; ``summary`` reads a
finished sweep back from MLflow.
"""

from kdflow.sweep.plan import SweepPlan, Trial, expand
from kdflow.sweep.spec import MAX_TRIALS, SweepSpec

__all__ = ["MAX_TRIALS", "SweepPlan", "SweepSpec", "Trial", "expand"]
