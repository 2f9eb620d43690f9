"""Supervised training of a small ViT on class labels: the embedded default's backbone.

No pretrained weights can be downloaded on the machines LocLoc must run on, so the demo (and
anyone with a small data set and no checkpoint) first trains a small timm ViT to classify the
training images, then freezes it and uses it exactly like DeiT-S: its CLS attention seeds the
GrabCut masks, its tokens feed the generator and the classifier. Only image-level labels are
used, so the weak-supervision contract holds.

The embedded backbone's own pre-training (``scripts/pretrain_embedded_backbone.py``) adds two
optional terms on its synthetic corpus: objectness (the corpus masks vs the CLS attention) and
distillation from a larger pretrained ViT (:func:`teacher_tokens`, :func:`standardize_tokens`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
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
    # weight of the distillation term: the student's CLS token and its patch tokens (pooled to
    # the teacher's grid) match a larger pretrained ViT's (cosine, through linear heads dropped
    # after training); needs (image, label, mask, teacher tokens) items (see teacher_tokens).
    # Those items are trained on the whole image (resize, flip, colour jitter; no crop), so
    # the student sees the view the teacher saw
    distill_weight: float = 0.0
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
        if len(s) == 4:  # (image, label, mask, teacher tokens 1+G*G x D): one view for all, flipped together
            image, label, mask, teacher = s
            x, m = self.transform(tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1)),
                                  tv_tensors.Mask(torch.from_numpy(mask)[None]))
            t = torch.from_numpy(np.asarray(teacher, np.float32))
            if torch.rand(()) < 0.5:
                g = int(round((t.shape[0] - 1) ** 0.5))
                x, m = x.flip(-1), m.flip(-1)
                t = torch.cat([t[:1], t[1:].reshape(g, g, -1).flip(1).reshape(g * g, -1)])
            return x, int(label), m[0].float(), t
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


def _aligned_transform(size: int, mean: Sequence[float], std: Sequence[float]) -> Any:
    """The distillation items' transform: colour jitter, then the eval view (the whole image
    resized, as the teacher saw it); the data set flips image, mask and teacher tokens together."""
    return v2.Compose([v2.ToImage(), v2.ColorJitter(0.3, 0.3, 0.3, 0.05), _transforms(size, mean, std, 1.0)[1]])


@torch.inference_mode()
def teacher_tokens(images: Sequence[np.ndarray], teacher: nn.Module, size: int, batch_size: int = 64,
                   progress: bool = True) -> list[np.ndarray]:
    """A timm ViT teacher's final normed tokens for each ``H x W x 3 uint8`` image resized to
    ``size x size`` (ImageNet normalization): ``(1 + G*G) x D`` float16 per image (CLS, then
    the patch grid row by row). ``teacher``: a timm ``VisionTransformer`` with one prefix token."""
    from tqdm.auto import tqdm

    if int(getattr(teacher, "num_prefix_tokens", 1)) != 1:
        raise ValueError("teacher_tokens: the teacher must have exactly one prefix token (CLS, no registers)")
    tf = _transforms(size, IMAGENET_MEAN, IMAGENET_STD, 1.0)[1]  # the eval view
    teacher.eval()
    out: list[np.ndarray] = []
    for k in tqdm(range(0, len(images), batch_size), desc="teacher", disable=not progress):
        x = torch.stack([tf(torch.from_numpy(im).permute(2, 0, 1)) for im in images[k:k + batch_size]])
        out += list(teacher.forward_features(x).to(torch.float16).numpy())
    return out


def standardize_tokens(tokens: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Z-score each feature of :func:`teacher_tokens` output over the whole set, the CLS token
    and the patch tokens apart (float16 out). A ViT's tokens share a large common component,
    so a student matching raw tokens by cosine could score well on that alone; standardized,
    only the variation between images and places is left to match."""
    stack = np.stack([np.asarray(t, np.float32) for t in tokens])  # n x (1 + G*G) x D
    out = np.empty_like(stack)
    for sl in (slice(0, 1), slice(1, None)):
        part = stack[:, sl]
        mean = part.mean((0, 1), keepdims=True)
        std = part.std((0, 1), keepdims=True) + 1e-6
        out[:, sl] = (part - mean) / std
    return list(out.astype(np.float16))


