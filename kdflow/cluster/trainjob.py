"""Multi-node distillation as a Kubeflow Trainer job: build the job, submit it, follow it to the end.

Two kinds, one set of inputs (``JobInputs``):

- ``TrainJob`` (Kubeflow Trainer v2, ``trainer.kubeflow.org/v1alpha1``): ``spec.runtimeRef`` names a
  ClusterTrainingRuntime (``torch-distributed`` by default) that holds the pod template and the torch
  ML policy; ``spec.trainer`` sets image, command, args, env, ``numNodes``, ``numProcPerNode`` and
  ``resourcesPerNode``. The runtime gives each node ``PET_NNODES``, ``PET_NPROC_PER_NODE``,
  ``PET_NODE_RANK``, ``PET_MASTER_ADDR`` and ``PET_MASTER_PORT``, which ``torchrun`` reads as its defaults.
  Finished when a ``Complete`` or ``Failed`` condition is ``True``.
- ``PyTorchJob`` (the legacy training operator, ``kubeflow.org/v1``): a Master replica and numNodes - 1
  Workers with the same container (which the operator requires be named ``pytorch``); ``nprocPerNode``
  makes the operator set the same ``PET_*`` variables. Finished on ``Succeeded`` or ``Failed``.

Every node runs ``torchrun -m kdflow.steps.trainjob --dataset URI --soft-labels URI --out URI``: the
distillation step under torchrun, reading the dataset and the soft labels from object storage (a pod
cannot see another task's local files). The run config travels in ``KDFLOW_CONFIG`` and the tracking
URI in ``MLFLOW_TRACKING_URI``; credentials only as secret references (``kdflow.config.platform.SecretEnv``),
never as values.

Submission uses the Kubernetes API through an object with the three ``CustomObjectsApi`` methods this
module calls (create/get/delete_namespaced_custom_object): the ``kubernetes`` client when it is
installed (imported only here, when a job is submitted), else ``kubectl``. Tests pass a fake.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Protocol

from kdflow.util.errors import ConfigError, KdflowError
from kdflow.config.platform import Platform

log = logging.getLogger(__name__)

Kind = Literal["TrainJob", "PyTorchJob"]
ENTRY_MODULE = "kdflow.steps.trainjob"
CONFIG_ENV = "KDFLOW_CONFIG"
# group, version, plural, and the condition types that end a job (success first).
KINDS: dict[str, tuple[str, str, str, str, str]] = {
    "TrainJob": ("trainer.kubeflow.org", "v1alpha1", "trainjobs", "Complete", "Failed"),
    "PyTorchJob": ("kubeflow.org", "v1", "pytorchjobs", "Succeeded", "Failed"),
}
_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")  # RFC 1035 label (the TrainJob CRD's own rule)


class JobFailed(KdflowError):
    """The job ended in its failure condition (``message``: the job's own words)."""


class JobTimeout(KdflowError):
    """The job did not finish within the timeout."""


@dataclass(frozen=True)
class JobInputs:
    """What a distillation job needs. URIs must be reachable from every node (s3://, not a local path)."""

    name: str  # the job's name: an RFC 1035 label of at most 63 characters
    namespace: str
    image: str  # the GPU image, e.g. kdflow.components.images.GPU_IMAGE (tag = package version)
    dataset_uri: str
    soft_labels_uri: str
    out_uri: str  # where rank 0 writes student.pt
    config_yaml: str
    tracking_uri: str = ""  # empty: the pods' own MLFLOW_TRACKING_URI (from a secret)
    kind: Kind = "TrainJob"
    num_nodes: int = 1
    gpus_per_node: int = 1
    runtime: str = "torch-distributed"  # TrainJob: the ClusterTrainingRuntime referenced
    pipeline_run: str = ""
    teacher_digest: str = ""  # the given teacher's (before adaptation): tagged for the champion check
    extra_env: dict = field(default_factory=dict)  # plain values (not secrets)

    def __post_init__(self) -> None:
        def check(ok: bool, key: str, problem: str, fix: str) -> None:
            if not ok:
                raise ConfigError(f"train job '{key}' {problem}", fix)

        check(bool(_NAME.match(self.name)) and len(self.name) <= 63, "name", f"is {self.name!r}",
              "use lower-case letters, digits and '-', starting with a letter, at most 63 characters")
        check(self.kind in KINDS, "kind", f"is {self.kind!r}", f"use one of {', '.join(KINDS)}")
        check(self.num_nodes >= 1, "num_nodes", f"is {self.num_nodes}", "use 1 or more")
        check(self.gpus_per_node >= 1, "gpus_per_node", f"is {self.gpus_per_node}", "use 1 or more")
        check(bool(self.image), "image", "is empty", "pass the GPU image (kdflow.components.images.GPU_IMAGE)")
        for key in ("dataset_uri", "soft_labels_uri", "out_uri"):
            uri = getattr(self, key)
            check("://" in uri, key, f"is {uri!r}, a path only this pod can see",
                  "pass an object-storage URI (s3://...) that every node of the job can read")


SHARD_CACHE = "/tmp/kdflow-shards"  # the shard disk cache the ranks of a node share


def _env(inputs: JobInputs, platform: Platform) -> list[dict]:
    # The ranks of a node share its container: one disk cache of the dataset's shards, not one each.
    env = [{"name": CONFIG_ENV, "value": inputs.config_yaml}, {"name": "KDFLOW_SHARD_CACHE", "value": SHARD_CACHE}]
    if inputs.tracking_uri:
        env.append({"name": "MLFLOW_TRACKING_URI", "value": inputs.tracking_uri})
    env += [{"name": k, "value": str(v)} for k, v in sorted(inputs.extra_env.items())]
    named = {e["name"] for e in env}
    for s in platform.secrets:
        for key, var in s.env.items():
            if var in named:  # an explicit value wins over a secret of the same name
                continue
            ref = {"name": s.secret, "key": key, **({"optional": True} if s.optional else {})}
            env.append({"name": var, "valueFrom": {"secretKeyRef": ref}})
            named.add(var)
    return env


def _command(inputs: JobInputs) -> tuple[list[str], list[str]]:
    # torchrun takes nnodes, nproc-per-node, node rank and the rendezvous from PET_* (set by either operator).
    args = ["-m", ENTRY_MODULE, "--dataset", inputs.dataset_uri, "--soft-labels", inputs.soft_labels_uri,
            "--out", inputs.out_uri]
    if inputs.pipeline_run:
        args += ["--pipeline-run", inputs.pipeline_run]
    if inputs.teacher_digest:
        args += ["--teacher-digest", inputs.teacher_digest]
    return ["torchrun"], args


def _resources(inputs: JobInputs, platform: Platform) -> dict:
    r = platform.gpu_steps
    requests = {k: v for k, v in (("cpu", r.cpu_request), ("memory", r.memory_request)) if v}
    limits = {k: v for k, v in (("cpu", r.cpu_limit), ("memory", r.memory_limit)) if v}
    limits[platform.gpu_resource] = str(inputs.gpus_per_node)
    requests[platform.gpu_resource] = str(inputs.gpus_per_node)
    return {"requests": requests, "limits": limits}


def _labels(inputs: JobInputs) -> dict:
    from kdflow import __version__

    return {"app.kubernetes.io/name": "kdflow", "app.kubernetes.io/component": "distillation",
            "app.kubernetes.io/version": __version__}


def build_job(inputs: JobInputs, platform: Platform | None = None) -> dict:
    """The job object (a dict ready for the Kubernetes API or ``kubectl create -f``)."""
    platform = platform or Platform()
    group, version, _, _, _ = KINDS[inputs.kind]
    command, args = _command(inputs)
    env = _env(inputs, platform)
    resources = _resources(inputs, platform)
    meta = {"name": inputs.name, "namespace": inputs.namespace, "labels": _labels(inputs)}
    if inputs.kind == "TrainJob":
        trainer = {"image": inputs.image, "command": command, "args": args, "env": env,
                   "numNodes": inputs.num_nodes, "numProcPerNode": inputs.gpus_per_node,
                   "resourcesPerNode": resources}
        return {"apiVersion": f"{group}/{version}", "kind": "TrainJob", "metadata": meta,
                "spec": {"runtimeRef": {"name": inputs.runtime, "apiGroup": "trainer.kubeflow.org",
                                        "kind": "ClusterTrainingRuntime"},
                         "trainer": trainer}}
    pod_spec: dict[str, Any] = {
        "containers": [{"name": "pytorch", "image": inputs.image, "command": command + args, "env": env,
                        "resources": resources,
                        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}]}],
        "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": platform.shm_size}}],
        "nodeSelector": dict(platform.gpu_node_selector),
        "tolerations": [{k: v for k, v in (("key", t.key), ("operator", t.operator), ("value", t.value),
                                             ("effect", t.effect)) if v is not None}
                        for t in platform.gpu_tolerations],
    }
    if platform.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": n} for n in platform.image_pull_secrets]
    template = {"metadata": {"labels": _labels(inputs)}, "spec": pod_spec}
    replicas = {"Master": {"replicas": 1, "restartPolicy": "OnFailure", "template": template}}
    if inputs.num_nodes > 1:
        replicas["Worker"] = {"replicas": inputs.num_nodes - 1, "restartPolicy": "OnFailure", "template": template}
    return {"apiVersion": f"{group}/{version}", "kind": "PyTorchJob", "metadata": meta,
            "spec": {"nprocPerNode": str(inputs.gpus_per_node), "pytorchReplicaSpecs": replicas,
                     "runPolicy": {"cleanPodPolicy": "None"}}}


