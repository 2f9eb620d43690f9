"""RandAugment's posterize can ask Pillow for 0 bits, which Pillow >= 12 refuses: guarded."""

from __future__ import annotations

import numpy as np
from PIL import Image
from timm.data import create_transform
from timm.data.auto_augment import RandAugment

from locloc.engine.train_classifier import _guard_posterize, _safe_posterize


def test_posterize_zero_bits_is_clamped():
    img = Image.fromarray(np.arange(64 * 64 * 3, dtype=np.uint8).reshape(64, 64, 3))
    out = np.asarray(_safe_posterize(img, 0))
    assert out.shape == (64, 64, 3)
    assert set(np.unique(out)) <= {0, 128}  # 1 bit kept


def test_guard_replaces_posterize_in_timm_transform():
    tf = create_transform(input_size=64, is_training=True, auto_augment="rand-m9-mstd0.5-inc1")
    _guard_posterize(tf)
    ra = next(t for t in tf.transforms if isinstance(t, RandAugment))
    post = [op for op in ra.ops if "Posterize" in op.name]
    assert post and all(op.aug_fn is _safe_posterize for op in post)


def test_classifier_transform_takes_crop_scale():
    from locloc.engine.config import ClassifierTrainConfig
    from locloc.engine.train_classifier import train_transform

    def crops(cfg):
        tf = train_transform(cfg, 64, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
        return [t for t in tf.transforms if type(t).__name__.startswith("RandomResizedCrop")]

    (default,) = crops(ClassifierTrainConfig())
    assert default.scale == (0.08, 1.0)  # timm's default, the reference recipe
    (wide,) = crops(ClassifierTrainConfig(crop_scale=0.5))
    assert wide.scale == (0.5, 1.0) and wide.size == (64, 64)
