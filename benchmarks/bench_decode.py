"""JPEG decode + evaluation transform: full decode vs reduced-scale (draft-mode) decode.

`locloc evaluate`, `locloc predict` and the backbone side of `locloc masks` shrink every image
to a few hundred pixels, so decoding a large JPEG in full is wasted work. ``open_image_reduced``
asks libjpeg (Pillow's draft mode) for a 1/2, 1/4 or 1/8 scale decode that stays at least as
large as the resize. This script times ``open + EvalTransform.image`` both ways on JPEGs of
several sizes (a real photo from scikit-image, resized with Lanczos, quality 90), interleaved,
best of ``--rounds``, and prints the ratio and the pixel difference of the two transformed
tensors (in 0..255 grey levels after undoing the normalization).

Usage: ``python benchmarks/bench_decode.py [--rounds 5] [--resize 256 --crop 224]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from locloc.data.transforms import EvalTransform
from locloc.fileio import open_image, open_image_reduced

SIZES = [(400, 350), (500, 375), (1024, 768), (1600, 1200), (4032, 3024)]  # ILSVRC / CUB average, camera sizes


def source_photo() -> Image.Image:
    try:
        from skimage import data
    except ImportError:  # a smooth synthetic stand-in when scikit-image is absent
        x = np.linspace(0, 255, 512, dtype=np.float32)
        return Image.fromarray(np.stack([np.add.outer(x, x) / 2, np.outer(x, x) / 255, x[None].repeat(512, 0)], -1).astype(np.uint8))
    return Image.fromarray(data.chelsea())


def seconds(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--resize", type=int, default=256)
    p.add_argument("--crop", type=int, default=224)
    a = p.parse_args()
    torch.set_num_threads(1)
    tf = EvalTransform(a.resize, a.crop)
    std = torch.tensor(tf.std).view(3, 1, 1) * 255.0
    src = source_photo()
    print(f"open + EvalTransform({a.resize}, {a.crop}), one thread, best of {a.rounds}")
    print(f"{'JPEG size':>11} {'decoded':>9} {'full ms':>8} {'reduced ms':>10} {'ratio':>6} {'mean |d|':>8} {'max |d|':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        for w, h in SIZES:
            path = Path(tmp) / f"{w}x{h}.jpg"
            src.resize((w, h), Image.LANCZOS).save(path, quality=90)
            full_t = red_t = float("inf")
            for _ in range(a.rounds):  # interleaved
                full_t = min(full_t, seconds(lambda p=path: tf.image(open_image(p))))
                red_t = min(red_t, seconds(lambda p=path: tf.image(open_image_reduced(p, a.resize)[0])))
            full = tf.image(open_image(path))
            img, _ = open_image_reduced(path, a.resize)
            diff = ((tf.image(img) - full) * std).abs()
            print(
                f"{w:>5}x{h:<5} {img.size[0]:>4}x{img.size[1]:<4} {full_t * 1e3:8.1f} {red_t * 1e3:10.1f} "
                f"{full_t / red_t:5.2f}x {float(diff.mean()):8.2f} {float(diff.max()):7.1f}"
            )


if __name__ == "__main__":
    main()
