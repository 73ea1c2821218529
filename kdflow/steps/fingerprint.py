"""Step 0: content digests of the run's inputs, before anything reads them in earnest.

KFP's step cache keys on parameter values and artifact names, never on the bytes behind an
``s3://`` URI: preprocess keyed only on ``data_uri`` would hit the cache after the folder changed.
This step (never cached itself) turns the inputs into digests that later steps take as parameters,
so a KFP cache hit means the same content: the raw folder's digest, the given teacher's digest and
the config hash.
"""

from __future__ import annotations

import logging

from kdflow.registry.lineage import config_hash
from kdflow.steps.preamble import begin_step

log = logging.getLogger(__name__)


def fingerprint_inputs(data_uri: str, teacher_uri: str, config_yaml: str, tracking_uri: str | None) -> dict:
    """Returns {"source_fingerprint", "teacher_digest", "config_hash"}."""
    from kdflow.data.source import source_fingerprint
    from kdflow.util.errors import KdflowError
    from kdflow.models.loading import TeacherSource

    cfg = begin_step(config_yaml)
    if not teacher_uri:
        raise KdflowError("no teacher given", "pass a teacher (TorchScript, checkpoint or models:/ URI)")
    source = TeacherSource.of(teacher_uri, cfg.teacher).reach(tracking_uri)
    out = {"source_fingerprint": source_fingerprint(data_uri), "teacher_digest": source.digest(),
           "config_hash": config_hash(cfg)}
    log.info("inputs: data %s, teacher %s, config %s", out["source_fingerprint"][:12], out["teacher_digest"][:12],
             out["config_hash"][:12])
    return out
