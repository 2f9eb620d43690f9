"""Backbone weights in every layout users hold load strictly and give the source model's outputs;
position grids are resampled with each source's own rule; opt-in hub names via a local cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from locloc.cli import main
from locloc.errors import CheckpointError
from locloc.models.backbone import build_backbone
from locloc.models.layouts import detect_layout, resample_pos_embed

V2 = "vit_small_patch14_dinov2"
V2_REG = "vit_small_patch14_reg4_dinov2"
TINY = dict(img_size=56, depth=2, embed_dim=48, num_heads=3)  # 4 x 4 grid of 14-px patches


def _source(name: str = V2, **kw):
    torch.manual_seed(0)
    bb = build_backbone(name, None, **{**TINY, **kw})
    with torch.no_grad():  # layer scales and tokens away from their init, so a mix-up shows
        for p in bb.vit.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return bb


def _images(side: int = 56) -> torch.Tensor:
    return torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(1))


def _same_outputs(a, b, x) -> None:
    oa, ob = a(x, with_attention=True), b(x, with_attention=True)
    assert torch.allclose(oa.tokens, ob.tokens, atol=1e-6)
    assert torch.allclose(oa.patch_tokens, ob.patch_tokens, atol=1e-5)
    assert torch.allclose(oa.attention, ob.attention, atol=1e-6)


def _hf_dinov2(sd: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """Write a timm DINOv2 state dict the way transformers' Dinov2Model names it."""
    out = {
        "embeddings.cls_token": sd["cls_token"],
        "embeddings.mask_token": torch.zeros(1, sd["cls_token"].shape[-1]),
        "embeddings.position_embeddings": sd["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
        "layernorm.weight": sd["norm.weight"],
        "layernorm.bias": sd["norm.bias"],
    }
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    for n in range(depth):
        b, h = f"blocks.{n}.", f"encoder.layer.{n}."
        for kind in ("weight", "bias"):
            q, k, v = sd[b + f"attn.qkv.{kind}"].chunk(3, 0)
            out[h + f"attention.attention.query.{kind}"] = q
            out[h + f"attention.attention.key.{kind}"] = k
            out[h + f"attention.attention.value.{kind}"] = v
            out[h + f"attention.output.dense.{kind}"] = sd[b + f"attn.proj.{kind}"]
            out[h + f"norm1.{kind}"] = sd[b + f"norm1.{kind}"]
            out[h + f"norm2.{kind}"] = sd[b + f"norm2.{kind}"]
            out[h + f"mlp.fc1.{kind}"] = sd[b + f"mlp.fc1.{kind}"]
            out[h + f"mlp.fc2.{kind}"] = sd[b + f"mlp.fc2.{kind}"]
        if b + "ls1.gamma" in sd:
            out[h + "layer_scale1.lambda1"] = sd[b + "ls1.gamma"]
            out[h + "layer_scale2.lambda1"] = sd[b + "ls2.gamma"]
    return {prefix + k: v for k, v in out.items()}


def _hf_vit(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' ViTModel spelling (layernorm_before/after, intermediate/output.dense)."""
    out = {k: v for k, v in _hf_dinov2(sd).items() if "mask_token" not in k}
    ren = {"norm1.": "layernorm_before.", "norm2.": "layernorm_after.", "mlp.fc1.": "intermediate.dense.",
           "mlp.fc2.": "output.dense."}
    final = {}
    for k, v in out.items():
        for a, b in ren.items():
            if k.startswith("encoder.") and f".{a}" in k:
                k = k.replace(f".{a}", f".{b}")
        final["vit." + k] = v
    final["vit.pooler.dense.weight"] = torch.zeros(48, 48)
    final["classifier.weight"] = torch.zeros(10, 48)
    return final


def test_hf_dinov2_layout_loads_and_matches(tmp_path):
    src = _source()
    path = tmp_path / "hf_dinov2.safetensors"
    save_file(_hf_dinov2(src.vit.state_dict(), prefix="dinov2."), str(path))
    loaded = build_backbone(V2, path, **TINY)
    _same_outputs(src, loaded, _images())


def test_hf_vit_layout_loads_and_matches(tmp_path):
    src = _source("vit_small_patch16_224", img_size=64)
    path = tmp_path / "hf_vit.pth"
    torch.save(_hf_vit(src.vit.state_dict()), path)
    loaded = build_backbone("vit_small_patch16_224", path, **{**TINY, "img_size": 64})
    _same_outputs(src, loaded, _images(64))


def test_dinov2_original_layout_with_mask_token(tmp_path):
    src = _source()
    sd = dict(src.vit.state_dict())
    sd["mask_token"] = torch.zeros(1, 48)
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(sd, path)
    assert detect_layout(sd) == "dinov2"
    _same_outputs(src, build_backbone(V2, path, **TINY), _images())


def test_dinov2_original_layout_with_registers(tmp_path):
    src = _source(V2_REG)
    timm_sd = src.vit.state_dict()
    pos0 = torch.randn(1, 1, 48)  # the original keeps a CLS position; timm folds it into the token
    sd = {k: v for k, v in timm_sd.items() if k not in ("reg_token", "pos_embed", "cls_token")}
    sd["register_tokens"] = timm_sd["reg_token"]
    sd["pos_embed"] = torch.cat([pos0, timm_sd["pos_embed"]], 1)
    sd["cls_token"] = timm_sd["cls_token"] - pos0
    sd["mask_token"] = torch.zeros(1, 48)
    path = tmp_path / "dinov2_vits14_reg4_pretrain.pth"
    torch.save(sd, path)
    loaded = build_backbone(V2_REG, path, **TINY)
    _same_outputs(src, loaded, _images())
    assert loaded.num_prefix_tokens == 5


def test_dino_v1_plain_file_and_teacher_checkpoint(tmp_path):
    src = _source("vit_small_patch16_224", img_size=64)
    sd = src.vit.state_dict()
    plain = tmp_path / "dino_deitsmall16_pretrain.pth"
    torch.save(dict(sd), plain)
    assert detect_layout(dict(sd)) == "dino"
    train_ck = tmp_path / "checkpoint.pth"
    torch.save({"teacher": {f"backbone.{k}": v for k, v in sd.items()}, "epoch": 3}, train_ck)
    for path in (plain, train_ck):
        _same_outputs(src, build_backbone("vit_small_patch16_224", path, **{**TINY, "img_size": 64}), _images(64))


@pytest.mark.parametrize(
    "layout, expected",
    [
        ("hf", dict(mode="bicubic", align_corners=False, antialias=False)),
        ("timm", dict(mode="bicubic", antialias=True)),
    ],
)
def test_position_grid_is_resampled_with_the_sources_rule(tmp_path, layout, expected):
    src = _source(img_size=84)  # 6 x 6 grid in the file, 4 x 4 in the model
    sd = src.vit.state_dict()
    if layout == "hf":
        path = tmp_path / "w.safetensors"
        save_file(_hf_dinov2(sd), str(path))
    else:
        path = tmp_path / "w.pth"
        torch.save({"model": dict(sd)}, path)  # DeiT-style wrapper: timm rule
    loaded = build_backbone(V2, path, **TINY)
    grid = sd["pos_embed"][:, 1:].reshape(1, 6, 6, 48).permute(0, 3, 1, 2)
    want = F.interpolate(grid, size=(4, 4), **expected).permute(0, 2, 3, 1).reshape(1, 16, 48)
    got = loaded.vit.pos_embed[:, 1:]
    assert torch.allclose(got, want, atol=1e-6)
    assert torch.equal(loaded.vit.pos_embed[:, :1], sd["pos_embed"][:, :1])


def test_resample_rules_differ_where_they_should():
    pe = torch.randn(1, 1 + 37 * 37, 8, generator=torch.Generator().manual_seed(0))
    hf = resample_pos_embed(pe, (16, 16), 1, "hf")
    timm_ = resample_pos_embed(pe, (16, 16), 1, "timm")
    dino = resample_pos_embed(pe, (16, 16), 1, "dino")
    assert hf.shape == timm_.shape == dino.shape == (1, 257, 8)
    assert (hf - timm_).abs().max() > 1e-2  # antialias matters when shrinking
    assert (hf - dino).abs().max() > 1e-4  # the 0.1 offset moves the sample points
    assert resample_pos_embed(pe, (37, 37), 1, "hf") is pe
    with pytest.raises(ValueError, match="rule"):
        resample_pos_embed(pe, (16, 16), 1, "nearest")


def test_wrong_architecture_file_is_one_clear_error(tmp_path):
    src = _source()
    path = tmp_path / "small.safetensors"
    save_file(_hf_dinov2(src.vit.state_dict()), str(path))
    with pytest.raises(CheckpointError) as e:
        build_backbone(V2, path, **{**TINY, "embed_dim": 96, "num_heads": 6})
    msg = str(e.value)
    assert str(path) in msg and "mis-shaped" in msg and "\n" not in msg


def test_import_backbone_command_writes_a_timm_file(tmp_path, capsys):
    src = _source(img_size=84)
    hf = tmp_path / "hf.safetensors"
    save_file(_hf_dinov2(src.vit.state_dict()), str(hf))
    out = tmp_path / "timm.safetensors"
    assert main(["import-backbone", str(hf), "--out", str(out), "--backbone", V2]) == 2  # wrong size for the default
    assert not out.exists()
    capsys.readouterr()
    cfg = {"depth": 2, "embed_dim": 48, "num_heads": 3}
    assert main(["import-backbone", str(hf), "--out", str(out), "--backbone", V2,
                 "--backbone-kwargs", json.dumps(cfg)]) == 0
    assert "84 px (6x6 grid)" in capsys.readouterr().out
    # the HF rule travels with the file: at 56 px it equals loading the HF file directly
    a = build_backbone(V2, out, **TINY)
    b = build_backbone(V2, hf, **TINY)
    assert torch.equal(a.vit.pos_embed, b.vit.pos_embed)


# ------------------------------------------------------------------------------ hub names


def _hub_env(tmp_path, offline: bool = True) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_DISABLE_TELEMETRY="1")
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


def _populate_cache(tmp_path, repo: str, sd: dict[str, torch.Tensor]) -> None:
    """Lay out a Hugging Face hub cache entry by hand (refs/main -> snapshots/<commit>/...)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    base = tmp_path / "hub" / ("models--" + repo.replace("/", "--"))
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)
    snap = base / "snapshots" / commit
    snap.mkdir(parents=True)
    save_file(sd, str(snap / "model.safetensors"))


def _run(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_hub_name_loads_from_the_local_cache_offline(tmp_path):
    src = _source()
    _populate_cache(tmp_path, "timm/tiny_dinov2_test", dict(src.vit.state_dict()))
    torch.save(src(_images()).patch_tokens, tmp_path / "expected.pt")
    code = (
        "import torch; from locloc.models.backbone import build_backbone\n"
        f"bb = build_backbone({V2!r}, 'hf-hub:timm/tiny_dinov2_test', **{TINY!r})\n"
        "x = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(1))\n"
        f"want = torch.load({str(tmp_path / 'expected.pt')!r})\n"
        "print('max', float((bb(x).patch_tokens - want).abs().max()))\n"
    )
    r = _run(code, _hub_env(tmp_path))
    assert r.returncode == 0, r.stderr
    assert float(r.stdout.split()[-1]) < 1e-5


def test_hub_name_not_cached_offline_is_one_line(tmp_path, synthetic_root):
    (tmp_path / "hub").mkdir()
    r = subprocess.run(
        [sys.executable, "-m", "locloc", "masks", "--data-path", str(synthetic_root), "--out", str(tmp_path / "m"),
         "--backbone", V2, "--weights", "hf-hub:timm/not_cached_here"],
        env=_hub_env(tmp_path), capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "hf-hub:timm/not_cached_here" in r.stderr
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").rglob("*.png"))
    code = (
        "from locloc.models.backbone import build_backbone\n"
        "from locloc.errors import CheckpointError\n"
        f"try:\n    build_backbone({V2!r}, 'hf-hub:timm/not_cached_here', **{TINY!r})\n"
        "except CheckpointError as e:\n    print(e)\n"
    )
    r = _run(code, _hub_env(tmp_path))
    line = r.stdout.strip()
    assert r.returncode == 0 and "\n" not in line
    assert "hf-hub:timm/not_cached_here" in line and "not in the local Hugging Face cache" in line


@pytest.mark.parametrize("name", ["hf-hub:", "hf-hub:no_slash", "hf-hub:a/b@", "hf-hub:../x/y"])
def test_malformed_hub_names_are_refused(name):
    with pytest.raises(CheckpointError, match="not a hub weights name"):
        build_backbone(V2, name, **TINY)


def test_stage1_defaults_travel_in_the_weights_metadata(tmp_path):
    from locloc.masks.grabcut import TrimapConfig, trimap_for

    src = _source()
    path = tmp_path / "w.safetensors"
    stage1 = {"trimap": {"fg_frac": 0.7, "bg_frac": 0.1, "mid_frac": 0.3}, "attention_blocks": [-1]}
    save_file(dict(src.vit.state_dict()), str(path), metadata={"locloc.stage1": json.dumps(stage1)})
    bb = build_backbone(V2, path, **TINY)
    assert bb.attention_blocks == (-1,)  # the file's choice over the DINOv2 family default
    t = trimap_for(bb)
    assert (t.fg_frac, t.bg_frac, t.mid) == (0.7, 0.1, 0.3)
    t = trimap_for(bb, fg_frac=0.5, bg_frac=None)  # a user's cut: the library's mid rule between the cuts
    assert (t.fg_frac, t.bg_frac) == (0.5, 0.1) and t.mid == pytest.approx(0.1 + 0.4 / 20)
    plain = build_backbone(V2, None, **TINY)
    assert plain.attention_blocks == (-2, -1)
    assert trimap_for(plain) == TrimapConfig(fg_frac=0.6, bg_frac=0.02, mid_frac=0.03)  # the DINOv2 family's cuts
    t = trimap_for(plain, bg_frac=0.0)  # a user's cut drops the family's mid for the library's rule
    assert (t.fg_frac, t.bg_frac) == (0.6, 0.0) and t.mid == pytest.approx(0.6 / 20)
    t = trimap_for(plain, fg_frac=0.5, bg_frac=0.0, mid_frac=0.2)
    assert (t.fg_frac, t.bg_frac, t.mid) == (0.5, 0.0, 0.2)
    deit = build_backbone("deit_small_patch16_224", None, img_size=32, depth=1, embed_dim=48, num_heads=3)
    assert trimap_for(deit) == TrimapConfig()  # other families: the library's cuts
    bad = tmp_path / "bad.safetensors"
    save_file(dict(src.vit.state_dict()), str(bad), metadata={"locloc.stage1": "{not json"})
    with pytest.raises(CheckpointError, match="locloc.stage1"):
        build_backbone(V2, bad, **TINY)


def test_mask_opening_default_per_family_file_and_flag(tmp_path):
    from locloc.masks.grabcut import open_frac_for

    plain = build_backbone(V2, None, **TINY)
    assert open_frac_for(plain) == 0.02  # DINOv2 family
    assert open_frac_for(plain, 0.0) == 0.0  # the user's value over everything
    deit = build_backbone("deit_small_patch16_224", None, img_size=32, depth=1, embed_dim=48, num_heads=3)
    assert open_frac_for(deit) == 0.0
    src = _source()
    tuned = tmp_path / "tuned.safetensors"  # a file tuned without an opening keeps none
    save_file(dict(src.vit.state_dict()), str(tuned),
              metadata={"locloc.stage1": json.dumps({"trimap": {"fg_frac": 0.7, "bg_frac": 0.1}})})
    assert open_frac_for(build_backbone(V2, tuned, **TINY)) == 0.0
    with_open = tmp_path / "open.safetensors"
    save_file(dict(src.vit.state_dict()), str(with_open),
              metadata={"locloc.stage1": json.dumps({"trimap": {"fg_frac": 0.7, "bg_frac": 0.1}, "open_frac": 0.03})})
    bb = build_backbone(V2, with_open, **TINY)
    assert open_frac_for(bb) == 0.03 and open_frac_for(bb, 0.01) == 0.01
