"""Stage 1's class-aware second round (locloc/masks/refine.py): the probe, the two rounds, resuming."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

from locloc.data import load_dataset
from locloc.errors import DataError
from locloc.masks.grabcut import GrabCutMasker, TrimapConfig
from locloc.masks.quality import box_iou, mask_box
from locloc.masks.refine import PROBE_FILE, ROUND1_DIR, PatchProbe, class_seeded_masks, patch_labels, round2_masker
from locloc.masks.runner import mask_samples
from locloc.masks.store import MaskStore

COLOURS = [(230, 30, 30), (30, 200, 30), (230, 220, 30), (220, 30, 220)]  # one object colour per class
DISTRACTOR = (30, 60, 240)  # in every image, whatever the class
SIZE, PATCH = 64, 8


def write_set(root: Path, per_class: int = 6, seed: int = 0) -> Path:
    """A CUB-layout set: per image one class-coloured 16-px square (left half) and a larger blue
    square (right half) on grey noise; GT box = the class square."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    lines = {k: [] for k in ("images", "labels", "split", "boxes")}
    i = 0
    for c, colour in enumerate(COLOURS):
        (root / "images" / f"c{c}").mkdir()
        for k in range(per_class):
            i += 1
            im = rng.integers(110, 150, (SIZE, SIZE, 3)).astype(np.uint8)
            x0, y0 = int(rng.integers(6, 12)), int(rng.integers(8, 32))
            im[y0 : y0 + 16, x0 : x0 + 16] = colour
            dx, dy = int(rng.integers(36, 39)), int(rng.integers(6, 36))
            im[dy : dy + 22, dx : dx + 22] = DISTRACTOR
            rel = f"c{c}/{k}.png"
            cv2.imwrite(str(root / "images" / rel), im[:, :, ::-1])
            lines["images"].append(f"{i} {rel}")
            lines["labels"].append(f"{i} {c + 1}")
            lines["split"].append(f"{i} 1")
            lines["boxes"].append(f"{i} {x0} {y0} 16 16")
    for name, key in (("images", "images"), ("image_class_labels", "labels"), ("train_test_split", "split"),
                      ("bounding_boxes", "boxes")):
        (root / f"{name}.txt").write_text("\n".join(lines[key]) + "\n")
    (root / "classes.txt").write_text("".join(f"{c + 1} c{c}\n" for c in range(len(COLOURS))))
    return root


class ColourBackbone:
    """A stand-in ViT: 8x8 patches; CLS attention on every saturated patch (object *and*
    distractor, as a class-agnostic attention would); patch tokens = the mean colour's closeness
    to six reference colours (grey, blue, the four class colours)."""

    img_size = (SIZE, SIZE)
    grid_size = (SIZE // PATCH, SIZE // PATCH)
    num_patches = grid_size[0] * grid_size[1]
    data_config = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}

    def eval(self):
        return self

    def __call__(self, x, with_attention=False):
        cells = torch.nn.functional.avg_pool2d(x, PATCH).flatten(2).transpose(1, 2)  # B x N x 3
        sat = cells.max(-1).values - cells.min(-1).values
        att = (sat > 0.3).float()[:, None].expand(-1, 2, -1)
        protos = torch.tensor([(0.5, 0.5, 0.5), DISTRACTOR, *COLOURS[::-1]], dtype=torch.float32)
        protos[1:] /= 255.0
        tokens = torch.exp(-torch.cdist(cells, protos[None].expand(len(x), -1, -1)) ** 2 / 0.05)  # B x N x 6
        return SimpleNamespace(attention=att, patch_tokens=tokens)


def _box_acc(samples, store):
    return np.mean([box_iou(mask_box(store.read(s.relpath)), s.boxes).max() >= 0.5 for s in samples])


def test_patch_labels_follow_the_mask_cover():
    m = np.zeros((16, 16), np.uint8)
    m[:8, :8] = 1
    m[8:12, 8:16] = 1  # covers half of each bottom-right patch: counts as the object
    m[12:13, 0:8] = 1  # an eighth: background
    lab = patch_labels(m, (2, 2), label=3, background=9)
    assert lab.tolist() == [3, 9, 9, 3]


