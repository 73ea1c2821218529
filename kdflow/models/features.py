"""Intermediate features by module name, captured with forward hooks (for feature distillers).

A layer is named as ``named_modules()`` names it inside the bare architecture, e.g. ``layer2`` or
``layer3.8.conv2`` for a CIFAR ResNet and ``stages.1`` for a ConvNet (``kdflow models --layers ARCH``
lists them with their output shapes). Wrappers kdflow adds around a network (``Frozen``, the
normalising ``Classifier``) are looked through, so the same name works for a teacher and a student.

Hooks are registered around one forward pass and removed right after it, so no model that is
saved, logged or registered ever carries one. They only fire in eager PyTorch: the compiled code of
a TorchScript module or of a ``torch.export`` program (an MLflow ``models:/`` teacher logged by
kdflow) calls its layers without going through ``nn.Module.__call__``; ``eager_twin`` rebuilds such
a teacher as an eager kdflow architecture from its weights, whose names both formats keep.
"""

from __future__ import annotations

import difflib
import functools
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn

from kdflow.util.errors import ConfigError, KdflowError
from kdflow.models.classifier import Classifier
from kdflow.models.loading import Frozen

_WRAPPER_PREFIXES = ("", "net.", "module.", "module.net.")


def _unwrap(model: nn.Module) -> nn.Module:
    while isinstance(model, Frozen):  # the real teacher is under .module
        model = model.module
    return model


@functools.lru_cache(maxsize=16)
def probe_model(arch: str) -> nn.Module:
    """An untrained ``arch`` to check layer names against: built once per architecture, since every
    config load (each step, each sweep trial) checks the names again."""
    from kdflow.models.registry import create_model

    return create_model(arch, num_classes=2)


def _compiled(model: nn.Module) -> bool:
    return isinstance(model, (torch.jit.ScriptModule, torch.fx.GraphModule))


def is_compiled(model: nn.Module) -> bool:
    """True for TorchScript modules and torch.export / FX graph modules (also inside kdflow's
    normalising wrapper): hooks on their layers never fire."""
    model = _unwrap(model)
    return _compiled(model) or (isinstance(model, Classifier) and _compiled(model.net))


def resolve_layer(model: nn.Module, name: str, role: str = "model") -> nn.Module:
    """The submodule called ``name`` in the bare architecture inside ``model``."""
    modules = dict(_unwrap(model).named_modules())
    for prefix in _WRAPPER_PREFIXES:
        if prefix + name in modules and prefix + name != "":
            return modules[prefix + name]
    known = [n for n in modules if n]
    bare = sorted({n.removeprefix("net.") for n in known})
    close = difflib.get_close_matches(name, bare, n=3)
    raise ConfigError(
        f"the {role} has no layer named '{name}'",
        (f"did you mean {', '.join(repr(c) for c in close)}? " if close else "")
        + "`kdflow models --layers ARCH` lists the layer names of an architecture",
    )


class FeatureTap:
    """Records the outputs of named layers during ``with tap.capture():`` (one forward pass)."""

    def __init__(self, model: nn.Module, names: Sequence[str], role: str = "model"):
        self.names = tuple(dict.fromkeys(names))  # unique, in order
        self.role = role
        self.layers = {n: resolve_layer(model, n, role) for n in self.names}
        self.features: dict[str, torch.Tensor] = {}

    @contextmanager
    def capture(self) -> Iterator[dict[str, torch.Tensor]]:
        self.features, self._versions, self._calls = {}, {}, {}
        handles = [layer.register_forward_hook(self._hook(name)) for name, layer in self.layers.items()]
        try:
            yield self.features
        finally:
            for h in handles:
                h.remove()
        twice = [n for n, calls in self._calls.items() if calls > 1]
        if twice:
            raise KdflowError(f"the {self.role}'s layers {twice} run more than once per forward pass, so "
                              "their output is ambiguous", "pair a layer that runs once (a block or a stage)")
        # A later in-place op (ReLU(inplace=True)) would silently change what was captured.
        changed = [n for n, t in self.features.items() if t._version != self._versions[n]]
        if changed:
            raise KdflowError(f"the outputs of the {self.role}'s layers {changed} are overwritten in place by "
                              "a later layer (e.g. ReLU(inplace=True))",
                              "pair the output of the block or stage that contains them")
        missing = [n for n in self.names if n not in self.features]
        if missing:
            raise KdflowError(
                f"the {self.role}'s layers {missing} did not run in its forward pass (or ran as compiled "
                "code, where forward hooks do not fire)",
                "pair layers that the forward pass calls; for a TorchScript or exported teacher set "
                "teacher.arch so kdflow can rebuild it as an eager module",
            )

    def _hook(self, name: str):
        def record(_module: nn.Module, _inputs, output) -> None:
            if not isinstance(output, torch.Tensor):
                raise KdflowError(f"layer '{name}' of the {self.role} returns {type(output).__name__}, "
                                  "not a tensor", "pair a layer whose output is one tensor")
            self.features[name] = output
            self._versions[name] = output._version
            self._calls[name] = self._calls.get(name, 0) + 1

        return record


