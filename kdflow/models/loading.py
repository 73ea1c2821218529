"""Saving kdflow checkpoints, and loading a teacher from whatever a user has.

A teacher can be:
- a TorchScript file (``torch.jit.save``),
- a state_dict checkpoint (a bare state_dict, ``{"state_dict": ...}``, or a kdflow checkpoint)
  plus an architecture name from kdflow's model registry; read with ``weights_only=True``, which
  loads tensors and plain containers and runs no code from the file. A checkpoint that needs full
  pickle (a whole pickled ``nn.Module``, custom classes) is refused, saying so, unless the user
  trusts it (``teacher.trust_pickle: true``): unpickling can run any code the file names,
- an MLflow model URI (``models:/name@alias``, ``models:/name/3``, ``runs:/<id>/model``).

Files may be local paths, ``file://`` or ``s3://`` URIs. The teacher's identity for the soft-label
cache is a digest of its content (file bytes, or the tensors of an MLflow model), computed without
running it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import zipfile
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from kdflow.storage.digest import digest_of, sha256_bytes
from kdflow.util.errors import ConfigError, KdflowError
from kdflow.models.classifier import Classifier
from kdflow.models.registry import create_model
from kdflow.storage import storage_for

CHECKPOINT_FORMAT = "kdflow.model/1"


def save_checkpoint(model: Classifier, arch: str, num_classes: int) -> bytes:
    """A kdflow checkpoint: plain tensors and strings only, so ``weights_only=True`` loads it."""
    buf = io.BytesIO()
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "arch": arch,
            "num_classes": num_classes,
            "in_channels": int(model.mean.shape[1]),
            "mean": model.mean.flatten().tolist(),
            "std": model.std.flatten().tolist(),
            "state_dict": {k: v.detach().cpu() for k, v in model.net.state_dict().items()},
        },
        buf,
    )
    return buf.getvalue()


def load_checkpoint(data: bytes) -> tuple[Classifier, str]:
    """Rebuild a Classifier from ``save_checkpoint`` bytes; returns (model, arch)."""
    ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise KdflowError("not a kdflow checkpoint", "pass a file written by kdflow")
    net = create_model(ckpt["arch"], ckpt["num_classes"], ckpt["in_channels"])
    net.load_state_dict(ckpt["state_dict"])
    return Classifier(net, ckpt["mean"], ckpt["std"]), ckpt["arch"]


def state_dict_digest(module: nn.Module) -> str:
    h = hashlib.sha256(type(module).__qualname__.encode())
    for name, t in sorted(module.state_dict().items()):
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _is_torchscript(data: bytes) -> bool:
    if not zipfile.is_zipfile(io.BytesIO(data)):
        return False
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in zf.namelist())


class Frozen(nn.Module):
    """A teacher that stays in inference mode whatever its owner does.

    ``train()``/``eval()`` stop here: a torch.export program's module (an MLflow pt2 teacher) refuses
    them, and every other teacher was put in eval mode once, when loaded.
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module
        self.training = False

    def train(self, mode: bool = True) -> "Frozen":
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


