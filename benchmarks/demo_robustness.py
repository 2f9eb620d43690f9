"""The demo's recipe on the shipped backbone across data it was not tuned on.

    python benchmarks/demo_robustness.py --out /tmp/robust [--runs seed0 seed1 other foreign quick]

Runs ``run_demo`` (the embedded backbone, frozen; no pre-training) on
- ``seed0``: the default demo;
- ``seed1``: the demo's generator with another seed;
- ``other``: ``make-synthetic`` with other settings (twice the clutter, smaller objects:
  ``--clutter 1.0 --scale 0.15 0.5``);
- ``foreign``: ``tests/foreign_set.py``, a generator that shares no code with
  ``make-synthetic`` (8 outline x fill classes, Pillow-drawn, mixed sizes, PNG + JPEG),
  through ``--data-path`` as a user's own data set would go;
- ``quick``: ``locloc demo --quick`` (4 classes, 112 px, the CI smoke test), beside the others;
and prints one row each: GT-known, Top-1 Loc, Top-1 Cls, MaxBoxAccV2 (test split, threshold
chosen on the held-out split), beside the GrabCut-direct and raw-attention baselines, and the
wall time. Each run resumes if its directory already holds finished stages. ``--class-seeds``
runs stage 1 with class-aware seeds (``locloc/masks/refine.py``).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from foreign_set import write_foreign_set  # noqa: E402

from locloc.demo import DemoRecipe, run_demo  # noqa: E402

RUNS = ("seed0", "seed1", "other", "foreign", "quick")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--runs", nargs="+", choices=RUNS, default=list(RUNS[:4]))
    ap.add_argument("--class-seeds", action="store_true",
                    help="stage 1 with class-aware seeds (the demo's default only for a backbone given with weights)")
    args = ap.parse_args()
    out = Path(args.out)
    rows = []
    for name in args.runs:
        recipe, seed, data = DemoRecipe(), 0, None
        if name == "seed1":
            seed = 1
        elif name == "quick":
            recipe = DemoRecipe.quick()
        elif name == "other":
            recipe = replace(recipe, clutter=1.0, scale=(0.15, 0.5))
        elif name == "foreign":
            data = out / "foreign_data"
            if not (data / "images.txt").exists():
                write_foreign_set(data, train=60, test=20, seed=0)
            recipe = replace(recipe, heldout_per_class=15)
        if args.class_seeds:
            recipe = replace(recipe, class_seeds=True)
        t0 = time.perf_counter()
        m = run_demo(out / name, seed=seed, data_path=data, recipe=recipe, device="cpu", progress=False)
        rows.append((name, m, time.perf_counter() - t0))
    print(f"\n{'run':8} {'GT-known':>8} {'Top-1 Loc':>9} {'Top-1 Cls':>9} {'MaxBoxAccV2':>11} "
          f"{'GrabCut':>8} {'raw att.':>8} {'centre':>7} {'s':>6}")
    for name, m, secs in rows:
        b = m["baselines"]
        print(f"{name:8} {m['best']['gt_known_loc']:8.2f} {m['best']['top1_loc']:9.2f} {m['top1_cls']:9.2f} "
              f"{m['maxboxacc_v2']:11.2f} {b['grabcut_masks']['gt_known_loc']:8.2f} "
              f"{b['raw_attention']['gt_known_loc']:8.2f} {b['centre_box']['gt_known_loc']:7.2f} {secs:6.0f}")


if __name__ == "__main__":
    main()
