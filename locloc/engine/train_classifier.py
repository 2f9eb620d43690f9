"""Stage 3: train the LFDM classifier on masked images with a local-area guide.

Each training image is resized to ``masked_size x masked_size`` (256) and multiplied by its
stage-1 mask, except inside one random CutMix-style box (area fraction ``1 - lambda``,
``lambda ~ Beta(guide_beta, guide_beta)``) where the mask is forced to 1. timm's training
transform follows (random-resized crop, flip, RandAugment, colour jitter, bicubic). The
classifier reads the frozen backbone's token embedding (``B x (P+N) x D``, before any block)
and is trained with label-smoothed cross-entropy. Validation: Top-1 / Top-5 Cls on plain
images.

Output: ``OUT/classifier.safetensors`` + ``OUT/classifier.json`` always; with
``generator_dir`` (a ``train-generator`` model directory) also ``OUT/model``, the full model
(backbone + classifier + generator). :func:`merge_model_dir` does the same merge later.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from ..data.records import Sample
from ..errors import CheckpointError, ConfigError
from ..fileio import atomic_save, write_json
from ..metrics import topk_hits
from ..models.backbone import FrozenViT
from .config import ClassifierTrainConfig
from .distributed import DistInfo, all_reduce_sum, weighted_mean
from .stage import MaskSource, StageSetup, eval_loader, loader_workers, prepare_stage
from .trainer import EpochHook, Trainer, find_resume

CLASSIFIER_FILE = "classifier.safetensors"
CLASSIFIER_CONFIG = "classifier.json"


def guide_box(h: int, w: int, lam: float, rng: np.random.RandomState | None = None) -> tuple[int, int, int, int]:
    """A random box ``(x0, y0, x1, y1)`` (exclusive ends) covering about ``1 - lam`` of an
    ``h x w`` image: sides ``sqrt(1 - lam)`` of the image's, centre uniform, clipped."""
    rng = rng or np.random
    r = float(np.sqrt(max(0.0, 1.0 - lam)))
    bw, bh = int(w * r), int(h * r)
    cx, cy = int(rng.randint(w)), int(rng.randint(h))
    x0, x1 = int(np.clip(cx - bw // 2, 0, w)), int(np.clip(cx + bw // 2, 0, w))
    y0, y1 = int(np.clip(cy - bh // 2, 0, h)), int(np.clip(cy + bh // 2, 0, h))
    return x0, y0, x1, y1


def masked_image(
    img: Image.Image, mask: np.ndarray, size: int, threshold: float, guide: bool, beta: float
) -> Image.Image:
    """``size x size`` RGB image multiplied by its binarized mask, with the mask forced to 1
    inside one :func:`guide_box` when ``guide`` (NumPy's global RNG draws the box)."""
    import cv2

    img = img.resize((size, size), Image.BICUBIC)
    m = cv2.resize(np.asarray(mask, dtype=np.float32), (size, size), interpolation=cv2.INTER_NEAREST)
    lo, hi = float(m.min()), float(m.max())
    m = ((m - lo) / (hi - lo) > threshold) if hi > lo else (m > 0)
    m = m.astype(np.uint8)
    if guide:
        lam = float(np.random.beta(beta, beta))
        x0, y0, x1, y1 = guide_box(size, size, lam)
        m[y0:y1, x0:x1] = 1
    return Image.fromarray(np.asarray(img) * m[..., None])


class LocalGuideSet(Dataset):
    """Training items ``{"image": 3 x crop x crop, "label": int}``: masked + local guide, then
    ``transform`` (a timm training transform)."""

    def __init__(self, samples: Sequence[Sample], store: MaskSource, transform: Callable, size: int = 256,
                 threshold: float = 0.05, guide: bool = True, beta: float = 1.0) -> None:
        self.samples = list(samples)
        self.store, self.transform = store, transform
        self.size, self.threshold, self.guide, self.beta = size, threshold, guide, beta

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        from ..fileio import open_image

        s = self.samples[i]
        img = masked_image(open_image(s.path), self.store.read(s.relpath), self.size, self.threshold,
                           self.guide, self.beta)
        return {"image": self.transform(img), "label": int(s.label)}


def check_classifier_blocks(n_backbone: int, depth: int | None, frozen: int,
                            names: tuple[str, str] = ("classifier_depth", "frozen_blocks")) -> int:
    """The classifier's depth (``depth``, or all ``n_backbone`` blocks) once ``depth`` and the
    ``frozen`` count are checked against the backbone; ``names`` label them in the error."""
    n = depth or n_backbone
    if not 1 <= n <= n_backbone:
        raise ConfigError(f"{names[0]} must be in 1..{n_backbone} for this backbone, got {depth}")
    if not 0 <= frozen < n:
        raise ConfigError(f"{names[1]} must be in 0..{n - 1} (the classifier copies {n} blocks and at least "
                          f"one must train), got {frozen}")
    return n


def build_classifier(backbone: FrozenViT, num_classes: int, depth: int | None = None,
                     frozen: int = 0) -> nn.Module:
    """An LFDM classifier sized like ``backbone`` (heads, width, MLP ratio, grid, layer scale)
    with its first ``depth`` blocks (default: all) and its norm copied from the backbone's;
    the first ``frozen`` of those blocks are kept fixed (see ``LFDMClassifier.freeze_blocks``)."""
    from ..models.classifier import LFDMClassifier

    vit = backbone.vit
    blk = vit.blocks[0]
    n_blocks = check_classifier_blocks(len(vit.blocks), depth, frozen)
    gamma = getattr(getattr(blk, "ls1", None), "gamma", None)
    clf = LFDMClassifier(
        num_classes=num_classes,
        embed_dim=backbone.embed_dim,
        depth=n_blocks,
        num_heads=backbone.num_heads,
        mlp_ratio=blk.mlp.fc1.out_features / backbone.embed_dim,
        grid_size=backbone.grid_size,
        num_prefix_tokens=backbone.num_prefix_tokens,
        qkv_bias=blk.attn.qkv.bias is not None,
        init_values=None if gamma is None else 1.0,  # placeholder: the backbone's gammas are copied
    )
    clf.init_from_backbone(backbone)
    if frozen:
        clf.freeze_blocks(frozen)
    return clf


def make_cls_validator(setup: StageSetup, samples: Sequence[Sample], batch_size: int,
                       workers: int) -> Callable[[nn.Module], dict[str, float]]:
    """``validate(classifier) -> {"top1_cls", "top5_cls", "val_images"}`` (percent), sharded
    over processes and averaged weighted by image counts."""
    loader = eval_loader(setup, samples, batch_size, workers)
    bb, dev = setup.backbone, setup.dist.device

    def validate(classifier: nn.Module) -> dict[str, float]:
        hits = torch.zeros(2, dtype=torch.float64)
        n = 0
        for batch in loader:
            logits = classifier(bb.embed(batch["image"].to(dev))).float().cpu()
            t1, t5 = topk_hits(logits, batch["label"])
            hits[0] += int(t1.sum())
            hits[1] += int(t5.sum())
            n += len(t1)
        rates = {"top1_cls": float(hits[0]) / n * 100 if n else 0.0, "top5_cls": float(hits[1]) / n * 100 if n else 0.0}
        out = weighted_mean(rates, float(n), dev)
        out["val_images"] = int(all_reduce_sum([float(n)], dev)[0])
        return out

    return validate


def save_classifier(run_dir: str | Path, classifier: nn.Module, class_names: Sequence[str],
                    backbone: FrozenViT) -> None:
    """Write ``classifier.safetensors`` and ``classifier.json`` (architecture, class names,
    backbone name/kwargs) into ``run_dir``, atomically."""
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in classifier.state_dict().items()}
    atomic_save(run_dir / CLASSIFIER_FILE, lambda p: save_file(tensors, p))
    write_json(run_dir / CLASSIFIER_CONFIG, {
        "classifier": classifier.config,
        "class_names": list(class_names),
        "backbone": {"name": backbone.name, "timm_kwargs": backbone.timm_kwargs},
    })


def merge_model_dir(generator_dir: str | Path, classifier_run: str | Path, out_dir: str | Path) -> Path:
    """Full model directory from a ``train-generator`` model dir and a ``train-classifier`` run
    (its ``classifier.*`` files). Both must share the backbone (name, kwargs and weights)."""
    from safetensors.torch import load_file

    from ..models.classifier import LFDMClassifier
    from ..models.model_dir import load_model_dir, save_model_dir
    from ..models.pipeline import LocLocModel
    from ..models.weights import load_strict

    classifier_run = Path(classifier_run)
    cpath = classifier_run / CLASSIFIER_CONFIG
    if not cpath.is_file():
        raise CheckpointError(f"{cpath}: not found; is {classifier_run} a train-classifier run?")
    info = json.loads(cpath.read_text())
    gen_model, gcfg = load_model_dir(generator_dir)
    if gcfg["backbone"] != info["backbone"]:
        raise ConfigError(
            f"{generator_dir}: its backbone {gcfg['backbone']} differs from the classifier's "
            f"{info['backbone']} ({cpath})"
        )
    clf = LFDMClassifier(**info["classifier"])
    wpath = classifier_run / CLASSIFIER_FILE
    load_strict(clf, load_file(str(wpath)), "LFDM classifier", wpath)
    model = LocLocModel(gen_model.backbone, clf, gen_model.generator)
    cfg = {k: gcfg[k] for k in ("normalization", "input", "thresholds", "source") if k in gcfg}
    cfg["class_names"] = info["class_names"]
    save_model_dir(out_dir, model, cfg)
    return Path(out_dir)


def _check_same_backbone(generator_dir: Path, backbone: FrozenViT) -> None:
    from ..models.model_dir import load_model_dir

    gen_model, _ = load_model_dir(generator_dir)
    mine = {k: v.cpu() for k, v in backbone.state_dict().items()}
    theirs = gen_model.backbone.state_dict()
    if mine.keys() != theirs.keys() or any(not torch.equal(mine[k], theirs[k]) for k in mine):
        raise ConfigError(
            f"{generator_dir}: the generator was trained on other backbone weights than --weights; "
            "use the same backbone for both stages"
        )


def _safe_posterize(img: Any, bits_to_keep: int, **kw: Any) -> Any:
    """timm's posterize with the bit count clamped to >= 1 (Pillow >= 12 refuses 0, which
    RandAugment's magnitude noise can produce)."""
    from timm.data import auto_augment

    return auto_augment.posterize(img, max(1, int(bits_to_keep)), **kw)


def _guard_posterize(transform: Any) -> None:
    """Swap the posterize ops of any timm RandAugment inside ``transform`` for the safe one."""
    from timm.data.auto_augment import RandAugment

    for t in getattr(transform, "transforms", []):
        if isinstance(t, RandAugment):
            for op in t.ops:
                if "Posterize" in op.name:
                    op.aug_fn = _safe_posterize


def train_transform(
    cfg: ClassifierTrainConfig, crop: int, mean: Sequence[float], std: Sequence[float]
) -> Callable[[Image.Image], torch.Tensor]:
    """timm's training transform for the masked images (PIL -> ``3 x crop x crop``):
    random-resized crop of area fraction ``[cfg.crop_scale, 1]``, flip, RandAugment (with the
    posterize guard), colour jitter, normalisation."""
    from timm.data import create_transform

    tf = create_transform(
        input_size=crop,
        is_training=True,
        scale=(cfg.crop_scale, 1.0),
        auto_augment=cfg.auto_augment,
        color_jitter=cfg.color_jitter,
        interpolation=cfg.interpolation,
        re_prob=cfg.re_prob,
        mean=mean,
        std=std,
    )
    _guard_posterize(tf)
    return tf


def train_classifier(
    cfg: ClassifierTrainConfig,
    resume: str | None = None,
    *,
    dist: DistInfo | None = None,
    on_epoch_end: EpochHook | None = None,
    log: Callable[[str], None] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run stage 3 as configured; returns the trainer's summary plus the output paths."""
    setup = prepare_stage(cfg, dist, log)
    d, bb = setup.dist, setup.backbone
    out = Path(cfg.out)
    if cfg.generator_dir is not None:
        _check_same_backbone(Path(cfg.generator_dir), bb)  # fail before training, not after
    ckpt = find_resume(out, resume)
    tf = train_transform(cfg, setup.crop, setup.mean, setup.std)
    train_set = LocalGuideSet(setup.train, setup.store, tf, cfg.masked_size, cfg.mask_threshold,
                              cfg.local_guide, cfg.guide_beta)
    num_classes = setup.dataset.num_classes
    torch.manual_seed(cfg.seed)
    classifier = build_classifier(bb, num_classes, cfg.classifier_depth, cfg.frozen_blocks)
    smoothing = cfg.label_smoothing

    def step(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            tokens = bb.embed(batch["image"])
        logits = model(tokens)
        return F.cross_entropy(logits.float(), batch["label"], label_smoothing=smoothing)

    validate = make_cls_validator(setup, setup.val, cfg.batch_size, loader_workers(cfg)) if setup.val else None
    trainer = Trainer(classifier, train_set, step, cfg, out, validate_fn=validate, metric="top1_cls",
                      dist=d, on_epoch_end=on_epoch_end, log=log, progress=progress)
    summary = trainer.fit(resume=ckpt)
    if d.is_main:
        final = build_classifier(bb, num_classes, cfg.classifier_depth)
        src = trainer.model.module if d.distributed else trainer.model
        final.load_state_dict(src.state_dict())
        save_classifier(out, final, setup.dataset.classes, bb)
        if cfg.generator_dir is not None:
            summary["model_dir"] = str(merge_model_dir(cfg.generator_dir, out, out / "model"))
    summary["classifier"] = str(out / CLASSIFIER_FILE)
    summary["skipped_images"] = list(setup.skipped)
    return summary


__all__ = [
    "LocalGuideSet",
    "build_classifier",
    "check_classifier_blocks",
    "guide_box",
    "make_cls_validator",
    "masked_image",
    "merge_model_dir",
    "save_classifier",
    "train_classifier",
]
