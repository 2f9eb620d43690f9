"""``locloc masks``: stage 1, GrabCut-enhanced masks for a data set split."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

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
    p.add_argument("--iterations", type=int, default=5, help="GrabCut iterations")
    p.add_argument("--work-size", type=int, default=256,
                   help="GrabCut working resolution (longer side, px); 0 = full resolution")
    p.add_argument("--fg", type=float, default=None,
                   help="trimap sure-foreground cut (default: the weights file's, else the library's)")
    p.add_argument("--bg", type=float, default=None, help="trimap sure-background cut (library default)")
    p.add_argument("--border", type=float, default=None, help="trimap border band, fraction of the shorter side")
    p.add_argument("--seed", type=int, default=0, help="cv2 RNG seed for GrabCut")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--report", action="store_true",
                   help="score the masks against GT boxes/masks (and raw attention); writes report.json")
    p.add_argument("--hdf5", default=None, metavar="FILE", help="also pack the split's masks into one HDF5 file")
    p.add_argument("--import-h5", default=None, metavar="FILE",
                   help="import a reference release .h5 mask file (masks in split order) instead of generating")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip (and count) unreadable images instead of stopping at the first one")


def _splits(dataset, split: str) -> list[tuple[str, list]]:
    if split == "all":
        return list(dataset.splits.items())
    return [(split, dataset.split(split))]


def _backbone(args: argparse.Namespace):
    from ..errors import ConfigError, DataError
    from ..models.backbone import build_backbone

    kwargs = {}
    if args.backbone_args:
        try:
            kwargs = json.loads(args.backbone_args)
        except json.JSONDecodeError as e:
            raise ConfigError(f"--backbone-kwargs is not valid JSON ({e})") from None
        if not isinstance(kwargs, dict):
            raise ConfigError("--backbone-kwargs must be a JSON object")
    if args.weights is None:
        if not args.allow_random_backbone:
            raise ConfigError(
                "--weights FILE is required: masks from a random backbone are meaningless "
                "(pass --allow-random-backbone to do it anyway, e.g. in tests)"
            )
    else:
        from ..models.hub import is_hub_name

        if not is_hub_name(args.weights) and not Path(args.weights).is_file():
            raise DataError(f"{args.weights}: backbone weights file not found")
    backbone = build_backbone(args.backbone, args.weights, **kwargs)
    if args.attention_blocks:
        backbone.attention_blocks = tuple(args.attention_blocks)
        backbone.attention_block_ids()  # validate against the depth now, not mid-run
    return backbone


def run(args: argparse.Namespace) -> int:
    from ..data import load_dataset
    from ..data.datasets import skipped_message
    from ..errors import ConfigError
    from ..masks.grabcut import GrabCutMasker, trimap_for
    from ..masks.quality import format_report, quality_report, write_report
    from ..masks.runner import generate_masks, parse_shard, resolve_shard
    from ..masks.store import MaskStore, import_reference_h5, pack_hdf5

    if args.workers < 0 or args.batch_size < 1:
        raise ConfigError("--workers must be >= 0 and --batch-size >= 1")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ConfigError(f"{args.out}: --out must be a mask store directory, found a file")
    shard = parse_shard(args.shard) if args.shard is not None else None
    dataset = load_dataset(args.data_path)
    splits = _splits(dataset, args.split)
    store = MaskStore(args.out)
    out = Path(args.out)
    unreadable: list[str] = []

    if args.import_h5:
        if len(splits) != 1:
            raise ConfigError("--import-h5 reads one split's file: give --split train or --split test")
        n = import_reference_h5(args.import_h5, splits[0][1], store)
        print(f"imported {n} masks from {args.import_h5} into {out}")
    else:
        import os

        from ..engine.distributed import select_device

        device = select_device(args.device, int(os.environ.get("LOCAL_RANK", "0")))
        backbone = _backbone(args).to(device)
        masker = GrabCutMasker(
            trimap_for(backbone, fg_frac=args.fg, bg_frac=args.bg, border_frac=args.border),
            iterations=args.iterations,
            work_size=args.work_size or None,
            seed=args.seed,
        )
        summary = {"masker": masker.config(), "attention_blocks": list(backbone.attention_blocks), "splits": {}}
        for name, samples in splits:
            stats = generate_masks(
                samples, backbone, store, masker, batch_size=args.batch_size, workers=args.workers,
                shard=shard, device=device, progress=not args.no_progress, skip_bad=args.skip_bad,
            )
            unreadable += stats.unreadable
            summary["splits"][name] = stats.to_dict()
            fb = sum(stats.fallbacks.values())
            print(
                f"{name}: shard {stats.shard[0]}/{stats.shard[1]}: {stats.done} written, {stats.skipped} "
                f"already there, {fb} fallbacks, {stats.images_per_s:.2f} images/s",
                file=sys.stderr,
            )
        i, n = resolve_shard(shard)
        from ..fileio import write_json

        write_json(out / (f"run_stats.shard{i}of{n}.json" if n > 1 else "run_stats.json"), summary)
        if unreadable:
            # the report and the HDF5 pack cover the images that have a mask
            splits = [(name, [s for s in ss if store.has(s.relpath)]) for name, ss in splits]

    if args.report:
        backbone = None if args.import_h5 else backbone
        report = {"splits": {}}
        for name, samples in splits:
            report["splits"][name] = quality_report(
                samples, store, backbone=backbone,
                attention_threshold=0.5, batch_size=args.batch_size,
                device=None if backbone is None else device,
            )
            print(f"[{name}]\n{format_report(report['splits'][name])}")
        write_report(out / "report.json", report)

    if args.hdf5:
        samples = [s for _, ss in splits for s in ss]
        pack_hdf5(store, samples, args.hdf5)
        print(f"packed {len(samples)} masks into {args.hdf5}")
    if unreadable:
        print(skipped_message(unreadable), file=sys.stderr)
    return 0
