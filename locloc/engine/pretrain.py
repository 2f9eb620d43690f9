"""Supervised training of a small ViT on class labels: the embedded default's backbone.

No pretrained weights can be downloaded on the machines LocLoc must run on, so the demo (and
anyone with a small data set and no checkpoint) first trains a small timm ViT to classify the
training images, then freezes it and uses it exactly like DeiT-S: its CLS attention seeds the
GrabCut masks, its tokens feed the generator and the classifier. Only image-level labels are
used, so the weak-supervision contract holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from ..data.records import Sample
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ..fileio import atomic_save, open_image, write_json
from ..models import zoo  # noqa: F401  (registers the demo ViTs with timm)
from .config import TrainConfig
from .trainer import Trainer

# A small conv-stem ViT with the reference's 14 x 14 patch grid (see locloc.models.zoo).
DEMO_BACKBONE = "locloc_vit_tiny_cs8"
DEMO_BACKBONE_KWARGS: dict[str, Any] = {}


@dataclass
class PretrainConfig(TrainConfig):
    """Backbone pre-training on labels: AdamW, cosine with warm-up, label smoothing."""

    backbone: str = DEMO_BACKBONE
    backbone_kwargs: dict[str, Any] = field(default_factory=lambda: dict(DEMO_BACKBONE_KWARGS))
    epochs: int = 30
    batch_size: int = 32
    base_lr: float = 5e-4
    lr: float | None = 5e-4  # fixed, not scaled by batch: small-data recipe
    warmup_epochs: int = 2
    sched: str = "cosine"
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    val_split: str = "test"
    crop_scale: float = 0.35  # lower bound of RandomResizedCrop's area fraction
    # factorized labels: one softmax head per factor (e.g. (16, 12) for shape x texture), a
    # label y read in mixed radix (y = a * 12 + b); None: one head over num_classes
    head_sizes: tuple[int, ...] | None = None
    # weight of the objectness term: KL(object mask pooled to the patch grid || last block's
    # CLS attention, heads averaged); needs (image, label, mask) items; 0: labels only
    attention_weight: float = 0.0
    # start from these backbone weights (timm keys, no head) instead of random init; the
    # classification head is always new
    init_weights: str | None = None


class _LabelledImages(Dataset):
    """(image tensor, label) pairs with a train or eval transform.

    ``items`` are :class:`Sample` records (read from disk) or ``(H x W x 3 uint8 array, label)``
    pairs held in memory (the pre-training corpus).
    """

    def __init__(self, items: Sequence[Sample] | Sequence[tuple[Any, int]], transform: Any) -> None:
        self.items = list(items)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        s = self.items[i]
        if isinstance(s, Sample):
            return self.transform(open_image(s.path)), s.label
        if len(s) == 3:  # (image, label, H x W mask): image and mask through the same crop
            image, label, mask = s
            x, m = self.transform(tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1)),
                                  tv_tensors.Mask(torch.from_numpy(mask)[None]))
            return x, int(label), m[0].float()
        image, label = s[0], s[1]
        return self.transform(image), int(label)


def _transforms(size: int, mean: Sequence[float], std: Sequence[float], crop_scale: float) -> tuple[Any, Any]:
    train = v2.Compose([
        v2.ToImage(),
        v2.RandomResizedCrop(size, scale=(crop_scale, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.ColorJitter(0.3, 0.3, 0.3, 0.05),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean, std),
    ])
    test = v2.Compose([
        v2.ToImage(),
        v2.Resize((size, size), antialias=True),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean, std),
    ])
    return train, test


def _forward_with_attention(vit: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """timm ViT forward that also returns the last block's CLS attention ``B x N`` (heads
    averaged), computed from that block's own weights so gradients reach them."""
    from ..models.backbone import cls_attention

    h = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))
    for blk in vit.blocks[:-1]:
        h = blk(h)
    att = cls_attention(vit.blocks[-1], h, int(vit.num_prefix_tokens)).mean(1)
    h = vit.norm(vit.blocks[-1](h))
    return vit.forward_head(h), att


