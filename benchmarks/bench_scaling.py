"""Per-image cost of each stage at the reference's size, measured here, and the projection
to CUB and ILSVRC on this machine (written up in ``docs/SCALING.md``).

Random weights, DeiT-S/16 at 224 px (the reference's backbone), the reference's UNet
generator and a 12-block LFDM classifier, CPU fp32, batch ``--batch``, best of ``--rounds``:

- stage 1: backbone + CLS attention (per image) and one GrabCut at the default working size
  (256 px, 5 iterations) on a real photo (scikit-image's ``astronaut``; needs scikit-image);
- stage 2: one generator training step (frozen backbone forward + UNet forward/backward + AdamW);
- stage 3: one classifier training step (frozen embedding + classifier forward/backward + AdamW);
- stage 4: one evaluation forward (backbone + classifier + generator) at 224 px.

The projection multiplies these by the data set sizes and epochs of the reference recipe
(CUB 5,994 train / 5,794 test, generator 20 and classifier 100 epochs; ILSVRC 1,281,167 /
50,000, 20 and 20) for this machine's cores; the box sweep of evaluation is left out (see
``bench_contours.py``).

Usage: ``python benchmarks/bench_scaling.py [--batch 16] [--rounds 2]``
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

DATA = {"CUB": (5994, 5794, 20, 100), "ILSVRC": (1281167, 50000, 20, 20)}


def best_of(fn, rounds: int) -> float:
    fn()  # warm-up
    t = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        t = min(t, time.perf_counter() - t0)
    return t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--bf16", action="store_true",
                   help="also time the two training steps under CPU bf16 autocast (amp: bf16) and print the ratio")
    a = p.parse_args()

    from locloc.engine.train_classifier import build_classifier
    from locloc.masks.grabcut import GrabCutMasker, trimap_for
    from locloc.masks.runner import attention_grids
    from locloc.models.backbone import build_backbone, patch_map
    from locloc.models.generator import build_generator

    torch.manual_seed(0)
    b = a.batch
    bb = build_backbone("deit_small_patch16_224", None).eval()
    gen = build_generator("unet", bb.embed_dim)
    clf = build_classifier(bb, 200)
    x = torch.randn(b, 3, 224, 224)
    target = torch.rand(b, 1, 112, 112)
    labels = torch.randint(0, 200, (b,))
    opt_g = torch.optim.AdamW(gen.parameters(), lr=1e-3)
    opt_c = torch.optim.AdamW(clf.parameters(), lr=1e-4)

    def gen_step() -> None:
        with torch.no_grad():
            feat = patch_map(bb(x).patch_tokens, bb.grid_size)
        out = gen(feat)
        loss = F.mse_loss(out, F.interpolate(target, size=out.shape[-2:]))
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        opt_g.step()

    def clf_step() -> None:
        with torch.no_grad():
            tok = bb.embed(x)
        loss = F.cross_entropy(clf(tok), labels)
        opt_c.zero_grad(set_to_none=True)
        loss.backward()
        opt_c.step()

    def eval_fwd() -> None:
        with torch.inference_mode():
            out = bb(x)
            clf(out.tokens)
            gen(patch_map(out.patch_tokens, bb.grid_size))

    per = {
        "stage 1 backbone+attention": best_of(lambda: attention_grids(bb, x), a.rounds) / b,
        "stage 2 generator step": best_of(gen_step, a.rounds) / b,
        "stage 3 classifier step": best_of(clf_step, a.rounds) / b,
        "stage 4 evaluation forward": best_of(eval_fwd, a.rounds) / b,
    }
    if a.bf16:
        for name, fn in (("stage 2 generator step", gen_step), ("stage 3 classifier step", clf_step)):
            def amp(fn=fn) -> None:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    fn()
            t = best_of(amp, a.rounds) / b
            print(f"  {name} under bf16 autocast: {1000 * t:.1f} ms/image ({per[name] / t:.2f}x fp32)")
    try:
        import skimage.data

        img = skimage.data.astronaut()
        att = attention_grids(bb, x[:1])[0]
        m = GrabCutMasker(trimap_for(bb), iterations=5, work_size=256)
        per["stage 1 GrabCut (256 px, 5 it)"] = best_of(lambda: m.generate(img, att), a.rounds)
    except ImportError:
        print("scikit-image missing: GrabCut not timed")
    cores = torch.get_num_threads()
    print(f"torch {torch.__version__}, {cores} threads, {os.cpu_count()} CPUs; load {os.getloadavg()[0]:.1f}; "
          f"DeiT-S/16 224 px, UNet generator, 12-block LFDM classifier, fp32, batch {b}")
    for k, v in per.items():
        print(f"  {k:32s} {1000 * v:8.1f} ms/image")
    gc = per.get("stage 1 GrabCut (256 px, 5 it)", 0.0)
    print(f"projection on this machine ({cores} threads; GrabCut on {os.cpu_count()} processes beside the backbone):")
    for name, (ntr, nte, eg, ec) in DATA.items():
        masks = ntr * (per["stage 1 backbone+attention"] + gc / max(1, os.cpu_count() or 1))
        gen_h = ntr * eg * per["stage 2 generator step"]
        cls_h = ntr * ec * per["stage 3 classifier step"]
        ev = nte * per["stage 4 evaluation forward"]
        h = [v / 3600 for v in (masks, gen_h, cls_h, ev)]
        print(f"  {name:6s} masks {h[0]:8.1f} h   generator x{eg} {h[1]:8.1f} h   classifier x{ec} {h[2]:8.1f} h   "
              f"evaluation {h[3]:6.2f} h   total {sum(h):8.1f} h")
    np.set_printoptions()


if __name__ == "__main__":
    main()
