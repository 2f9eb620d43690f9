"""What limits the demo's localization: the stage-1 masks, or the frozen backbone's features?

    python benchmarks/demo_ceiling.py --demo locloc-demo [--generator-kwargs '{"c_base": 16}']

Takes a finished ``locloc demo`` output directory and trains the GEG generator again with the
demo's own stage-2 config (same backbone, recipe, seed and held-out split), once for each mask
source, then evaluates it with the demo's classifier on the test split (box threshold chosen
on the held-out split, as the demo does):

- ``grabcut``: the demo's stage-1 masks (the generator the demo shipped, re-evaluated);
- ``gt``: the data set's ground-truth masks (``segmentations/``): an *oracle* no weakly
  supervised method may use. Its score is the ceiling of the generator on this backbone:
  better masks cannot lift the demo above it;
- ``round2`` (with ``--round2``): GrabCut run again, seeded by the demo generator's maps
  instead of the CLS attention (a self-training round), then a generator trained on those.

Prints mask-box accuracy of each source on the test split (box of the mask vs the GT box,
IoU >= 0.5) and the generator's GT-known / Top-1 Loc. Everything is written under
``DEMO/ceiling/``; a rerun reuses finished pieces. About 2 minutes per source on 2 cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from locloc.data import load_dataset
from locloc.data.records import heldout_split
from locloc.demo import evaluate_with_baselines
from locloc.engine.config import GeneratorTrainConfig
from locloc.engine.train_classifier import merge_model_dir
from locloc.engine.train_generator import train_generator
from locloc.fileio import open_image
from locloc.masks.grabcut import GrabCutMasker, TrimapConfig
from locloc.masks.quality import MaskQuality, read_gt_mask
from locloc.masks.store import MaskStore


def gt_store(samples: list, root: Path) -> MaskStore:
    """A mask store holding the data set's GT masks."""
    store = MaskStore(root)
    for s in samples:
        if not store.has(s.relpath):
            if s.mask_path is None:
                raise SystemExit(f"{s.path}: no GT mask (segmentations/); the oracle needs them")
            w, h = s.size or open_image(s.path).size  # the image is decoded only when no size is known
            store.write(s.relpath, read_gt_mask(s.mask_path, (h, w)))
    return store


def round2_store(samples: list, model_dir: Path, root: Path, trimap: TrimapConfig, seed: int) -> MaskStore:
    """GrabCut seeded by the generator's maps (``model_dir``) instead of the CLS attention."""
    from locloc.api import LocLoc

    store = MaskStore(root)
    todo = [s for s in samples if not store.has(s.relpath)]
    model = LocLoc.from_pretrained(model_dir, device="cpu", boxes_only=True)
    masker = GrabCutMasker(trimap=trimap, iterations=5, seed=seed)
    for i in range(0, len(todo), 64):
        batch = todo[i : i + 64]
        for s, p in zip(batch, model.predict_batch([s.path for s in batch])):
            grid = p.heatmap[::4, ::4].copy()  # the masker upsamples any grid to the image
            store.write(s.relpath, masker.generate(np.asarray(open_image(s.path)), grid))
    return store


def mask_box_accuracy(samples: list, store: MaskStore) -> float:
    q = MaskQuality()
    for s in samples:
        q.update(store.read(s.relpath), s.boxes, None)
    return 100.0 * float(q.compute()["box_acc_50"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", required=True, help="a finished `locloc demo --out` directory")
    ap.add_argument("--generator-kwargs", default=None, help="JSON: another generator size, e.g. '{\"c_base\": 16}'")
    ap.add_argument("--round2", action="store_true", help="also a self-training round (GrabCut seeded by the generator)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    demo = Path(args.demo)
    metrics = json.loads((demo / "metrics.json").read_text())
    gcfg = json.loads((demo / "generator" / "config.json").read_text())
    # The demo recorded its paths as given (often relative to where it ran): rebase the ones
    # inside its output directory onto --demo, so this runs from any working directory.
    recorded = Path(gcfg["out"]).parent
    for key in ("data_path", "weights", "masks"):
        p = Path(gcfg[key])
        if p.is_relative_to(recorded):
            gcfg[key] = str(demo / p.relative_to(recorded))
        if not Path(gcfg[key]).exists():
            raise SystemExit(f"{demo}: its generator config names {key} {gcfg[key]}, which does not exist")
    base = GeneratorTrainConfig(**gcfg)
    if args.generator_kwargs:
        base = dataclasses.replace(base, generator_kwargs=json.loads(args.generator_kwargs))
    data = load_dataset(base.data_path)
    train_all, test = data.split("train"), data.split("test")
    _, heldout = heldout_split(train_all, base.heldout_per_class, base.seed)
    out = demo / "ceiling"
    rows = []
    sources = ["grabcut", "gt"] + (["round2"] if args.round2 else [])
    for src in sources:
        t0 = time.perf_counter()
        tag = src + ("_" + "_".join(f"{k}{v}" for k, v in base.generator_kwargs.items()) if base.generator_kwargs else "")
        if src == "grabcut":
            store = MaskStore(base.masks)
        elif src == "gt":
            store = gt_store(list(train_all) + list(test), out / "masks_gt")
        else:
            trimap = TrimapConfig(fg_frac=0.8, bg_frac=0.1, mid_frac=0.3)  # generator maps are smooth
            store = round2_store(list(train_all) + list(test), demo / "generator" / "model", out / "masks_round2",
                                 trimap, base.seed)
        if src == "grabcut" and not args.generator_kwargs:
            gen_dir = demo / "generator"
        else:
            gen_dir = out / f"generator_{tag}"
            cfg = dataclasses.replace(base, masks=str(store.root), out=str(gen_dir))
            train_generator(cfg, resume="auto", log=lambda m: None, progress=False)
        model_dir = merge_model_dir(gen_dir / "model", demo / "classifier", out / f"model_{tag}")
        res = evaluate_with_baselines(model_dir, heldout, test, store, metrics["thresholds"], progress=False)
        b = res["metrics"]["best"]
        rows.append((tag, mask_box_accuracy(test, store), b["gt_known_loc"], b["top1_loc"],
                     res["metrics"]["test_sweep_best_optimistic"]["gt_known_loc"], time.perf_counter() - t0))
        print(f"{tag}: done in {rows[-1][-1]:.0f} s", flush=True)
    print(f"\n{'masks':<28}{'mask box acc':>13}{'GT-known':>10}{'Top-1 Loc':>10}{'sweep best':>11}")
    for tag, mb, gk, t1, sb, _ in rows:
        print(f"{tag:<28}{mb:>13.2f}{gk:>10.2f}{t1:>10.2f}{sb:>11.2f}")
    print(f"(test split, {len(test)} images; GT-known/Top-1 Loc at the threshold chosen on {len(heldout)} "
          "held-out images; 'gt' is an oracle, not a method)")


if __name__ == "__main__":
    main()
