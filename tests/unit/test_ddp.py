"""Data-parallel training in one process: the launcher, the torchrun environment and SyncBatchNorm
conversion (the runs under torchrun: tests/integration/test_ddp.py)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from kdflow.config import TrainConfig
from kdflow.util.errors import ConfigError
from kdflow.training import distributed, launch
from kdflow.training.distributed import DistContext

CFG = TrainConfig(epochs=2, batch_size=8, lr=0.1, seed=3, warmup_epochs=1, device="cpu", checkpoint_every_steps=2)


def _distiller():
    from kdflow.distillers import build_distiller, get_distiller_class
    from kdflow.models import Classifier, create_model

    torch.manual_seed(0)
    student = Classifier(create_model("convnet_xs", 3), (0.5,) * 3, (0.25,) * 3)
    return build_distiller("ce", student, None, get_distiller_class("ce").Options())


def test_one_process_or_a_worker_is_a_plain_call(monkeypatch):
    assert launch.distributed_call(1, "json:dumps", {"obj": [1]}) == "[1]"
    for name, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(name, value)
    assert launch.distributed_call(4, "json:dumps", {"obj": 2}) == "2"  # already under torchrun: no relaunch


def test_torchrun_command():
    cmd = launch.torchrun_command(4, "kdflow.training.launch", ["call.json"])
    assert cmd[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4",
                       "-m", "kdflow.training.launch", "call.json"]
    launch.check_gpus(8, torch.device("cpu"))  # gloo: any number of CPU processes


def test_worker_main_writes_the_result_on_rank_0_only(tmp_path, monkeypatch):
    call = tmp_path / "call.json"
    call.write_text(json.dumps({"fn": "json:dumps", "kwargs": {"obj": 5}, "result": str(tmp_path / "r.json")}))
    monkeypatch.setenv("RANK", "1")
    launch.worker_main([str(call)])
    assert not (tmp_path / "r.json").exists()
    monkeypatch.setenv("RANK", "0")
    launch.worker_main([str(call)])
    assert json.loads((tmp_path / "r.json").read_text()) == "5"


def test_context_from_the_torchrun_environment(monkeypatch):
    for name in distributed.TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)
    assert not distributed.is_torchrun_worker()
    ctx = DistContext.from_env(torch.device("cpu"))
    assert (ctx.rank, ctx.world, ctx.is_main, ctx.active) == (0, 1, True, False)
    for name, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(name, value)
    assert distributed.is_torchrun_worker()
    ctx = DistContext.from_env(torch.device("cpu"))
    assert (ctx.rank, ctx.world, ctx.local_rank, ctx.is_main, ctx.active) == (1, 2, 1, False, True)
    assert ctx.device == torch.device("cpu")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ConfigError, match="outside WORLD_SIZE"):
        DistContext.from_env(torch.device("cpu"))


def test_a_single_process_is_not_wrapped():
    distiller = _distiller()
    assert distributed.wrap(distiller, DistContext(), find_unused_parameters=False) is distiller


def test_processes_must_split_the_batch():
    with pytest.raises(ConfigError, match="multiple of train.processes"):
        CFG.replace(processes=3)
    with pytest.raises(ConfigError, match="train.processes"):
        CFG.replace(processes=0)
    assert CFG.replace(processes=4).processes == 4


def test_sync_batchnorm_round_trip_keeps_the_parameters():
    from kdflow.models import create_model

    net = nn.Module()
    net.student = create_model("convnet_xs", 3)
    net.teacher = create_model("convnet_xs", 3)
    params = {id(p) for p in net.student.parameters()}
    assert distributed.use_sync_batchnorm(net)
    assert any(isinstance(m, nn.SyncBatchNorm) for m in net.student.modules())
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in net.teacher.modules())  # the frozen teacher is left
    assert {id(p) for p in net.student.parameters()} == params  # the optimizer's tensors stay the model's
    distributed.revert_sync_batchnorm(net)
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in net.modules())
    assert {id(p) for p in net.student.parameters()} == params
    net.eval()
    assert net.student(torch.rand(2, 3, 8, 8)).shape == (2, 3)


def test_a_batch_that_does_not_split_over_the_processes_is_refused(tiny_config_yaml):
    import yaml

    from kdflow.config import Config

    doc = yaml.safe_load(tiny_config_yaml)
    doc["train"].update(epochs=1, processes=3, batch_size=16, device="cpu")
    with pytest.raises(ConfigError, match="processes"):
        Config.from_dict(doc)
