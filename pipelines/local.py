"""Run the pipeline on this machine with kfp.local, and compile it for a cluster."""

from __future__ import annotations

from typing import Any


def compile_pipeline(path: str) -> str:
    from kfp import compiler

    from pipelines.distill_pipeline import distill_pipeline

    compiler.Compiler().compile(distill_pipeline, package_path=path)
    return path


def run_local(pipeline_root: str, arguments: dict[str, Any]) -> str:
    """Run every task as a subprocess of this interpreter (kfp.local.SubprocessRunner); returns the
    MLflow run id. Raises when a task fails."""
    import warnings

    from kfp import local

    from pipelines.distill_pipeline import distill_pipeline

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=pipeline_root, raise_on_error=True)
    with warnings.catch_warnings():
        # Expected locally, and repeated for every task: the tasks name container images (for the
        # cluster) while the subprocess runner uses this interpreter; display names are cluster-only.
        warnings.filterwarnings("ignore", message="You may be attemping to run a task", category=RuntimeWarning)
        warnings.filterwarnings("ignore", message=".*have no effect in the current local runner",
                                category=UserWarning)
        return distill_pipeline(**arguments).output


def retarget_images(path: str, prefix: str) -> None:
    """Point every executor of a compiled spec at images under ``prefix`` (same names and tags)."""
    import yaml

    from components.images import IMAGE_PREFIX

    with open(path) as f:
        docs = list(yaml.safe_load_all(f))
    for executor in docs[0]["deploymentSpec"]["executors"].values():
        image = executor["container"]["image"]
        if image.startswith(IMAGE_PREFIX + "/"):
            executor["container"]["image"] = prefix.rstrip("/") + image[len(IMAGE_PREFIX):]
    with open(path, "w") as f:
        yaml.safe_dump_all(docs, f, sort_keys=False)
