"""Peak memory of ``locloc evaluate``, ``locloc masks`` and ``locloc predict`` (a folder, COCO
out, score maps) at N and 4N images: it should be flat.

Generates two synthetic CUB-layout sets (``make_synthetic``; N and 4N test images), saves a
small random-weight model directory (``locloc_vit_tiny_cs8`` backbone, 1-block classifier,
light generator), then runs each command in a fresh Python process and reads its peak
resident set size (``resource.getrusage``: ``RUSAGE_SELF`` for the command's process and
``RUSAGE_CHILDREN`` for the largest of its worker processes). Prints the peaks and the 4N/N
ratio per command.

    python benchmarks/bench_memory.py [--n 48] [--size 160] [--workers 0] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Runs in the child: the CLI, then one JSON line with the peaks (KiB on Linux).
CHILD = """
import json, resource, sys
from locloc.cli import main
rc = main(sys.argv[1:])
me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print("PEAK " + json.dumps({"rc": rc, "self_kib": me, "children_kib": kids}), flush=True)
"""


def make_model_dir(path: Path, classes: int) -> Path:
    """A small LocLoc model directory with random weights (speed/memory only)."""
    import torch

    from locloc.models.backbone import build_backbone
    from locloc.models.classifier import LFDMClassifier
    from locloc.models.generator import LightGenerator
    from locloc.models.model_dir import save_model_dir
    from locloc.models.pipeline import LocLocModel

    torch.manual_seed(0)
    bb = build_backbone("locloc_vit_tiny_cs8", None)
    cls = LFDMClassifier(classes, embed_dim=bb.embed_dim, depth=1, num_heads=bb.num_heads, grid_size=bb.grid_size)
    save_model_dir(path, LocLocModel(bb, cls, LightGenerator(bb.embed_dim)).eval())
    return path


def run_peak(argv: list[str]) -> tuple[dict, float]:
    """Run ``locloc ARGV`` in a fresh interpreter; (peaks dict, wall seconds)."""
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True)
    dt = time.perf_counter() - t0
    peak = [ln for ln in p.stdout.splitlines() if ln.startswith("PEAK ")]
    if p.returncode != 0 or not peak:
        raise SystemExit(f"locloc {' '.join(argv)} failed (exit {p.returncode}):\n{p.stderr[-2000:]}")
    return json.loads(peak[-1][5:]), dt


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=48, help="images in the small set (the large one has 4N)")
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--size", type=int, default=160, help="image side in pixels")
    p.add_argument("--workers", type=int, default=0, help="data-loading / GrabCut worker processes")
    p.add_argument("--keep", default=None, help="work directory to keep (default: a temporary one)")
    args = p.parse_args()

    from locloc.data.synthetic import make_synthetic

    with tempfile.TemporaryDirectory(prefix="bench_mem_") as tmp:
        root = Path(args.keep or tmp)
        model = make_model_dir(root / "model", args.classes)
        sizes = {"N": args.n, "4N": 4 * args.n}
        data = {}
        for tag, n in sizes.items():
            per = max(1, n // args.classes)
            data[tag] = make_synthetic(root / f"data_{tag}", classes=args.classes, train=1, test=per,
                                       size=args.size, seed=1, force=True, progress=False)
            sizes[tag] = per * args.classes
        print(f"images per set: N={sizes['N']}, 4N={sizes['4N']} ({args.size}x{args.size}); "
              f"workers {args.workers}; peak RSS in MiB (main process / largest worker)")
        results: dict[str, dict[str, dict]] = {"evaluate": {}, "masks": {}, "predict": {}}
        for tag in sizes:
            results["evaluate"][tag] = run_peak([
                "evaluate", "--data-path", str(data[tag]), "--model-dir", str(model), "--device", "cpu",
                "--workers", str(args.workers), "--batch-size", "16", "--out", str(root / f"eval_{tag}"),
            ])
            results["masks"][tag] = run_peak([
                "masks", "--data-path", str(data[tag]), "--split", "test", "--out", str(root / f"masks_{tag}"),
                "--backbone", "locloc_vit_tiny_cs8", "--allow-random-backbone", "--device", "cpu",
                "--workers", str(args.workers), "--batch-size", "16", "--no-progress",
            ])
            results["predict"][tag] = run_peak([
                "predict", str(Path(data[tag]) / "images"), "--model-dir", str(model), "--device", "cpu",
                "--batch-size", "16", "--format", "coco", "--out", str(root / f"pred_{tag}.json"),
                "--save-maps", str(root / f"maps_{tag}"),
            ])
        print(f"{'command':<9} {'N: main':>8} {'worker':>7} {'s':>5}   {'4N: main':>8} {'worker':>7} {'s':>5}   "
              f"{'4N/N main':>9}")
        for cmd, r in results.items():
            (a, ta), (b, tb) = r["N"], r["4N"]
            mib = [x / 1024 for x in (a["self_kib"], a["children_kib"], b["self_kib"], b["children_kib"])]
            print(f"{cmd:<9} {mib[0]:8.0f} {mib[1]:7.0f} {ta:5.1f}   {mib[2]:8.0f} {mib[3]:7.0f} {tb:5.1f}   "
                  f"{mib[2] / mib[0]:9.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
