"""``locloc demo``: the whole method on the embedded synthetic default, on a CPU."""

from __future__ import annotations

import argparse

NAME = "demo"
HELP = "run the whole method on generated data and write a report (CPU, minutes)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="locloc-demo", help="output directory")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--quick", action="store_true", help="a smaller run for smoke tests")
    p.add_argument("--data-path", default=None, help="a CUB-layout data set to use instead")


def run(args: argparse.Namespace) -> int:
    from ..errors import LocLocError

    raise LocLocError("the demo is not yet available in this version")
