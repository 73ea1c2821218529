"""Serving exports: the files written reproduce PyTorch's logits at other batch sizes, a file that does
not is a failed check (not a pass, not a crash), and a model that cannot be exported is a KdflowError."""

import math
import sys

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from torch import nn

from kdflow.util.errors import KdflowError
from kdflow.evaluation.export import FORMATS, ExportCheck, export_model, verify_export
from kdflow.models import Classifier, create_model

SHAPE = (3, 16, 16)  # (C, H, W)


def _model(arch: str) -> Classifier:
    """A Classifier whose normalisation and batch-norm statistics are not identities, so an export
    that dropped either would not match."""
    torch.manual_seed(0)
    model = Classifier(create_model(arch, 5), [0.5, 0.4, 0.3], [0.2, 0.25, 0.3])
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(8, *SHAPE) * 0.8)  # train mode: moves the running statistics
    return model.eval()


def _images(n: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.rand((n, *SHAPE), generator=torch.Generator().manual_seed(seed))  # [n, C, H, W] in [0, 1]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """export_model's results per architecture, exported once per module (ONNX export takes seconds)."""
    done = {}

    def get(arch: str):
        if arch not in done:
            model, out = _model(arch), tmp_path_factory.mktemp(arch)
            done[arch] = model, out, export_model(model, _images(), out)
        return done[arch]

    return get


ARCHS = pytest.mark.parametrize("arch", ["convnet_s", "resnet20"])


@ARCHS
def test_both_formats_match_pytorch_within_tolerance(exports, arch):
    model, out, checks = exports(arch)
    assert [c.format for c in checks] == list(FORMATS)
    by_format = {c.format: c for c in checks}
    assert by_format["torchscript"].verified_with == "torch.jit"
    assert by_format["onnx"].verified_with == "onnxruntime"
    for c in checks:
        assert c.passed, c.detail
        assert (out / c.file).stat().st_size == c.size_bytes > 0
        assert 0 <= c.max_abs_diff <= 1e-4 and c.tolerance == 1e-3  # the default; the real gap is far smaller
        assert 0 <= c.max_rel_diff <= c.max_abs_diff * 1e3  # logits of a unit or more, never tiny
        assert set(c.to_dict()) == {"format", "file", "size_bytes", "max_abs_diff", "tolerance", "verified_with",
                                    "passed", "max_rel_diff", "detail"}
        assert "at batch 2; checked at batch 6 and 1" in c.detail  # never at the export example's size


@ARCHS
def test_the_files_take_any_batch_size(exports, arch):
    """Run independently of export_model, at a batch size it never used."""
    model, out, _ = exports(arch)
    x = _images(7, seed=2)  # [7, C, H, W]
    with torch.inference_mode():
        want = model(x).numpy()  # [7, 5]
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    (onnx_input,) = session.get_inputs()
    assert isinstance(onnx_input.shape[0], str) and onnx_input.shape[1:] == list(SHAPE)  # symbolic batch
    got_onnx = session.run(None, {onnx_input.name: x.numpy()})[0]
    got_ts = torch.jit.load(str(out / "model.ts"))(x).detach().numpy()
    for got in (got_onnx, got_ts):
        assert got.shape == (7, 5)
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_an_onnx_runtime_that_disagrees_fails_the_check(exports, monkeypatch):
    class Skewed(onnxruntime.InferenceSession):
        def run(self, output_names, feeds, run_options=None):
            return [out + 1e-3 for out in super().run(output_names, feeds, run_options)]

    model, out, _ = exports("convnet_s")
    monkeypatch.setattr(onnxruntime, "InferenceSession", Skewed)
    check = verify_export(model, out / "model.onnx", _images())
    assert not check.passed and check.format == "onnx" and check.verified_with == "onnxruntime"
    assert check.max_abs_diff == pytest.approx(1e-3, rel=1e-2)
    assert "> tolerance" in check.detail


def test_torchscript_that_disagrees_fails_even_a_tiny_difference_at_tolerance_zero(exports, monkeypatch):
    model, out, _ = exports("convnet_s")
    exact = verify_export(model, out / "model.ts", _images(), tolerance=0.0)
    assert exact.passed and exact.max_abs_diff == 0.0  # the same kernels: bit-identical
    real_load = torch.jit.load

    def perturbed_load(*args, **kwargs):
        module = real_load(*args, **kwargs)
        with torch.no_grad():
            module.net.linear.bias.add_(1e-5)  # the model as it might drift after export
        return module

    monkeypatch.setattr(torch.jit, "load", perturbed_load)
    check = verify_export(model, out / "model.ts", _images(), tolerance=0.0)
    assert not check.passed and check.max_abs_diff == pytest.approx(1e-5, rel=0.1)


def test_nan_logits_fail_the_check_rather_than_compare_as_zero(exports, monkeypatch):
    class NanModel(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, C, H, W] -> [B, 5] of NaN
            return torch.full((x.shape[0], 5), math.nan)

    model, out, _ = exports("convnet_s")
    monkeypatch.setattr(torch.jit, "load", lambda *args, **kwargs: NanModel())
    check = verify_export(model, out / "model.ts", _images())
    assert not check.passed and math.isnan(check.max_abs_diff)


def test_without_onnxruntime_onnx_is_checked_structurally_and_says_so(exports, monkeypatch):
    model, out, _ = exports("convnet_s")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    check = verify_export(model, out / "model.onnx", _images())
    assert check.passed and check.verified_with == "onnx.checker only (onnxruntime not installed)"
    assert math.isnan(check.max_abs_diff)


def test_an_onnx_file_the_checker_rejects_fails(exports, tmp_path):
    model, out, _ = exports("convnet_s")
    proto = onnx.load(str(out / "model.onnx"))
    proto.graph.node[0].input[0] = "no_such_tensor"  # a dangling edge
    onnx.save(proto, str(tmp_path / "broken.onnx"))
    check = verify_export(model, tmp_path / "broken.onnx", _images())
    assert not check.passed and check.verified_with == "onnx.checker"
    assert "onnx.checker rejected the file" in check.detail


class _BakesBatch(nn.Module):
    """Unscriptable (varargs), so it is traced, and the tracer turns int(x.shape[0]) into a constant:
    the file only runs at the export example's batch size."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 5)

    def forward(self, x: torch.Tensor, *unused) -> torch.Tensor:  # x: [B, 3, H, W]
        n = int(x.shape[0])
        return self.linear(x.mean(dim=(2, 3))) + torch.zeros(n, 1)


def test_a_batch_size_baked_in_by_tracing_fails_the_check(tmp_path):
    (check,) = export_model(_BakesBatch(), _images(), tmp_path, formats=("torchscript",))
    assert "torch.jit.trace" in check.detail
    assert not check.passed and math.isnan(check.max_abs_diff)
    assert "running it at batch 6 and 1 failed" in check.detail


@torch.library.custom_op("kdflow_test::no_onnx_translation", mutates_args=())
def _no_onnx_translation(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@_no_onnx_translation.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


class _UnsupportedOp(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(_no_onnx_translation(x).mean(dim=(2, 3)))


def test_an_op_without_onnx_translation_is_a_kdflow_error_naming_the_format(tmp_path):
    with pytest.raises(KdflowError, match="cannot export the model to ONNX.*no_onnx_translation") as info:
        export_model(_UnsupportedOp(), _images(), tmp_path, formats=("onnx",))
    assert "formats=('torchscript',)" in info.value.fix


def test_an_unknown_format_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(KdflowError, match="unknown export format.*'tflite'") as info:
        export_model(nn.Linear(3, 5), _images(), tmp_path / "out", formats=("onnx", "tflite"))
    assert "torchscript, onnx" in info.value.fix
    assert not (tmp_path / "out").exists()


def test_check_to_dict_keeps_an_unmeasured_difference_a_float():
    check = ExportCheck(format="onnx", file="model.onnx", size_bytes=1, max_abs_diff=math.nan, tolerance=1e-4,
                        verified_with="onnx.checker only (onnxruntime not installed)", passed=True)
    d = check.to_dict()
    assert isinstance(d["max_abs_diff"], float) and math.isnan(d["max_abs_diff"]) and d["detail"] == ""
