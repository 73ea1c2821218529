"""The ship/no-ship decision for a student: absolute checks, then a check against the champion.

After TFX's Evaluator "blessing": thresholds from configuration, and no regression against the last
blessed model. Every check keeps its value and limit, so the verdict says why, in MLflow and on the
model version. The absolute checks decide registration; the champion check decides promotion.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from kdflow.config import EvaluateConfig, GateConfig

# A tolerance of one part in a million keeps exact ties (e.g. 0.03 == 0.03) from failing on rounding.
_EPS = 1e-6
CHAMPION_CHECK = "champion"


@dataclass(frozen=True)
class Check:
    name: str  # the gate key it checks (gate.<name>), or "champion"
    value: float | None  # the measured value (None: not measured)
    limit: str  # what it had to be, e.g. ">= 0.85"
    passed: bool
    note: str = ""  # why, in words

    def line(self) -> str:
        verdict = "pass" if self.passed else "FAIL"
        if self.value is None:  # not measured or not compared: the note says why
            return f"{verdict} {self.name}: {self.note}"
        head = f"{verdict} {self.name} = {self.value:.4g} ({self.limit})"
        return f"{head}: {self.note}" if self.note else head


@dataclass(frozen=True)
class Verdict:
    checks: tuple[Check, ...]  # absolute checks: all must pass for the student to be registered
    champion: Check  # passes too: the student may replace the champion

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def promotable(self) -> bool:
        return self.passed and self.champion.passed

    @property
    def summary(self) -> str:
        if not self.passed:
            return "failed: " + "; ".join(c.line() for c in self.checks if not c.passed)
        return "passed" + ("" if self.champion.passed else "; not promotable: " + self.champion.note)

    def to_dict(self) -> dict:
        return {"passed": self.passed, "promotable": self.promotable, "summary": self.summary,
                "checks": [asdict(c) for c in self.checks], "champion": asdict(self.champion)}

    def tags(self) -> dict[str, str]:
        """For the MLflow run and the model version (kdflow.registry.tags.Tag names the keys)."""
        from kdflow.registry.tags import Tag

        tags = {Tag.GATE_PASSED: str(self.passed).lower(), Tag.GATE: self.summary,
                Tag.PROMOTABLE: str(self.promotable).lower(), Tag.CHAMPION_CHECK: self.champion.line()}
        tags.update({Tag.GATE_CHECK_PREFIX + c.name: c.line() for c in self.checks})
        return tags

    def metrics(self) -> dict[str, float]:
        return {f"gate.{c.name}": float(c.value) for c in (*self.checks, self.champion)
                if c.value is not None and math.isfinite(c.value)}


def _floor(name: str, value: float | None, floor: float, what: str) -> Check:
    if value is None:
        return Check(name, None, f">= {floor}", floor <= 0, f"{what} was not measured")
    ok = value >= floor - _EPS
    return Check(name, value, f">= {floor}", ok, "" if ok else f"{what} {value:.4f} is below gate.{name}={floor}")


def _cap(name: str, value: float | None, cap: float | None, what: str) -> Check | None:
    if cap is None:
        return None
    if value is None:
        return Check(name, None, f"<= {cap}", False, f"{what} was not measured but gate.{name} is set")
    ok = value <= cap + _EPS
    return Check(name, value, f"<= {cap}", ok, "" if ok else f"{what} {value:.4g} is above gate.{name}={cap}")


def absolute_checks(m: dict, cfg: GateConfig) -> tuple[Check, ...]:
    """The checks that need no other model. ``m`` holds: student_top1, teacher_top1, agreement,
    num_classes, and, when measured, latency_p95_ms, size_bytes, mia_auc, exports_ok (bool) and
    exports_note."""
    drop = m["teacher_top1"] - m["student_top1"]
    checks = [
        _floor("min_accuracy", m["student_top1"], cfg.min_accuracy, "student top-1"),
        _floor("min_agreement", m["agreement"], cfg.min_agreement, "student-teacher agreement"),
        _floor("min_teacher_accuracy", m["teacher_top1"], cfg.teacher_floor(m.get("num_classes", 0)),
               "teacher top-1"),
        Check("max_drop", drop, f"<= {cfg.max_drop}", drop <= cfg.max_drop + _EPS,
              "" if drop <= cfg.max_drop + _EPS else
              f"student top-1 {m['student_top1']:.4f} is {drop:.4f} below the teacher's {m['teacher_top1']:.4f}, "
              f"more than gate.max_drop={cfg.max_drop}"),
        _cap("max_latency_ms", m.get("latency_p95_ms"), cfg.max_latency_ms, "student p95 latency (ms, batch 1)"),
        _cap("max_size_mb", None if m.get("size_bytes") is None else m["size_bytes"] / 1e6, cfg.max_size_mb,
             "student size (MB)"),
        _cap("max_mia_auc", m.get("mia_auc"), cfg.max_mia_auc, "membership-inference AUC"),
    ]
    if "exports_ok" in m:
        checks.append(Check("exports_match", float(m["exports_ok"]), "== 1 (every export matches PyTorch)",
                            bool(m["exports_ok"]), m.get("exports_note", "")))
    return tuple(c for c in checks if c is not None)


def stricter(candidate: GateConfig, champion: GateConfig) -> GateConfig:
    """The candidate's gate with the champion's promotion policy where it is stricter: a run must not
    loosen, through its own config, the bar it has to clear to replace the champion."""
    return candidate.replace(champion_tolerance=min(candidate.champion_tolerance, champion.champion_tolerance),
                             compare_other_data=candidate.compare_other_data and champion.compare_other_data)


def champion_check(student, champion, champion_label: str | None, cfg: GateConfig, ev: EvaluateConfig) -> Check:
    """Non-inferiority against the champion, paired on the test images both were evaluated on.

    ``student``/``champion``: ``kdflow.evaluation.record.Predictions`` (``champion`` None when the
    champion has none recorded); ``champion_label``: e.g. "kdflow-student version 3", None when the
    registry has no champion. Passes only when the LOWER end of the confidence interval of
    (student - champion) top-1 is at least ``-cfg.champion_tolerance``: the student is shown, with
    that confidence, to be at most the tolerance worse. (Failing only when the whole interval lay
    below would let a chain of students each slightly worse walk the champion down.) Anything that
    cannot be compared fails closed: the student is registered but not promotable.
    """
    from kdflow.evaluation.record import paired
    from kdflow.evaluation.stats import paired_difference_ci

    tol = cfg.champion_tolerance
    limit = f"student - champion top-1, CI low >= -{tol}"
    if champion_label is None:
        return Check(CHAMPION_CHECK, None, limit, True, "no champion yet: promotable on the absolute checks alone")
    by_hand = "promote by hand with `kdflow promote --force --reason ...` if it should replace it"
    if champion is None:
        return Check(CHAMPION_CHECK, None, limit, False,
                     f"{champion_label} has no recorded test predictions, so the student cannot be compared "
                     f"with it; {by_hand}")
    if tuple(champion.class_names) != tuple(student.class_names):
        return Check(CHAMPION_CHECK, None, limit, False,
                     f"{champion_label} predicts other classes ({len(champion.class_names)}) than the student "
                     f"({len(student.class_names)}): not comparable; {by_hand}")
    other_data = champion.dataset_fingerprint != student.dataset_fingerprint
    if other_data and not cfg.compare_other_data:
        return Check(CHAMPION_CHECK, None, limit, False,
                     f"{champion_label} was evaluated on dataset {champion.dataset_fingerprint[:12]}, this student on "
                     f"{student.dataset_fingerprint[:12]}: not compared, so not promotable (set "
                     f"gate.compare_other_data: true to compare on the test images both share, or {by_hand})")
    s, c = paired(student, champion)
    if len(s) == 0:
        return Check(CHAMPION_CHECK, None, limit, False,
                     f"{champion_label} shares no test image with this student: not comparable; {by_hand}")
    # At least 1000 resamples and 95%: a run's evaluate settings may make the check stricter, never
    # looser (bootstrap: 0 would leave the point estimate alone, confidence: 0.5 a narrow interval).
    confidence = max(ev.confidence, 0.95)
    delta, low, high = paired_difference_ci(s, c, max(ev.bootstrap, 1000), confidence, ev.seed)
    ok = low >= -tol - _EPS
    where = f"on {len(s)} test images both were evaluated on" + (
        f" (other dataset: {champion.dataset_fingerprint[:12]}, compared as gate.compare_other_data allows)"
        if other_data else " (same dataset)")
    interval = f" [{low:+.4f}, {high:+.4f}] at {confidence:.0%}"
    verdict = ("not worse beyond gate.champion_tolerance" if ok else
               f"may be worse by more than gate.champion_tolerance={tol} (a regression, or too few test images "
               f"to rule one out)")
    return Check(CHAMPION_CHECK, delta, limit, ok,
                 f"student - {champion_label} top-1 = {delta:+.4f}{interval} {where}: {verdict}")
