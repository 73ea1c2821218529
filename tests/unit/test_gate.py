import numpy as np
import pytest

from kdflow.config import EvaluateConfig, GateConfig
from kdflow.evaluation.record import Predictions
from kdflow.evaluation.teacher_floor import teacher_floor_error
from kdflow.evaluation.gate import Verdict, absolute_checks, champion_check, stricter
from kdflow.registry.tags import Tag

EV = EvaluateConfig(bootstrap=1000, seed=0)
BASE = {"student_top1": 0.95, "teacher_top1": 0.97, "agreement": 0.96}


def _by_name(checks):
    return {c.name: c for c in checks}


def test_absolute_checks_pass_within_drop_and_above_floors():
    checks = absolute_checks(BASE, GateConfig(min_accuracy=0.9, max_drop=0.03))
    assert all(c.passed for c in checks)
    # Caps that are not set are not checks at all; floors always are.
    assert set(_by_name(checks)) == {"min_accuracy", "min_agreement", "min_teacher_accuracy", "max_drop"}


def test_an_exact_tie_with_max_drop_passes():
    assert _by_name(absolute_checks({**BASE, "student_top1": 0.94}, GateConfig(max_drop=0.03)))["max_drop"].passed


def test_each_failed_check_names_its_key_and_value():
    m = {"student_top1": 0.80, "teacher_top1": 0.97, "agreement": 0.5, "latency_p95_ms": 12.0,
         "size_bytes": 3_000_000, "mia_auc": 0.71, "exports_ok": False, "exports_note": "onnx differs"}
    cfg = GateConfig(min_accuracy=0.9, min_agreement=0.9, max_drop=0.03, max_latency_ms=10, max_size_mb=2,
                     max_mia_auc=0.6)
    checks = _by_name(absolute_checks(m, cfg))
    failed = {n for n, c in checks.items() if not c.passed}
    assert failed == {"min_accuracy", "min_agreement", "max_drop", "max_latency_ms", "max_size_mb", "max_mia_auc",
                      "exports_match"}
    assert checks["max_size_mb"].value == pytest.approx(3.0)
    assert "gate.max_mia_auc=0.6" in checks["max_mia_auc"].note
    verdict = Verdict(tuple(checks.values()), champion_check(None, None, None, cfg, EV))
    assert not verdict.passed and not verdict.promotable
    assert "gate.min_accuracy=0.9" in verdict.summary and "gate.max_latency_ms=10" in verdict.summary
    tags = verdict.tags()
    assert tags[Tag.GATE_PASSED] == "false" and tags[Tag.GATE_CHECK_PREFIX + "max_mia_auc"].startswith("FAIL")
    assert verdict.metrics()["gate.max_mia_auc"] == pytest.approx(0.71)


def test_a_cap_set_on_something_not_measured_fails():
    check = _by_name(absolute_checks(BASE, GateConfig(max_mia_auc=0.6)))["max_mia_auc"]
    assert not check.passed and "not measured" in check.note


def _preds(correct: np.ndarray, fingerprint: str = "fp-a", ids: np.ndarray | None = None) -> Predictions:
    n = len(correct)
    labels = np.arange(n) % 10
    top1 = np.where(correct, labels, (labels + 1) % 10)
    ids = np.array([f"id{i:05d}" for i in range(n)]) if ids is None else ids
    return Predictions(ids, labels, top1, fingerprint, tuple(str(c) for c in range(10)))


