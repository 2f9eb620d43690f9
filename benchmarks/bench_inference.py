"""Inference speed of the full LocLoc pipeline against a FLOP-scaled floor, and the fast modes.

Sections (default: all; pick with flags):

``--fp32``  reference architecture (DeiT-S backbone + 1000-way LFDM classifier + UNet
    generator, random weights, 224 x 224): images/s at each ``--batches`` size against the
    floor measured in the same run, ``floor = (pipeline FLOPs / DeiT-S FLOPs) x time of a
    plain timm ``deit_small_patch16_224`` forward`` at the same batch (FLOPs counted with
    ``torch.utils.flop_counter.FlopCounterMode``). Timings interleave model and floor and
    take the best of ``--repeats``. Also checks timm's fused attention, counts host round
    trips (``aten::_local_scalar_dense``) in one profiled pass, and prints where the time
    goes per part (backbone / classifier / generator); ``--profile`` adds the op table.
``--modes`` the fast modes at the largest batch, same run: bf16 autocast, boxes-only (no
    classifier), both together, and the light generator in place of the UNet; plus the
    generator heads alone (FLOPs and time, UNet vs light).
``--accuracy`` on the demo model (``--demo DIR``, from ``locloc demo``): GT-known Loc on its
    synthetic test split for fp32, bf16 and boxes-only, and for a UNet and a light generator
    trained with the same short recipe on the demo's masks (``--epochs``; ``--quick`` = 2).

``--backbone vit_small_patch14_dinov2`` runs ``--fp32`` (and ``--modes``) with the real ViT-S/14
architecture at 224 px (16 x 16 patches and one CLS token, no registers) in place of
DeiT-S, the floor then being that same plain timm model; the weights stay random (speed does
not depend on them).

    python benchmarks/bench_inference.py [--fp32] [--modes] [--accuracy] [--quick]
        [--batches 1 32] [--repeats 3] [--demo /tmp/dd] [--device cpu|cuda] [--profile]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

TARGET_FLOOR = 0.90
TARGET_BF16 = 1.8
TARGET_LIGHT = 3.0


BACKBONE_KWARGS = {"vit_small_patch14_dinov2": {"img_size": 224}}


def plain_vit(name: str) -> nn.Module:
    """The plain timm model of the floor (with its classification head), random weights."""
    import timm

    return timm.create_model(name, pretrained=False, **BACKBONE_KWARGS.get(name, {})).eval()


def reference_model(generator: str = "unet", backbone: str = "deit_small_patch16_224"):
    """DeiT-S (or ``backbone``) + 1000-way LFDM classifier (12 blocks) + reference UNet (or
    light) generator."""
    from locloc.models.backbone import build_backbone
    from locloc.models.classifier import LFDMClassifier
    from locloc.models.generator import build_generator
    from locloc.models.pipeline import LocLocModel

    torch.manual_seed(0)
    bb = build_backbone(backbone, None, **BACKBONE_KWARGS.get(backbone, {}))
    cls = LFDMClassifier(1000, embed_dim=bb.embed_dim, num_heads=bb.num_heads, grid_size=bb.grid_size)
    return LocLocModel(bb, cls, build_generator(generator, bb.embed_dim)).eval()


def count_flops(fn: Callable[[], object]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc, torch.inference_mode():
        fn()
    return int(fc.get_total_flops())


def best_times(fns: dict[str, Callable[[], object]], repeats: int, min_s: float = 0.3) -> dict[str, float]:
    """Best-of-``repeats`` seconds per call for each function, the functions interleaved.

    Each measurement loops a function for at least ``min_s`` (short calls) and divides."""
    for f in fns.values():  # warm-up (allocator, oneDNN primitive cache)
        f()
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            n, t0 = 0, time.perf_counter()
            while True:
                f()
                n += 1
                dt = time.perf_counter() - t0
                if dt >= min_s:
                    break
            best[k] = min(best[k], dt / n)
    return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _runner(model: nn.Module, x: torch.Tensor, amp: torch.dtype | None = None, **kw) -> Callable[[], object]:
    def run() -> object:
        with torch.inference_mode(), torch.autocast(x.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            out = model(x, **kw)
        _sync(x.device)
        return out

    return run


def host_round_trips(model: nn.Module, x: torch.Tensor) -> int:
    """Number of device->host scalar reads (``.item()``-like) in one forward."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof, torch.inference_mode():
        model(x)
    return sum(e.count for e in prof.key_averages() if e.key == "aten::_local_scalar_dense")


def profile_table(model: nn.Module, x: torch.Tensor, rows: int = 12) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof, torch.inference_mode():
        model(x)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def fused_attention(model: nn.Module) -> tuple[int, int]:
    """(attention modules using fused SDPA, all attention modules)."""
    attns = [m for m in model.modules() if hasattr(m, "fused_attn") and hasattr(m, "qkv")]
    return sum(bool(m.fused_attn) for m in attns), len(attns)


