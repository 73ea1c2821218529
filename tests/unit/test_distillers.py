"""The distillers: the registry, offline (cached) equals online at full k, hint's connectors, combined's mixing."""

import copy

import pytest
import torch
from click.testing import CliRunner

from kdflow.distillers import build_distiller, describe_distillers, get_distiller_class, list_distillers
from kdflow.util.errors import ConfigError, KdflowError
from kdflow.losses import dist_terms, dkd_terms, hint_loss, kd_loss, standardize
from kdflow.models import Classifier, create_model
from kdflow.softlabels.cache import SoftRows
from kdflow.softlabels.codec import compress

C = 10
NORM = ([0.5] * 3, [0.25] * 3)
HINT = {"pairs": [{"teacher": "layer2", "student": "stages.1", "weight": 10.0}]}


def _options(method, opts):
    return get_distiller_class(method).Options.from_dict(opts, "distill.options")


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    teacher = Classifier(create_model("resnet8", C), *NORM).eval()
    student = Classifier(create_model("convnet_xs", C), *NORM)
    x, y = torch.rand(12, 3, 16, 16), torch.randint(0, C, (12,))
    # A teacher that is sure of itself, as trained ones are: sharper rows than random weights give.
    with torch.no_grad():
        teacher.net.linear.weight.mul_(6.0)
    return teacher, student, x, y


def _rows(logits, k):
    c = compress(logits, k)
    return SoftRows(*(torch.as_tensor(c[n]) for n in ("values", "index", "tail_lse", "tail_mean")), logits.shape[-1])


def test_every_method_is_listed_with_a_description():
    assert set(list_distillers()) >= {"ce", "kd", "dkd", "dist", "hint", "combined"}
    assert all(len(text) > 20 for text in describe_distillers().values())
    from kdflow.cli import main

    out = CliRunner().invoke(main, ["methods"]).output
    for name in ("ce", "kd", "dkd", "dist", "hint", "combined"):
        assert any(line.split()[0] == name and len(line.split()) > 3 for line in out.splitlines()), out


LOGIT_CASES = [("kd", {}), ("kd", {"logit_standardization": True}), ("dkd", {"warmup_epochs": 0}),
               ("dkd", {"warmup_epochs": 0, "logit_standardization": True}), ("dist", {}),
               ("combined", {"weights": {"kd": 1.0, "dist": 0.5}})]


@pytest.mark.parametrize("method,opts", LOGIT_CASES)
def test_offline_at_full_k_equals_online(method, opts, nets):
    """Cached rows at k = C and the teacher in the loop give the same loss and the same gradients."""
    teacher, student, x, y = nets
    options = _options(method, opts)
    assert not options.requires_online()
    online = build_distiller(method, copy.deepcopy(student), teacher, options).train()
    offline = build_distiller(method, copy.deepcopy(student), None, options).train()
    with torch.no_grad():
        cached = _rows(teacher(x), k=C)
    out_on = online({"image": x, "label": y})
    out_off = offline({"image": x, "label": y, "teacher_soft": cached})
    assert torch.allclose(out_on["loss"], out_off["loss"], rtol=1e-5, atol=1e-6)
    out_on["loss"].backward()
    out_off["loss"].backward()
    for (name, a), b in zip(online.student.named_parameters(), offline.student.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-6), name


@pytest.mark.parametrize("method,opts", LOGIT_CASES[:5])
def test_offline_below_full_k_is_close_to_online(method, opts, nets):
    """With k < C the tail is modelled: close to online, not equal (the benchmark measures the cost)."""
    teacher, student, x, y = nets
    options = _options(method, opts)
    online = build_distiller(method, copy.deepcopy(student), teacher, options).train()
    offline = build_distiller(method, copy.deepcopy(student), None, options).train()
    with torch.no_grad():
        cached = _rows(teacher(x), k=4)
        on = online({"image": x, "label": y})["loss"]
        off = offline({"image": x, "label": y, "teacher_soft": cached})["loss"]
    assert torch.isfinite(off) and abs(float(off - on)) <= 0.25 * abs(float(on)) + 1e-3


