"""Config precedence (defaults -> file -> command line) and error messages."""

from __future__ import annotations

import argparse
import json

import pytest
import yaml

from locloc.engine.config import (
    ClassifierTrainConfig,
    GeneratorTrainConfig,
    add_train_arguments,
    config_from_args,
    load_config,
    save_config,
)
from locloc.errors import ConfigError


def test_reference_defaults():
    g = GeneratorTrainConfig()
    c = ClassifierTrainConfig()
    assert (g.base_lr, g.weight_decay, g.epochs, g.batch_size, g.mask_threshold) == (1e-3, 0.05, 20, 128, 0.05)
    assert (c.base_lr, c.warmup_epochs, c.epochs, c.label_smoothing) == (1.5e-4, 5, 100, 0.1)
    assert c.auto_augment == "rand-m9-mstd0.5-inc1" and c.interpolation == "bicubic"
    assert c.sched == "cosine" and c.color_jitter == 0.4
    # lr scaled by the global batch: 128 x 4 GPUs / 512 = 1
    assert g.resolved_lr(4) == pytest.approx(1e-3)
    assert c.resolved_lr(1) == pytest.approx(1.5e-4 / 4)


def test_precedence_file_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("epochs: 7\nbatch_size: 16\nbase_lr: 1e-4\ngenerator: light\n")
    cfg = load_config(GeneratorTrainConfig, f, {"epochs": 3, "batch_size": None})
    assert cfg.epochs == 3  # command line wins
    assert cfg.batch_size == 16  # None override = not given
    assert cfg.base_lr == pytest.approx(1e-4)  # "1e-4" YAML string read as float
    assert cfg.generator == "light"
    assert cfg.weight_decay == 0.05  # default kept


@pytest.mark.parametrize(
    "text, key",
    [
        ("epochs: 0\n", "epochs"),
        ("base_lr: -0.1\n", "base_lr"),
        ("batch_size: many\n", "batch_size"),
        ("amp: fp8\n", "amp"),
        ("colour_jitter: 0.4\n", "colour_jitter"),
        ("generator: resnet\n", "generator"),
        ("mask_threshold: 1.5\n", "mask_threshold"),
        ("cache_views: true\n", "cache_views"),
    ],
)
def test_bad_values_name_file_and_key(tmp_path, text, key):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(GeneratorTrainConfig, f)
    assert str(f) in str(e.value) and repr(key) in str(e.value)


def test_classifier_only_key_rejected_for_generator(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("label_smoothing: 0.2\n")
    assert load_config(ClassifierTrainConfig, f).label_smoothing == 0.2
    with pytest.raises(ConfigError, match="unknown key 'label_smoothing'"):
        load_config(GeneratorTrainConfig, f)


def test_yaml_syntax_error_names_line(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("epochs: 3\nbatch_size: [1, 2\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:\d+: invalid YAML"):
        load_config(GeneratorTrainConfig, f)
    g = tmp_path / "list.yaml"
    g.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(GeneratorTrainConfig, g)
    with pytest.raises(ConfigError, match="not found"):
        load_config(GeneratorTrainConfig, tmp_path / "missing.yaml")


def test_bad_command_line_value():
    with pytest.raises(ConfigError, match="command line: key 'lr'"):
        load_config(ClassifierTrainConfig, None, {"lr": -1.0})


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(ClassifierTrainConfig, None, {"epochs": 2, "auto_augment": None})
    cfg = ClassifierTrainConfig(**{**cfg.to_dict(), "auto_augment": None})
    save_config(cfg, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["epochs"] == 2
    again = load_config(ClassifierTrainConfig, tmp_path / "config.yaml")
    assert again == cfg
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["auto_augment"] is None


def test_argparse_integration(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("epochs: 9\nseed: 5\n")
    p = argparse.ArgumentParser()
    add_train_arguments(p)
    args = p.parse_args(["--config", str(f), "--epochs", "2", "--lr", "0.01", "--resume"])
    cfg = config_from_args(GeneratorTrainConfig, args)
    assert (cfg.epochs, cfg.seed, cfg.lr, args.resume) == (2, 5, 0.01, "auto")
