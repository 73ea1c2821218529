"""Per-sample test predictions of an evaluated student, kept with its MLflow run.

The champion check compares two students on the same test images, paired (each image counts for
both), which is far tighter than two accuracies with independent intervals. Keeping the predictions
(ids, labels and predicted classes; never pixels: ids are content digests) lets ``kdflow promote``
redo the comparison later against whatever is champion then, without the dataset.
"""

from __future__ import annotations

import io
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PREDICTIONS_ARTIFACT = "evaluation/predictions.npz"


@dataclass(frozen=True)
class Predictions:
    ids: np.ndarray  # str [N]: content ids of the test samples
    labels: np.ndarray  # int64 [N]: true classes
    top1: np.ndarray  # int64 [N]: the student's predicted classes
    dataset_fingerprint: str
    class_names: tuple[str, ...]

    def correct(self) -> np.ndarray:
        """float64 [N]: 1 where the prediction is right (per-sample values for the bootstrap)."""
        return (self.top1 == self.labels).astype(np.float64)

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        meta = json.dumps({"dataset_fingerprint": self.dataset_fingerprint, "class_names": list(self.class_names)})
        np.savez_compressed(buf, ids=self.ids.astype(str), labels=self.labels.astype(np.int64),
                            top1=self.top1.astype(np.int64), meta=np.array(meta))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Predictions":
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            return cls(z["ids"], z["labels"], z["top1"], meta["dataset_fingerprint"], tuple(meta["class_names"]))

    def log(self) -> None:
        """Log as the active MLflow run's ``PREDICTIONS_ARTIFACT``."""
        import mlflow

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(PREDICTIONS_ARTIFACT).name
            path.write_bytes(self.to_bytes())
            mlflow.log_artifact(str(path), str(Path(PREDICTIONS_ARTIFACT).parent))

    @classmethod
    def of_run(cls, client, run_id: str) -> "Predictions | None":
        """The predictions logged by ``run_id``'s evaluation, or None when it has none."""
        from mlflow.exceptions import MlflowException

        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = client.download_artifacts(run_id, PREDICTIONS_ARTIFACT, tmp)
            except (MlflowException, OSError):
                return None
            return cls.from_bytes(Path(path).read_bytes())


def paired(a: Predictions, b: Predictions) -> tuple[np.ndarray, np.ndarray]:
    """Correctness of ``a`` and ``b`` on the test samples both hold, aligned row for row: float64
    [M] each (M = 0 when they share none). Samples are matched by content id."""
    common, ia, ib = np.intersect1d(a.ids.astype(str), b.ids.astype(str), assume_unique=False,
                                    return_indices=True)
    return a.correct()[ia], b.correct()[ib]
