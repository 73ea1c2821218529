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
import os
import sys

from kdflow.errors import KdflowError
from kdflow.storage import join, storage_for

RESULT_FILE = "trainjob-result.json"  # written by rank 0 under --out, read back by run_trainjob
POD_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def job_name(out_uri: str) -> str:
    """A job name unique to the task's output (an RFC 1035 label): ``kdflow-distill-<12 hex>``."""
    import hashlib

    return "kdflow-distill-" + hashlib.sha256(out_uri.encode()).hexdigest()[:12]


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
                 teacher_digest: str = "") -> dict:
    """Submit the distillation job, wait for it; returns {"run_id", "model_uri", "job"}.
    ``platform_yaml``: the Kubernetes settings (kdflow.platform) as YAML; empty: the defaults. ``name``
    empty: derived from ``out_uri``; ``namespace`` empty: this pod's own."""
    import tempfile

    from kdflow.logs import setup_logging
    from kdflow.platform import Platform
    from kdflow.trainjob import JobInputs, build_job, submit_and_wait

    setup_logging()
    name, namespace = name or job_name(out_uri), namespace or own_namespace()
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
                       runtime=runtime, pipeline_run=pipeline_run, teacher_digest=teacher_digest)
    job = build_job(inputs, platform)
    submit_and_wait(job, api, timeout_s=timeout_s, poll_s=poll_s)
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
                              teacher_input_digest=args.teacher_digest)
    if int(os.environ.get("RANK", "0")) == 0:  # one writer; the file is written last, so it means "done"
        uri = join(args.out, RESULT_FILE)
        storage_for(uri).write_bytes(uri, json.dumps({"run_id": result.get("run_id", ""),
                                                      "model_uri": result.get("model_uri", "")}).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
