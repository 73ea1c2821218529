"""Which pictures of each sample the teacher labels: the plain view, and V augmented views.

The plain (identity) view covers every split: evaluation and validation agreement read the teacher's
predictions on it. Augmented views cover the train split only, the one the student trains on. A
view's ``spec`` is exactly what determines its pictures, so it is part of the cache key.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kdflow.config import AugmentConfig
from kdflow.training import augment

TRAIN = "train"


@dataclass(frozen=True)
class View:
    spec: dict  # {"kind": "identity"} or {"kind": "augmented", "augment": ..., "seed": s, "index": v}
    augment: AugmentConfig | None = None  # None for the identity view

    @property
    def is_identity(self) -> bool:
        return self.augment is None

    def covers(self, split: str) -> bool:
        return self.is_identity or split == TRAIN

    def params(self, split: str, n: int, height: int, width: int) -> np.ndarray | None:
        """int16 [n, 5] view parameters for the rows of ``split`` (None: the plain picture)."""
        if self.augment is None:
            return None
        return augment.params_for_split(self.augment, split, self.spec["index"], n, height, width)


IDENTITY = View({"kind": "identity"})


def plan(cfg: AugmentConfig, views: int) -> list[View]:
    """The identity view, then ``views`` augmented ones (an empty augmentation adds none)."""
    if views == 0 or not cfg.active:
        return [IDENTITY]
    base = {"kind": "augmented", "augment": augment.spec(cfg), "seed": cfg.seed}
    return [IDENTITY] + [View({**base, "index": i}, cfg) for i in range(views)]
