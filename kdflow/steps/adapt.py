"""Step 1b (optional): adapt the given teacher to this dataset before it labels anything.

A pretrained teacher meets data that differ from what it was trained on (other compression, other
cameras): the shared CIFAR-10 ResNet-56 loses 10 points on the JPEG copy. Fine-tuning it on the
train split (cross-entropy, the run's augmentation) first gives the student a better teacher.

The adapted teacher is a kdflow checkpoint stored beside the soft-label cache, named by a digest of
what made it (the given teacher's digest, the dataset fingerprint, the fine-tuning recipe and the
augmentation), so a later run reuses it instead of training again; its own content digest then
keys the soft labels it writes.
"""

from __future__ import annotations

import logging

from kdflow.config import Config, TrainConfig
from kdflow.util.errors import KdflowError
from kdflow.steps.preamble import begin_step

log = logging.getLogger(__name__)


def recipe(cfg: Config) -> TrainConfig:
    """The fine-tuning schedule: ``teacher.adapt_*`` on a fixed recipe (SGD + Nesterov momentum,
    batch 128, seed 0), deliberately not the student's ``train`` settings, so that students trained
    with other seeds, batch sizes or optimisers share one adapted teacher and one soft-label cache."""
    return TrainConfig(epochs=cfg.teacher.adapt_epochs, lr=cfg.teacher.adapt_lr, batch_size=128, optimizer="sgd",
                       momentum=0.9, weight_decay=5e-4, warmup_epochs=0, seed=0, device=cfg.train.device)


def run_adaptation(dataset_dir: str, teacher_uri: str, config_yaml: str, cache_uri: str,
                   expected_digest: str = "", tracking_uri: str | None = None) -> dict:
    """Returns {"teacher_uri": the teacher to use from here on, "adapted", "reused", val accuracies}.

    ``expected_digest`` (the digest taken when the run started, which keys KFP's cache) must match
    the teacher read now: a teacher replaced mid-run would otherwise be adapted under the old key."""
    cfg = begin_step(config_yaml, heavy=True)
    if cfg.teacher.adapt_epochs == 0:
        return {"teacher_uri": teacher_uri, "adapted": False, "reused": False}
    # Imported only now: adaptation is off by default, and the task then must not pay for torch.
    import torch

    from kdflow.data.shards import DatasetManifest
    from kdflow.models.loading import TeacherSource, save_checkpoint
    from kdflow.steps.teacher import check_teacher
    from kdflow.storage import join, storage_for
    from kdflow.storage.digest import digest_of
    from kdflow.training import augment
    from kdflow.training.supervised import train_supervised, val_accuracy, val_batches

    if not teacher_uri:
        raise KdflowError("no teacher given to adapt", "pass a teacher (a state_dict or kdflow checkpoint)")
    dataset = DatasetManifest.open(dataset_dir)
    source = TeacherSource.of(teacher_uri, cfg.teacher).reach(tracking_uri)
    if expected_digest and source.digest() != expected_digest:
        raise KdflowError(f"the teacher at {teacher_uri} changed after the run started "
                          f"(digest {source.digest()[:12]}, expected {expected_digest[:12]})",
                          "run the pipeline again; do not replace a teacher while a run uses it")
    train_cfg = recipe(cfg)
    settings = {k: v for k, v in train_cfg.to_dict().items() if k != "device"}
    name = digest_of({"teacher": source.digest(), "dataset": dataset.fingerprint, "recipe": settings,
                      "augment": augment.spec(cfg.augment)})
    uri = join(cache_uri, "teachers", f"adapted-{name}.pt")
    store = storage_for(uri)
    if store.exists(uri):
        log.info("teacher adaptation: reusing %s", uri)
        return {"teacher_uri": uri, "adapted": True, "reused": True}

    model, arch = source.load_trainable(dataset.mean, dataset.std)
    check_teacher(model.eval(), dataset, torch.device("cpu"))
    val = val_batches(dataset, cfg.teacher.batch_size, cfg.train.device)  # read once, used twice
    before = val_accuracy(model, val)
    log.info("teacher adaptation: fine-tuning %s for %d epochs at lr %g (val accuracy before: %s)",
             arch, train_cfg.epochs, train_cfg.lr, before)
    torch.manual_seed(train_cfg.seed)
    train_supervised(model, dataset, train_cfg, cfg.augment)
    after = val_accuracy(model, val)
    store.write_bytes(uri, save_checkpoint(model.cpu(), arch, dataset.num_classes))  # all or nothing
    log.info("teacher adaptation: saved %s (val accuracy after: %s)", uri, after)
    return {"teacher_uri": uri, "adapted": True, "reused": False, "val_accuracy_before": before,
            "val_accuracy_after": after}
