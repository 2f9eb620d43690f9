"""``locloc make-synthetic``: write the procedurally generated CUB-layout data set."""

from __future__ import annotations

import argparse

NAME = "make-synthetic"
HELP = "generate a synthetic data set in the CUB-200-2011 layout (boxes and masks included)"
DESCRIPTION = (
    "Generate a synthetic WSOL data set in the CUB-200-2011 layout: classes differ by object "
    "shape and texture, objects of varied size and position on cluttered backgrounds, with GT "
    "boxes and masks. The same arguments always give the same files."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="output directory (must be empty or absent, unless --force)")
    p.add_argument("--classes", type=int, default=6, help="number of classes (1..30)")
    p.add_argument("--train", type=int, default=40, help="training images per class")
    p.add_argument("--test", type=int, default=20, help="test images per class")
    p.add_argument("--size", type=int, default=224, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--clutter", type=float, default=1.0,
                   help="background clutter: 0 = plain gradient, 1 = default, 2 = twice as busy")
    p.add_argument("--scale", type=float, nargs=2, default=(0.15, 0.60), metavar=("MIN", "MAX"),
                   help="object extent as a fraction of the image side")
    p.add_argument("--class-colours", action="store_true",
                   help="give each class a main colour hue of its own (easier classes)")
    p.add_argument("--force", action="store_true", help="replace an existing data set at OUT")


def run(args: argparse.Namespace) -> int:
    from ..data.synthetic import make_synthetic

    out = make_synthetic(
        args.out,
        classes=args.classes,
        train=args.train,
        test=args.test,
        size=args.size,
        seed=args.seed,
        clutter=args.clutter,
        scale=tuple(args.scale),
        class_colours=args.class_colours,
        force=args.force,
    )
    n_train, n_test = args.classes * args.train, args.classes * args.test
    print(
        f"wrote {n_train + n_test} images ({args.classes} classes; {n_train} train, "
        f"{n_test} test; {args.size}x{args.size}) with boxes and masks to {out}"
    )
    return 0
