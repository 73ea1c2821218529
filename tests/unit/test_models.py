"""Model registry, teacher loading from every supported form, and digests."""

import io

import pytest
import torch

from kdflow.util.errors import ConfigError, KdflowError
from kdflow.models import Classifier, create_model, list_models
from kdflow.models.loading import TeacherSource, load_checkpoint, save_checkpoint


def test_registry_lists_and_builds_every_model_with_one_signature():
    names = list_models()
    assert {"convnet_xs", "convnet_s", "convnet_m", "convnet_l", "resnet8", "resnet20", "resnet56"} <= set(names)
    x = torch.randn(2, 3, 16, 16)
    for name in names:
        model = create_model(name, num_classes=7, in_channels=3).eval()
        logits, feats = model.forward_features(x)
        assert logits.shape == (2, 7) and len(feats) >= 2, name
        assert torch.allclose(model(x), logits)
    with pytest.raises(ConfigError, match="unknown model architecture 'vgg99'"):
        create_model("vgg99", 10)


def test_cifar_resnet_matches_the_published_checkpoint_layout():
    keys = set(create_model("resnet20", 10).state_dict())
    assert {"conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer3.2.bn2.weight",
            "linear.weight", "linear.bias"} <= keys
    assert sum(p.numel() for p in create_model("resnet20", 10).parameters()) == 269_722  # 0.27 M (He et al.)


def _write(path, obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    path.write_bytes(buf.getvalue())
    return str(path)


def test_dataparallel_state_dict_loads_with_arch(tmp_path):
    net = create_model("resnet8", 10).eval()
    state = {f"module.{k}": v for k, v in net.state_dict().items()}
    path = _write(tmp_path / "resnet8.th", {"state_dict": state, "best_prec1": 90.0})
    teacher = TeacherSource(path, arch="resnet8", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)).load((0, 0, 0), (1, 1, 1))
    x = torch.rand(3, 3, 8, 8)
    assert torch.allclose(teacher(x), net((x - 0.5) / 0.25), atol=1e-5)
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training


def test_bare_state_dict_needs_an_arch_and_the_right_one(tmp_path):
    path = _write(tmp_path / "sd.pt", create_model("convnet_xs", 4).state_dict())
    with pytest.raises(KdflowError, match="no architecture was named"):
        TeacherSource(path).load((0, 0, 0), (1, 1, 1))
    with pytest.raises(KdflowError, match="does not fit architecture 'convnet_s'"):
        TeacherSource(path, arch="convnet_s").load((0, 0, 0), (1, 1, 1))


def test_torchscript_teacher_and_dataset_normalisation(tmp_path):
    net = create_model("convnet_xs", 5).eval()
    scripted = torch.jit.trace(net, torch.rand(1, 3, 8, 8))
    path = tmp_path / "t.ts"
    torch.jit.save(scripted, str(path))
    teacher = TeacherSource(str(path)).load(default_mean=(0.2, 0.3, 0.4), default_std=(0.5, 0.5, 0.5))
    x = torch.rand(2, 3, 8, 8)
    mean, std = torch.tensor([0.2, 0.3, 0.4]).view(1, 3, 1, 1), 0.5
    assert torch.allclose(teacher(x), net((x - mean) / std), atol=1e-5)


def test_kdflow_checkpoint_round_trip_keeps_its_own_normalisation(tmp_path):
    model = Classifier(create_model("convnet_xs", 3), (0.1, 0.2, 0.3), (0.9, 0.8, 0.7)).eval()
    data = save_checkpoint(model, "convnet_xs", 3)
    again, arch = load_checkpoint(data)
    assert arch == "convnet_xs"
    (tmp_path / "k.pt").write_bytes(data)
    teacher = TeacherSource(str(tmp_path / "k.pt")).load((0, 0, 0), (1, 1, 1))  # defaults ignored
    x = torch.rand(2, 3, 8, 8)
    assert torch.allclose(teacher(x), model(x), atol=1e-6) and torch.allclose(again.eval()(x), model(x), atol=1e-6)