# ------------------------------------------------------------------------------ sections


def section_fp32(args: argparse.Namespace, device: torch.device) -> None:
    from locloc.models.backbone import patch_map

    model = reference_model(backbone=args.backbone).to(device)
    deit = plain_vit(args.backbone).to(device)
    short = "DeiT-S" if args.backbone == "deit_small_patch16_224" else args.backbone
    x1 = torch.randn(1, 3, 224, 224, device=device)
    f_pipe = count_flops(lambda: model(x1))
    f_deit = count_flops(lambda: deit(x1))
    with torch.inference_mode():
        out = model.backbone(x1)
        feat = patch_map(out.patch_tokens, model.backbone.grid_size)
    parts = {
        "backbone": count_flops(lambda: model.backbone(x1)),
        "classifier": count_flops(lambda: model.classifier(out.tokens)),
        "generator": count_flops(lambda: model.generator(feat)),
    }
    ratio = f_pipe / f_deit
    print(f"FLOPs per 224x224 image: pipeline {f_pipe / 1e9:.2f} G = "
          + " + ".join(f"{k} {v / 1e9:.2f}" for k, v in parts.items())
          + f"; plain timm {short} {f_deit / 1e9:.2f} G; ratio {ratio:.3f}")
    fused, total = fused_attention(model)
    print(f"fused attention (SDPA): {fused}/{total} attention modules; "
          f"host round trips in one forward: {host_round_trips(model, x1)}; inference_mode: yes")
    print(f"{'batch':>5}  {'plain img/s':>12}  {'floor img/s':>11}  {'pipeline img/s':>14}  {'of floor':>8}")
    results = {}
    for b in args.batches:
        x = torch.randn(b, 3, 224, 224, device=device)
        t = best_times({"deit": _runner(deit, x), "pipe": _runner(model, x)}, args.repeats)
        floor_t = ratio * t["deit"]
        frac = floor_t / t["pipe"]
        results[b] = frac
        print(f"{b:5d}  {b / t['deit']:12.2f}  {b / floor_t:11.2f}  {b / t['pipe']:14.2f}  {frac:8.2f}")
    b = max(args.batches)
    x = torch.randn(b, 3, 224, 224, device=device)
    with torch.inference_mode():
        bo = model.backbone(x)
        fm = patch_map(bo.patch_tokens, model.backbone.grid_size)

    def part(fn: Callable[[], object]) -> Callable[[], object]:
        def run() -> object:
            with torch.inference_mode():
                r = fn()
            _sync(device)
            return r
        return run

    tp = best_times({
        "backbone": part(lambda: model.backbone(x)),
        "classifier": part(lambda: model.classifier(bo.tokens)),
        "generator": part(lambda: model.generator(fm)),
    }, args.repeats)
    total = sum(tp.values())
    print(f"where the time goes at batch {b} (parts timed alone, sum {total:.2f} s): "
          + ", ".join(f"{k} {v:.2f} s ({100 * v / total:.0f}%, {parts[k] * b / v / 1e9:.0f} GFLOP/s)"
                      for k, v in tp.items()))
    verdict = "meets" if results[b] >= TARGET_FLOOR else "BELOW"
    print(f"target >= {TARGET_FLOOR:.2f} of floor at batch {b}: {verdict} ({results[b]:.2f})")
    if args.profile or results[b] < TARGET_FLOOR:
        print(profile_table(model, x))


