"""FrozenViT: sizes from the model, tokens / patch tokens / CLS attention, freezing, weight files."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from locloc.errors import CheckpointError
from locloc.models.backbone import build_backbone, patch_map

TINY = dict(img_size=64, depth=2, embed_dim=48, num_heads=3)


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return build_backbone("vit_small_patch16_224", **TINY)


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def test_sizes_come_from_the_model(backbone):
    assert backbone.embed_dim == 48
    assert backbone.num_heads == 3
    assert backbone.grid_size == (4, 4)
    assert backbone.num_prefix_tokens == 1
    assert backbone.patch_size == (16, 16)
    assert backbone.img_size == (64, 64)
    assert tuple(backbone.data_config["input_size"]) == (3, 64, 64)
    assert len(backbone.data_config["mean"]) == 3


def test_output_shapes_and_patch_tokens_before_final_norm(backbone, images):
    out = backbone(images)
    assert out.tokens.shape == (2, 17, 48)
    assert out.patch_tokens.shape == (2, 16, 48)
    assert out.attention is None
    vit = backbone.vit
    features = vit.forward_features(images)  # timm's own path, final norm applied
    torch.testing.assert_close(vit.norm(out.patch_tokens), features[:, 1:], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out.patch_tokens, features[:, 1:], atol=1e-3)


def test_attention_matches_timm_unfused_attention(backbone, images):
    out = backbone(images, with_attention=True)
    assert out.attention.shape == (2, 3, 16)
    sums = out.attention.sum(-1)
    assert torch.all(sums <= 1 + 1e-6) and torch.all(sums > 0)
    assert torch.all(out.attention >= 0)
    attn = backbone.vit.blocks[-1].attn
    captured = {}
    handle = attn.attn_drop.register_forward_hook(lambda m, i, o: captured.setdefault("a", o))
    old = attn.fused_attn
    attn.fused_attn = False
    try:
        with torch.no_grad():
            backbone.vit.forward_features(images)
    finally:
        attn.fused_attn = old
        handle.remove()
    torch.testing.assert_close(out.attention, captured["a"][:, :, 0, 1:], atol=1e-6, rtol=1e-5)
    # asking for attention does not change the other outputs
    plain = backbone(images)
    torch.testing.assert_close(plain.patch_tokens, out.patch_tokens)


def test_frozen_and_always_eval(backbone, images):
    assert all(not p.requires_grad for p in backbone.parameters())
    backbone.train()
    assert not backbone.training and not any(m.training for m in backbone.modules())
    x = images.clone().requires_grad_(True)
    out = backbone(x)
    assert not out.patch_tokens.requires_grad


def test_patch_map_is_row_major(backbone, images):
    tokens = backbone(images).patch_tokens
    fmap = patch_map(tokens, backbone.grid_size)
    assert fmap.shape == (2, 48, 4, 4)
    torch.testing.assert_close(fmap[1, :, 2, 3], tokens[1, 2 * 4 + 3])
    with pytest.raises(ValueError):
        patch_map(tokens, (3, 5))


def _reference_layout_state(backbone):
    sd = {k: v.clone() for k, v in backbone.vit.state_dict().items()}
    sd["head.weight"] = torch.randn(1000, 48)
    sd["head.bias"] = torch.zeros(1000)
    return sd


def test_weight_files_of_every_source_load(backbone, images, tmp_path):
    expected = backbone(images).patch_tokens
    sd = _reference_layout_state(backbone)
    deit = tmp_path / "deit.pth"
    torch.save({"model": sd}, deit)
    dino = tmp_path / "dino.pth"
    teacher = {f"backbone.{k}": v for k, v in sd.items() if not k.startswith("head.")}
    teacher["head.mlp.0.weight"] = torch.randn(8, 48)
    torch.save({"teacher": teacher, "epoch": 100}, dino)
    st = tmp_path / "timm.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(st))
    for path in (deit, dino, st):
        loaded = build_backbone("vit_small_patch16_224", path, **TINY)
        torch.testing.assert_close(loaded(images).patch_tokens, expected)


def test_position_embedding_is_resampled_for_another_grid(backbone, tmp_path):
    path = tmp_path / "deit.pth"
    torch.save({"model": _reference_layout_state(backbone)}, path)
    bigger = build_backbone("vit_small_patch16_224", path, **{**TINY, "img_size": 96})
    assert bigger.grid_size == (6, 6)
    torch.testing.assert_close(bigger.vit.cls_token, backbone.vit.cls_token)


def test_wrong_file_is_refused_with_what_it_looks_like(tmp_path):
    path = tmp_path / "gen.pth"
    torch.save({"state_dict": {"conv0.weight": torch.zeros(4, 48, 3, 3),
                               "deconv_layers.0.weight": torch.zeros(4, 4, 4, 4)}}, path)
    with pytest.raises(CheckpointError, match=r"gen\.pth.*Deconv generator"):
        build_backbone("vit_small_patch16_224", path, **TINY)


def test_mismatched_backbone_width_lists_mis_shaped_keys(backbone, tmp_path):
    path = tmp_path / "deit.pth"
    torch.save({"model": _reference_layout_state(backbone)}, path)
    with pytest.raises(CheckpointError, match="mis-shaped"):
        build_backbone("vit_small_patch16_224", path, **{**TINY, "embed_dim": 24})


def test_unknown_or_non_vit_backbone_is_a_config_error():
    from locloc.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot build backbone 'no_such_vit'"):
        build_backbone("no_such_vit")
    with pytest.raises(ConfigError, match="not a timm VisionTransformer"):
        build_backbone("resnet18")