def test_teacher_digest_is_content_based(tmp_path):
    a = _write(tmp_path / "a.pt", create_model("convnet_xs", 3).state_dict())
    (tmp_path / "copy.pt").write_bytes((tmp_path / "a.pt").read_bytes())
    assert TeacherSource(a, "convnet_xs").digest() == TeacherSource(str(tmp_path / "copy.pt"), "convnet_xs").digest()
    b = _write(tmp_path / "b.pt", create_model("convnet_xs", 3).state_dict())  # fresh random weights
    assert TeacherSource(a, "convnet_xs").digest() != TeacherSource(b, "convnet_xs").digest()
    assert TeacherSource(a, "convnet_xs").digest() != TeacherSource(a, "convnet_xs", (0.5,) * 3, (0.2,) * 3).digest()


def test_non_checkpoint_file_is_a_clear_error(tmp_path):
    (tmp_path / "x.pt").write_bytes(b"definitely not torch")
    with pytest.raises(KdflowError, match="neither TorchScript nor a weights-only"):
        TeacherSource(str(tmp_path / "x.pt"), "convnet_xs").load((0, 0, 0), (1, 1, 1))


def test_state_dict_digest_covers_every_tensor_including_scalars():
    from kdflow.models.loading import state_dict_digest

    net = create_model("convnet_xs", 3)  # BatchNorm holds 0-dim num_batches_tracked tensors
    same = create_model("convnet_xs", 3)
    same.load_state_dict(net.state_dict())
    assert state_dict_digest(net) == state_dict_digest(same)
    with torch.no_grad():
        same.linear.bias[0] += 1.0
    assert state_dict_digest(net) != state_dict_digest(same)


def test_settings_a_teacher_does_not_use_leave_its_digest_alone(tmp_path):
    """Naming teacher.arch (or a normalisation) for a kdflow checkpoint, which records both, must
    not change the soft-label key: it would relabel a whole dataset for identical outputs."""
    model = Classifier(create_model("convnet_xs", 3), (0.1, 0.2, 0.3), (0.9, 0.8, 0.7))
    path = tmp_path / "k.pt"
    path.write_bytes(save_checkpoint(model, "convnet_xs", 3))
    plain = TeacherSource(str(path)).digest()
    assert TeacherSource(str(path), arch="convnet_xs").digest() == plain
    assert TeacherSource(str(path), "convnet_xs", (0.5,) * 3, (0.2,) * 3).digest() == plain
    # A bare state_dict depends on both: the architecture builds it, the normalisation feeds it.
    bare = _write(tmp_path / "sd.pt", model.net.state_dict())
    assert TeacherSource(bare, "convnet_xs").digest() != TeacherSource(bare, "convnet_s").digest()
    assert TeacherSource(bare, "convnet_xs").digest() != TeacherSource(bare, "convnet_xs", (0.5,) * 3,
                                                                       (0.2,) * 3).digest()


def test_an_exported_teacher_ignores_train_and_eval(tmp_path):
    """A torch.export program's module refuses train()/eval(); the frozen wrapper never calls them."""
    from kdflow.distillers import build_distiller, get_distiller_class
    from kdflow.models.loading import Frozen

    net = create_model("convnet_xs", 3).eval()
    exported = torch.export.export(net, (torch.rand(2, 3, 8, 8),)).module()
    with pytest.raises(Exception):
        exported.eval()
    teacher = Frozen(exported)
    student = Classifier(create_model("convnet_xs", 3), (0.5,) * 3, (0.25,) * 3)
    distiller = build_distiller("kd", student, teacher, get_distiller_class("kd").Options())
    distiller.train()
    distiller.eval()
    assert not teacher.training and student.training is False
    x = torch.rand(2, 3, 8, 8)
    assert torch.allclose(distiller.teacher_logits({"image": x}), net(x), atol=1e-5)


def test_a_torchscript_teacher_ignores_arch_but_not_normalisation(tmp_path):
    path = tmp_path / "t.ts"
    torch.jit.save(torch.jit.trace(create_model("convnet_xs", 3).eval(), torch.rand(1, 3, 8, 8)), str(path))
    plain = TeacherSource(str(path)).digest()
    assert TeacherSource(str(path), arch="resnet20").digest() == plain  # TorchScript carries its own graph
    assert TeacherSource(str(path), None, (0.5,) * 3, (0.2,) * 3).digest() != plain  # it does not normalise