def test_standardized_cache_rows_are_exact_at_full_k_and_close_below(nets):
    teacher, _, x, _ = nets
    with torch.no_grad():
        z = teacher(x)
    for temperature in (1.0, 2.0, 4.0):
        exact = torch.softmax(standardize(z) / temperature, -1)
        full = torch.softmax(_rows(z, C).logits(temperature, standardized=True) / temperature, -1)
        assert torch.allclose(full, exact, atol=1e-6)
        # Below full k the tail's shape is lost (its classes share one value) but its mass is kept.
        rows = _rows(z, 6)
        approx = torch.softmax(rows.logits(temperature, standardized=True) / temperature, -1)
        kept = torch.zeros_like(z, dtype=torch.bool).scatter_(-1, rows.index.long(), True)
        assert (approx - exact)[kept].abs().max() < 0.03
        tail_error = (approx.masked_fill(kept, 0).sum(-1) - exact.masked_fill(kept, 0).sum(-1)).abs()
        assert tail_error.max() < 0.03, tail_error


def test_kd_and_dkd_losses_are_the_pure_functions(nets):
    teacher, student, x, y = nets
    with torch.no_grad():
        t = teacher(x)
    kd = build_distiller("kd", copy.deepcopy(student), teacher, _options("kd", {"alpha": 0.75})).train()
    out = kd({"image": x, "label": y})
    s = kd.student(x)
    expected = 0.25 * torch.nn.functional.cross_entropy(s, y) + 0.75 * kd_loss(s, t, 4.0)
    assert torch.allclose(out["loss"], expected, rtol=1e-5)

    dkd = build_distiller("dkd", copy.deepcopy(student), teacher, _options("dkd", {"warmup_epochs": 4})).train()
    s = dkd.student(x)
    tckd, nckd = dkd_terms(s, t, y, 4.0)
    ce = torch.nn.functional.cross_entropy(s, y)
    for epoch, ramp in ((0, 0.25), (1, 0.5), (3, 1.0), (10, 1.0)):  # the paper's linear warm-up
        dkd.start_epoch(epoch)
        out = dkd({"image": x, "label": y})
        assert torch.allclose(out["loss"], ce + ramp * (1.0 * tckd + 8.0 * nckd), rtol=1e-5)

    dist = build_distiller("dist", copy.deepcopy(student), teacher, _options("dist", {})).train()
    s = dist.student(x)
    inter, intra = dist_terms(s, t, 4.0)
    out = dist({"image": x, "label": y})
    assert torch.allclose(out["loss"], torch.nn.functional.cross_entropy(s, y) + 2 * inter + 2 * intra, rtol=1e-5)


def test_hint_trains_its_connectors_and_the_student_keeps_none(nets):
    teacher, student, x, y = nets
    hint = build_distiller("hint", copy.deepcopy(student), teacher, _options("hint", HINT))
    assert hint.options.requires_online()
    hint.prepare(x[:4])
    connector = hint.connectors["0"]
    before = {k: v.clone() for k, v in connector.state_dict().items()}
    params = list(hint.trainable_parameters())
    assert any(p is connector.proj[0].weight for p in params)
    assert not any(p is q for p in params for q in hint.teacher.parameters())
    opt = torch.optim.SGD(params, lr=0.1)
    for _ in range(3):
        out = hint.train()({"image": x, "label": y})
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    assert not torch.equal(before["proj.0.weight"], connector.state_dict()["proj.0.weight"])
    # The loss is CE plus the weighted MSE between the connected student feature and the teacher's.
    feats = {}
    handle = hint.student.net.stages[1].register_forward_hook(lambda m, i, o: feats.setdefault("s", o))
    with torch.no_grad():
        hint.eval()
        s = hint.student(x)
        handle.remove()
        t_feat = {}
        h2 = teacher.net.layer2.register_forward_hook(lambda m, i, o: t_feat.setdefault("t", o))
        teacher(x)
        h2.remove()
        expected = torch.nn.functional.cross_entropy(s, y) + 10.0 * hint_loss(connector(feats["s"]), t_feat["t"])
        assert torch.allclose(hint({"image": x, "label": y})["loss"], expected, rtol=1e-5)
    # Nothing of the connectors or the hooks stays on the student.
    assert not any(k.startswith("connectors") for k in hint.student.state_dict())
    assert all(not m._forward_hooks for m in hint.student.modules())
    assert "connectors.0.proj.0.weight" in hint.checkpoint_state()
    assert not any(k.startswith("teacher.") for k in hint.checkpoint_state())


