"""Configuration: the run config's typed sections, the strict loader, its JSON Schema, the platform file.

Torch-free: loading and checking a config never imports torch or kfp.
"""

from kdflow.config.base import Strict
from kdflow.config.methods import DistillConfig, HintPair, Options, list_methods, method_spec, register_method
from kdflow.config.run import Config, load_config
from kdflow.config.sections import SHARD_TARGET_BYTES, AugmentConfig, DataConfig, ResizeMode, StudentConfig, \
    TeacherConfig, TrainConfig
from kdflow.config.verdict import EvaluateConfig, GateConfig, RegistryConfig

__all__ = ["SHARD_TARGET_BYTES", "AugmentConfig", "Config", "DataConfig", "DistillConfig", "EvaluateConfig",
           "GateConfig", "HintPair", "Options", "RegistryConfig", "ResizeMode", "Strict", "StudentConfig",
           "TeacherConfig", "TrainConfig", "list_methods", "load_config", "method_spec", "register_method"]
