"""Training speed on CPU: generator steps/s with and without the backbone-feature cache, and
classifier steps/s, on generated data with a small ViT.

    python benchmarks/bench_train.py [--img-size 96] [--depth 4] [--batch 8] [--images 32]

Each run trains 2 epochs; the speed is taken from the second (the first warms up). The cache
row also reports the one-off time to build the cache (``cache_views`` backbone passes).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch


def _data(root: Path, n_images: int, size: int) -> tuple[Path, Path]:
    from locloc.data import load_dataset
    from locloc.data.synthetic import make_synthetic
    from locloc.masks.store import MaskStore

    data = make_synthetic(root / "data", classes=2, train=n_images // 2, test=1, size=size, seed=0)
    store = MaskStore(root / "masks")
    for s in load_dataset(data).split("train"):
        m = cv2.imread(str(s.mask_path), cv2.IMREAD_GRAYSCALE)
        store.write(s.relpath, (m > 127).astype(np.uint8))
    return Path(data), root / "masks"


def _run(kind: str, out: Path, common: dict, **kw) -> tuple[float, float]:
    """(images/s of epoch 2, total wall seconds)."""
    from locloc.engine.config import ClassifierTrainConfig, GeneratorTrainConfig
    from locloc.engine.train_classifier import train_classifier
    from locloc.engine.train_generator import train_generator

    cfg_cls, fn = (GeneratorTrainConfig, train_generator) if kind == "generator" else (ClassifierTrainConfig, train_classifier)
    cfg = cfg_cls(**common, out=str(out), **kw)
    t0 = time.perf_counter()
    fn(cfg, progress=False, log=lambda m: None)
    wall = time.perf_counter() - t0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return rows[-1]["images_per_s"], wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--img-size", type=int, default=96)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--embed-dim", type=int, default=192)
    ap.add_argument("--heads", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--views", type=int, default=2, help="cache_views for the cached run")
    ap.add_argument("--generator", default="unet", choices=("unet", "light", "deconv"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data, masks = _data(root, args.images, args.img_size)
        common = dict(
            data_path=str(data), masks=str(masks), backbone="vit_small_patch16_224",
            backbone_kwargs=dict(img_size=args.img_size, depth=args.depth, embed_dim=args.embed_dim,
                                 num_heads=args.heads),
            epochs=2, batch_size=args.batch, workers=0, device="cpu", val_split="none", lr=1e-4,
        )
        b = args.batch
        plain, _ = _run("generator", root / "g0", common, generator=args.generator)
        cached, wall = _run("generator", root / "g1", common, generator=args.generator, cache_views=args.views)
        cls, _ = _run("classifier", root / "c0", common, warmup_epochs=0)
    print(f"backbone ViT img {args.img_size} depth {args.depth} dim {args.embed_dim}; batch {b}; "
          f"{args.images} images; torch threads {args.threads}; generator {args.generator}")
    print(f"generator, no cache      : {plain / b:7.2f} steps/s ({plain:7.1f} images/s)")
    print(f"generator, {args.views}-view cache  : {cached / b:7.2f} steps/s ({cached:7.1f} images/s), "
          f"run incl. cache build {wall:.1f} s")
    print(f"classifier               : {cls / b:7.2f} steps/s ({cls:7.1f} images/s)")
    print(f"ratio cache / no cache   : {cached / plain:.2f}x")


if __name__ == "__main__":
    main()
