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
    logits, att, tokens = _forward_with_attention(vit, x)
    assert torch.allclose(logits, vit(x), atol=1e-5)
    assert torch.allclose(tokens, vit.forward_features(x), atol=1e-5)
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


def test_extended_corpus_is_disjoint_from_the_demo_and_keeps_the_first_vocabulary() -> None:
    import numpy as np

    from locloc.data.corpus import EXTRA_SHAPES, corpus_classes, render_corpus
    from locloc.data.synthetic import MAX_CLASSES, class_spec

    first, second = corpus_classes(), corpus_classes(extra_shapes=True)
    assert second[: len(first)] == first and len(second) == len(first) + len(EXTRA_SHAPES) * 12
    assert not {class_spec(k) for k in range(MAX_CLASSES)} & set(second)
    for shape in EXTRA_SHAPES:
        img, mask = render_corpus(shape, "grid", np.random.default_rng([5, 1]), 96, (0.5, 0.6))
        assert img.shape == (96, 96, 3) and mask.sum() > 200
        assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
    _, m0 = render_corpus("octagon", "grid", np.random.default_rng([5, 3]), 96, (0.5, 0.6), stretch=0.0)
    _, m1 = render_corpus("octagon", "grid", np.random.default_rng([5, 3]), 96, (0.5, 0.6), stretch=0.5)
    assert not np.array_equal(m0, m1) and m1.sum() > 100


def test_distillation_items_flip_image_mask_and_teacher_grid_together(tmp_path: Path) -> None:
    import numpy as np

    from locloc.engine.pretrain import _aligned_transform, _LabelledImages

    img = np.zeros((32, 32, 3), np.uint8)
    img[:, :16] = 255  # bright left half
    mask = np.zeros((32, 32), np.uint8)
    mask[:, :16] = 1
    g = 4
    teacher = np.zeros((1 + g * g, 3), np.float16)
    teacher[1:, 0] = np.tile(np.arange(g), g)  # each patch token holds its column
    ds = _LabelledImages([(img, 1, mask, teacher)], v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]))
    seen = set()
    torch.manual_seed(0)
    for _ in range(20):
        x, label, m, t = ds[0]
        flipped = bool(x[0, 0, 0] < 0.5)
        seen.add(flipped)
        assert label == 1 and bool(m[0, 0] == 0) == flipped
        cols = t[1:, 0].reshape(g, g)[0].tolist()
        assert cols == ([3.0, 2.0, 1.0, 0.0] if flipped else [0.0, 1.0, 2.0, 3.0])
    assert seen == {True, False}
    # the aligned transform never crops: the whole image, resized
    x = _aligned_transform(16, IMAGENET_MEAN, IMAGENET_STD)(torch.from_numpy(img).permute(2, 0, 1))
    assert x.shape == (3, 16, 16) and bool(x[0, :, :7].mean() > x[0, :, 9:].mean())


def test_distillation_term_is_zero_for_a_matching_student_and_trains(tmp_path: Path) -> None:
    import numpy as np
    import timm
    from safetensors.torch import load_file

    from locloc.engine.pretrain import DISTILL_HEAD, _distill_loss, teacher_tokens

    torch.manual_seed(0)
    teacher = timm.create_model("locloc_vit_tiny_cs8", num_classes=0, **dict(TINY, embed_dim=48)).eval()
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (40, 40, 3), dtype=np.uint8) for _ in range(6)]
    toks = teacher_tokens(images, teacher, 32, batch_size=4, progress=False)
    assert len(toks) == 6 and toks[0].shape == (1 + 16, 48) and toks[0].dtype == np.float16
    # heads that project a student token onto the teacher's: zero loss; the opposite: 2 + 2
    t = torch.from_numpy(np.stack(toks)).float()
    heads = torch.nn.ModuleDict({"cls": torch.nn.Identity(), "patch": torch.nn.Identity()})
    student = torch.cat([t[:, :1], t[:, 1:].reshape(6, 4, 4, 48).repeat_interleave(2, 1).repeat_interleave(2, 2)
                         .reshape(6, 64, 48)], 1)  # an 8 x 8 grid that pools to the teacher's 4 x 4
    assert float(_distill_loss(heads, student, 1, (8, 8), t)) == pytest.approx(0.0, abs=1e-4)
    assert float(_distill_loss(heads, -student, 1, (8, 8), t)) == pytest.approx(4.0, abs=1e-4)
    masks = [np.pad(np.ones((20, 20), np.uint8), 10) for _ in images]
    items = [(im, k % 2, m, tk) for k, (im, m, tk) in enumerate(zip(images, masks, toks))]
    cfg = PretrainConfig(backbone_kwargs=dict(TINY), epochs=1, batch_size=3, workers=0, distill_weight=1.0,
                         attention_weight=1.0)
    out = pretrain_backbone(items, [it[:3] for it in items[:2]], 2, cfg, tmp_path / "bb", progress=False,
                            log=lambda m: None)
    assert not any(k.startswith(DISTILL_HEAD) for k in load_file(out["weights"]))
    ck = torch.load(tmp_path / "bb" / "run" / "last.pt", map_location="cpu", weights_only=True)["model"]
    assert ck[DISTILL_HEAD + ".cls.weight"].shape == (48, 32)
    with pytest.raises(ValueError, match="teacher tokens"):
        pretrain_backbone([it[:3] for it in items], [], 2, cfg, tmp_path / "no", progress=False, log=lambda m: None)


def test_standardized_teacher_tokens_lose_the_shared_component() -> None:
    import numpy as np

    from locloc.engine.pretrain import standardize_tokens

    rng = np.random.default_rng(0)
    shared = rng.normal(0, 5, 8)  # a large component common to every token
    raw = [(shared + rng.normal(0, 0.5, (5, 8)) + [[3.0]] + np.r_[[[9.0]], np.zeros((4, 1))]).astype(np.float16)
           for _ in range(50)]
    out = standardize_tokens(raw)
    assert len(out) == 50 and out[0].dtype == np.float16
    z = np.stack(out).astype(np.float32)
    assert z.shape == (50, 5, 8)
    for part in (z[:, :1], z[:, 1:]):  # CLS and patches standardized apart
        assert np.abs(part.mean((0, 1))).max() < 1e-2 and np.abs(part.std((0, 1)) - 1).max() < 1e-2
    # raw tokens of two images are nearly parallel; standardized, they are not
    cos = lambda a, b: float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))  # noqa: E731
    assert cos(raw[0][1].astype(np.float32), raw[1][1].astype(np.float32)) > 0.9
    assert abs(cos(z[0, 1], z[1, 1])) < 0.9


def _pretrain_script():  # scripts/ is not a package: load the file
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "pretrain_embedded_backbone.py"
    spec = importlib.util.spec_from_file_location("pretrain_embedded_backbone", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("flags, words", [
    (["--teacher", "{tmp}/t.safetensors"], "go together"),
    (["--distill-weight", "1"], "go together"),
    (["--teacher", "{tmp}/missing.safetensors", "--distill-weight", "1"], "no such file"),
    (["--stretch", "-0.1"], "--stretch must be >= 0"),
    (["--teacher", "{tmp}/t.safetensors", "--distill-weight", "1"], "not a readable safetensors file"),
])
def test_pretrain_script_refuses_bad_distillation_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        flags: list[str], words: str) -> None:
    (tmp_path / "t.safetensors").write_bytes(b"x")
    with pytest.raises(SystemExit) as e:
        _pretrain_script().main(["--out", str(tmp_path / "out"), *[f.format(tmp=tmp_path) for f in flags]])
    assert e.value.code == 2 and words in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before anything is written
