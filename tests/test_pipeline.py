"""``locloc pipeline``: all four stages from one config; a rerun skips finished stages."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import save_file

from locloc.cli import main
from locloc.models.backbone import build_backbone

pytestmark = pytest.mark.slow

TINY = {"img_size": 64, "patch_size": 16, "depth": 2, "embed_dim": 48, "num_heads": 3}


@pytest.fixture(scope="module")
def config(synthetic_root, tmp_path_factory):
    d = tmp_path_factory.mktemp("pipe")
    torch.manual_seed(0)
    bb = build_backbone("vit_small_patch16_224", None, **TINY)
    save_file({k: v.contiguous() for k, v in bb.vit.state_dict().items()}, d / "vit.safetensors")
    cfg = {
        "data_path": str(synthetic_root), "backbone": "vit_small_patch16_224", "backbone_kwargs": TINY,
        "weights": str(d / "vit.safetensors"), "out": str(d / "run"), "device": "cpu", "workers": 0,
        "masks": {"workers": 0, "iterations": 1, "split": "all"},
        "generator": {"epochs": 1, "batch_size": 8, "generator": "light"},
        "classifier": {"epochs": 1, "batch_size": 8, "warmup_epochs": 0},
        "evaluate": {"thresholds": [0.3, 0.5]},
    }
    (d / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    return d


def test_pipeline_runs_all_stages_then_skips(config, capsys):
    assert main(["pipeline", "--config", str(config / "cfg.yaml"), "--no-progress"]) == 0
    run = config / "run"
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert [r["threshold"] for r in metrics["per_threshold"]] == [0.3, 0.5]
    assert (run / "classifier" / "model" / "model.safetensors").exists()
    n_masks = len(list((run / "masks").rglob("*.png")))
    assert n_masks == 36  # 4 classes x (6 train + 3 test)
    capsys.readouterr()
    assert main(["pipeline", "--config", str(config / "cfg.yaml"), "--no-progress"]) == 0
    err = capsys.readouterr().err
    for stage in ("masks", "generator", "classifier", "evaluate"):
        assert f"[pipeline] {stage}:" in err and "skipped" in err


def test_pipeline_config_errors(config, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data_path: x\nweights: y\nout: z\nbogus: 1\n")
    assert main(["pipeline", "--config", str(bad)]) == 2
    assert "bogus" in capsys.readouterr().err
    bad.write_text("data_path: x\nweights: y\nout: z\nmasks: {colour: 3}\n")
    assert main(["pipeline", "--config", str(bad)]) == 2
    assert "colour" in capsys.readouterr().err
