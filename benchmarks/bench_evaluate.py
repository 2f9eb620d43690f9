"""``locloc evaluate`` end to end against the FLOP-scaled floor, and where the time goes.

One pass of :func:`locloc.engine.evaluate.evaluate_samples` (JPEG decode with the
reduced-scale path, resize 256 / crop 224, backbone + LFDM classifier + UNet generator, boxes
at the reference's 6 CUB thresholds and MaxBoxAccV2 at 100 levels) over N JPEGs of CUB size
(500 x 375, random crops of scikit-image's photos), for the reference architecture (DeiT-S/16)
and for the real ViT-S/14 architecture (``vit_small_patch14_dinov2`` at 224 px: 256 patches),
random weights (speed does not depend on them), fp32 and, on a CPU with native bf16, bf16.

Random weights make the generator's maps flat noise, which min-max normalized is the worst
case for the box sweep (a contour per speck at MaxBoxAccV2's 100 levels); a trained model's
maps are smooth. So by default (``--maps smooth``) the generator still runs, and its output is
then replaced by smooth maps of the same shape (one to three Gaussian blobs, drawn once);
``--maps model`` keeps the noise. The box sweep alone is timed on both.

The floor of a pass is ``(pipeline FLOPs / plain ViT FLOPs) x`` the time of the plain timm ViT
forward over the same N images at the same batch, measured in the same run (interleaved with
the passes, best of ``--rounds``). Beside each pass: the data path alone (decode + transform,
the loader as evaluate builds it), the networks alone on preloaded batches, and the box sweep
alone on the pass's maps, per image.

    python benchmarks/bench_evaluate.py [--n 96] [--batch 32] [--rounds 2] [--workers 0]
        [--backbones deit vits14] [--no-bf16] [--maps smooth|model]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import BACKBONE_KWARGS, count_flops, plain_vit  # noqa: E402

BACKBONES = {"deit": "deit_small_patch16_224", "vits14": "vit_small_patch14_dinov2"}
PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "camera.png")


def make_images(root: Path, n: int, size: tuple[int, int] = (500, 375)) -> list:
    """``n`` JPEGs of ``size`` (random crops of scikit-image's photos, quality 90) as Samples
    with one random GT box each."""
    import skimage
    from PIL import Image

    from locloc.data.records import Sample

    rng = np.random.default_rng(0)
    data = Path(skimage.__file__).parent / "data"
    photos = [Image.open(data / p).convert("RGB") for p in PHOTOS if (data / p).exists()]
    if not photos:
        raise SystemExit("scikit-image's sample photos are missing: pip install scikit-image")
    root.mkdir(parents=True, exist_ok=True)
    out = []
    w, h = size
    for i in range(n):
        im = photos[i % len(photos)]
        s = rng.uniform(0.6, 1.0)
        cw, ch = int(im.width * s), int(im.height * s)
        x0, y0 = int(rng.integers(0, im.width - cw + 1)), int(rng.integers(0, im.height - ch + 1))
        crop = im.crop((x0, y0, x0 + cw, y0 + ch)).resize((w, h), Image.BILINEAR)
        p = root / f"{i:05d}.jpg"
        crop.save(p, quality=90)
        bw, bh = rng.uniform(0.3, 0.8) * w, rng.uniform(0.3, 0.8) * h
        bx, by = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
        out.append(Sample(image_id=str(i), path=p, relpath=p.name, label=int(i % 200),
                          boxes=np.array([[bx, by, bx + bw, by + bh]]), size=(w, h)))
    return out


def smooth_maps(n: int, size: int = 224, seed: int = 0) -> torch.Tensor:
    """``n x 1 x size x size`` float32 maps in [0, 1]: one to three Gaussian blobs each (sigma
    6-25 % of the side), like a trained generator's."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    out = np.zeros((n, 1, size, size), np.float32)
    for i in range(n):
        for _ in range(int(rng.integers(1, 4))):
            cx, cy = rng.uniform(0.2, 0.8, 2) * size
            s = rng.uniform(0.06, 0.25) * size
            out[i, 0] += rng.uniform(0.5, 1.0) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s))
    return torch.from_numpy(out / out.max(axis=(2, 3), keepdims=True))


class _SmoothOutput(torch.nn.Module):
    """Runs the generator, then returns smooth maps of its output's shape (see the module doc);
    the generator's own output of the last call stays in ``last``."""

    def __init__(self, generator: torch.nn.Module, pool: torch.Tensor) -> None:
        super().__init__()
        self.generator, self.pool, self.k, self.last = generator, pool, 0, None

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        m = self.last = self.generator(feat)
        if self.pool.shape[-2:] != m.shape[-2:]:
            self.pool = torch.nn.functional.interpolate(self.pool, size=m.shape[-2:], mode="bilinear")
        idx = (torch.arange(m.shape[0]) + self.k) % len(self.pool)
        self.k += m.shape[0]
        return self.pool[idx].to(m.dtype).expand_as(m)