def layer_table(model: nn.Module, example: torch.Tensor) -> list[tuple[str, str, tuple[int, ...]]]:
    """(name, module type, output shape without the batch) for every layer ``model`` runs on ``example``."""
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue

        def record(_m, _i, out, name=name):
            if isinstance(out, torch.Tensor):
                shapes[name] = tuple(out.shape[1:])

        handles.append(module.register_forward_hook(record))
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for h in handles:
            h.remove()
    types = {n: type(m).__name__ for n, m in model.named_modules()}
    return [(n, types[n], s) for n, s in shapes.items()]


def eager_twin(teacher: nn.Module, arch: str | None, num_classes: int, probe: torch.Tensor,
               uri: str) -> Classifier:
    """An eager kdflow architecture holding a compiled teacher's weights, checked to compute the same.

    ``teacher`` takes [0, 1] pixels: either compiled code that normalises itself (a kdflow
    Classifier that was scripted or exported: its weights include ``mean``/``std``), or kdflow's
    ``Classifier`` around a compiled network that takes normalised input.
    """
    from kdflow.models.registry import create_model

    compiled, mean, std = _unwrap(teacher), None, None
    if isinstance(compiled, Classifier):
        compiled, mean, std = compiled.net, compiled.mean.flatten().tolist(), compiled.std.flatten().tolist()
    if not arch:
        raise KdflowError(
            f"teacher {uri} is compiled code (TorchScript or an exported models:/ program): its layers "
            "run without forward hooks, so their features cannot be read",
            "set teacher.arch to the teacher's kdflow architecture (its weights are then loaded into "
            "an eager copy), or give the teacher as a state_dict or kdflow checkpoint",
        )
    state = {k.removeprefix("module."): v for k, v in compiled.state_dict().items()}
    wrapped = mean is None
    if wrapped and not ("mean" in state and "std" in state):
        raise KdflowError(f"teacher {uri} normalises its input in code kdflow cannot see",
                          "give the teacher as a state_dict or kdflow checkpoint")
    channels = int(probe.shape[1])
    net = create_model(arch, num_classes=num_classes, in_channels=channels)
    twin = Classifier(net, mean or [0.0] * channels, std or [1.0] * channels)
    try:
        if wrapped:
            twin.load_state_dict(state)
        else:
            net.load_state_dict(state)
    except RuntimeError as exc:
        raise KdflowError(f"the weights of teacher {uri} do not fit architecture '{arch}': {exc}",
                          "set teacher.arch to the architecture the teacher was built with") from exc
    twin.eval()
    with torch.no_grad():
        expected = compiled(probe if wrapped else twin.normalize(probe))
        got = twin(probe)
    if not torch.allclose(expected.float(), got.float(), rtol=1e-3, atol=1e-4):
        raise KdflowError(f"teacher {uri} loaded into '{arch}' computes different outputs than the compiled "
                          "teacher", "set teacher.arch to the architecture the teacher was built with")
    return twin
