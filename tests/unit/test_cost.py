"""Student/teacher cost: sizes and counts exact, timings structurally sane (never compared with a clock),
the measurement interleaved, and the caller's models and torch's thread setting left as they were."""

import dataclasses
import io
import json
import math

import pytest
import torch
from torch import nn

from kdflow.util.errors import KdflowError
from kdflow.evaluation.cost import ModelCost, measure_pair, on_cpu, speedups
from kdflow.models import Classifier, create_model

SHAPE = (3, 16, 16)  # (C, H, W)
FAST = dict(runs=4, warmup=1, batch=4, throughput_runs=2)


def _classifier(arch: str) -> Classifier:
    torch.manual_seed(0)
    return Classifier(create_model(arch, 5), [0.5, 0.4, 0.3], [0.2, 0.25, 0.3])


def _saved_size(model: nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return len(buf.getvalue())


def _sane(cost: ModelCost) -> None:
    for value in (cost.latency_p50_ms, cost.latency_p95_ms, cost.throughput):
        assert math.isfinite(value) and value > 0
    assert cost.latency_p95_ms >= cost.latency_p50_ms


def test_sizes_and_counts_are_exact_and_timings_sane():
    student, teacher = _classifier("convnet_xs"), _classifier("convnet_m")
    s, t = measure_pair(student, teacher, SHAPE, **FAST)
    assert s.parameters == sum(p.numel() for p in student.parameters())
    assert t.parameters == sum(p.numel() for p in teacher.parameters())
    assert (s.size_bytes, t.size_bytes) == (_saved_size(student), _saved_size(teacher))
    assert t.parameters > s.parameters and t.size_bytes > s.size_bytes
    for cost in (s, t):
        _sane(cost)
        assert cost.batch == 4 and cost.threads == torch.get_num_threads()
    d = s.to_dict()
    assert set(d) == {f.name for f in dataclasses.fields(ModelCost)}
    json.dumps(d)  # plain values only

    ratios = speedups(s, t)
    assert set(ratios) == {"latency_speedup", "throughput_speedup", "size_ratio", "parameter_ratio"}
    assert ratios["size_ratio"] == t.size_bytes / s.size_bytes > 1
    assert ratios["parameter_ratio"] == t.parameters / s.parameters > 1
    assert all(math.isfinite(v) and v > 0 for v in ratios.values())


def test_speedups_are_teacher_over_student_and_nan_for_an_empty_model():
    student = ModelCost(parameters=10, size_bytes=100, latency_p50_ms=1.0, latency_p95_ms=2.0, throughput=400.0,
                        batch=8, threads=1)
    teacher = ModelCost(parameters=40, size_bytes=500, latency_p50_ms=3.0, latency_p95_ms=5.0, throughput=100.0,
                        batch=8, threads=1)
    assert speedups(student, teacher) == {"latency_speedup": 3.0, "throughput_speedup": 4.0, "size_ratio": 5.0,
                                          "parameter_ratio": 4.0}
    empty = dataclasses.replace(student, parameters=0)
    assert math.isnan(speedups(empty, teacher)["parameter_ratio"])


class _Recorder(nn.Module):
    """Logs (role, batch size) per forward: the order the models were run in."""

    def __init__(self, role: str, log: list):
        super().__init__()
        self.role, self.log = role, log
        self.linear = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, 3, H, W]
        self.log.append((self.role, x.shape[0]))
        return self.linear(x.mean(dim=(2, 3)))


def test_student_and_teacher_runs_are_interleaved_abba():
    log: list = []
    measure_pair(_Recorder("s", log), _Recorder("t", log), SHAPE, runs=4, warmup=2, batch=3, throughput_runs=2)
    warm_1 = [("s", 1), ("s", 1), ("t", 1), ("t", 1)]
    timed_1 = [("s", 1), ("t", 1), ("t", 1), ("s", 1)] * 2  # the order flips every round
    warm_3 = [("s", 3), ("t", 3)]
    timed_3 = [("s", 3), ("t", 3), ("t", 3), ("s", 3)]
    assert log == warm_1 + timed_1 + warm_3 + timed_3


def test_models_are_measured_in_eval_mode_and_left_as_they_were():
    student, teacher = _classifier("convnet_xs"), _classifier("convnet_s")
    student.train()
    teacher.train()
    teacher.net.stages[0].eval()  # a mixed mode (e.g. frozen batch-norm) must survive too
    before = {k: v.clone() for k, v in student.state_dict().items()}
    measure_pair(student, teacher, SHAPE, **FAST)
    # A forward in train mode would have moved batch-norm's running statistics.
    after = student.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert student.training and all(m.training for m in student.modules())
    assert teacher.training and not teacher.net.stages[0].training and teacher.net.linear.training


def test_threads_are_set_for_the_measurement_and_restored():
    previous = torch.get_num_threads()
    s, t = measure_pair(_classifier("convnet_xs"), _classifier("convnet_xs"), SHAPE, threads=1, **FAST)
    assert s.threads == t.threads == 1
    assert torch.get_num_threads() == previous


def test_compiled_teachers_are_measured():
    """A TorchScript teacher, and a torch.export program's module, which refuses eval()."""
    model = _classifier("convnet_xs").eval()
    example = torch.rand(2, *SHAPE)
    scripted = torch.jit.script(model)
    exported = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},)).module()
    with pytest.raises(NotImplementedError):
        exported.eval()
    for teacher in (scripted, exported):
        s, t = measure_pair(_classifier("convnet_xs"), teacher, SHAPE, **FAST)
        _sane(t)
        assert t.parameters == s.parameters  # the same architecture, however it is packaged
        assert t.size_bytes > 0


def test_a_model_that_cannot_run_the_input_is_named():
    with pytest.raises(KdflowError, match="the teacher cannot run an input of shape"):
        measure_pair(_classifier("convnet_xs"), nn.Linear(4, 2), SHAPE, **FAST)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        measure_pair(_classifier("convnet_xs"), _classifier("convnet_xs"), (16, 16), **FAST)


def test_a_model_spread_over_devices_is_refused_untouched():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2, device="meta"))
    with pytest.raises(KdflowError, match="several devices"):
        with on_cpu(model):
            pass
    assert model[0].weight.device.type == "cpu" and model[1].weight.device.type == "meta"
