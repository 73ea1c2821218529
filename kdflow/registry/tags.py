"""Names of the tags kdflow puts on MLflow runs and model versions.

Written by one step and read by another (and by the registry commands), so they live in one place
that every layer may import: it imports nothing.
"""

from __future__ import annotations


class Tag:
    """Names of the tags kdflow puts on MLflow runs and model versions (written by one step, read
    by another, so they live in one place)."""

    DATASET_FINGERPRINT = "kdflow.dataset_fingerprint"
    TEACHER_DIGEST = "kdflow.teacher_digest"
    TEACHER_URI = "kdflow.teacher_uri"
    # The teacher as given to the run, before adaptation (TEACHER_DIGEST is the labelling teacher's).
    TEACHER_INPUT_DIGEST = "kdflow.teacher_input_digest"
    CONFIG_HASH = "kdflow.config_hash"  # the run config without its locations (kdflow.registry.lineage)
    CODE_VERSION = "kdflow.code_version"  # the kdflow package version that trained the run
    CACHE_KEY = "kdflow.softlabel_cache_key"
    CACHE_HIT = "kdflow.softlabel_cache_hit"
    PIPELINE_RUN = "kdflow.pipeline_run"
    METHOD = "kdflow.method"
    STUDENT_ARCH = "kdflow.student_arch"
    DEVICE = "kdflow.device"
    TEACHER_MODE = "kdflow.teacher_mode"  # offline (cached soft labels) or online
    VIEWS = "kdflow.softlabel_views"  # augmented views replayed (0: the plain view)
    PROCESSES = "kdflow.processes"  # training processes (DDP ranks; 1 without torchrun)
    GATE_PASSED = "kdflow.gate_passed"
    GATE = "kdflow.gate"  # the verdict in words
    GATE_CHECK_PREFIX = "kdflow.gate."  # + check name: "pass|FAIL name = value (limit): why"
    PROMOTABLE = "kdflow.promotable"  # "true": passed the absolute checks and the champion check
    CHAMPION_CHECK = "kdflow.champion_check"  # the champion check at evaluation, in words
    EXPORT_PREFIX = "kdflow.export."  # + format: its runs:/ URI; + format + ".check": how it matched PyTorch
    RUN_ID = "kdflow.run_id"
    MODEL_URI = "kdflow.model_uri"  # on a distillation run: the model it logged (a retry reuses it)
    REGISTERED_MODEL = "kdflow.registered_model"
    REGISTERED_VERSION = "kdflow.registered_version"

    # The verdict, copied from the run onto the model version (with every GATE_CHECK_PREFIX tag).
    VERDICT = (GATE_PASSED, GATE, PROMOTABLE, CHAMPION_CHECK)
    # Copied from the run onto the model version, so the registry alone says where a model came from.
    LINEAGE = (DATASET_FINGERPRINT, TEACHER_DIGEST, TEACHER_INPUT_DIGEST, CONFIG_HASH, CACHE_KEY, PIPELINE_RUN,
               METHOD, CODE_VERSION)
class SweepTag:
    """Tags of a sweep's runs (written by the start and select steps, read here)."""

    SWEEP = "kdflow.sweep"  # "true" on the parent run
    ID = "kdflow.sweep.id"  # on the parent: the sweep's id (given, else the pipeline run's name)
    METRIC = "kdflow.sweep.metric"  # what picks the winner (a validation metric)
    TRIALS = "kdflow.sweep.trials"  # how many trials the plan has
    BEST_RUN_ID = "kdflow.sweep.best_run_id"  # on the parent
    BEST_TRIAL = "kdflow.sweep.best_trial"  # on the parent: the winner's trial name
    RANK = "kdflow.sweep.rank"  # on each trial: 1 is the winner
    PARENT_RUN_ID = "mlflow.parentRunId"  # MLflow's own: a trial's parent
    ERROR = "kdflow.sweep.error"  # on the runs of a sweep that failed: why