class CustomObjects(Protocol):
    """The part of kubernetes.client.CustomObjectsApi this module calls."""

    def create_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str,
                                        body: dict) -> dict: ...

    def get_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str,
                                     name: str) -> dict: ...

    def delete_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str,
                                        name: str) -> dict: ...


class Kubectl:
    """``CustomObjects`` through the kubectl command (its current context), when the client is missing."""

    def __init__(self, kubectl: str = "kubectl"):
        self.kubectl = kubectl

    def _run(self, args: list[str], stdin: str | None = None) -> dict:
        proc = subprocess.run([self.kubectl, *args], input=stdin, capture_output=True, text=True)
        if proc.returncode != 0:
            exc = KdflowError(f"kubectl {' '.join(args[:2])} failed: {proc.stderr.strip()}",
                              "check kubectl's context and that the job's CRD (Kubeflow Trainer or the training "
                              "operator) is installed")
            # What the kubernetes client's ApiException carries: the HTTP status _create tells apart.
            exc.status = 409 if "AlreadyExists" in proc.stderr else 404 if "NotFound" in proc.stderr else None
            raise exc
        return json.loads(proc.stdout) if proc.stdout.strip() else {}

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        return self._run(["create", "-n", namespace, "-o", "json", "-f", "-"], json.dumps(body))

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        return self._run(["get", f"{plural}.{group}", name, "-n", namespace, "-o", "json"])

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name):
        return self._run(["delete", f"{plural}.{group}", name, "-n", namespace, "--wait=false", "--cascade=foreground",
                          "-o", "name"])


