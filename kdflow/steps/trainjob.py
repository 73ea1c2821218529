"""Step 3, multi-node: distillation as a Kubeflow Trainer job (kdflow.cluster.trainjob), both ends of it.

- ``run_trainjob``: what the pipeline task runs: build the TrainJob (or PyTorchJob), submit it, wait,
  and return what the single-node distillation step returns (the run id is read back from the job's
  output folder, where rank 0 writes it).
- ``python -m kdflow.steps.trainjob``: what every node of the job runs under torchrun: the
  distillation step with the config from $KDFLOW_CONFIG and the tracking URI from
  $MLFLOW_TRACKING_URI.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass

from kdflow.util.errors import KdflowError
from kdflow.storage import join, storage_for

log = logging.getLogger(__name__)

RESULT_FILE = "trainjob-result.json"  # written by rank 0 under --out, read back by run_trainjob
RUN_ID_ENV = "KDFLOW_PIPELINE_RUN_ID"  # the pipeline run's unique id, to the workers (scopes their checkpoints)
POD_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def job_name(out_uri: str, pipeline_run_id: str = "", inputs: tuple[str, ...] = ()) -> str:
    """A job name (an RFC 1035 label): ``kdflow-distill-<12 hex>``.

    Within a pipeline run (``pipeline_run_id``) it follows the run and the task's inputs, not its
    output URI: a KFP retry gets a new output URI, and must find the job its preempted attempt
    submitted (still running, or finished) instead of starting a second one on the same checkpoints
    and MLflow run. Without a run id, the output URI (unique per task) names it."""
    import hashlib

    basis = "\0".join((pipeline_run_id, *inputs)) if pipeline_run_id else out_uri
    return "kdflow-distill-" + hashlib.sha256(basis.encode()).hexdigest()[:12]


def job_out_uri(job: dict) -> str | None:
    """The ``--out`` a job's rank 0 writes to (read from the job object the API returned), or None."""
    spec = job.get("spec") or {}
    if "trainer" in spec:
        args = list(spec["trainer"].get("args") or [])
    else:
        master = ((spec.get("pytorchReplicaSpecs") or {}).get("Master") or {}).get("template") or {}
        containers = (master.get("spec") or {}).get("containers") or [{}]
        args = list(containers[0].get("command") or [])
    return args[args.index("--out") + 1] if "--out" in args[:-1] else None


def _adopt_outputs(written: str, out_uri: str) -> None:
    """Copy what an earlier attempt's job wrote under ``written`` to this attempt's ``out_uri``: the
    step's output artifact is this attempt's, whichever attempt submitted the job."""
    src, dst = storage_for(written), storage_for(out_uri)
    for obj in src.list_info(written):
        rel = obj.uri[len(written.rstrip("/")) + 1:]
        dst.write_bytes(join(out_uri, rel), src.read_bytes(obj.uri))
    log.info("the job was submitted by an earlier attempt: copied its output from %s", written)


def own_namespace() -> str:
    """The namespace of the pod this runs in (its service account's), for a job submitted from a task."""
    try:
        with open(POD_NAMESPACE_FILE) as f:
            return f.read().strip()
    except OSError:
        raise KdflowError("no namespace given and this is not a pod (no service-account namespace file)",
                          "pass the namespace the job should run in") from None


@dataclass(frozen=True)
class JobData:
    """What the job reads and where it writes: URIs every node of the job can reach (object storage)."""

    dataset_uri: str
    soft_labels_uri: str  # the soft-label reference folder
    config_yaml: str  # the run config
    out_uri: str  # where rank 0 writes student.pt and the result file
    tracking_uri: str = ""  # empty: the pods' own MLFLOW_TRACKING_URI (from a secret)


@dataclass(frozen=True)
class JobPlacement:
    """Where and on what the job runs."""

    image: str  # the GPU image
    kind: str = "TrainJob"  # or PyTorchJob
    num_nodes: int = 1
    gpus_per_node: int = 1
    runtime: str = "torch-distributed"  # TrainJob: the ClusterTrainingRuntime referenced
    namespace: str = ""  # empty: this pod's own
    name: str = ""  # empty: derived from the pipeline run and the inputs (``job_name``)
    platform_yaml: str = ""  # the Kubernetes settings (kdflow.config.platform) as YAML; empty: the defaults


@dataclass(frozen=True)
class JobRun:
    """The pipeline run the job belongs to: it names the job and scopes the workers' checkpoints."""

    pipeline_run: str = ""  # the pipeline run's name (an MLflow tag)
    pipeline_run_id: str = ""  # its unique id
    teacher_digest: str = ""  # the given teacher's (before adaptation): tagged for the champion check


def trainjob_step(*, dataset_uri: str, soft_labels_uri: str, config_yaml: str, out_uri: str, tracking_uri: str,
                  image: str, kind: str, num_nodes: int, gpus_per_node: int, runtime: str, namespace: str,
                  platform_yaml: str, pipeline_run: str, pipeline_run_id: str, teacher_digest: str,
                  timeout_s: float) -> dict:
    """The pipeline component's entry: its inputs, by keyword, grouped into the job's three parts."""
    return run_trainjob(
        JobData(dataset_uri=dataset_uri, soft_labels_uri=soft_labels_uri, config_yaml=config_yaml, out_uri=out_uri,
                tracking_uri=tracking_uri),
        JobPlacement(image=image, kind=kind, num_nodes=num_nodes, gpus_per_node=gpus_per_node, runtime=runtime,
                     namespace=namespace, platform_yaml=platform_yaml),
        JobRun(pipeline_run=pipeline_run, pipeline_run_id=pipeline_run_id, teacher_digest=teacher_digest),
        timeout_s=timeout_s)


