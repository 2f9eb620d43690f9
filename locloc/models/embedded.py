"""The embedded default's backbone: a small ViT pretrained once on the synthetic corpus and
shipped inside the package (``locloc/assets``), found with :mod:`importlib.resources`.

It was trained by ``scripts/pretrain_embedded_backbone.py`` on ``locloc.data.corpus``, whose
classes are disjoint from every class ``make-synthetic`` produces, on class labels only; the
card (``backbone_tiny_cs8.json``) records the recipe, the held-out accuracy and the file's
SHA-256.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import CheckpointError

EMBEDDED_BACKBONE = "locloc_vit_tiny_cs8"
EMBEDDED_FILE = "backbone_tiny_cs8.safetensors"
EMBEDDED_CARD = "backbone_tiny_cs8.json"

__all__ = ["EMBEDDED_BACKBONE", "embedded_card", "embedded_weights", "file_sha256"]


def embedded_weights() -> Path:
    """Path of the shipped backbone weights (timm keys of ``locloc_vit_tiny_cs8``, no head)."""
    path = Path(str(resources.files("locloc.assets") / EMBEDDED_FILE))
    if not path.is_file():
        raise CheckpointError(
            f"{path}: the embedded backbone is missing from this installation; reinstall locloc "
            "(pip install --force-reinstall locloc) or pass --pretrain-backbone"
        )
    return path


def embedded_card() -> dict[str, Any]:
    """The shipped backbone's card: corpus, recipe, held-out accuracy, SHA-256."""
    return json.loads((resources.files("locloc.assets") / EMBEDDED_CARD).read_text())


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
