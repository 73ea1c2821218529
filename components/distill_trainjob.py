from typing import NamedTuple

from kfp import dsl

from kdflow.components.images import CPU_IMAGE, GPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def distill_trainjob(
    dataset: dsl.Input[dsl.Dataset],
    soft_labels: dsl.Input[dsl.Artifact],
    config: str,
    tracking_uri: str,
    pipeline_run: str,
    model: dsl.Output[dsl.Model],
    kind: str = "TrainJob",
    num_nodes: int = 2,
    gpus_per_node: int = 1,
    runtime: str = "torch-distributed",
    image: str = GPU_IMAGE,
    namespace: str = "",
    platform: str = "",
    timeout_s: float = 86400.0,
    teacher_digest: str = "",
    pipeline_run_id: str = "",
) -> NamedTuple("DistillOutputs", run_id=str, model_uri=str):
    """Distil on ``num_nodes`` x ``gpus_per_node`` GPUs as a Kubeflow Trainer job (``kind`` TrainJob on the
    ``runtime`` ClusterTrainingRuntime, or a PyTorchJob) and wait for it; this pod only submits and polls.
    The job reads the artifacts by URI (object storage); ``platform``: kdflow platform settings as YAML."""
    from collections import namedtuple

    from kdflow.steps.trainjob import trainjob_step

    r = trainjob_step(dataset_uri=dataset.uri, soft_labels_uri=soft_labels.uri, config_yaml=config, out_uri=model.uri,
                      tracking_uri=tracking_uri, image=image, kind=kind, num_nodes=num_nodes,
                      gpus_per_node=gpus_per_node, runtime=runtime, namespace=namespace, platform_yaml=platform,
                      pipeline_run=pipeline_run, pipeline_run_id=pipeline_run_id, teacher_digest=teacher_digest,
                      timeout_s=timeout_s)
    model.metadata.update({"run_id": r["run_id"], "model_uri": r["model_uri"], "job": r["job"]})
    return namedtuple("DistillOutputs", ["run_id", "model_uri"])(r["run_id"], r["model_uri"])
