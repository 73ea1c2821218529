"""A small, serialisable pointer to a soft-label cache entry, passed from step to step."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

REF_FILE = "softlabels.json"


@dataclass(frozen=True)
class SoftLabelRef:
    cache_uri: str  # cache root
    cache_key: str
    cache_hit: bool
    teacher_digest: str
    teacher_uri: str
    views: int = 0  # augmented views cached for replay (0: the plain view only)

    def save(self, folder: str) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / REF_FILE).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, folder: str) -> "SoftLabelRef":
        return cls(**json.loads((Path(folder) / REF_FILE).read_text()))
