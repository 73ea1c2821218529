"""What decides a student: the dataset, the teacher as given, and the run config.

A scheduled retraining whose three inputs equal those of the registry's champion would train the
same student again (up to noise), so the pipeline stops after preprocessing instead. The champion's
inputs are read from its model version's tags, which registration copies from the training run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from kdflow.config import Config
from kdflow.storage.digest import digest_of

# Where things are, not what is computed: a run that moves its cache or its MLflow server, or points
# at the same data/teacher under another URI, has the same config hash (the data and the teacher
# count through their content digests instead).
# (tracking.log_config redacts the same fields: they are the config's URIs.)
LOCATIONS = ("data_uri", "teacher_uri", "cache_uri", "tracking_uri")
# How a student is judged and named, not how it is trained: a new threshold or bootstrap count must not
# make a scheduled run retrain the same student.
_JUDGING = ("evaluate", "gate", "registry")


def config_hash(cfg: Config) -> str:
    """Digest of the run config without its locations and without how the student is judged."""
    data = cfg.to_dict()
    for key in LOCATIONS + _JUDGING:
        data.pop(key, None)
    # Whether a pickled teacher may be loaded changes nothing computed: a run that trusts its teacher
    # has the lineage of one that did not need to.
    data.get("teacher", {}).pop("trust_pickle", None)
    return digest_of(data)


@dataclass(frozen=True)
class Lineage:
    dataset_fingerprint: str
    teacher_digest: str  # of the teacher as given, before any adaptation
    config_hash: str

    def differences(self, tags: Mapping[str, str]) -> list[str]:
        """What differs from a model version with these tags (a missing tag counts as different)."""
        from kdflow.registry.tags import Tag

        mine = {Tag.DATASET_FINGERPRINT: ("dataset fingerprint", self.dataset_fingerprint),
                Tag.TEACHER_INPUT_DIGEST: ("teacher digest", self.teacher_digest),
                Tag.CONFIG_HASH: ("config hash", self.config_hash)}
        out = []
        for tag, (what, value) in mine.items():
            theirs = tags.get(tag)
            if theirs != value:
                out.append(f"{what} {value[:12]} (champion: {theirs[:12] if theirs else 'not recorded'})")
        return out
