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


def test_objectness_loss_is_zero_only_when_attention_matches_the_mask() -> None:
    from locloc.engine.pretrain import _objectness_loss

    mask = torch.zeros(2, 8, 8)
    mask[:, :4, :4] = 1  # object in the top-left patch of a 2 x 2 grid
    on = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.97, 0.01, 0.01, 0.01]])
    off = torch.tensor([[0.0, 0.0, 0.0, 1.0], [0.25, 0.25, 0.25, 0.25]])
    assert float(_objectness_loss(on[:1], mask[:1], (2, 2))) == pytest.approx(0.0, abs=1e-6)
    assert float(_objectness_loss(off, mask, (2, 2))) > 1.0
    assert float(_objectness_loss(on, mask, (2, 2))) < float(_objectness_loss(off, mask, (2, 2)))
    # an object the crop cut away contributes nothing (and is no NaN)
    empty = torch.zeros(1, 8, 8)
    assert float(_objectness_loss(off[:1], empty, (2, 2))) == 0.0


def test_training_attention_equals_the_frozen_backbones() -> None:
    import timm

    from locloc.engine.pretrain import _forward_with_attention

    torch.manual_seed(0)
    vit = timm.create_model("locloc_vit_tiny_cs8", num_classes=5, **TINY).eval()
    x = torch.randn(2, 3, 32, 32)
    logits, att = _forward_with_attention(vit, x)
    assert torch.allclose(logits, vit(x), atol=1e-5)
    bb = build_backbone("locloc_vit_tiny_cs8", None, **TINY)
    bb.vit.load_state_dict({k: v for k, v in vit.state_dict().items() if not k.startswith("head.")}, strict=False)
    assert torch.allclose(att, bb(x, with_attention=True).attention.mean(1), atol=1e-6)


def test_factorized_heads_and_objectness_train_and_load(tmp_path: Path) -> None:
    """(image, label, mask) items with two heads: the run finishes, the head is dropped, the
    validation counts an image right only when both factors are."""
    import numpy as np

    rng = np.random.default_rng(0)
    items = []
    for k in range(6):  # label = a * 3 + b for heads (2, 3)
        for _ in range(3):
            img = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
            m = np.zeros((40, 40), np.uint8)
            m[5:30, 5:30] = 1
            items.append((img, k, m))
    cfg = PretrainConfig(backbone_kwargs=dict(TINY), epochs=1, batch_size=6, workers=0, head_sizes=(2, 3),
                         attention_weight=1.0)
    out = pretrain_backbone(items, items[:6], 6, cfg, tmp_path / "bb", progress=False, log=lambda m: None)
    assert 0.0 <= out["val_top1"] <= 100.0
    build_backbone(cfg.backbone, out["weights"], **TINY)  # strict load, head dropped
    ck = torch.load(tmp_path / "bb" / "run" / "last.pt", map_location="cpu", weights_only=True)
    assert ck["model"]["head.weight"].shape[0] == 2 + 3  # one softmax per factor, not 6 classes


def _items(n_classes: int = 2, per: int = 3, size: int = 40) -> list:
    import numpy as np

    rng = np.random.default_rng(1)
    return [(rng.integers(0, 255, (size, size, 3), dtype=np.uint8), k) for k in range(n_classes) for _ in range(per)]


def test_init_weights_start_from_the_given_backbone(tmp_path: Path) -> None:
    """Fine-tuning: with ``init_weights`` and zero learning rate the weights written are the
    ones given, not a fresh random init (a mismatch would raise, strict on non-head keys).
    Batch-norm running statistics of the conv stem still move in training mode: left out."""
    from safetensors.torch import load_file

    first = pretrain_backbone(_items(), _items(), 2, PretrainConfig(backbone_kwargs=dict(TINY), epochs=1,
                              batch_size=3, workers=0, seed=1), tmp_path / "a", progress=False, log=lambda m: None)
    cfg = PretrainConfig(backbone_kwargs=dict(TINY), epochs=1, batch_size=3, workers=0, seed=2, lr=0.0,
                         weight_decay=0.0, init_weights=first["weights"])
    second = pretrain_backbone(_items(), _items(), 2, cfg, tmp_path / "b", progress=False, log=lambda m: None)
    a, b = load_file(first["weights"]), load_file(second["weights"])
    assert a.keys() == b.keys()
    params = [k for k in a if "running_" not in k and "num_batches" not in k]
    assert len(params) > 10
    assert all(torch.equal(a[k], b[k]) for k in params)
    fresh = pretrain_backbone(_items(), _items(), 2, PretrainConfig(backbone_kwargs=dict(TINY), epochs=1,
                              batch_size=3, workers=0, seed=2, lr=0.0, weight_decay=0.0), tmp_path / "c",
                              progress=False, log=lambda m: None)
    c = load_file(fresh["weights"])
    assert not any(torch.equal(a[k], c[k]) for k in params if k.endswith(".weight") and "norm" not in k)


def test_init_weights_of_another_backbone_are_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from locloc.errors import CheckpointError

    other = tmp_path / "other.safetensors"
    save_file({"blocks.0.attn.qkv.weight": torch.zeros(3, 3)}, str(other))
    cfg = PretrainConfig(backbone_kwargs=dict(TINY), epochs=1, batch_size=3, workers=0, init_weights=str(other))
    with pytest.raises(CheckpointError, match="other.safetensors: cannot load as backbone"):
        pretrain_backbone(_items(), _items(), 2, cfg, tmp_path / "x", progress=False, log=lambda m: None)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="junk.safetensors: not a readable safetensors"):
        pretrain_backbone(_items(), _items(), 2, PretrainConfig(backbone_kwargs=dict(TINY), epochs=1, batch_size=3,
                          workers=0, init_weights=str(junk)), tmp_path / "y", progress=False, log=lambda m: None)


def test_corpus_clutter_adds_background_structure() -> None:
    """More clutter: more edge pixels outside the object, on average over images; the object
    and its mask come from the same generator either way."""
    import cv2
    import numpy as np

    from locloc.data.corpus import render_corpus

    def edges(level: float) -> float:
        total = 0.0
        for j in range(12):
            img, mask = render_corpus("heart", "noise", np.random.default_rng([3, j]), 128, clutter=level)
            e = cv2.Canny(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), 60, 160) > 0
            total += float(e[cv2.dilate(mask, np.ones((5, 5), np.uint8)) == 0].mean())
        return total / 12

    low, mid, high = edges(0.0), edges(1.0), edges(3.0)
    assert low < mid < high
    assert high > 1.3 * mid
