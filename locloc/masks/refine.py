"""Stage 1, optional second round: class-aware GrabCut seeds from a patch probe.

The CLS attention that seeds the paper's trimap is class-agnostic: it covers whatever the
backbone finds salient, and on cluttered images that includes things that are not the object
(on the demo's data a DINOv2-family ViT-S/14 lights the translucent striped patches as
brightly as the object, and GrabCut then merges them with it). The training images carry
their class label, which WSOL allows at training time; this round uses it:

1. **round 1**: the usual masks (attention -> trimap -> GrabCut) of the training images;
2. **probe**: each training image's patch tokens (the frozen backbone's last block, as the
   generator sees them, layer-normalised) are labelled with the image's class where the
   round-1 mask covers at least half of the patch, "background" elsewhere; a multinomial
   logistic regression (``C + 1`` outputs, L2 penalty) is fitted on ``per_image`` random
   patches of every image. A feature that every class's masks contain (a distractor that
   round 1 merged with objects of all classes) predicts no class well; the object's
   features predict its class;
3. **round 2**: each image's seed grid is the probe's probability of the image's own class
   per patch (for images outside the probe's training set, whose label is not used: the
   largest class probability), turned into a trimap (:data:`CLASS_SEED_TRIMAP`) and cut by
   GrabCut as before.

This is a departure from the paper's stage 1 (which uses the attention alone); it adds a
GrabCut round on up to 100 images per class, a backbone pass over them, a probe fit (seconds)
and a second backbone pass over all images. Measured with ``benchmarks/class_seeds.py`` on the
demo's 1,200 synthetic training images with a real DINOv2-family ViT-S/14 at 224 px, mask box
IoU >= 0.5 with the GT box (mean mask IoU): attention seeds 0.844 (0.698), class seeds 0.965
(0.827), 1.4x the time. Choices, on the same images: the probe on 10 / 20 / 50 / 100 / 200
images per class, its seeds thresholded at 0.3: 0.902 / 0.931 / 0.925 / 0.947 / 0.951; L2
0.0001 / 0.001 / 0.01 / 0.03: 0.891 / 0.933 / 0.953 / 0.948; labels from thresholded attention
instead of round-1 GrabCut masks: 0.917 at best; the largest class probability instead of the
own class, after round 2: 0.945 instead of 0.968 (400 images).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import CheckpointError, ConfigError, DataError

if TYPE_CHECKING:
    import torch

    from ..data.records import Sample
    from ..models.backbone import FrozenViT
    from .grabcut import GrabCutMasker
    from .runner import RunStats
    from .store import MaskStore

# Trimap for the probe's seeds (fractions of the min-max normalised seed grid). The probe's
# probabilities are smoother than CLS attention, so a real probable-background band works.
# Grid on 400 of the demo's training images (round-2 box IoU >= 0.5): 0.6/0.1/0.3 0.968,
# 0.5/0.1/0.3 0.968, 0.5/0.2/0.3 0.965, 0.4/0.1/0.2 0.958, 0.7/0.05/0.2 0.953, 0.5/0.05/0.1
# 0.920, the attention's 0.6/0.02/0.03 0.868.
CLASS_SEED_TRIMAP = {"fg_frac": 0.6, "bg_frac": 0.1, "mid_frac": 0.3}
PROBE_FILE = "class_probe.safetensors"
ROUND1_DIR = ".round1"  # inside the mask store: round-1 masks (hidden from the store's listing)


def patch_features(backbone: FrozenViT, images: torch.Tensor, device: Any = "cpu") -> torch.Tensor:
    """The probe's features: the last block's patch tokens (``B x N x D``, no prefix tokens,
    before the final norm: the generator's input), layer-normalised per token, float32 on CPU."""
    import torch
    import torch.nn.functional as F

    with torch.inference_mode():
        tokens = backbone(images.to(device)).patch_tokens.float()
    return F.layer_norm(tokens, tokens.shape[-1:]).cpu()


def patch_labels(mask: np.ndarray, grid: tuple[int, int], label: int, background: int) -> np.ndarray:
    """Per-patch labels of one image from its ``H x W`` 0/1 mask: ``label`` where the mask
    covers at least half of the patch, ``background`` elsewhere; ``gh * gw`` int64, row-major."""
    import cv2

    gh, gw = grid
    cover = cv2.resize(mask.astype(np.float32), (gw, gh), interpolation=cv2.INTER_AREA)
    return np.where(cover.reshape(-1) >= 0.5, label, background).astype(np.int64)


@dataclass
class PatchProbe:
    """A linear (C+1)-way classifier over patch features: classes ``0..C-1`` and background ``C``.

    ``weight`` is ``D x (C + 1)``, ``bias`` ``C + 1`` (float32 tensors).
    """

    weight: torch.Tensor
    bias: torch.Tensor
    meta: dict[str, Any]

    @property
    def num_classes(self) -> int:
        return int(self.weight.shape[1]) - 1

    @classmethod
    def fit(cls, features: torch.Tensor, labels: torch.Tensor, num_classes: int, l2: float = 0.01,
            max_iter: int = 300) -> PatchProbe:
        """Multinomial logistic regression by L-BFGS: mean cross-entropy + ``l2 * |W|^2``.

        ``features`` ``M x D`` float32, ``labels`` ``M`` int64 in ``0..num_classes`` (the last
        is background). Deterministic for the same inputs.
        """
        import torch
        import torch.nn.functional as F

        if features.ndim != 2 or len(features) != len(labels) or len(labels) == 0:
            raise ConfigError(f"probe: need M x D features and M labels, got {tuple(features.shape)} and {len(labels)}")
        x = features.float()
        y = labels.long()
        w = torch.zeros(x.shape[1], num_classes + 1, requires_grad=True)
        b = torch.zeros(num_classes + 1, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(x @ w + b, y) + l2 * (w * w).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        w, b = w.detach(), b.detach()
        with torch.no_grad():
            acc = float(((x @ w + b).argmax(1) == y).float().mean())
        meta = {"l2": l2, "samples": int(len(y)), "train_accuracy": round(acc, 4),
                "background_share": round(float((y == num_classes).float().mean()), 4)}
        return cls(w.contiguous(), b.contiguous(), meta)

    def seeds(self, features: torch.Tensor, labels: Sequence[int | None], grid: tuple[int, int]) -> np.ndarray:
        """Seed grids ``B x gh x gw`` float32: per patch the probability of the image's own
        class, or the largest class probability where its label is None."""
        import torch

        with torch.no_grad():
            p = (features.float() @ self.weight + self.bias).softmax(-1)[..., : self.num_classes]  # B x N x C
        out = np.empty((len(labels), *grid), np.float32)
        for k, lab in enumerate(labels):
            row = p[k].max(-1).values if lab is None else p[k, :, int(lab)]
            out[k] = row.reshape(grid).numpy()
        return out

    def save(self, path: str | Path) -> None:
        """Atomically write ``weight``/``bias`` and the metadata as safetensors."""
        from safetensors.torch import save_file

        from ..fileio import atomic_save

        atomic_save(Path(path), lambda tmp: save_file(
            {"weight": self.weight, "bias": self.bias}, tmp, metadata={"locloc.probe": json.dumps(self.meta)}))

    @classmethod
    def load(cls, path: str | Path) -> PatchProbe:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {}).get("locloc.probe", "{}"))
                return cls(f.get_tensor("weight"), f.get_tensor("bias"), meta)
        except Exception as e:  # a truncated or foreign file: one line naming it
            raise CheckpointError(f"{path}: not a class-probe file ({e}); delete it and rerun stage 1") from None


