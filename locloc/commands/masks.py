"""``locloc masks``: stage 1, GrabCut-enhanced masks for a data set split."""

from __future__ import annotations

import argparse
import json

NAME = "masks"
HELP = "stage 1: make GrabCut-enhanced masks from the frozen backbone's attention"
DESCRIPTION = (
    "Stage 1 of LocLoc. For each image: CLS->patch attention of the frozen backbone -> "
    "trimap -> cv2.grabCut -> a 0/255 PNG under --out mirroring the image tree. Resumable "
    "(existing masks are skipped), shardable (--shard i/n, or RANK/WORLD_SIZE under torchrun). "
    "--import-h5 instead converts a reference release .h5 mask file for the split."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-path", required=True, help="data set root (CUB layout, ILSVRC, ...)")
    p.add_argument("--split", default="train", help="split to process: train, test or all")
    p.add_argument("--out", required=True, help="mask store directory")
    p.add_argument("--backbone", default="deit_small_patch16_224", help="timm ViT name")
    p.add_argument("--backbone-kwargs", "--backbone-args", dest="backbone_args", default=None, metavar="JSON",
                   help='extra timm.create_model arguments, e.g. \'{"img_size": 64, "depth": 2}\'')
    p.add_argument("--weights", default=None, metavar="FILE|hf-hub:ORG/NAME",
                   help="backbone weights: a local file in any known layout, or an opt-in hub name "
                        "(required unless --import-h5)")
    p.add_argument("--attention-blocks", type=int, nargs="+", default=None, metavar="I",
                   help="blocks whose CLS attention seeds the trimap, averaged (negative: from the end; "
                        "default: the backbone family's, -1 or for DINOv2 -2 -1)")
    p.add_argument("--allow-random-backbone", action="store_true",
                   help="run without --weights (random backbone: meaningless masks; for tests)")
    p.add_argument("--workers", type=int, default=1, help="GrabCut processes (0: in the main process)")
    p.add_argument("--shard", default=None, metavar="I/N", help="process shard I of N (0-based)")
    p.add_argument("--batch-size", type=int, default=32, help="backbone batch size")
    p.add_argument("--iterations", type=int, default=2,
                   help="GrabCut iterations (2: as accurate as 5 on photos and synthetic shapes, 2-2.5x faster)")
    p.add_argument("--work-size", type=int, default=256,
                   help="GrabCut working resolution (longer side, px); 0 = full resolution")
    p.add_argument("--fg", type=float, default=None,
                   help="trimap sure-foreground cut, a fraction of the normalised attention (default: the "
                        "weights file's, else the backbone family's, else the library's 0.6)")
    p.add_argument("--bg", type=float, default=None, help="trimap sure-background cut (same defaults)")
    p.add_argument("--mid", type=float, default=None,
                   help="trimap probable-foreground cut between bg and fg (default: with --fg/--bg given, "
                        "bg + (fg - bg) / 20)")
    p.add_argument("--border", type=float, default=None, help="trimap border band, fraction of the shorter side")
    p.add_argument("--open", type=float, default=None, metavar="FRAC",
                   help="after GrabCut, a morphological opening with a kernel of FRAC x the shorter side "
                        "removes lines and thin clutter glued to the object (0: none; default: the weights "
                        "file's, else the backbone family's: 0.02 for DINOv2, else none)")
    p.add_argument("--class-seeds", action="store_true",
                   help="a second GrabCut round seeded by a linear probe of the patch tokens trained with the "
                        "training images' labels on the first round's masks (class-aware seeds; a departure from "
                        "the paper; round 1 stays under OUT/.round1, the probe in OUT/class_probe.safetensors)")
    p.add_argument("--probe-patches", type=int, default=32, metavar="N",
                   help="with --class-seeds: random patches per training image the probe is fitted on")
    p.add_argument("--probe-images", type=int, default=100, metavar="N",
                   help="with --class-seeds: training images per class (drawn with --seed) that round 1 cuts and "
                        "the probe learns from (0: all); round 2 covers every image")
    p.add_argument("--seed", type=int, default=0, help="cv2 RNG seed for GrabCut")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: CUDA when available)")
    p.add_argument("--report", action="store_true",
                   help="score the masks against GT boxes/masks (and raw attention); writes report.json")
    p.add_argument("--hdf5", default=None, metavar="FILE", help="also pack the split's masks into one HDF5 file")
    p.add_argument("--import-h5", default=None, metavar="FILE",
                   help="import a reference release .h5 mask file (masks in split order) instead of generating")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip (and count) unreadable images instead of stopping at the first one")


def config_from_args(args: argparse.Namespace):
    """The stage-1 config of the command line (flags over the library defaults)."""
    from ..engine.config import MaskConfig, load_config
    from ..errors import ConfigError

    kwargs = {}
    if args.backbone_args:
        try:
            kwargs = json.loads(args.backbone_args)
        except json.JSONDecodeError as e:
            raise ConfigError(f"--backbone-kwargs is not valid JSON ({e})") from None
        if not isinstance(kwargs, dict):
            raise ConfigError("--backbone-kwargs must be a JSON object")
    keys = ("data_path", "split", "out", "backbone", "weights", "attention_blocks", "allow_random_backbone",
            "workers", "shard", "batch_size", "iterations", "work_size", "fg", "bg", "mid", "border", "open", "class_seeds", "probe_patches", "probe_images", "seed",
            "device", "report", "hdf5", "import_h5", "skip_bad")
    values = {k: getattr(args, k) for k in keys}
    values["backbone_kwargs"] = kwargs
    return load_config(MaskConfig, None, values)


def run(args: argparse.Namespace) -> int:
    from ..masks.stage import generate_masks

    generate_masks(config_from_args(args), progress=not args.no_progress)
    return 0