def section_modes(args: argparse.Namespace, device: torch.device) -> None:
    from locloc.models.generator import LightGenerator, UNetGenerator

    b = max(args.batches)
    model = reference_model(backbone=args.backbone).to(device)
    light = reference_model("light", args.backbone).to(device)
    x = torch.randn(b, 3, 224, 224, device=device)
    bf16 = torch.bfloat16
    fns = {
        "fp32 full": _runner(model, x),
        "bf16 full": _runner(model, x, bf16),
        "fp32 boxes-only": _runner(model, x, boxes_only=True),
        "bf16 boxes-only": _runner(model, x, bf16, boxes_only=True),
        "fp32 light generator": _runner(light, x),
        "bf16 light + boxes-only": _runner(light, x, bf16, boxes_only=True),
    }
    x1 = x[:1]
    flops = {
        "fp32 full": count_flops(lambda: model(x1)),
        "fp32 boxes-only": count_flops(lambda: model(x1, boxes_only=True)),
        "fp32 light generator": count_flops(lambda: light(x1)),
        "bf16 light + boxes-only": count_flops(lambda: light(x1, boxes_only=True)),
    }
    flops["bf16 full"], flops["bf16 boxes-only"] = flops["fp32 full"], flops["fp32 boxes-only"]
    t = best_times(fns, args.repeats)
    base = t["fp32 full"]
    print(f"fast modes, reference-size model, batch {b}, best of {args.repeats} (interleaved):")
    print(f"{'mode':<24} {'GFLOP/img':>9} {'img/s':>7} {'speed-up':>8}")
    for k, v in t.items():
        print(f"{k:<24} {flops[k] / 1e9:9.2f} {b / v:7.2f} {base / v:7.2f}x")
    sp = base / t["bf16 full"]
    print(f"target bf16 >= {TARGET_BF16}x fp32: {'meets' if sp >= TARGET_BF16 else 'BELOW'} ({sp:.2f}x)")
    # the generator heads alone, on backbone features
    feat = torch.randn(b, 384, 14, 14, device=device)
    gens = {"unet": UNetGenerator(384).eval().to(device), "light": LightGenerator(384).eval().to(device)}
    gf = {k: count_flops(lambda g=g: g(feat[:1])) for k, g in gens.items()}
    gp = {k: sum(p.numel() for p in g.parameters()) for k, g in gens.items()}

    def grun(g: nn.Module) -> Callable[[], object]:
        def run() -> object:
            with torch.inference_mode():
                r = g(feat)
            _sync(device)
            return r
        return run

    gt = best_times({k: grun(g) for k, g in gens.items()}, args.repeats + 2)
    for k in gens:
        print(f"generator {k:<5}: {gf[k] / 1e9:6.3f} GFLOP/img, {gp[k] / 1e6:5.2f} M params, "
              f"{gt[k] / b * 1e3:7.2f} ms/img at batch {b}")
    fr, tr = gf["unet"] / gf["light"], gt["unet"] / gt["light"]
    print(f"light generator vs UNet: {fr:.1f}x fewer FLOPs, {tr:.1f}x faster; target >= {TARGET_LIGHT}x: "
          f"{'meets' if min(fr, tr) >= TARGET_LIGHT else 'BELOW'}")


def _evaluate(model, samples, transform, thresholds, **kw) -> dict:
    from locloc.engine.evaluate import evaluate_samples as evaluate

    return evaluate(model, samples, transform=transform, thresholds=thresholds, batch_size=32,
                    workers=0, progress=False, **kw).metrics


def _transform(cfg: dict):
    """The evaluation transform of a model directory's config."""
    from locloc.data.transforms import eval_transform_for

    return eval_transform_for(cfg)


def section_accuracy(args: argparse.Namespace, device: torch.device) -> None:
    from locloc.data import load_dataset
    from locloc.models.model_dir import load_model_dir

    demo = Path(args.demo)
    model_dir = demo / "classifier" / "model"
    if not (model_dir / "config.json").exists():
        print(f"accuracy: no demo model at {model_dir} (run `locloc demo --out {demo}` first); skipped")
        return
    model, cfg = load_model_dir(model_dir, device=device)
    tf = _transform(cfg)
    th = [i / 100 for i in range(5, 100, 5)]
    samples = load_dataset(demo / "data").split("test")
    rows = {}
    for name, kw in (("fp32", {}), ("bf16", {"amp_dtype": torch.bfloat16}),
                     ("fp32 boxes-only", {"boxes_only": True}),
                     ("bf16 boxes-only", {"amp_dtype": torch.bfloat16, "boxes_only": True})):
        rows[name] = _evaluate(model, samples, tf, th, device=device, **kw)
    print(f"demo model {model_dir} on {len(samples)} test images (thresholds 0.05..0.95):")
    print(f"{'mode':<16} {'GT-known':>8} {'Top-1 Loc':>9} {'Top-1 Cls':>9} {'MaxBoxAccV2':>11} {'img/s':>6}")
    for k, m in rows.items():
        def f(v):
            return f"{v:.2f}" if v is not None else "-"
        print(f"{k:<16} {m['best']['gt_known_loc']:8.2f} {f(m['best']['top1_loc']):>9} {f(m['top1_cls']):>9} "
              f"{m['maxboxacc_v2']:11.2f} {m['images_per_second']:6.1f}")
    d = rows["bf16"]["best"]["gt_known_loc"] - rows["fp32"]["best"]["gt_known_loc"]
    print(f"bf16 GT-known Loc change {d:+.2f} points; target within 0.5: {'meets' if abs(d) <= 0.5 else 'MISSED'}")
    same = rows["fp32 boxes-only"]["per_threshold"] == [
        {**r, "top1_loc": None, "top5_loc": None} for r in rows["fp32"]["per_threshold"]]
    print(f"boxes-only GT-known Loc identical to the full pipeline at every threshold: {same}")