def test_hint_connector_resizes_and_handles_vectors(nets):
    teacher, student, x, y = nets
    opts = _options("hint", {"pairs": [{"teacher": "layer3", "student": "stages.0"},  # 16x16 -> 4x4
                                       {"teacher": "conv1", "student": "stages.1"},  # 8x8 -> 16x16
                                       {"teacher": "linear", "student": "linear", "weight": 0.5}]})
    hint = build_distiller("hint", copy.deepcopy(student), teacher, opts)
    hint.prepare(x[:4])
    out = hint.train()({"image": x, "label": y})
    assert {"hint_0", "hint_1", "hint_2"} <= set(out) and torch.isfinite(out["loss"])
    out["loss"].backward()


def test_hint_names_unknown_layers_and_empty_pairs(nets):
    teacher, student, x, _ = nets
    with pytest.raises(ConfigError, match="pairs is empty"):
        _options("hint", {})
    hint = build_distiller("hint", copy.deepcopy(student), teacher,
                           _options("hint", {"pairs": [{"teacher": "layer9", "student": "stages.1"}]}))
    with pytest.raises(ConfigError, match="(?s)teacher has no layer named 'layer9'.*did you mean") as err:
        hint.prepare(x[:4])
    assert "kdflow models --layers" in err.value.fix


def test_hint_on_a_compiled_teacher_needs_its_arch(nets):
    from kdflow.models.features import eager_twin, is_compiled
    from kdflow.models.loading import Frozen

    teacher, student, x, y = nets
    scripted = Frozen(torch.jit.trace(teacher, x[:2]))
    assert is_compiled(scripted)
    hint = build_distiller("hint", copy.deepcopy(student), scripted, _options("hint", HINT))
    with pytest.raises(KdflowError, match="did not run in its forward pass"):
        hint.prepare(x[:4])
    with pytest.raises(KdflowError, match="compiled code") as err:
        eager_twin(scripted, None, C, x[:2], "teacher.ts")
    assert "teacher.arch" in err.value.fix
    with pytest.raises(KdflowError, match="do not fit architecture"):
        eager_twin(scripted, "resnet14", C, x[:2], "teacher.ts")
    twin = eager_twin(scripted, "resnet8", C, x[:2], "teacher.ts")
    assert torch.allclose(twin(x), teacher(x), atol=1e-5)
    hint = build_distiller("hint", copy.deepcopy(student), Frozen(twin), _options("hint", HINT))
    hint.prepare(x[:4])
    assert torch.isfinite(hint.train()({"image": x, "label": y})["loss"])


class CountingTeacher(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, x):
        self.calls += 1
        return self.net(x)