def _distill_loss(heads: nn.ModuleDict, tokens: torch.Tensor, prefix: int, grid: tuple[int, int],
                  teacher: torch.Tensor) -> torch.Tensor:
    """1 - cosine between the student's projected CLS token / patch tokens (``B x (prefix+N) x D``,
    patches average-pooled to the teacher's ``G x G`` grid) and the teacher's ``B x (1+G*G) x Dt``."""
    b = tokens.shape[0]
    g = int(round((teacher.shape[1] - 1) ** 0.5))
    patches = tokens[:, prefix:].transpose(1, 2).reshape(b, -1, *grid)
    pooled = F.adaptive_avg_pool2d(patches.float(), g).flatten(2).transpose(1, 2)
    t = teacher.float()
    cls = 1 - F.cosine_similarity(heads["cls"](tokens[:, 0].float()), t[:, 0], dim=-1).mean()
    pat = 1 - F.cosine_similarity(heads["patch"](pooled), t[:, 1:], dim=-1).mean()
    return cls + pat


def _forward_with_attention(vit: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """timm ViT forward that also returns the last block's CLS attention ``B x N`` (heads
    averaged, computed from that block's own weights so gradients reach them) and the final
    normed tokens ``B x (prefix + N) x D``."""
    from ..models.backbone import cls_attention

    h = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))
    for blk in vit.blocks[:-1]:
        h = blk(h)
    att = cls_attention(vit.blocks[-1], h, int(vit.num_prefix_tokens)).mean(1)
    h = vit.norm(vit.blocks[-1](h))
    return vit.forward_head(h), att, h


DISTILL_HEAD = "distill_head"  # attribute (and state-dict prefix) of the distillation term's two heads


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
    if cfg.distill_weight > 0:  # heads trained with the ViT, dropped from the saved backbone
        first = train[0]
        if isinstance(first, Sample) or len(first) != 4:
            raise ValueError("distill_weight > 0 needs (image, label, mask, teacher tokens) items")
        dt = int(np.asarray(first[3]).shape[-1])
        setattr(vit, DISTILL_HEAD, nn.ModuleDict({"cls": nn.Linear(vit.embed_dim, dt),
                                                  "patch": nn.Linear(vit.embed_dim, dt)}))
    train_tf, test_tf = _transforms(size, IMAGENET_MEAN, IMAGENET_STD, cfg.crop_scale)
    if cfg.distill_weight > 0:
        train_tf = _aligned_transform(size, IMAGENET_MEAN, IMAGENET_STD)
    val_loader = DataLoader(_LabelledImages(val, test_tf), batch_size=64, shuffle=False, num_workers=0)

    def factors(y: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for h in reversed(heads):
            out.append(y % h)
            y = torch.div(y, h, rounding_mode="floor")
        return out[::-1]

    def step(model: nn.Module, batch: Any) -> torch.Tensor:
        x, y = batch[0], batch[1]
        dense = (cfg.attention_weight > 0 or cfg.distill_weight > 0) and len(batch) >= 3
        if dense:
            out, att, tokens = _forward_with_attention(model, x)
            prefix = int(model.num_prefix_tokens)
        else:
            out = model(x)
        logits = out.split(heads, dim=1)
        loss = sum(F.cross_entropy(z, t, label_smoothing=cfg.label_smoothing) for z, t in zip(logits, factors(y)))
        if dense:
            grid = tuple(model.patch_embed.grid_size)
            if cfg.attention_weight > 0:
                loss = loss + cfg.attention_weight * _objectness_loss(att, batch[2], grid)
            if cfg.distill_weight > 0 and len(batch) == 4:
                loss = loss + cfg.distill_weight * _distill_loss(getattr(model, DISTILL_HEAD), tokens, prefix, grid,
                                                                 batch[3])
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
    sd = {k: v.detach().cpu().contiguous() for k, v in vit.state_dict().items()
          if not k.startswith(("head.", DISTILL_HEAD + "."))}
    weights = out_dir / "backbone.safetensors"
    atomic_save(weights, lambda p: save_file(sd, p, metadata={"timm_name": cfg.backbone}))
    write_json(out_dir / "backbone.json", {"name": cfg.backbone, "kwargs": cfg.backbone_kwargs})
    summary["weights"] = str(weights)
    summary["val_top1"] = summary["last"].get("val_top1")
    return summary

