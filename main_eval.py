#!/usr/bin/env python3
"""Compatibility shim for the reference release's evaluation command.

    python3 main_eval.py --eval --model deit_small_lctr --data-set CUB \
        --data-path /path/CUB_200_2011/images --resume deit_small_patch16_224.pth \
        --classifier CUB_cls.pth --locator CUB_loc.pth

runs ``locloc evaluate`` with the same flags (the metadata files are found beside
``images/``). Every other ``locloc evaluate`` option may be added.
"""

import sys

from locloc.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
