"""The four stages as library calls: config in, output + resolved config out; the CLI
commands are these calls (same results)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import save_file

from locloc.cli import main
from locloc.errors import ConfigError
from locloc.models.backbone import build_backbone
from locloc.stages import (
    ClassifierTrainConfig,
    EvalConfig,
    GeneratorTrainConfig,
    MaskConfig,
    evaluate,
    generate_masks,
    load_config,
    train_classifier,
    train_generator,
)

TINY = dict(img_size=64, patch_size=16, depth=2, embed_dim=48, num_heads=3)
BB = "vit_small_patch16_224"


@pytest.fixture(scope="module")
def run(synthetic_root, tmp_path_factory):
    """Stages 1-3 through the library calls, on the shared tiny synthetic set."""
    d = tmp_path_factory.mktemp("stages")
    torch.manual_seed(0)
    bb = build_backbone(BB, None, **TINY)
    weights = d / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in bb.vit.state_dict().items()}, weights)
    common = dict(data_path=str(synthetic_root), backbone=BB, backbone_kwargs=TINY, weights=str(weights),
                  device="cpu")
    mcfg = MaskConfig(out=str(d / "masks"), workers=0, iterations=1, split="all", **common)
    msum = generate_masks(mcfg, progress=False)
    train = dict(common, masks=mcfg.out, epochs=1, batch_size=4, workers=0)
    gsum = train_generator(GeneratorTrainConfig(out=str(d / "gen"), generator="light", **train), progress=False,
                           log=lambda m: None)
    csum = train_classifier(ClassifierTrainConfig(out=str(d / "cls"), warmup_epochs=0,
                                                  generator_dir=gsum["model_dir"], **train),
                            progress=False, log=lambda m: None)
    return {"dir": d, "common": common, "mcfg": mcfg, "msum": msum, "model_dir": csum["model_dir"],
            "data": synthetic_root, "weights": weights}


def test_generate_masks_writes_masks_and_its_config(run):
    d, mcfg = run["dir"], run["mcfg"]
    assert len(list((d / "masks").rglob("*.png"))) == 36  # 4 classes x (6 train + 3 test)
    saved = yaml.safe_load((d / "masks" / "mask_config.yaml").read_text())
    assert saved == mcfg.to_dict()
    assert run["msum"]["splits"]["train"]["done"] == 24 and run["msum"]["splits"]["test"]["done"] == 12
    # rerunning the same config skips every mask
    again = generate_masks(mcfg, progress=False)
    assert again["splits"]["train"]["done"] == 0 and again["splits"]["train"]["skipped"] == 24


def test_evaluate_call_equals_the_command(run, tmp_path):
    cfg = EvalConfig(data_path=str(run["data"]), model_dir=run["model_dir"], out=str(tmp_path / "lib"),
                     thresholds=[0.3, 0.5], workers=0, device="cpu")
    res = evaluate(cfg, progress=False)
    assert yaml.safe_load((tmp_path / "lib" / "eval_config.yaml").read_text()) == cfg.to_dict()
    assert main(["evaluate", "--data-path", str(run["data"]), "--model-dir", run["model_dir"],
                 "--thresholds", "0.3", "0.5", "--workers", "0", "--out", str(tmp_path / "cli")]) == 0
    cli = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    for key in ("per_threshold", "best", "maxboxacc_v2", "top1_cls", "num_images"):
        assert res.metrics[key] == cli[key], key
    assert res.metrics["num_images"] == 12 and len(res.rows) == 12
    # the evaluate command's config is the library's, flag for key
    assert yaml.safe_load((tmp_path / "cli" / "eval_config.yaml").read_text()) == {
        **cfg.to_dict(), "out": str(tmp_path / "cli"), "device": None}


def test_configs_go_defaults_file_flags(tmp_path):
    f = tmp_path / "m.yaml"
    f.write_text("iterations: 3\nsplit: test\nfg: 0.5\n")
    cfg = load_config(MaskConfig, f, {"iterations": 2, "bg": None})
    assert (cfg.iterations, cfg.split, cfg.fg, cfg.bg, cfg.work_size) == (2, "test", 0.5, None, 256)
    f.write_text("iterations: 0\n")
    with pytest.raises(ConfigError, match="'iterations': must be > 0"):
        load_config(MaskConfig, f)
    f.write_text("thresholds: [0.5, 1.5]\n")
    with pytest.raises(ConfigError, match="'thresholds'"):
        load_config(EvalConfig, f)
    f.write_text("box_mapping: nearest\n")
    with pytest.raises(ConfigError, match="must be one of reference, exact"):
        load_config(EvalConfig, f)


def test_pipeline_sections_are_the_stage_configs(run, tmp_path, capsys):
    base = {"data_path": str(run["data"]), "backbone": BB, "backbone_kwargs": TINY, "weights": str(run["weights"]),
            "device": "cpu", "workers": 0, "out": str(tmp_path / "p")}
    for section, body, msg in [
        ("masks", {"iterationz": 1}, "unknown key 'iterationz' for MaskConfig"),
        ("evaluate", {"model_dir": "x"}, "cannot set ['model_dir']"),
        ("evaluate", {"box_mapping": "nearest"}, "must be one of reference, exact"),
    ]:
        (tmp_path / "c.yaml").write_text(yaml.safe_dump({**base, section: body}))
        assert main(["pipeline", "--config", str(tmp_path / "c.yaml"), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert msg in err, err
    assert not list(tmp_path.glob("p/**/*.pt"))  # each bad section refused before any training
