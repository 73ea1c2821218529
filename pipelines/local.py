"""Run the pipeline on this machine with kfp.local, and compile it for a cluster."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator


def compile_pipeline(path: str, pipeline: str = "distill", platform_file: str | None = None,
                     image_prefix: str | None = None) -> str:
    """Write the ``pipeline`` ("distill" or "sweep") spec for a cluster to ``path``, with the Kubernetes
    settings of ``platform_file`` (None: the defaults) and images under ``image_prefix``."""
    from kfp import compiler

    from kdflow.config.platform import Platform

    platform = Platform.load(platform_file)
    if pipeline == "sweep":
        from kdflow.pipelines.sweep_pipeline import make_sweep_pipeline

        compiler.Compiler().compile(make_sweep_pipeline(platform=platform), package_path=path)
    else:
        from kdflow.pipelines.distill_pipeline import make_distill_pipeline

        compiler.Compiler().compile(make_distill_pipeline(platform), package_path=path)
    if image_prefix:
        retarget_images(path, image_prefix)
    _refuse_secrets_in_spec(path)
    return path


def _refuse_secrets_in_spec(path: str) -> None:
    """A spec is shared (uploaded, committed, attached to runs): it names Kubernetes secrets, never
    holds a credential. Should one have got in anyway (a URI with credentials in a default, a secret
    value of the compiling environment), the spec is deleted and the compile refused."""
    import os

    from kdflow.util.errors import KdflowError
    from kdflow.util.redact import refuse_secrets_in

    try:
        with open(path) as f:
            refuse_secrets_in(f.read(), "the compiled pipeline")
    except KdflowError:
        os.unlink(path)  # nothing half-written, nothing leaked
        raise


def run_local(pipeline_root: str, arguments: dict[str, Any], runner: Any = None, log_file: str | None = None) -> str:
    """Run the pipeline on this machine: every task as a subprocess of this interpreter
    (kfp.local.SubprocessRunner), or in its container image with ``runner=kfp.local.DockerRunner(...)``.
    Returns the MLflow run id. Raises when a task fails. With ``log_file``, kfp.local's output goes
    there and stderr gets one line per step (pipelines/console.py)."""
    from kfp import local

    from kdflow.pipelines.console import steps_to_console
    from kdflow.pipelines.distill_pipeline import make_distill_pipeline

    runner = runner or local.SubprocessRunner(use_venv=False)
    local.init(runner=runner, pipeline_root=pipeline_root, raise_on_error=True)
    with _local_warnings_ignored(), steps_to_console(log_file):
        return make_distill_pipeline()(**arguments).output


@contextlib.contextmanager
def _local_warnings_ignored() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        # Expected locally, and repeated for every task: the tasks name container images (for the
        # cluster) while the subprocess runner uses this interpreter; display names are cluster-only.
        warnings.filterwarnings("ignore", message="You may be attemping to run a task", category=RuntimeWarning)
        warnings.filterwarnings("ignore", message=".*have no effect in the current local runner",
                                category=UserWarning)
        yield


def compile_sweep(path: str, platform_file: str | None = None) -> str:
    """The sweep pipeline for a cluster (up to ``CLUSTER_PARALLELISM`` trials at a time)."""
    return compile_pipeline(path, "sweep", platform_file)


def run_sweep_local(pipeline_root: str, arguments: dict[str, Any], log_file: str | None = None) -> str:
    """Run the sweep pipeline with kfp.local, one trial at a time (``LOCAL_PARALLELISM``); returns the
    MLflow run id of the winning trial (its ``mlflow.parentRunId`` tag names the sweep's parent run).
    Raises when a task fails (the exit task has then marked the sweep's runs FAILED)."""
    import uuid

    from kfp import local

    from kdflow.sweep.summary import find_parent
    from kdflow.registry.tags import SweepTag
    from kdflow.pipelines.sweep_pipeline import LOCAL_PARALLELISM, make_sweep_pipeline

    arguments = {"sweep_id": f"sweep-{uuid.uuid4().hex[:12]}", **arguments}
    from kdflow.pipelines.console import steps_to_console

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=pipeline_root, raise_on_error=True)
    with _local_warnings_ignored(), steps_to_console(log_file):
        make_sweep_pipeline(LOCAL_PARALLELISM)(**arguments)
    parent = find_parent(arguments["sweep_id"], arguments.get("tracking_uri") or None)
    if parent is None or SweepTag.BEST_RUN_ID not in parent.data.tags:
        raise RuntimeError(f"sweep {arguments['sweep_id']} finished without naming a winner")
    return parent.data.tags[SweepTag.BEST_RUN_ID]


def retarget_images(path: str, prefix: str) -> None:
    """Point every executor of a compiled spec at images under ``prefix`` (same names and tags)."""
    import yaml

    from kdflow.components.images import IMAGE_PREFIX

    with open(path) as f:
        docs = list(yaml.safe_load_all(f))
    for executor in docs[0]["deploymentSpec"]["executors"].values():
        image = executor["container"]["image"]
        if image.startswith(IMAGE_PREFIX + "/"):
            executor["container"]["image"] = prefix.rstrip("/") + image[len(IMAGE_PREFIX):]
    with open(path, "w") as f:
        yaml.safe_dump_all(docs, f, sort_keys=False)
