"""Backbone pre-training on labels (the demo's stand-in for a pretrained ViT)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.transforms import v2

from locloc.data import load_dataset
from locloc.data.synthetic import make_synthetic
from locloc.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from locloc.engine.config import load_config
from locloc.engine.pretrain import PretrainConfig, _transforms, pretrain_backbone
from locloc.errors import ConfigError
from locloc.models.backbone import build_backbone

TINY = dict(img_size=32, depth=1, embed_dim=32, num_heads=2)


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5])
def test_crop_scale_out_of_range_is_refused(bad: float) -> None:
    with pytest.raises(ConfigError, match="crop_scale"):
        load_config(PretrainConfig, overrides={"crop_scale": bad})


def test_crop_scale_reaches_the_train_crop() -> None:
    assert load_config(PretrainConfig, overrides={"crop_scale": 0.7}).crop_scale == 0.7
    train, test = _transforms(32, IMAGENET_MEAN, IMAGENET_STD, crop_scale=0.7)
    crops = [t for t in train.transforms if isinstance(t, v2.RandomResizedCrop)]
    assert len(crops) == 1 and tuple(crops[0].scale) == (0.7, 1.0)
    assert not any(isinstance(t, v2.RandomResizedCrop) for t in test.transforms)


def test_pretrained_backbone_loads_strictly_without_its_head(tmp_path: Path) -> None:
    root = tmp_path / "data"
    make_synthetic(root, classes=2, train=6, test=2, size=40, seed=0, progress=False)
    data = load_dataset(root)
    cfg = PretrainConfig(backbone_kwargs=dict(TINY), epochs=2, batch_size=4, workers=0, crop_scale=0.7)
    out = pretrain_backbone(data.split("train"), data.split("test"), 2, cfg, tmp_path / "bb",
                            progress=False, log=lambda m: None)
    assert 0.0 <= out["val_top1"] <= 100.0
    from safetensors.torch import load_file

    sd = load_file(out["weights"])
    assert sd and not any(k.startswith("head.") for k in sd)
    bb = build_backbone(cfg.backbone, out["weights"], **TINY)  # strict: raises on any key mismatch
    res = bb(torch.zeros(1, 3, 32, 32), with_attention=True)
    assert res.attention is not None and res.attention.shape[1] == TINY["num_heads"]