def collect_probe_samples(
    samples: Sequence[Sample], backbone: FrozenViT, round1: MaskStore, num_classes: int, per_image: int = 32,
    batch_size: int = 32, device: Any = "cpu", seed: int = 0, progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_image`` random patches of every sample (features ``M x D``, labels ``M``), labelled
    from the sample's round-1 mask (:func:`patch_labels`)."""
    import torch
    from tqdm import tqdm

    from .runner import load_backbone_batch

    rng = np.random.default_rng(seed)
    n = backbone.num_patches
    k = min(per_image, n)
    feats, labs = [], []
    bar = tqdm(total=len(samples), unit="img", desc="class probe", disable=not progress)
    try:
        for start in range(0, len(samples), batch_size):
            batch = samples[start : start + batch_size]
            f = patch_features(backbone, load_backbone_batch(batch, backbone), device)
            for s, fi in zip(batch, f):
                if not 0 <= s.label < num_classes:
                    raise DataError(f"{s.path}: label {s.label} outside 0..{num_classes - 1}")
                pick = rng.choice(n, size=k, replace=False)
                lab = patch_labels(round1.read(s.relpath), backbone.grid_size, s.label, num_classes)
                feats.append(fi[pick])
                labs.append(torch.from_numpy(lab[pick]))
            bar.update(len(batch))
    finally:
        bar.close()
    return torch.cat(feats), torch.cat(labs)


def per_class_subset(samples: Sequence[Sample], per_class: int | None, seed: int = 0) -> list[Sample]:
    """At most ``per_class`` samples of each class, drawn at random with ``seed`` (the same
    draw in every shard), in their original order; all of them when ``per_class`` is None."""
    if per_class is None:
        return list(samples)
    rng = np.random.default_rng(seed)
    labels = np.array([s.label for s in samples])
    keep: set[int] = set()
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        keep.update(int(i) for i in rng.permutation(idx)[:per_class])
    return [s for i, s in enumerate(samples) if i in keep]


def class_seed_source(probe: PatchProbe, label_for: Callable[[Sample], int | None], device: Any = "cpu"):
    """A seed source for :func:`locloc.masks.runner.mask_samples`: ``(backbone, batch, images)
    -> B x gh x gw`` probe seeds, with ``label_for(sample)`` the label to use (None: the
    largest class probability)."""

    def source(backbone: FrozenViT, batch: Sequence[Sample], images: torch.Tensor) -> np.ndarray:
        f = patch_features(backbone, images, device)
        return probe.seeds(f, [label_for(s) for s in batch], backbone.grid_size)

    return source


def round2_masker(round1: GrabCutMasker) -> GrabCutMasker:
    """Round 2's masker: round 1's settings with the probe seeds' trimap (:data:`CLASS_SEED_TRIMAP`;
    the border band kept)."""
    from .grabcut import GrabCutMasker

    cfg = round1.config()
    cfg["trimap"] = {**cfg["trimap"], **CLASS_SEED_TRIMAP}
    return GrabCutMasker.from_config(cfg)


def class_seeded_masks(
    fit_samples: Sequence[Sample],
    samples: Sequence[Sample],
    backbone: FrozenViT,
    store: MaskStore,
    round1_masker: GrabCutMasker,
    round2_masker: GrabCutMasker,
    num_classes: int,
    *,
    batch_size: int = 32,
    workers: int = 0,
    shard: tuple[int, int] | None = None,
    device: Any = "cpu",
    progress: bool = True,
    per_image: int = 32,
    per_class: int | None = 100,
    max_patches: int = 200_000,
    l2: float = 0.01,
    seed: int = 0,
    skip_bad: bool = False,
    log: Callable[[str], None] = print,
) -> RunStats:
    """Masks for ``samples`` in ``store`` from class-aware seeds (see the module docstring).

    Round 1 writes the attention masks of up to ``per_class`` images of each class of
    ``fit_samples`` (the labelled training images; :func:`per_class_subset`) under
    ``store/.round1``; the probe is fitted on ``per_image`` random patches of each (fewer when
    that would pass ``max_patches`` in all) and saved as
    ``store/class_probe.safetensors`` (a rerun reuses both); round 2 writes the masks of
    ``samples`` into ``store``, with the own label for the images of ``fit_samples`` and the
    largest class probability for the others. Under sharding each shard does its part of
    round 1; the probe needs all of it, so a shard that finds round 1 unfinished elsewhere
    stops with a message to rerun it once every shard has passed round 1.
    Returns round 2's :class:`RunStats`, with round 1's and the probe's in ``round1``/``probe``.
    """
    from .runner import mask_samples
    from .store import MaskStore

    if not fit_samples:
        raise ConfigError("class seeds: no training image to fit the probe on")
    fit_keys = {s.relpath for s in fit_samples}
    fit_samples = per_class_subset(fit_samples, per_class, seed)
    round1 = MaskStore(store.root / ROUND1_DIR)
    s1 = mask_samples(fit_samples, backbone, round1, round1_masker, batch_size=batch_size, workers=workers,
                      shard=shard, device=device, progress=progress, skip_bad=skip_bad)
    log(f"class seeds, round 1 (attention): {s1.done} written, {s1.skipped} already there")
    probe_path = store.root / PROBE_FILE
    if probe_path.is_file():
        probe = PatchProbe.load(probe_path)
        if probe.num_classes != num_classes:
            raise DataError(f"{probe_path}: a probe for {probe.num_classes} classes, the data set has "
                            f"{num_classes}; delete it (and {round1.root}) and rerun")
    else:
        have = [s for s in fit_samples if round1.has(s.relpath)]
        if len(have) < len(fit_samples) and not (skip_bad and len(have) == len(fit_samples) - len(s1.unreadable)):
            raise DataError(
                f"{round1.root}: round-1 masks of {len(fit_samples) - len(have)} of {len(fit_samples)} training "
                "images are missing (other shards still running?); the class probe needs all of them: rerun "
                "the same command once every shard has finished round 1")
        import torch

        per_image = max(1, min(per_image, max_patches // max(1, len(have))))
        x, y = collect_probe_samples(have, backbone, round1, num_classes, per_image=per_image,
                                     batch_size=batch_size, device=device, seed=seed, progress=progress)
        torch.manual_seed(seed)
        probe = PatchProbe.fit(x, y, num_classes, l2=l2)
        probe.meta.update(per_image=per_image, images=len(have),
                          features="last-block patch tokens, layer-normalised")
        probe.save(probe_path)
        log(f"class probe: {len(have)} images x {per_image} patches, {num_classes} classes + background, "
            f"training accuracy {100 * probe.meta['train_accuracy']:.1f} %")
    source = class_seed_source(probe, lambda s: s.label if s.relpath in fit_keys else None, device)
    s2 = mask_samples(samples, backbone, store, round2_masker, batch_size=batch_size, workers=workers,
                      shard=shard, device=device, progress=progress, skip_bad=skip_bad, seeds=source)
    s2.round1 = s1.to_dict()
    s2.probe = dict(probe.meta)
    s2.unreadable = sorted(set(s1.unreadable) | set(s2.unreadable))
    return s2


__all__ = [
    "CLASS_SEED_TRIMAP", "PROBE_FILE", "ROUND1_DIR", "PatchProbe", "class_seed_source", "class_seeded_masks",
    "collect_probe_samples", "patch_features", "patch_labels", "per_class_subset", "round2_masker",
]
