"""Step 3, multi-node: distillation as a Kubeflow Trainer job (kdflow.trainjob), both ends of it.

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

from kdflow.errors import KdflowError
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


def run_trainjob(dataset_uri: str, soft_labels_uri: str, config_yaml: str, out_uri: str, tracking_uri: str,
                 image: str, name: str = "", namespace: str = "", kind: str = "TrainJob", num_nodes: int = 1,
                 gpus_per_node: int = 1, runtime: str = "torch-distributed", pipeline_run: str = "",
                 platform_yaml: str = "", timeout_s: float = 24 * 3600, poll_s: float = 30.0, api=None,
                 teacher_digest: str = "", pipeline_run_id: str = "") -> dict:
    """Submit the distillation job, wait for it; returns {"run_id", "model_uri", "job"}.
    ``platform_yaml``: the Kubernetes settings (kdflow.platform) as YAML; empty: the defaults. ``name``
    empty: derived from the pipeline run and the inputs (``job_name``); ``namespace`` empty: this pod's
    own. A retried task adopts the job an earlier attempt submitted and copies its output here."""
    import tempfile

    from kdflow.logs import setup_logging
    from kdflow.platform import Platform
    from kdflow.trainjob import JobInputs, build_job, submit_and_wait

    setup_logging()
    name = name or job_name(out_uri, pipeline_run_id, (dataset_uri, soft_labels_uri, config_yaml, teacher_digest))
    namespace = namespace or own_namespace()
    platform = Platform()
    if platform_yaml:
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            f.write(platform_yaml)
        try:
            platform = Platform.load(f.name)
        finally:
            os.unlink(f.name)
    inputs = JobInputs(name=name, namespace=namespace, image=image, dataset_uri=dataset_uri,
                       soft_labels_uri=soft_labels_uri, out_uri=out_uri, config_yaml=config_yaml,
                       tracking_uri=tracking_uri, kind=kind, num_nodes=num_nodes, gpus_per_node=gpus_per_node,
                       runtime=runtime, pipeline_run=pipeline_run, teacher_digest=teacher_digest,
                       extra_env={RUN_ID_ENV: pipeline_run_id} if pipeline_run_id else {})
    job = build_job(inputs, platform)
    finished = submit_and_wait(job, api, timeout_s=timeout_s, poll_s=poll_s)
    written = job_out_uri(finished) or out_uri  # an adopted job (a retried task) wrote to its own --out
    if written != out_uri:
        _adopt_outputs(written, out_uri)
    result_uri = join(out_uri, RESULT_FILE)
    store = storage_for(result_uri)
    if not store.exists(result_uri):
        raise KdflowError(f"the job {namespace}/{name} succeeded but wrote no {result_uri}",
                          "check that the job's image runs this kdflow version (its rank 0 writes that file)")
    return {**json.loads(store.read_bytes(result_uri)), "job": f"{kind}/{namespace}/{name}"}


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
        raise KdflowError("$KDFLOW_CONFIG is not set", "set it to the run config (YAML); kdflow.trainjob does")
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
