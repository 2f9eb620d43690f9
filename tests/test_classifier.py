"""LFDMClassifier: reference key layout, head arithmetic, init from the backbone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from locloc.models.backbone import build_backbone
from locloc.models.classifier import LFDMClassifier

MANIFEST = Path(__file__).parent / "data" / "golden" / "manifest.json"


def _tiny(num_classes=5, depth=2):
    torch.manual_seed(0)
    return LFDMClassifier(num_classes, embed_dim=48, depth=depth, num_heads=3, grid_size=(4, 4)).eval()


def _tokens(b=2, seed=0):
    return torch.randn(b, 17, 48, generator=torch.Generator().manual_seed(seed))


def test_state_dict_layout_is_the_reference_one():
    entries = json.loads(MANIFEST.read_text())["files"]["classifier"]["entries"]
    expected = [(k.removeprefix("module."), tuple(s)) for k, s, _ in entries]
    sd = LFDMClassifier(1000).state_dict()
    assert [(k, tuple(v.shape)) for k, v in sd.items()] == expected
    assert sum(p.numel() for p in LFDMClassifier(1000).parameters()) == 26_079_824


def test_logits_are_pooled_class_maps():
    clf = _tiny()
    for m in clf.modules():  # non-trivial BN statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    x = _tokens()
    with torch.no_grad():
        logits = clf(x)
        cams = clf.forward_cams(x)
    assert logits.shape == (2, 5) and cams.shape == (2, 5, 4, 4)
    assert torch.all(logits >= 0) and torch.all(cams >= 0)
    # zero padding counted in the 3x3 average: equals a box-filter conv over a zero-padded map, / 9
    box = torch.ones(5, 1, 3, 3) / 9
    pooled = F.conv2d(F.pad(cams, (1, 1, 1, 1)), box, groups=5)
    torch.testing.assert_close(logits, pooled.mean((2, 3)))
    # ... which differs from excluding the padding from the average
    other = F.avg_pool2d(cams, 3, 1, 1, count_include_pad=False).mean((2, 3))
    assert not torch.allclose(logits, other)


def test_prefix_tokens_are_dropped_not_the_last_patch():
    clf = _tiny()
    x = _tokens()
    y = x.clone()
    y[:, 0] += 100.0  # only through attention can the CLS token matter
    with torch.no_grad():
        clf.blocks_mini = torch.nn.Sequential()  # no mixing between tokens
        torch.testing.assert_close(clf.forward_cams(x), clf.forward_cams(y))


def test_wrong_token_count_is_an_error():
    with pytest.raises(ValueError, match="4x4 grid"):
        _tiny()(torch.zeros(1, 10, 48))


def test_init_from_backbone_copies_blocks_and_norm():
    torch.manual_seed(1)
    bb = build_backbone("vit_small_patch16_224", img_size=64, depth=3, embed_dim=48, num_heads=3)
    clf = _tiny(depth=2)
    clf.init_from_backbone(bb)
    for i in range(2):
        for k, v in bb.vit.blocks[i].state_dict().items():
            torch.testing.assert_close(clf.blocks_mini[i].state_dict()[k], v)
    torch.testing.assert_close(clf.norm_mini.weight, bb.vit.norm.weight)
    assert all(p.requires_grad for p in clf.parameters())  # the copies are trainable
    with pytest.raises(ValueError, match="blocks"):
        _tiny(depth=4).init_from_backbone(bb)


def test_trains():
    clf = LFDMClassifier(3, embed_dim=48, depth=1, num_heads=3, grid_size=(4, 4), drop_path_rate=0.1).train()
    loss = F.cross_entropy(clf(_tokens(4)), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    assert clf.conv.weight.grad is not None and clf.blocks_mini[0].attn.qkv.weight.grad is not None


def test_frozen_blocks_get_no_gradient_and_keep_the_outputs():
    clf = _tiny(depth=3)
    tokens = _tokens(4)
    with torch.no_grad():
        before = clf(tokens)
    clf.freeze_blocks(2)
    with torch.no_grad():
        torch.testing.assert_close(clf(tokens), before)  # freezing changes training, not the function
    F.cross_entropy(clf(tokens), torch.tensor([0, 1, 2, 3])).backward()
    assert all(p.grad is None and not p.requires_grad for p in clf.blocks_mini[:2].parameters())
    assert all(p.grad is not None for p in clf.blocks_mini[2].parameters())
    assert clf.conv.weight.grad is not None
    assert "frozen_blocks" not in clf.config  # a training setting: the saved model is the same architecture
    clf.freeze_blocks(0)
    assert all(p.requires_grad for p in clf.parameters())
    for k in (-1, 3):
        with pytest.raises(ValueError, match="freeze 0..2 of its 3 blocks"):
            clf.freeze_blocks(k)
