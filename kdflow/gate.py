"""The ship/no-ship decision for a student."""

from __future__ import annotations

from dataclasses import dataclass

from kdflow.config import GateConfig


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reasons: tuple[str, ...]  # why it failed; empty when it passed

    @property
    def summary(self) -> str:
        return "passed" if self.passed else "failed: " + "; ".join(self.reasons)


def decide(student_accuracy: float, teacher_accuracy: float, cfg: GateConfig) -> GateDecision:
    """Pass when the student clears the absolute floor and drops at most ``max_drop`` from the teacher."""
    reasons = []
    if student_accuracy < cfg.min_accuracy:
        reasons.append(f"student top-1 {student_accuracy:.4f} is below the floor gate.min_accuracy={cfg.min_accuracy}")
    drop = teacher_accuracy - student_accuracy
    # A tolerance of one part in a million keeps exact ties (e.g. 0.03 == 0.03) from failing on rounding.
    if drop > cfg.max_drop + 1e-6:
        reasons.append(f"student top-1 {student_accuracy:.4f} is {drop:.4f} below the teacher's "
                       f"{teacher_accuracy:.4f}, more than gate.max_drop={cfg.max_drop}")
    return GateDecision(not reasons, tuple(reasons))