def _objectness_loss(att: torch.Tensor, masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """KL(target || attention): the mask's share of each patch as the target distribution.
    ``att``: ``B x N`` (sums to at most 1); ``masks``: ``B x H x W`` in {0, 1}. Images whose
    object the crop cut away are left out."""
    target = F.adaptive_avg_pool2d(masks[:, None].float(), grid).flatten(1)
    mass = target.sum(1)
    keep = mass > 0
    if not keep.any():
        return att.sum() * 0.0
    t = target[keep] / mass[keep, None]
    a = att[keep] / att[keep].sum(1, keepdim=True).clamp_min(1e-12)
    return (t * (torch.log(t.clamp_min(1e-12)) - torch.log(a.clamp_min(1e-12)))).sum(1).mean()


def _load_init(vit: nn.Module, path: str | Path) -> None:
    """Load backbone weights (no head) into ``vit`` strictly; its own new head is kept."""
    from ..models.weights import load_state_dict_file, load_strict

    sd = {k: v for k, v in load_state_dict_file(path).items() if not k.startswith("head.")}
    sd.update({k: v for k, v in vit.state_dict().items() if k.startswith("head.")})
    load_strict(vit, sd, "backbone to fine-tune", path)


def pretrain_backbone(
    train: Sequence[Sample] | Sequence[tuple[Any, int]],
    val: Sequence[Sample] | Sequence[tuple[Any, int]],
    num_classes: int,
    cfg: PretrainConfig,
    out_dir: str | Path,
    *,
    progress: bool = True,
    log: Any = None,
) -> dict[str, Any]:
    """Train ``cfg.backbone`` (timm; random init or ``cfg.init_weights``) to classify ``train``.

    ``train`` / ``val`` are samples on disk or in-memory ``(H x W x 3 uint8, label)`` pairs.

    Writes ``out_dir/backbone.safetensors`` (the ViT without its head, loadable by
    :func:`locloc.models.backbone.build_backbone` with the same kwargs), ``backbone.json``
    (name + kwargs) and the training run (``metrics.jsonl``, checkpoints). Returns the
    trainer's summary with ``weights`` and ``val_top1`` added.
    """
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    torch.manual_seed(cfg.seed)
    heads = tuple(int(h) for h in cfg.head_sizes) if cfg.head_sizes else (int(num_classes),)
    vit = timm.create_model(cfg.backbone, pretrained=False, num_classes=sum(heads), **cfg.backbone_kwargs)
    if cfg.init_weights:
        _load_init(vit, cfg.init_weights)
    size = int(vit.patch_embed.img_size[0])
    train_tf, test_tf = _transforms(size, IMAGENET_MEAN, IMAGENET_STD, cfg.crop_scale)
    val_loader = DataLoader(_LabelledImages(val, test_tf), batch_size=64, shuffle=False, num_workers=0)

    def factors(y: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for h in reversed(heads):
            out.append(y % h)
            y = torch.div(y, h, rounding_mode="floor")
        return out[::-1]

    def step(model: nn.Module, batch: Any) -> torch.Tensor:
        x, y = batch[0], batch[1]
        if cfg.attention_weight > 0 and len(batch) == 3:
            out, att = _forward_with_attention(model, x)
        else:
            out, att = model(x), None
        logits = out.split(heads, dim=1)
        loss = sum(F.cross_entropy(z, t, label_smoothing=cfg.label_smoothing) for z, t in zip(logits, factors(y)))
        if att is not None:
            loss = loss + cfg.attention_weight * _objectness_loss(att, batch[2], tuple(model.patch_embed.grid_size))
        return loss

    def validate(model: nn.Module) -> dict[str, float]:
        correct = total = 0
        for batch in val_loader:
            x, y = batch[0], batch[1]
            logits = model(x.to(trainer.device)).cpu().split(heads, dim=1)
            ok = torch.stack([z.argmax(1) == t for z, t in zip(logits, factors(y))]).all(0)
            correct += int(ok.sum())
            total += len(y)
        return {"val_top1": 100.0 * correct / max(total, 1)}

    trainer = Trainer(
        vit, _LabelledImages(train, train_tf), step, cfg, out_dir / "run",
        validate_fn=validate if len(val) else None, metric="val_top1" if len(val) else None,
        progress=progress, log=log,
    )
    last = out_dir / "run" / "last.pt"
    summary = trainer.fit(resume=last if last.exists() else None)
    sd = {k: v.detach().cpu().contiguous() for k, v in vit.state_dict().items() if not k.startswith("head.")}
    weights = out_dir / "backbone.safetensors"
    atomic_save(weights, lambda p: save_file(sd, p, metadata={"timm_name": cfg.backbone}))
    write_json(out_dir / "backbone.json", {"name": cfg.backbone, "kwargs": cfg.backbone_kwargs})
    summary["weights"] = str(weights)
    summary["val_top1"] = summary["last"].get("val_top1")
    return summary