def test_combined_mixes_the_parts_terms_under_global_weights(nets):
    teacher, student, x, y = nets
    counting = CountingTeacher(teacher)
    opts = _options("combined", {"weights": {"dkd": 1.0, "hint": 0.5}, "ce_weight": 0.5,
                                 "methods": {"dkd": {"warmup_epochs": 0},
                                             "hint": {"pairs": [{"teacher": "net.layer2", "student": "stages.1"}]}}})
    assert opts.requires_online()
    combined = build_distiller("combined", copy.deepcopy(student), counting, opts)
    combined.prepare(x[:4])
    assert "extras.hint.connectors.0.proj.0.weight" in combined.checkpoint_state()
    assert not any(k.startswith(("teacher.", "parts.")) for k in combined.checkpoint_state())
    counting.calls = 0
    out = combined.train()({"image": x, "label": y})
    assert counting.calls == 1  # one teacher pass serves both parts
    dkd, hint = combined.parts["dkd"], combined.parts["hint"]
    with torch.no_grad():
        s = combined.run_student(x)
        batch = {"image": x, "label": y}
        expected = (0.5 * torch.nn.functional.cross_entropy(s.logits, y)
                    + 1.0 * dkd.distill_loss(batch, s)["loss"] + 0.5 * hint.distill_loss(batch, s)["loss"])
    assert torch.allclose(out["loss"], expected, rtol=1e-5)
    assert {"dkd", "dkd_tckd", "dkd_nckd", "hint", "hint_0", "ce"} <= set(out)
    # The connector is trained through combined too.
    assert any(p is hint.connectors["0"].proj[0].weight for p in combined.trainable_parameters())


def test_dkd_warms_up_inside_combined(nets):
    teacher, student, x, y = nets
    opts = _options("combined", {"weights": {"dkd": 2.0}, "ce_weight": 0.0, "methods": {"dkd": {"warmup_epochs": 4}}})
    combined = build_distiller("combined", copy.deepcopy(student), teacher, opts).train()
    s = combined.student(x)
    with torch.no_grad():
        tckd, nckd = dkd_terms(s, teacher(x), y, 4.0)
    for epoch, ramp in ((0, 0.25), (2, 0.75), (5, 1.0)):
        combined.start_epoch(epoch)  # the training loop's call reaches the part
        assert torch.allclose(combined({"image": x, "label": y})["loss"], 2.0 * ramp * (tckd + 8.0 * nckd), rtol=1e-5)


def test_combined_refuses_what_it_cannot_mix():
    with pytest.raises(ConfigError, match="weights is empty"):
        _options("combined", {})
    with pytest.raises(ConfigError, match="cannot mix"):
        _options("combined", {"weights": {"ce": 1.0}})
    with pytest.raises(ConfigError, match="has no weight"):
        _options("combined", {"weights": {"kd": 1.0}, "methods": {"dist": {}}})
    with pytest.raises(ConfigError, match="unknown config key 'distill.options.methods.kd.beta'"):
        _options("combined", {"weights": {"kd": 1.0}, "methods": {"kd": {"beta": 2.0}}})


def test_config_round_trips_every_method():
    from kdflow.config import Config

    for method, opts in LOGIT_CASES + [("hint", HINT), ("ce", {})]:
        cfg = Config.from_dict({"distill": {"method": method, "options": opts}})
        again = Config.from_yaml(cfg.to_yaml())
        assert again.to_dict() == cfg.to_dict()
        assert cfg.teacher_mode() == {"ce": "none", "hint": "online"}.get(method, "offline")


def test_preflight_checks_layer_names_against_the_models():
    """Layer names need the networks: the pre-flight checks them (kdflow.distillers.preflight), not
    the torch-free config loader, which accepts any name."""
    from kdflow.config import Config
    from kdflow.distillers.preflight import check_models

    hint = {"method": "hint", "options": {"pairs": [{"teacher": "layer2", "student": "stage.1"}]}}
    cfg = Config.from_dict({"student": {"arch": "convnet_xs"}, "distill": hint})  # loads: no models built
    with pytest.raises(ConfigError, match=r"student \(convnet_xs, distill.options.pairs\[0\].student\)"):
        check_models(cfg)
    hint["options"]["pairs"][0].update(student="stages.1", teacher="layer9")
    with pytest.raises(ConfigError, match=r"teacher \(resnet8, distill.options.pairs\[0\].teacher\)"):
        check_models(Config.from_dict({"teacher": {"arch": "resnet8"}, "distill": hint}))
    check_models(Config.from_dict({"distill": hint}))  # no teacher.arch: its names are checked when it loads
    combined = {"method": "combined", "options": {"weights": {"hint": 1.0}, "methods": {"hint": hint["options"]}}}
    with pytest.raises(ConfigError, match=r"teacher \(resnet8, distill.options.methods.hint.pairs\[0\].teacher\)"):
        check_models(Config.from_dict({"teacher": {"arch": "resnet8"}, "distill": combined}))