def test_probe_scores_a_shared_feature_low_and_the_class_feature_high():
    rng = np.random.default_rng(0)
    d = 8
    cls_feat = rng.normal(0, 1, (3, d))
    shared, bg = rng.normal(0, 1, d), rng.normal(0, 1, d)
    x, y = [], []
    for c in range(3):  # the shared feature is labelled as each class in turn (round 1 merged it)
        for feat, lab in ((cls_feat[c], c), (shared, c), (bg, 3)):
            x.append(feat + rng.normal(0, 0.1, (50, d)))
            y += [lab] * 50
    probe = PatchProbe.fit(torch.tensor(np.concatenate(x), dtype=torch.float32), torch.tensor(y), 3)
    f = torch.tensor(np.stack([cls_feat[1], shared, bg])[None], dtype=torch.float32)
    own = probe.seeds(f, [1], (1, 3))[0, 0]
    assert own[0] > 0.8 and own[1] < 0.45 and own[2] < 0.05
    assert probe.seeds(f, [None], (1, 3))[0, 0, 0] == pytest.approx(own[0])  # max over classes = own here


def test_class_seeds_drop_a_distractor_that_round_one_keeps(tmp_path):
    samples = load_dataset(write_set(tmp_path / "data")).split("train")
    bb = ColourBackbone()
    r1 = GrabCutMasker(TrimapConfig(fg_frac=0.6, bg_frac=0.0, mid_frac=0.3, border_frac=0.03), iterations=3)
    plain = MaskStore(tmp_path / "plain")
    mask_samples(samples, bb, plain, r1, batch_size=8, progress=False)
    assert _box_acc(samples, plain) < 0.2  # attention alone: the mask keeps the larger distractor

    store = MaskStore(tmp_path / "refined")
    logs: list[str] = []
    stats = class_seeded_masks(samples, samples, bb, store, r1, round2_masker(r1), len(COLOURS), batch_size=8,
                               per_image=64, progress=False, log=logs.append)
    assert _box_acc(samples, store) >= 0.9  # the probe sees blue in every class: not the object
    assert stats.done == len(samples) and stats.round1["done"] == len(samples)
    assert stats.probe["images"] == len(samples) and any("class probe" in m for m in logs)
    assert (store.root / PROBE_FILE).is_file() and len(MaskStore(store.root / ROUND1_DIR)) == len(samples)
    assert len(store) == len(samples)  # the round-1 folder is not part of the store's listing

    # a rerun resumes: nothing is cut again, the saved probe is reused
    again = class_seeded_masks(samples, samples, bb, store, r1, round2_masker(r1), len(COLOURS), progress=False,
                               log=logs.append)
    assert again.done == 0 and again.skipped == len(samples) and again.round1["skipped"] == len(samples)
    # a probe for another class count is refused with one line naming the file
    with pytest.raises(DataError, match=PROBE_FILE):
        class_seeded_masks(samples, samples, bb, store, r1, round2_masker(r1), 7, progress=False)


def test_probe_waits_for_every_round_one_mask(tmp_path):
    samples = load_dataset(write_set(tmp_path / "data", per_class=2)).split("train")
    r1 = GrabCutMasker(iterations=1)
    with pytest.raises(DataError, match="every shard has finished round 1"):
        class_seeded_masks(samples, samples, ColourBackbone(), MaskStore(tmp_path / "m"), r1, round2_masker(r1),
                           len(COLOURS), shard=(0, 2), progress=False)


def test_a_damaged_probe_file_is_one_clear_error(tmp_path):
    p = tmp_path / PROBE_FILE
    p.write_bytes(b"not safetensors")
    with pytest.raises(Exception, match="not a class-probe file"):
        PatchProbe.load(p)


def test_round_one_and_the_probe_take_a_seeded_subset_per_class(tmp_path):
    from locloc.masks.refine import per_class_subset

    samples = load_dataset(write_set(tmp_path / "data")).split("train")  # 4 classes x 6
    sub = per_class_subset(samples, 2, seed=3)
    assert [s.label for s in sub].count(0) == 2 and len(sub) == 8
    assert sub == per_class_subset(samples, 2, seed=3)  # every shard draws the same images
    assert [samples.index(s) for s in sub] == sorted(samples.index(s) for s in sub)  # original order
    assert per_class_subset(samples, None) == samples and per_class_subset(samples, 50) == samples
    r1 = GrabCutMasker(TrimapConfig(fg_frac=0.6, bg_frac=0.0, mid_frac=0.3, border_frac=0.03), iterations=1)
    store = MaskStore(tmp_path / "m")
    stats = class_seeded_masks(samples, samples, ColourBackbone(), store, r1, round2_masker(r1), len(COLOURS),
                               per_class=3, per_image=64, progress=False, log=lambda m: None)
    assert stats.round1["done"] == 12 and stats.probe["images"] == 12 and stats.done == len(samples)
    assert _box_acc(samples, store) >= 0.9
