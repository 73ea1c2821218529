"""Config loading: unknown keys and wrong types are errors that name the key and the fix."""


import pytest

from kdflow.config import Config
from kdflow.util.errors import ConfigError


def test_defaults_round_trip_through_yaml():
    cfg = Config()
    again = Config.from_yaml(cfg.to_yaml())
    assert again == cfg
    assert again.distill.options.temperature == 4.0


def test_unknown_top_level_key_suggests_the_closest():
    with pytest.raises(ConfigError) as exc:
        Config.from_yaml("trian: {epochs: 3}")
    assert "unknown config key 'trian'" in str(exc.value)
    assert "did you mean 'train'" in str(exc.value)


def test_unknown_nested_key_names_its_full_path():
    with pytest.raises(ConfigError, match=r"(?s)unknown config key 'train\.epochz'.*did you mean 'epochs'"):
        Config.from_yaml("train: {epochz: 3}")


def test_unknown_method_option_is_rejected_by_the_methods_own_options():
    with pytest.raises(ConfigError, match=r"(?s)unknown config key 'distill\.options\.temprature'"):
        Config.from_yaml("distill: {method: kd, options: {temprature: 2}}")


def test_wrong_type_names_key_expected_and_got():
    with pytest.raises(ConfigError) as exc:
        Config.from_yaml("train: {epochs: three}")
    msg = str(exc.value)
    assert "'train.epochs' must be int, got str 'three'" in msg and "fix:" in msg


def test_bool_is_not_an_int_and_int_is_a_float():
    with pytest.raises(ConfigError, match="train.epochs"):
        Config.from_yaml("train: {epochs: true}")
    assert Config.from_yaml("train: {lr: 1}").train.lr == 1.0


def test_literal_and_range_checks():
    with pytest.raises(ConfigError, match="one of 'sgd', 'adamw'"):
        Config.from_yaml("train: {optimizer: rmsprop}")
    with pytest.raises(ConfigError, match="gate.max_drop"):
        Config.from_yaml("gate: {max_drop: 3}")
    with pytest.raises(ConfigError, match="(?s)unknown distillation method 'crd'.*kd"):
        Config.from_yaml("distill: {method: crd}")
    with pytest.raises(ConfigError, match="teacher.mean"):
        Config.from_yaml("teacher: {mean: [0.5, 0.5, 0.5]}")


def test_invalid_yaml_and_non_mapping_sections():
    with pytest.raises(ConfigError, match="not valid YAML"):
        Config.from_yaml("train: {epochs: [")
    with pytest.raises(ConfigError, match="section 'train' must be a mapping"):
        Config.from_yaml("train: 5")