def run_trainjob(data: JobData, placement: JobPlacement, run: JobRun = JobRun(), *, timeout_s: float = 24 * 3600,
                 poll_s: float = 30.0, api=None) -> dict:
    """Submit the distillation job, wait for it; returns {"run_id", "model_uri", "job"}. A retried task
    adopts the job an earlier attempt submitted and copies its output here. ``api``: the Kubernetes
    custom-objects API (kdflow.cluster.trainjob; None: the client, else kubectl)."""
    from kdflow.util.logs import setup_logging
    from kdflow.cluster.trainjob import JobInputs, build_job, submit_and_wait

    setup_logging()
    name = placement.name or job_name(data.out_uri, run.pipeline_run_id,
                                      (data.dataset_uri, data.soft_labels_uri, data.config_yaml, run.teacher_digest))
    namespace = placement.namespace or own_namespace()
    inputs = JobInputs(name=name, namespace=namespace, image=placement.image, dataset_uri=data.dataset_uri,
                       soft_labels_uri=data.soft_labels_uri, out_uri=data.out_uri, config_yaml=data.config_yaml,
                       tracking_uri=data.tracking_uri, kind=placement.kind, num_nodes=placement.num_nodes,
                       gpus_per_node=placement.gpus_per_node, runtime=placement.runtime,
                       pipeline_run=run.pipeline_run, teacher_digest=run.teacher_digest,
                       extra_env={RUN_ID_ENV: run.pipeline_run_id} if run.pipeline_run_id else {})
    job = build_job(inputs, _platform(placement.platform_yaml))
    finished = submit_and_wait(job, api, timeout_s=timeout_s, poll_s=poll_s)
    written = job_out_uri(finished) or data.out_uri  # an adopted job (a retried task) wrote to its own --out
    if written != data.out_uri:
        _adopt_outputs(written, data.out_uri)
    return {**_result(data.out_uri, f"{namespace}/{name}"), "job": f"{placement.kind}/{namespace}/{name}"}


def _platform(platform_yaml: str):
    """The platform settings given as YAML (kdflow.config.platform.Platform); empty: the defaults."""
    import tempfile

    from kdflow.config.platform import Platform

    if not platform_yaml:
        return Platform()
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(platform_yaml)
    try:
        return Platform.load(f.name)
    finally:
        os.unlink(f.name)


def _result(out_uri: str, job: str) -> dict:
    """What rank 0 wrote last under ``out_uri``: its presence means the job finished its work."""
    result_uri = join(out_uri, RESULT_FILE)
    store = storage_for(result_uri)
    if not store.exists(result_uri):
        raise KdflowError(f"the job {job} succeeded but wrote no {result_uri}",
                          "check that the job's image runs this kdflow version (its rank 0 writes that file)")
    return json.loads(store.read_bytes(result_uri))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kdflow.steps.trainjob",
                                     description="Distil on one node of a Trainer job (run it under torchrun).")
    parser.add_argument("--dataset", required=True, help="dataset URI (preprocessed shards + manifest)")
    parser.add_argument("--soft-labels", required=True, help="URI of the soft-label reference folder")
    parser.add_argument("--out", required=True, help="where student.pt and the result file go")
    parser.add_argument("--pipeline-run", default="", help="the pipeline run's name (an MLflow tag)")
    parser.add_argument("--teacher-digest", default="", help="the given teacher's digest (an MLflow tag)")
    args = parser.parse_args(argv)
    config = os.environ.get("KDFLOW_CONFIG")
    if not config:
        raise KdflowError("$KDFLOW_CONFIG is not set", "set it to the run config (YAML); kdflow.cluster.trainjob does")
    import tempfile

    from kdflow.softlabels.ref import REF_FILE
    from kdflow.steps.distill import run_distillation

    soft_labels = args.soft_labels
    if "://" in soft_labels:  # the reference is a small local folder to the distillation step: fetch it
        soft_labels = tempfile.mkdtemp(prefix="kdflow-ref-")
        ref_uri = join(args.soft_labels, REF_FILE)
        with open(os.path.join(soft_labels, REF_FILE), "wb") as f:
            f.write(storage_for(ref_uri).read_bytes(ref_uri))
    result = run_distillation(args.dataset, soft_labels, config, args.out,
                              os.environ.get("MLFLOW_TRACKING_URI") or None, args.pipeline_run,
                              teacher_input_digest=args.teacher_digest,
                              pipeline_run_id=os.environ.get(RUN_ID_ENV, ""))
    if int(os.environ.get("RANK", "0")) == 0:  # one writer; the file is written last, so it means "done"
        uri = join(args.out, RESULT_FILE)
        storage_for(uri).write_bytes(uri, json.dumps({"run_id": result.get("run_id", ""),
                                                      "model_uri": result.get("model_uri", "")}).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