def test_config_load_checks_what_would_fail_later():
    """Bad input that needs no model is refused when the config loads, before anything runs."""
    from kdflow.config import Config

    dkd = {"method": "dkd", "options": {"warmup_epochs": 6}}
    with pytest.raises(ConfigError, match="warmup_epochs is 6 but train.epochs is 5"):
        Config.from_dict({"train": {"epochs": 5}, "distill": dkd})
    Config.from_dict({"train": {"epochs": 6}, "distill": dkd})  # reaches full weight in the last epoch
    combined = {"method": "combined", "options": {"weights": {"dkd": 1.0}, "methods": {"dkd": {"warmup_epochs": 6}}}}
    with pytest.raises(ConfigError, match="distill.options.methods.dkd.warmup_epochs is 6"):
        Config.from_dict({"train": {"epochs": 5}, "distill": combined})


def test_combined_refuses_a_parts_own_mixing_and_names_nested_keys():
    with pytest.raises(ConfigError, match="methods.kd.alpha is set, but combined replaces") as err:
        _options("combined", {"weights": {"kd": 1.0}, "methods": {"kd": {"alpha": 0.5}}})
    assert "distill.options.weights.kd" in err.value.fix
    with pytest.raises(ConfigError, match="methods.dist.ce_weight is set"):
        _options("combined", {"weights": {"dist": 1.0}, "methods": {"dist": {"ce_weight": 0.3}}})
    with pytest.raises(ConfigError, match=r"^distill.options.methods.kd.temperature is 0"):
        _options("combined", {"weights": {"kd": 1.0}, "methods": {"kd": {"temperature": 0}}})
    with pytest.raises(ConfigError, match="distill.options.methods.kd' must be a mapping"):
        _options("combined", {"weights": {"kd": 1.0}, "methods": {"kd": 5}})


def test_a_combined_config_round_trips_through_yaml():
    from kdflow.config import Config

    cfg = Config.from_dict({"distill": {"method": "combined", "options": {
        "weights": {"kd": 0.9, "hint": 0.5}, "ce_weight": 0.1,
        "methods": {"kd": {"temperature": 2.0}, "hint": {"pairs": [{"teacher": "layer2", "student": "stages.1"}]}}}}})
    again = Config.from_yaml(cfg.to_yaml())
    assert again.to_dict() == cfg.to_dict() and again.distill.options.methods["kd"].temperature == 2.0


def test_feature_tap_refuses_outputs_changed_in_place_and_layers_run_twice():
    from kdflow.models.features import FeatureTap

    net = create_model("convnet_m", C)  # BatchNorm then ReLU(inplace=True); one pooling module used twice
    x = torch.rand(2, 3, 16, 16)
    with pytest.raises(KdflowError, match="overwritten in place"):
        with FeatureTap(net, ["stages.0.1"], "student").capture():
            net(x)
    with pytest.raises(KdflowError, match="run more than once"):
        with FeatureTap(net, ["pool"], "student").capture():
            net(x)
    with FeatureTap(net, ["stages.1"], "student").capture() as features:
        net(x)
    assert features["stages.1"].shape == (2, 64, 8, 8)
    assert all(not m._forward_hooks for m in net.modules())  # hooks live for one pass only