def build_model(name: str) -> torch.nn.Module:
    from locloc.models.backbone import build_backbone
    from locloc.models.classifier import LFDMClassifier
    from locloc.models.generator import build_generator
    from locloc.models.pipeline import LocLocModel

    torch.manual_seed(0)
    bb = build_backbone(name, None, **BACKBONE_KWARGS.get(name, {}))
    cls = LFDMClassifier(200, embed_dim=bb.embed_dim, num_heads=bb.num_heads, grid_size=bb.grid_size)
    return LocLocModel(bb, cls, build_generator("unet", bb.embed_dim)).eval()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=96, help="images per pass")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=2, help="best of N, passes and floor interleaved")
    p.add_argument("--workers", type=int, default=0,
                   help="data-loading worker processes of evaluate (0: its default on CPU)")
    p.add_argument("--backbones", nargs="+", choices=sorted(BACKBONES), default=["deit", "vits14"])
    p.add_argument("--no-bf16", dest="bf16", action="store_false", help="fp32 only")
    p.add_argument("--maps", choices=("smooth", "model"), default="smooth",
                   help="box sweep on smooth stand-in maps (default) or on the random model's noise maps")
    args = p.parse_args()

    from torch.utils.data import DataLoader

    from locloc.data.datasets import WSOLDataset, collate_wsol, nan_padded_to_list
    from locloc.data.transforms import EvalTransform
    from locloc.engine.evaluate import CUB_THRESHOLDS, evaluate_samples
    from locloc.engine.precision import cpu_bf16_native as native_bf16
    from locloc.metrics.accumulators import LocalizationAccumulator, MaxBoxAccV2Accumulator

    bf16 = args.bf16 and native_bf16()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{torch.backends.cpu.get_cpu_capability()}, native bf16: {native_bf16()}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; N = {args.n}, batch {args.batch}, "
          f"{args.workers} loader worker(s)")
    tf = EvalTransform(256, 224)
    with tempfile.TemporaryDirectory(prefix="bench_eval_") as tmp:
        samples = make_images(Path(tmp), args.n)
        rows = []
        for key in args.backbones:
            name = BACKBONES[key]
            model, plain = build_model(name), plain_vit(name)
            x1 = torch.randn(1, 3, 224, 224)
            ratio = count_flops(lambda m=model, x=x1: m(x)) / count_flops(lambda m=plain, x=x1: m(x))
            pool = smooth_maps(args.n)
            if args.maps == "smooth":
                model.generator = _SmoothOutput(model.generator, pool)
            chunks = [torch.randn(min(args.batch, args.n - i), 3, 224, 224) for i in range(0, args.n, args.batch)]
            modes = [("fp32", None)] + ([("bf16", torch.bfloat16)] if bf16 else [])
            best: dict[str, float] = {}
            for _ in range(args.rounds):
                for tag, amp in modes:
                    t0 = time.perf_counter()
                    with torch.inference_mode(), torch.autocast("cpu", dtype=amp or torch.float32,
                                                                enabled=amp is not None):
                        for c in chunks:
                            plain(c)
                    best[f"plain {tag}"] = min(best.get(f"plain {tag}", 1e9), time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    evaluate_samples(model, samples, transform=tf, thresholds=CUB_THRESHOLDS,
                                     batch_size=args.batch, workers=args.workers, amp_dtype=amp, progress=False)
                    best[f"pass {tag}"] = min(best.get(f"pass {tag}", 1e9), time.perf_counter() - t0)
            # where the time goes (fp32): data path, networks, box sweep, each alone
            loader = DataLoader(WSOLDataset(samples, tf), batch_size=args.batch, num_workers=args.workers,
                                collate_fn=collate_wsol)
            n = args.n
            t0 = time.perf_counter()
            batches = list(loader)
            t_data = time.perf_counter() - t0
            t0 = time.perf_counter()
            maps, raw = [], []
            with torch.inference_mode():
                for b in batches:
                    maps.append(model(b["image"])["maps"].float()[:, 0].numpy())
                    if args.maps == "smooth":  # the random generator's own noise maps, for the other timing
                        raw.append(model.generator.last.float()[:, 0].numpy())
            t_net = time.perf_counter() - t0
            if args.maps == "smooth":
                noise, smooth = raw, maps
            else:
                side = maps[0].shape[-2:]
                small = torch.nn.functional.interpolate(pool, size=side, mode="bilinear")[:, 0].numpy()
                noise, smooth = maps, [small[i:i + len(m)] for i, m in zip(range(0, n, args.batch), maps)]

            def sweep(ms: list, batches: list = batches) -> float:
                mba = MaxBoxAccV2Accumulator(step=0.01, size=224)
                loc = LocalizationAccumulator(list(CUB_THRESHOLDS), size=224, maxboxacc_v2=mba)
                t0 = time.perf_counter()
                for b, m in zip(batches, ms):
                    loc.update(m, nan_padded_to_list(b["boxes"]), None, b["label"].numpy())
                dt = time.perf_counter() - t0
                loc.close()
                return dt

            t_smooth, t_noise = sweep(smooth), sweep(noise)
            for tag, _ in modes:
                floor = ratio * best[f"plain {tag}"]
                rows.append((key, tag, args.n / best[f"pass {tag}"], args.n / floor, floor / best[f"pass {tag}"]))
            print(f"{key} ({name}): pipeline / plain FLOPs {ratio:.3f}; fp32 parts alone, ms/image: data "
                  f"{1e3 * t_data / n:.1f}, networks {1e3 * t_net / n:.1f}, boxes (6 thr + MaxBoxAccV2) on "
                  f"smooth maps {1e3 * t_smooth / n:.1f}, on the random model's noise maps {1e3 * t_noise / n:.1f}",
                  flush=True)
        print(f"{'backbone':>8} {'mode':>5} {'evaluate img/s':>14} {'floor img/s':>11} {'of floor':>8}")
        for key, tag, ips, fps, frac in rows:
            print(f"{key:>8} {tag:>5} {ips:14.2f} {fps:11.2f} {frac:8.2f}")
        for key in args.backbones:
            r = {t: ips for k, t, ips, *_ in rows if k == key}
            if "bf16" in r:
                print(f"{key}: bf16 / fp32 end to end {r['bf16'] / r['fp32']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
