"""Fast modes: boxes-only (no classifier) and bf16 autocast, in the model, the evaluation
loop, the Python API and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from locloc import LocLoc
from locloc.cli import main
from locloc.data import load_dataset
from locloc.data.synthetic import make_synthetic
from locloc.data.transforms import EvalTransform
from locloc.engine.evaluate import evaluate_samples as evaluate
from locloc.models.backbone import build_backbone
from locloc.models.classifier import LFDMClassifier
from locloc.models.generator import LightGenerator, UNetGenerator
from locloc.models.model_dir import save_model_dir
from locloc.models.pipeline import LocLocModel

TINY = dict(img_size=64, patch_size=16, depth=2, embed_dim=48, num_heads=3)


def _model(generator: str = "light", seed: int = 0) -> LocLocModel:
    torch.manual_seed(seed)
    bb = build_backbone("vit_small_patch16_224", None, **TINY)
    cls = LFDMClassifier(3, embed_dim=48, depth=1, num_heads=3, grid_size=bb.grid_size)
    gen = LightGenerator(in_channels=48) if generator == "light" else UNetGenerator(48, 16, 16)
    model = LocLocModel(bb, cls, gen).eval()
    for m in model.modules():  # non-trivial BN statistics so the maps are not flat
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("syn") / "data"
    make_synthetic(d, classes=3, train=1, test=4, size=80, seed=3)
    return d


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    save_model_dir(d, _model(), {"class_names": ["a", "b", "c"], "input": {"resize": 73, "crop": 64}})
    return d


def test_boxes_only_forward_same_maps_no_logits_and_skips_classifier():
    model = _model()
    calls = []
    model.classifier.register_forward_hook(lambda *a: calls.append(1))
    x = torch.randn(3, 3, 64, 64)
    with torch.inference_mode():
        full = model(x)
        fast = model(x, boxes_only=True)
    assert len(calls) == 1  # only the full pass ran the classifier
    assert full["logits"].shape == (3, 3)
    assert fast["logits"] is None
    torch.testing.assert_close(fast["maps"], full["maps"], rtol=0, atol=0)


@pytest.mark.parametrize("generator", ["light", "unet"])
def test_bf16_autocast_maps_close_to_fp32(generator):
    model = _model(generator, seed=1)
    x = torch.randn(4, 3, 64, 64)
    with torch.inference_mode():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    assert low["maps"].shape == ref["maps"].shape and torch.isfinite(low["maps"].float()).all()
    a, b = low["maps"].float().flatten(1), ref["maps"].flatten(1)
    assert (a - b).abs().max() < 0.08  # bf16 keeps ~3 significant digits; maps are in (0, 1)
    assert torch.nn.functional.cosine_similarity(a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)).min() > 0.9
    torch.testing.assert_close(low["logits"].float(), ref["logits"], rtol=0.1, atol=0.1)


def test_evaluate_boxes_only_and_bf16_match_full(data_dir):
    model = _model()
    samples = load_dataset(data_dir).split("test")
    tf = EvalTransform(resize=73, crop=64)
    kw = dict(transform=tf, thresholds=[0.3, 0.5], batch_size=5, workers=0, progress=False)
    full = evaluate(model, samples, **kw)
    fast = evaluate(model, samples, boxes_only=True, **kw)
    bf16 = evaluate(model, samples, amp_dtype=torch.bfloat16, **kw)
    m, f = full.metrics, fast.metrics
    assert m["top1_cls"] is not None and f["top1_cls"] is None and f["top5_cls"] is None
    assert f["boxes_only"] is True and bf16.metrics["amp_dtype"] == "bfloat16"
    assert all(r["top1_loc"] is None and r["top5_loc"] is None for r in f["per_threshold"])
    assert [r["gt_known_loc"] for r in f["per_threshold"]] == [r["gt_known_loc"] for r in m["per_threshold"]]
    assert [r["box"] for r in fast.rows] == [r["box"] for r in full.rows]
    assert all(r["top5"] == [] for r in fast.rows)
    assert bf16.metrics["top1_cls"] is not None and len(bf16.rows) == len(samples)


def test_evaluate_cli_boxes_only(data_dir, model_dir, tmp_path, capsys):
    out = tmp_path / "ev"
    rc = main(["evaluate", "--data-path", str(data_dir), "--model-dir", str(model_dir), "--out", str(out),
               "--boxes-only", "--bf16", "--workers", "0", "--device", "cpu", "--batch-size", "4"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["top1_cls"] is None and m["top5_cls"] is None
    assert m["best"]["top1_loc"] is None and m["best"]["top5_loc"] is None
    assert m["best"]["gt_known_loc"] is not None and m["num_images"] == 12
    assert "Top-1 Cls" not in capsys.readouterr().out
    lines = (out / "per_image.csv").read_text().splitlines()
    assert len(lines) == 13 and lines[1].split(",")[3] == ""  # no top-1 class


def test_predict_cli_and_api_boxes_only(data_dir, model_dir, tmp_path):
    imgs = sorted((data_dir / "images").rglob("*.png"))[:3]
    out = tmp_path / "p.jsonl"
    assert main(["predict", *map(str, imgs), "--model-dir", str(model_dir), "--out", str(out),
                 "--boxes-only", "--device", "cpu"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3
    assert all(r["class_id"] is None and r["class_name"] is None and r["top5"] == [] for r in rows)
    full = LocLoc.from_pretrained(model_dir, device="cpu").predict_batch(imgs)
    assert [r["box"] for r in rows] == [p.box for p in full]
    assert all(p.class_id is not None for p in full)
    fast = LocLoc.from_pretrained(model_dir, device="cpu", boxes_only=True, amp_dtype=torch.bfloat16).predict(imgs[0])
    assert fast.class_id is None and len(fast.box) == 4
    assert np.isfinite(fast.heatmap).all()
