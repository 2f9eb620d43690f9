"""wsolevaluation's metadata layout as a data set, and ``locloc evaluate --threshold-split``."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from locloc.cli import main
from locloc.data import load_dataset
from locloc.data.wsolmeta import load_wsol_metadata, write_wsol_metadata
from locloc.errors import DataError

FIXTURE = Path(__file__).parent / "data" / "real" / "wsol_metadata" / "CUB"
# three lines of clovaai/wsolevaluation's own metadata/CUB/test/localization.txt
UPSTREAM = {
    "001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg": [60, 27, 385, 331],
    "001.Black_footed_Albatross/Black_Footed_Albatross_0002_55.jpg": [14, 112, 402, 298],
    "003.Sooty_Albatross/Sooty_Albatross_0042_1210.jpg": [0, 67, 212, 230],
}


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """A wsolevaluation-like checkout: metadata/CUB/<split>/*.txt and an (empty) dataset/CUB."""
    root = tmp_path_factory.mktemp("wsol")
    for gz in FIXTURE.rglob("*.txt.gz"):
        dst = root / "metadata" / "CUB" / gz.relative_to(FIXTURE).with_suffix("")
        dst.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(gz, "rb") as a, open(dst, "wb") as b:
            shutil.copyfileobj(a, b)
    (root / "dataset" / "CUB").mkdir(parents=True)
    return root


def test_real_cub_metadata_loads_and_matches_cub(checkout, real_cub_root):
    ds = load_dataset(checkout / "metadata" / "CUB")
    assert ds.name == "CUB" and sorted(ds.splits) == ["test", "val"]
    assert ds.images_root == checkout / "dataset" / "CUB"
    test = {s.image_id: s for s in ds.split("test")}
    assert len(test) == 5794 and len(ds.split("val")) == 1000
    for iid, box in UPSTREAM.items():
        assert test[iid].boxes.tolist() == [box]
        assert test[iid].path == checkout / "dataset" / "CUB" / iid
    cub = load_dataset(real_cub_root)
    assert ds.classes == cub.classes  # names recovered from the ids' class folders
    for s in cub.split("test"):
        w = test[s.relpath]
        assert w.label == s.label and w.size == s.size
        np.testing.assert_array_equal(w.boxes, np.trunc(s.boxes))


def test_images_root_errors(checkout, tmp_path):
    meta = tmp_path / "metadata" / "CUB"
    shutil.copytree(checkout / "metadata" / "CUB", meta)
    with pytest.raises(DataError, match="--images-root"):
        load_dataset(meta)
    ds = load_dataset(meta, images_root=checkout / "dataset" / "CUB")
    assert len(ds.split("test")) == 5794
    with pytest.raises(DataError, match="images folder not found"):
        load_wsol_metadata(meta, tmp_path / "nowhere")


@pytest.mark.parametrize(
    "fname,text,match",
    [
        ("localization.txt", "a/1.jpg,1,2,3\n", r"localization.txt:1: expected 3 or 5"),
        ("localization.txt", "a/1.jpg,5,5,5,9\n", r"localization.txt:1: box .* is empty"),
        ("localization.txt", "a/9.jpg,1,2,3,4\n", r"localization.txt:1: image id 'a/9.jpg' is not in image_ids.txt"),
        ("localization.txt", "a/1.jpg,1,2,x,4\n", r"localization.txt:1: box coordinate 'x' is not a number"),
        ("class_labels.txt", "a/1.jpg,-1\n", r"class_labels.txt:1: class index -1 is negative"),
        ("class_labels.txt", "", r"no class label for 1 image"),
        ("image_ids.txt", "a/1.jpg\na/1.jpg\n", r"image_ids.txt:2: image id 'a/1.jpg' is listed twice"),
        ("image_ids.txt", "../x.jpg\n", r"must be relative"),
        ("image_sizes.txt", "a/1.jpg,0,5\n", r"image_sizes.txt:1: image size"),
    ],
)
def test_malformed_metadata_names_file_and_line(tmp_path, fname, text, match):
    d = tmp_path / "metadata" / "X" / "test"
    d.mkdir(parents=True)
    files = {"image_ids.txt": "a/1.jpg\n", "class_labels.txt": "a/1.jpg,0\n",
             "image_sizes.txt": "a/1.jpg,40,30\n", "localization.txt": "a/1.jpg,1,2,30,20\n"}
    files[fname] = text
    for k, v in files.items():
        (d / k).write_text(v)
    with pytest.raises(DataError, match=match):
        load_wsol_metadata(tmp_path / "metadata" / "X", images_root=tmp_path)


@pytest.fixture(scope="module")
def wsol_synthetic(tmp_path_factory):
    """Synthetic images + their metadata in wsolevaluation's layout + a tiny model."""
    from locloc.data.records import heldout_split
    from locloc.data.synthetic import make_synthetic
    from locloc.models.backbone import build_backbone
    from locloc.models.classifier import LFDMClassifier
    from locloc.models.generator import LightGenerator
    from locloc.models.model_dir import save_model_dir
    from locloc.models.pipeline import LocLocModel

    base = tmp_path_factory.mktemp("wsol_syn")
    cub = make_synthetic(base / "cub", classes=3, train=6, test=4, size=64, seed=1, progress=False)
    ds = load_dataset(cub)
    _, val = heldout_split(ds.split("train"), per_class=3, seed=0)
    write_wsol_metadata({"val": val, "test": ds.split("test")}, base / "metadata" / "SYN", integer_boxes=False)
    torch.manual_seed(0)
    tiny = dict(img_size=64, patch_size=16, depth=2, embed_dim=48, num_heads=3)
    bb = build_backbone("vit_small_patch16_224", None, **tiny)
    cls = LFDMClassifier(3, embed_dim=48, depth=1, num_heads=3, grid_size=bb.grid_size)
    model_dir = base / "model"
    save_model_dir(model_dir, LocLocModel(bb, cls, LightGenerator(in_channels=48)).eval(),
                   {"class_names": list(ds.classes), "input": {"resize": 73, "crop": 64}})
    return {"meta": base / "metadata" / "SYN", "images": ds.images_root, "model": model_dir, "cub": cub}


def _eval(env, out, *extra):
    argv = ["evaluate", "--data-path", str(env["meta"]), "--images-root", str(env["images"]),
            "--model-dir", str(env["model"]), "--workers", "0", "--out", str(out),
            "--thresholds", "0.2", "0.35", "0.5", "0.65", "0.8", *extra]
    assert main(argv) == 0
    return json.loads((out / "metrics.json").read_text())


def test_threshold_chosen_on_val_reported_on_test(wsol_synthetic, tmp_path, capsys):
    val = _eval(wsol_synthetic, tmp_path / "val", "--split", "val")
    test = _eval(wsol_synthetic, tmp_path / "test", "--split", "test")
    capsys.readouterr()
    honest = _eval(wsol_synthetic, tmp_path / "honest", "--split", "test", "--threshold-split", "val")
    table = capsys.readouterr().out
    vals = [r["gt_known_loc"] for r in val["per_threshold"]]
    chosen = val["per_threshold"][int(np.argmax(vals))]["threshold"]
    assert honest["best"]["threshold"] == chosen
    at = next(r for r in test["per_threshold"] if r["threshold"] == chosen)
    assert honest["best"] == at
    assert honest["test_sweep_best_optimistic"] == test["best"]
    assert honest["per_threshold"] == test["per_threshold"]
    assert honest["maxboxacc_v2"] == test["maxboxacc_v2"]
    assert "threshold chosen on split 'val'" in table
    # the same images through the CUB layout give the same test numbers
    cub = tmp_path / "cub"
    assert main(["evaluate", "--data-path", str(wsol_synthetic["cub"]), "--model-dir", str(wsol_synthetic["model"]),
                 "--workers", "0", "--out", str(cub), "--thresholds", "0.2", "0.35", "0.5", "0.65", "0.8"]) == 0
    assert json.loads((cub / "metrics.json").read_text())["per_threshold"] == test["per_threshold"]


def test_threshold_split_errors(wsol_synthetic, tmp_path, capsys):
    base = ["evaluate", "--data-path", str(wsol_synthetic["meta"]), "--images-root", str(wsol_synthetic["images"]),
            "--model-dir", str(wsol_synthetic["model"]), "--workers", "0"]
    assert main([*base, "--threshold-split", "train"]) == 2
    assert "no split 'train' (available: test, val)" in capsys.readouterr().err
    assert main([*base, "--split", "val", "--threshold-split", "val"]) == 2
    assert "is the evaluated split itself" in capsys.readouterr().err
    assert main(["evaluate", "--data-path", str(wsol_synthetic["cub"]), "--images-root", str(tmp_path),
                 "--model-dir", str(wsol_synthetic["model"])]) == 2
    assert "--images-root is for wsolevaluation" in capsys.readouterr().err


def test_evaluate_reports_the_models_own_threshold(wsol_synthetic, tmp_path, capsys):
    from locloc.models.model_dir import load_model_dir, save_model_dir

    model, cfg = load_model_dir(wsol_synthetic["model"])
    cfg = {k: cfg[k] for k in ("class_names", "input")}
    cfg["thresholds"] = {"default": 0.35, "sweep": [0.2, 0.35, 0.5], "chosen_on": "heldout"}
    save_model_dir(tmp_path / "m", model, cfg)
    out = tmp_path / "e"
    assert main(["evaluate", "--data-path", str(wsol_synthetic["cub"]), "--model-dir", str(tmp_path / "m"),
                 "--workers", "0", "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    row = next(r for r in m["per_threshold"] if r["threshold"] == 0.35)
    assert m["at_model_threshold"] == {**row, "chosen_on": "heldout"}
    assert "at the model's own threshold 0.35 (chosen during training on held-out training images)" in capsys.readouterr().out


@pytest.mark.parametrize("given, expected", [(None, 0), (1, 1)])
def test_evaluate_on_cpu_loads_in_process_unless_told(wsol_synthetic, monkeypatch, given, expected):
    """Default on CPU: no loader processes (they take cores from the networks' threads);
    an explicit --workers is kept."""
    from locloc.engine import evaluate as ev

    seen = []
    real = ev.evaluate_samples

    def spy(*a, **kw):
        seen.append(kw["workers"])
        return real(*a, **kw)

    monkeypatch.setattr(ev, "evaluate_samples", spy)
    argv = ["evaluate", "--data-path", str(wsol_synthetic["cub"]), "--model-dir", str(wsol_synthetic["model"]),
            "--device", "cpu", "--limit", "4"] + ([] if given is None else ["--workers", str(given)])
    assert main(argv) == 0
    assert seen and set(seen) == {expected}
