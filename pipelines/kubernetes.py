"""Apply ``kdflow.config.platform.Platform`` to the tasks of a pipeline (kfp-kubernetes and KFP's own task
settings). kfp.local ignores all of this: it matters only in the compiled spec."""

from __future__ import annotations

from kfp import dsl, kubernetes

from kdflow.config.platform import Platform, Resources

SHM_VOLUME = "dshm"


def _resources(task: dsl.PipelineTask, r: Resources) -> None:
    if r.cpu_request:
        task.set_cpu_request(r.cpu_request)
    if r.cpu_limit:
        task.set_cpu_limit(r.cpu_limit)
    if r.memory_request:
        task.set_memory_request(r.memory_request)
    if r.memory_limit:
        task.set_memory_limit(r.memory_limit)


def _common(task: dsl.PipelineTask, platform: Platform) -> None:
    for s in platform.secrets:
        kubernetes.use_secret_as_env(task, secret_name=s.secret, secret_key_to_env=dict(s.env), optional=s.optional)
    if platform.image_pull_secrets:
        kubernetes.set_image_pull_secrets(task, list(platform.image_pull_secrets))


def cpu_step(task: dsl.PipelineTask, platform: Platform | None) -> dsl.PipelineTask:
    """A step for a CPU node: requests and limits, secrets as environment variables."""
    if platform is not None:
        _resources(task, platform.cpu_steps)
        _common(task, platform)
    return task


def gpu_step(task: dsl.PipelineTask, platform: Platform | None, gpus: int | None = None) -> dsl.PipelineTask:
    """A step for a GPU node: the accelerator, node selector and tolerations, a memory-backed /dev/shm,
    requests and limits, secrets, and retries with back-off (GPU nodes are often spot/preemptible).
    Without settings (kfp.local) only the accelerator is named. ``gpus``: this task's count (default
    ``platform.gpus_per_step``), e.g. ``platform.distill_gpus`` for a multi-GPU distillation."""
    gpus = gpus or (platform.gpus_per_step if platform else 1)
    task.set_accelerator_type(platform.gpu_resource if platform else "nvidia.com/gpu").set_accelerator_limit(gpus)
    if platform is None:
        return task
    _resources(task, platform.gpu_steps)
    _common(task, platform)
    for key, value in platform.gpu_node_selector.items():
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    for t in platform.gpu_tolerations:
        kubernetes.add_toleration(task, key=t.key, operator=t.operator, value=t.value, effect=t.effect)
    kubernetes.empty_dir_mount(task, volume_name=SHM_VOLUME, mount_path="/dev/shm", medium="Memory",
                               size_limit=platform.shm_size)
    r = platform.retry
    if r.attempts:
        task.set_retry(num_retries=r.attempts, backoff_duration=r.backoff, backoff_factor=r.factor,
                       backoff_max_duration=r.max_backoff)
    return task