def default_api() -> CustomObjects:
    """The kubernetes client (in-cluster config, else ~/.kube/config) when installed, else kubectl."""
    try:
        from kubernetes import client, config
    except ImportError:
        return Kubectl()
    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, OSError) as exc:
            raise KdflowError(f"no Kubernetes credentials: {exc}",
                              "run inside a pod with a service account allowed to create the job, or set up "
                              "~/.kube/config") from exc
    return client.CustomObjectsApi()


def job_state(job: dict, kind: Kind) -> tuple[str, str]:
    """("succeeded" | "failed" | "running", the deciding condition's message) from the job's status."""
    _, _, _, done, failed = KINDS[kind]
    conditions = (job.get("status") or {}).get("conditions") or []
    for cond in reversed(conditions):  # the latest first
        if str(cond.get("status")) != "True":
            continue
        message = cond.get("message") or cond.get("reason") or ""
        if cond.get("type") == failed:
            return "failed", message
        if cond.get("type") == done:
            return "succeeded", message
    return "running", ""


def _create(api: CustomObjects, job: dict, where: tuple[str, str, str, str, str],
            sleep: Callable[[float], None], polls: int = 60) -> None:
    """Create the job. A retried pipeline task finds its own job already there (the name follows the
    pipeline run and the task's inputs, kdflow.steps.trainjob.job_name): a running or finished one is
    waited for, a failed one replaced."""
    group, version, namespace, plural, name = where
    try:
        api.create_namespaced_custom_object(group, version, namespace, plural, job)
        log.info("submitted %s %s/%s", job["kind"], namespace, name)
        return
    except Exception as exc:  # the kubernetes client's ApiException, kubectl's error: both carry .status
        if getattr(exc, "status", None) != 409:
            raise
    current = api.get_namespaced_custom_object(group, version, namespace, plural, name)
    state, _ = job_state(current, job["kind"])
    deleting = bool(current.get("metadata", {}).get("deletionTimestamp"))  # e.g. an attempt that timed out
    if state != "failed" and not deleting:
        log.info("%s %s/%s already exists (a retried task): waiting for it", job["kind"], namespace, name)
        return
    log.info("%s %s/%s %s in an earlier attempt: replacing it", job["kind"], namespace, name,
             "was deleted" if deleting else "failed")
    if not deleting:
        api.delete_namespaced_custom_object(group, version, namespace, plural, name)
    for _ in range(polls):  # deletion is asynchronous (its pods go first): wait until the name is free
        try:
            api.get_namespaced_custom_object(group, version, namespace, plural, name)
        except Exception as exc:
            if getattr(exc, "status", None) == 404:
                break
            raise
        sleep(5.0)
    else:
        raise KdflowError(f"{job['kind']} {namespace}/{name} from an earlier attempt is still being deleted",
                          f"wait for it to go (kubectl get -n {namespace} {plural}.{group} {name}), then retry")
    api.create_namespaced_custom_object(group, version, namespace, plural, job)
    log.info("resubmitted %s %s/%s", job["kind"], namespace, name)


