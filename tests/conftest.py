"""Shared fixtures: tiny generated data sets and the checked-in reference files."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
GOLDEN = DATA / "golden"
REAL = DATA / "real"


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic CUB-layout data set: 4 classes, 6 train + 3 test per class, 96x96 px.

    Shared by the whole session: treat it as read-only.
    """
    from locloc.data.synthetic import make_synthetic

    return make_synthetic(
        tmp_path_factory.mktemp("synthetic") / "cub", classes=4, train=6, test=3, size=96, seed=0
    )


@pytest.fixture(scope="session")
def real_cub_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The official CUB-200-2011 annotation files (no images), gunzipped; read-only."""
    root = tmp_path_factory.mktemp("cub_real")
    for gz in sorted((REAL / "cub_metadata").glob("*.txt.gz")):
        with gzip.open(gz, "rb") as src, open(root / gz.name[:-3], "wb") as dst:
            shutil.copyfileobj(src, dst)
    return root


@pytest.fixture(scope="session")
def real_ilsvrc_list(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference's ILSVRC-2012 val list file (50,000 lines), gunzipped; read-only."""
    path = tmp_path_factory.mktemp("ilsvrc_real") / "val_list.txt"
    with gzip.open(REAL / "ilsvrc_val_list.txt.gz", "rb") as src, open(path, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return path


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    """``tests/data/golden``: the reference's cub_mini images and ``expected.npz``."""
    return GOLDEN


@pytest.fixture(scope="session")
def tiny_rgb_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random LocLoc model directory (2-block ViT at 64 px, classes red/green/blue);
    shared by the session: treat it as read-only."""
    import torch

    from locloc.models.backbone import build_backbone
    from locloc.models.classifier import LFDMClassifier
    from locloc.models.generator import LightGenerator
    from locloc.models.model_dir import save_model_dir
    from locloc.models.pipeline import LocLocModel

    torch.manual_seed(0)
    bb = build_backbone("vit_small_patch16_224", None, img_size=64, patch_size=16, depth=2, embed_dim=48, num_heads=3)
    cls = LFDMClassifier(3, embed_dim=48, depth=1, num_heads=3, grid_size=bb.grid_size)
    d = tmp_path_factory.mktemp("rgb_model")
    save_model_dir(d, LocLocModel(bb, cls, LightGenerator(in_channels=48)).eval(), {"class_names": ["red", "green", "blue"]})
    return d
