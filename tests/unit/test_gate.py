from kdflow.config import GateConfig
from kdflow.gate import decide


def test_gate_passes_within_drop_and_above_floor():
    d = decide(0.95, 0.97, GateConfig(min_accuracy=0.9, max_drop=0.03))
    assert d.passed and d.reasons == () and d.summary == "passed"


def test_gate_allows_an_exact_tie_with_max_drop():
    assert decide(0.94, 0.97, GateConfig(min_accuracy=0.0, max_drop=0.03)).passed


def test_gate_names_each_failed_rule():
    d = decide(0.80, 0.97, GateConfig(min_accuracy=0.9, max_drop=0.03))
    assert not d.passed and len(d.reasons) == 2
    assert "gate.min_accuracy=0.9" in d.summary and "gate.max_drop=0.03" in d.summary