@dataclass
class TeacherSource:
    """A teacher reference. ``digest`` reads the teacher without running it; ``load`` builds the module
    (only on a cache miss, or for online distillation)."""

    uri: str
    arch: str | None = None
    mean: Sequence[float] | None = None  # the teacher's input normalisation, if not built in
    std: Sequence[float] | None = None
    # teacher.trust_pickle: load a checkpoint weights_only refuses with full pickle (runs its code).
    trust_pickle: bool = False
    # The MLflow server a models:/ or runs:/ teacher is read from (``reach``); None: MLflow's default.
    tracking_uri: str | None = None

    @classmethod
    def of(cls, uri: str, teacher_cfg) -> "TeacherSource":
        """The source a run's ``teacher`` config section describes (``kdflow.config.TeacherConfig``)."""
        return cls(uri, teacher_cfg.arch, teacher_cfg.mean, teacher_cfg.std,
                   getattr(teacher_cfg, "trust_pickle", False))

    def __post_init__(self) -> None:
        self._bytes: bytes | None = None
        self._mlflow_model: nn.Module | None = None
        self._mlflow_metadata: dict = {}
        self._ckpt: object | None = None
        self._kind: str | None = None
        self._self_normalising: bool | None = None

    @property
    def is_mlflow(self) -> bool:
        return self.uri.startswith(("models:/", "runs:/"))

    def reach(self, tracking_uri: str | None) -> "TeacherSource":
        """This teacher, read through ``tracking_uri`` (or $MLFLOW_TRACKING_URI, checked: see
        ``kdflow.registry.tracking.resolve_tracking``) when it lives on the tracking server (models:/,
        runs:/): a copy that names that server in every MLflow call it makes, leaving MLflow's
        process-wide tracking and registry URIs as they are. A file or s3:// teacher needs no server:
        returned as it is."""
        if not self.is_mlflow:
            return self
        from kdflow.registry.tracking import resolve_tracking

        return dataclasses.replace(self, tracking_uri=resolve_tracking(tracking_uri))

    def _data(self) -> bytes:
        if self._bytes is None:
            self._bytes = storage_for(self.uri).read_bytes(self.uri)
        return self._bytes

    def _load_mlflow(self) -> nn.Module:
        """The MLflow model (and its metadata), downloaded once from ``tracking_uri``'s server."""
        if self._mlflow_model is None:
            import tempfile

            import mlflow.artifacts
            import mlflow.pytorch
            from mlflow.models import Model

            try:
                with tempfile.TemporaryDirectory(prefix="kdflow-teacher-") as tmp:
                    local = mlflow.artifacts.download_artifacts(artifact_uri=self.uri, dst_path=tmp,
                                                               tracking_uri=self.tracking_uri,
                                                               registry_uri=self.tracking_uri)
                    model = mlflow.pytorch.load_model(local, map_location="cpu")
                    self._mlflow_metadata = Model.load(local).metadata or {}
            except Exception as exc:  # MLflow raises several types for a bad URI
                raise KdflowError(f"cannot load teacher {self.uri} from MLflow: {exc}",
                                  "check the model name, version or alias, and the tracking URI") from exc
            self._mlflow_model = model
        return self._mlflow_model

    def kind(self) -> str:
        """``mlflow``, ``torchscript``, ``kdflow`` (a checkpoint that records its architecture and
        normalisation), ``state_dict`` (bare weights: needs ``arch``) or ``module`` (a whole pickled
        module, read only with ``trust_pickle``). Decided once per source."""
        if self._kind is None:
            if self.is_mlflow:
                self._kind = "mlflow"
            elif _is_torchscript(self._data()):
                self._kind = "torchscript"
            else:
                ckpt = self._checkpoint()
                is_kdflow = isinstance(ckpt, dict) and ckpt.get("format") == CHECKPOINT_FORMAT
                # A whole pickled module: only reachable with trust_pickle (weights_only refuses it).
                self._kind = "kdflow" if is_kdflow else "module" if isinstance(ckpt, nn.Module) else "state_dict"
        return self._kind

    def _checkpoint(self) -> object:
        if self._ckpt is None:
            try:
                self._ckpt = torch.load(io.BytesIO(self._data()), map_location="cpu", weights_only=True)
            except Exception as exc:
                # weights_only refuses a pickle that names a global outside its allow-list ("GLOBAL
                # x.y"); anything else is a file torch cannot read at all.
                if "GLOBAL" not in str(exc):
                    raise KdflowError(
                        f"teacher {self.uri} is neither TorchScript nor a weights-only state_dict checkpoint: {exc}",
                        "export the teacher with torch.jit.save, or save its state_dict with torch.save",
                    ) from exc
                if not self.trust_pickle:
                    needs = next((ln.strip() for ln in str(exc).splitlines() if "GLOBAL" in ln), "")
                    raise ConfigError(
                        f"teacher {self.uri} is a checkpoint that only full pickle can load ({needs}); "
                        "loading it could run any code it contains, so kdflow refuses it (teacher.trust_pickle "
                        "is false)",
                        "re-save it as weights only: torch.save(model.state_dict(), path) (with teacher.arch), "
                        "or torch.jit.save(torch.jit.script(model), path); or, only if you trust where the file "
                        "came from, set teacher.trust_pickle: true in the config",
                    ) from exc
                self._ckpt = torch.load(io.BytesIO(self._data()), map_location="cpu", weights_only=False)
        return self._ckpt

    def _normalises_itself(self) -> bool:
        """Asked by digest() and load(); an MLflow teacher's answer costs a registry call, so once."""
        if self._self_normalising is None:
            kind = self.kind()
            self._self_normalising = kind == "kdflow" or (kind == "mlflow" and self._mlflow_normalises_itself())
        return self._self_normalising

    def digest(self) -> str:
        """Content digest of the teacher, with exactly the settings that change its outputs.

        ``arch`` counts only for a bare state_dict (any other kind records its own architecture),
        and ``mean``/``std`` only for a teacher that does not normalise its input itself: naming
        them for a kdflow checkpoint changes nothing it computes, so it must not change the key.
        """
        if self.is_mlflow:
            content = state_dict_digest(self._load_mlflow())
        else:
            content = sha256_bytes(self._data())
        return digest_of({
            "content": content,
            "arch": self.arch if self.kind() == "state_dict" else None,
            "normalisation": None if self._normalises_itself() else {"mean": self.mean, "std": self.std},
        })

    def _mlflow_normalises_itself(self) -> bool:
        from kdflow.models.classifier import INPUT_METADATA_KEY, INPUT_PIXELS_01

        self._load_mlflow()  # reads the metadata with the model
        return self._mlflow_metadata.get(INPUT_METADATA_KEY) == INPUT_PIXELS_01

    def load(self, default_mean: Sequence[float], default_std: Sequence[float]) -> "Frozen":
        """The teacher as a frozen module taking [0, 1] pixels [B, C, H, W]: eval mode, no grads."""
        module = self._load_mlflow() if self.is_mlflow else self._load_file()
        if not self._normalises_itself():
            module = Classifier(module, self.mean or default_mean, self.std or default_std)
        if not self.is_mlflow:  # an exported (pt2) program has no train/eval switch; it was traced in eval
            module.eval()
        for p in module.parameters():
            p.requires_grad_(False)
        return Frozen(module)

    def load_trainable(self, default_mean: Sequence[float], default_std: Sequence[float]) -> tuple[Classifier, str]:
        """The teacher as a trainable ``Classifier`` and its architecture name (for adaptation)."""
        kind = self.kind()
        if kind not in ("kdflow", "state_dict"):
            raise KdflowError(
                f"teacher {self.uri} is a {kind} model; teacher adaptation fine-tunes weights of a kdflow "
                "architecture",
                "give the teacher as a state_dict checkpoint with teacher.arch, or set teacher.adapt_epochs: 0",
            )
        if kind == "kdflow":
            return load_checkpoint(self._data())
        net = self._load_file()
        return Classifier(net, self.mean or default_mean, self.std or default_std), str(self.arch)

    def _load_file(self) -> nn.Module:
        kind = self.kind()
        if kind == "torchscript":
            return torch.jit.load(io.BytesIO(self._data()), map_location="cpu")
        if kind == "kdflow":
            return load_checkpoint(self._data())[0]
        if kind == "module":
            return self._checkpoint()
        ckpt = self._checkpoint()
        state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise KdflowError(f"teacher {self.uri} holds no state_dict",
                              "save the teacher with torch.save(model.state_dict(), path)")
        if not self.arch:
            raise KdflowError(
                f"teacher {self.uri} is a bare state_dict and no architecture was named",
                "set teacher.arch in the config (kdflow models lists the names)",
            )
        # Checkpoints saved from DataParallel/DDP carry a 'module.' prefix on every key.
        state = {k.removeprefix("module."): v for k, v in state.items()}
        num_classes = self._infer_num_classes(state)
        net = create_model(self.arch, num_classes=num_classes, in_channels=self._infer_in_channels(state))
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            raise KdflowError(f"teacher {self.uri} does not fit architecture '{self.arch}': {exc}",
                              "set teacher.arch to the architecture the checkpoint was trained with") from exc
        return net

    @staticmethod
    def _infer_num_classes(state: dict[str, torch.Tensor]) -> int:
        # The last 2-D weight is the classifier head: [num_classes, features].
        heads = [v for k, v in state.items() if k.endswith("weight") and v.dim() == 2]
        if not heads:
            raise KdflowError("cannot tell the teacher's class count from its state_dict",
                              "use a kdflow checkpoint or TorchScript file")
        return int(heads[-1].shape[0])

    @staticmethod
    def _infer_in_channels(state: dict[str, torch.Tensor]) -> int:
        convs = [v for k, v in state.items() if k.endswith("weight") and v.dim() == 4]
        return int(convs[0].shape[1]) if convs else 3
