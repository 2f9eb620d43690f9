"""``locloc predict``: class and box for images, as JSON lines, CSV, COCO or YOLO labels,
with optional overlays and score maps."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

NAME = "predict"
HELP = "predict class and box for an image, a folder or a glob (JSON lines, CSV, COCO, YOLO)"
DESCRIPTION = (
    "Predict each image's class and box. --format coco/yolo writes pseudo-labels a detector can "
    "train on; with --labels-from-tree the box takes the image's known class (its folder name), "
    "the route from image-level labels to a detector. Boxes are x0 y0 x1 y1 in original-image "
    "pixels (COCO: x y w h; YOLO: normalized cx cy w h)."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..boxfiles import FORMATS

    p.add_argument("inputs", nargs="+", metavar="IMAGE|DIR|GLOB", help="images to predict")
    p.add_argument("--model-dir", required=True, help="a project model directory (locloc convert / train / demo)")
    p.add_argument("--format", choices=FORMATS, default="jsonl",
                   help="jsonl: one JSON object per image; csv: one row per image; coco: a COCO "
                   "annotation file (one box per image, with score); yolo: a folder of <image>.txt "
                   "label files (class cx cy w h, normalized) plus classes.txt")
    p.add_argument("--out", default="-",
                   help="output file ('-' = stdout; jsonl, csv, coco); for --format yolo a new or empty folder")
    p.add_argument("--labels-from-tree", action="store_true",
                   help="the images' true classes are their folder names (<class>/<image>, e.g. CUB's "
                   "images/ tree): boxes are labelled with the known class (matched to the model's "
                   "class names, ignoring a leading '001.')")
    p.add_argument("--root", default=None, metavar="DIR",
                   help="image ids (COCO file_name, CSV image_id, label and map names) are paths "
                   "relative to DIR (default: the images' deepest common folder)")
    p.add_argument("--save-vis", default=None, metavar="DIR", help="write heatmap+box overlays (PNG) here")
    p.add_argument("--save-maps", default=None, metavar="DIR",
                   help="write each localization map as DIR/<image id>.npy (H x W float32 in [0, 1] at "
                   "the original size; the layout wsolevaluation reads); a new or empty folder")
    p.add_argument("--threshold", type=float, default=None, help="box threshold (default: the model's)")
    p.add_argument("--view", choices=("full", "crop"), default="full",
                   help="full: the whole image resized to the input size; crop: eval transform (centre crop)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when present)")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (faster on recent CPUs/GPUs)")
    p.add_argument("--boxes-only", action="store_true",
                   help="skip the classifier (fast mode): boxes only, no class")


def _image_ids(paths: list[Path], root: str | None) -> list[str]:
    from ..boxfiles import image_ids_for
    from ..errors import ConfigError

    if root is None:
        return image_ids_for(paths)
    base = Path(root).expanduser().resolve()
    ids = []
    for p in paths:
        try:
            ids.append(Path(p).resolve().relative_to(base).as_posix())
        except ValueError:
            raise ConfigError(f"--root {root}: the image {p} is not inside it") from None
    return ids


def run(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    import numpy as np
    import torch

    from .. import boxfiles
    from ..api import LocLoc
    from ..data.folder import list_images
    from ..errors import ConfigError
    from ..fileio import atomic_dir, atomic_write, open_image
    from ..viz import overlay, save_png

    if args.threshold is not None and not 0.0 <= args.threshold < 1.0:
        raise ConfigError(f"--threshold must be in [0, 1), got {args.threshold}")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.format == "yolo" and args.out == "-":
        raise ConfigError("--format yolo writes a folder of label files: give it with --out DIR")
    # check every output location before any work, so a bad path costs nothing
    if args.out != "-":
        boxfiles.check_out_dir(args.out, "--out")
    if args.format == "yolo" or args.save_maps:
        for opt, d in (("--out", args.out if args.format == "yolo" else None), ("--save-maps", args.save_maps)):
            if d and Path(d).exists() and (not Path(d).is_dir() or any(Path(d).iterdir())):
                raise ConfigError(f"{opt} {d}: already exists and is not an empty folder; remove it or choose another")
    if args.save_maps:
        boxfiles.check_out_dir(args.save_maps, "--save-maps")
    paths: list[Path] = []
    skipped = 0
    for spec in args.inputs:
        found = list_images(spec)
        paths.extend(found.paths)
        skipped += found.skipped
    ids = _image_ids(paths, args.root)
    if len(set(ids)) != len(ids):  # rare: find the first repeat in one pass
        seen: set[str] = set()
        dup = next(i for i in ids if i in seen or seen.add(i))
        raise ConfigError(f"two inputs share the image id {dup!r}: pass each image once (or set --root)")
    model = LocLoc.from_pretrained(
        args.model_dir, device=args.device, view=args.view, threshold=args.threshold,
        amp_dtype=torch.bfloat16 if args.bf16 else None, boxes_only=args.boxes_only,
    )
    names = model.class_names
    labels = boxfiles.labels_from_tree(paths, names) if args.labels_from_tree else None
    vis_dir = Path(args.save_vis) if args.save_vis else None
    stream = args.format == "jsonl" and args.out == "-"
    empty = np.zeros((0, 0), np.float32)
    preds = []
    used: set[str] = set()
    with contextlib.ExitStack() as stack:
        maps_dir = stack.enter_context(atomic_dir(args.save_maps)) if args.save_maps else None
        for i, pred in enumerate(model.predict_many(paths, batch_size=args.batch_size)):
            if stream:
                d = pred.to_json()
                if labels is not None:
                    d["label"], d["label_name"] = labels[i], names[labels[i]]
                print(json.dumps(d), flush=True)
            if maps_dir is not None:
                target = maps_dir / (ids[i] + ".npy")
                target.parent.mkdir(parents=True, exist_ok=True)
                np.save(target, pred.heatmap.astype(np.float32))
            if vis_dir is not None:
                img = np.asarray(open_image(pred.path))
                cap = f"{pred.class_name} {pred.score:.2f}" if pred.class_name else None
                name = Path(pred.path).stem + ".png"
                k = 1
                while name in used:  # same file name in two folders: keep both overlays
                    k += 1
                    name = f"{Path(pred.path).stem}_{k}.png"
                used.add(name)
                save_png(vis_dir / name, overlay(img, pred.heatmap, [pred.box], label=cap))
            preds.append(dataclasses.replace(pred, heatmap=empty))  # keep memory flat in N
        if args.format == "yolo":
            with atomic_dir(args.out) as tmp:
                for i, pred in enumerate(preds):
                    target = tmp / (str(Path(ids[i]).with_suffix("")) + ".txt")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text(boxfiles.yolo_lines(pred, None if labels is None else labels[i]))
                (tmp / "classes.txt").write_text("".join(f"{n}\n" for n in names))
        elif not stream:
            if args.format == "jsonl":
                text = boxfiles.to_jsonl(preds, labels, names)
            elif args.format == "csv":
                text = boxfiles.to_csv(preds, labels, names, ids)
            else:
                text = json.dumps(boxfiles.to_coco(preds, names, ids, labels), indent=1) + "\n"
            if args.out == "-":
                sys.stdout.write(text)
            else:
                with atomic_write(args.out, "w") as f:
                    f.write(text)
    msg = f"predicted {len(preds)} image(s)"
    if skipped:
        msg += f"; skipped {skipped} non-image file(s)"
    if args.out != "-":
        msg += f"; wrote {args.out} ({args.format})"
    if args.save_maps:
        msg += f"; maps in {args.save_maps}"
    if vis_dir is not None:
        msg += f"; overlays in {vis_dir}"
    print(msg, file=sys.stderr)
    return 0