def section_generators(args: argparse.Namespace, device: torch.device) -> None:
    """Train a UNet and a light generator with one recipe on the demo masks; compare."""
    from locloc.data import load_dataset
    from locloc.engine.config import GeneratorTrainConfig
    from locloc.engine.train_generator import train_generator
    from locloc.models.model_dir import load_model_dir

    demo = Path(args.demo)
    if not (demo / "masks").is_dir() or not (demo / "backbone" / "backbone.safetensors").exists():
        print(f"generators: no demo masks/backbone under {demo} (run `locloc demo --out {demo}` first); skipped")
        return
    samples = load_dataset(demo / "data").split("test")
    th = [i / 100 for i in range(5, 100, 5)]
    res = {}
    with tempfile.TemporaryDirectory(prefix="bench_gen_") as tmp:
        for kind in ("unet", "light"):
            cfg = GeneratorTrainConfig(
                data_path=str(demo / "data"), backbone="locloc_vit_tiny_cs8",
                weights=str(demo / "backbone" / "backbone.safetensors"), masks=str(demo / "masks"),
                generator=kind, epochs=args.epochs, lr=1e-3, batch_size=32, cache_views=2,
                val_split="heldout", heldout_per_class=5, workers=0, device=str(device),
                out=str(Path(tmp) / kind), steps_per_epoch=args.steps,
            )
            t0 = time.perf_counter()
            summary = train_generator(cfg, log=lambda s: None, progress=False)
            train_s = time.perf_counter() - t0
            gmodel, gcfg = load_model_dir(summary["model_dir"], device=device)
            tf = _transform(gcfg)
            m = _evaluate(gmodel, samples, tf, th, device=device)
            fl = count_flops(lambda g=gmodel: g.generator(torch.randn(1, g.backbone.embed_dim,
                                                                     *g.backbone.grid_size, device=device)))
            res[kind] = (m, train_s, fl)
    steps = f", at most {args.steps} steps/epoch" if args.steps else ""
    print(f"generators trained {args.epochs} epochs{steps} (lr 1e-3, batch 32, cache_views 2) on the demo masks, "
          f"evaluated on {len(samples)} test images:")
    for kind, (m, s, fl) in res.items():
        print(f"  {kind:<5}: GT-known Loc {m['best']['gt_known_loc']:6.2f} (t={m['best']['threshold']:.2f}), "
              f"MaxBoxAccV2 {m['maxboxacc_v2']:6.2f}, {fl / 1e9:.3f} GFLOP/img on the demo grid, "
              f"trained in {s:.0f} s")
    d = res["light"][0]["best"]["gt_known_loc"] - res["unet"][0]["best"]["gt_known_loc"]
    print(f"light - UNet GT-known Loc: {d:+.2f} points; target loss <= 1: {'meets' if d >= -1 else 'MISSED'}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fp32", action="store_true", help="pipeline vs FLOP-scaled DeiT-S floor")
    p.add_argument("--modes", action="store_true", help="bf16 / boxes-only / light generator speed")
    p.add_argument("--accuracy", action="store_true", help="fast-mode accuracy on the demo model")
    p.add_argument("--generators", action="store_true", help="UNet vs light generator, trained on the demo")
    p.add_argument("--steps", type=int, default=None, help="cap on generator steps per epoch")
    p.add_argument("--quick", action="store_true", help="fewer repeats and epochs")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    p.add_argument("--repeats", type=int, default=None, help="best of N (default 3, --quick 2)")
    p.add_argument("--epochs", type=int, default=None, help="generator epochs (default 8, --quick 2)")
    p.add_argument("--demo", default="/tmp/dd", help="a `locloc demo` output directory")
    p.add_argument("--device", default="cpu")
    p.add_argument("--backbone", default="deit_small_patch16_224", choices=("deit_small_patch16_224",
                   "vit_small_patch14_dinov2"), help="backbone architecture of --fp32 / --modes (random weights)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--profile", action="store_true", help="print the torch.profiler op table")
    args = p.parse_args()
    args.repeats = args.repeats or (2 if args.quick else 3)
    args.epochs = args.epochs or (2 if args.quick else 8)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"--device {args.device}: CUDA is not available on this machine (torch {torch.__version__}); "
              "run with --device cpu", file=sys.stderr)
        return 2
    if not (args.fp32 or args.modes or args.accuracy or args.generators):
        args.fp32 = args.modes = args.accuracy = args.generators = True
    cpu = torch.backends.cpu.get_cpu_capability() if device.type == "cpu" else torch.cuda.get_device_name(device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {device} ({cpu}); "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (other work slows wall times)")
    t0 = time.perf_counter()
    if args.fp32:
        section_fp32(args, device)
    if args.modes:
        section_modes(args, device)
    if args.accuracy:
        section_accuracy(args, device)
    if args.generators:
        section_generators(args, device)
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