def _correct(n: int, accuracy: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.zeros(n, dtype=bool)
    out[rng.choice(n, int(round(accuracy * n)), replace=False)] = True
    return out


def test_no_champion_passes_on_absolute_checks_alone_and_says_so():
    check = champion_check(_preds(_correct(100, 0.9, 0)), None, None, GateConfig(), EV)
    assert check.passed and "no champion yet" in check.note


def test_a_clearly_worse_student_fails_against_the_champion():
    champion = _preds(_correct(400, 0.95, 1))
    student = _preds(_correct(400, 0.60, 2))
    check = champion_check(student, champion, "m version 1", GateConfig(), EV)
    assert not check.passed
    assert check.value == pytest.approx(-0.35, abs=0.01)
    assert "worse by more than gate.champion_tolerance" in check.note and "m version 1" in check.note
    assert "400 test images" in check.note


def test_a_student_shown_not_worse_beyond_the_margin_passes():
    champion = _preds(_correct(400, 0.90, 1))
    student = champion.correct().astype(bool).copy()
    student[np.flatnonzero(student)[:1]] = False  # one image worse: the interval's low end is -0.005
    check = champion_check(_preds(student), champion, "m version 1", GateConfig(champion_tolerance=0.01), EV)
    assert check.passed and check.value == pytest.approx(-0.0025)


def test_a_chain_of_slightly_worse_students_is_stopped():
    """Non-inferiority, not "not significantly worse": a student 2 points worse whose interval
    still reaches 0 is refused, so a series of them cannot walk the champion down."""
    champion = _preds(_correct(360, 0.95, 1))
    student = champion.correct().astype(bool).copy()
    flip = np.random.default_rng(3).choice(360, 24, replace=False)
    student[flip] = ~student[flip]  # disagree on 24 images: net about 2 points worse
    check = champion_check(_preds(student), champion, "c", GateConfig(champion_tolerance=0.01), EV)
    assert check.value < -0.01 and not check.passed


def test_the_tolerance_widens_what_passes():
    champion = _preds(_correct(400, 0.95, 1))
    student = _preds(_correct(400, 0.85, 2))
    assert not champion_check(student, champion, "c", GateConfig(), EV).passed
    assert champion_check(student, champion, "c", GateConfig(champion_tolerance=0.3), EV).passed


def test_a_champion_on_other_data_is_compared_only_when_allowed():
    champion = _preds(_correct(400, 0.95, 1), fingerprint="fp-old")
    student = _preds(_correct(400, 0.60, 2), fingerprint="fp-new")
    skipped = champion_check(student, champion, "c", GateConfig(), EV)  # fails closed: not promotable
    assert not skipped.passed and skipped.value is None and "not compared" in skipped.note
    assert "compare_other_data" in skipped.note
    compared = champion_check(student, champion, "c", GateConfig(compare_other_data=True), EV)
    assert not compared.passed and "other dataset" in compared.note


def test_comparison_is_paired_on_common_test_images():
    champion = _preds(_correct(400, 0.95, 1), fingerprint="fp-old")
    ids = np.array([f"id{i:05d}" for i in range(200, 600)])  # half the images are new
    student = _preds(np.ones(400, dtype=bool), fingerprint="fp-new", ids=ids)
    check = champion_check(student, champion, "c", GateConfig(compare_other_data=True), EV)
    assert check.passed and "on 200 test images" in check.note
    disjoint = _preds(np.ones(50, dtype=bool), fingerprint="fp-new", ids=np.array([f"new{i}" for i in range(50)]))
    none_shared = champion_check(disjoint, champion, "c", GateConfig(compare_other_data=True), EV)
    assert not none_shared.passed and "shares no test image" in none_shared.note


def test_a_champion_without_predictions_cannot_be_compared():
    check = champion_check(_preds(_correct(50, 0.9, 0)), None, "m version 1", GateConfig(), EV)
    assert not check.passed and "no recorded test predictions" in check.note and "--force" in check.note


def test_predictions_round_trip_keeps_everything():
    p = _preds(_correct(30, 0.5, 0))
    q = Predictions.from_bytes(p.to_bytes())
    assert (q.ids == p.ids).all() and (q.top1 == p.top1).all() and (q.labels == p.labels).all()
    assert q.dataset_fingerprint == p.dataset_fingerprint and q.class_names == p.class_names


def test_teacher_floor_passes_a_good_teacher():
    labels = np.arange(100) % 4
    assert teacher_floor_error(labels.copy(), labels, ["a", "b", "c", "d"], 0.9) is None


def test_teacher_floor_names_a_class_order_mix_up():
    labels = np.arange(100) % 4
    swapped = np.array([1, 0, 2, 3])[labels]  # classes a and b swapped
    error = teacher_floor_error(swapped, labels, ["a", "b", "c", "d"], 0.9)
    assert error is not None and "0.5000" in error.problem and "class order" in error.fix
    assert "folder 'a' -> teacher class 1 ('b')" in error.problem


def test_teacher_floor_points_at_normalisation_for_a_confused_teacher():
    labels = np.arange(100) % 4
    error = teacher_floor_error(np.zeros(100, dtype=int), labels, ["a", "b", "c", "d"], 0.5)
    assert error is not None and "teacher.mean" in error.fix and "gate.min_teacher_accuracy=0.5" in error.problem


def test_a_candidate_cannot_loosen_the_champions_bar():
    loose = GateConfig(champion_tolerance=0.5, compare_other_data=True)
    strict = GateConfig(champion_tolerance=0.01, compare_other_data=False)
    merged = stricter(loose, strict)
    assert merged.champion_tolerance == 0.01 and merged.compare_other_data is False
    assert stricter(strict, loose) == strict


def test_per_class_accuracy_carries_an_interval():
    import torch

    from kdflow.evaluation.suite import accuracy_section

    labels = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    logits = torch.nn.functional.one_hot(torch.tensor([0, 0, 1, 1, 1, 1, 0, 2]), 3).float()
    section = accuracy_section(logits, labels.clone(), None, labels, ["a", "b", "c"], EV)
    a = section["per_class"]["a"]
    assert a["count"] == 4 and a["student"] == 0.5 and a["student_interval"]["value"] == 0.5
    assert 0 <= a["student_interval"]["low"] <= 0.5 <= a["student_interval"]["high"] <= 1
    assert section["student_top1"]["value"] == 5 / 8 and section["teacher_top1"]["value"] == 1.0
    assert section["teacher_top5"] is None  # no cached top-k given
    assert section["confusion_matrix"] == [[2, 2, 0], [0, 2, 0], [1, 0, 1]]


def test_a_run_cannot_loosen_the_champion_check_through_its_evaluate_settings():
    champion = _preds(_correct(360, 0.95, 1))
    student = champion.correct().astype(bool).copy()
    flip = np.random.default_rng(3).choice(360, 24, replace=False)
    student[flip] = ~student[flip]
    for ev in (EvaluateConfig(bootstrap=0), EvaluateConfig(confidence=0.5)):
        check = champion_check(_preds(student), champion, "c", GateConfig(champion_tolerance=0.01), ev)
        assert not check.passed and "at 95%" in check.note