def submit_and_wait(job: dict, api: CustomObjects | None = None, timeout_s: float = 24 * 3600,
                    poll_s: float = 30.0, delete_on_timeout: bool = True,
                    sleep: Callable[[float], None] = time.sleep,
                    clock: Callable[[], float] = time.monotonic) -> dict:
    """Create ``job`` and poll it until it succeeds (returns its last state), fails (``JobFailed`` with
    the job's message) or outlasts ``timeout_s`` (``JobTimeout``; the job is deleted first, so its GPUs
    are freed, unless ``delete_on_timeout`` is False)."""
    api = api or default_api()
    kind = job["kind"]
    group, version, plural, _, _ = KINDS[kind]
    name, namespace = job["metadata"]["name"], job["metadata"]["namespace"]
    _create(api, job, (group, version, namespace, plural, name), sleep)
    deadline = clock() + timeout_s
    while True:
        current = api.get_namespaced_custom_object(group, version, namespace, plural, name)
        state, message = job_state(current, kind)
        if state == "succeeded":
            log.info("%s %s/%s succeeded", kind, namespace, name)
            return current
        if state == "failed":
            label = "jobset.sigs.k8s.io/jobset-name" if kind == "TrainJob" else "training.kubeflow.org/job-name"
            raise JobFailed(f"{kind} {namespace}/{name} failed: {message or 'no message'}",
                            f"read its pods' logs: kubectl logs -n {namespace} -l {label}={name}")
        if clock() >= deadline:
            if delete_on_timeout:
                api.delete_namespaced_custom_object(group, version, namespace, plural, name)
            raise JobTimeout(f"{kind} {namespace}/{name} did not finish within {timeout_s:.0f} s"
                             + (" (deleted)" if delete_on_timeout else " (left running)"),
                             "raise the timeout, or look at why its pods are pending: kubectl describe -n "
                             f"{namespace} {plural}.{group} {name}")
        sleep(poll_s)
