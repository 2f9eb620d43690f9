"""``locloc predict --format csv|coco|yolo``, ``--labels-from-tree`` and ``--save-maps``:
the files load with the tools that read them, and their boxes equal the JSON-lines boxes."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from locloc import LocLoc
from locloc.cli import main

TINY = dict(img_size=64, patch_size=16, depth=2, embed_dim=48, num_heads=3)
# folder names as users have them: exact, another case, a CUB-style number prefix
TREE = {"red": [(90, 60), (40, 70)], "Green": [(64, 64)], "003.blue": [(120, 50), (33, 77)]}


@pytest.fixture(scope="module")
def model_dir(tiny_rgb_model_dir):
    return tiny_rgb_model_dir


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("tree")
    rng = np.random.default_rng(0)
    for folder, sizes in TREE.items():
        (root / folder).mkdir()
        for k, (w, h) in enumerate(sizes):
            a = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
            a[h // 4 : 3 * h // 4, w // 3 : w - 2] = 240
            Image.fromarray(a).save(root / folder / f"img{k}.png")
    return root


def _jsonl(model_dir, tree, tmp_path):
    out = tmp_path / "p.jsonl"
    assert main(["predict", str(tree), "--model-dir", str(model_dir), "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    return {os.path.relpath(r["path"], tree): r for r in rows}


def test_coco_loads_with_pycocotools_and_equals_jsonl(model_dir, tree, tmp_path):
    coco_mod = pytest.importorskip("pycocotools.coco")
    ref = _jsonl(model_dir, tree, tmp_path)
    out = tmp_path / "boxes.json"
    assert main(["predict", str(tree), "--model-dir", str(model_dir), "--format", "coco",
                 "--out", str(out), "--labels-from-tree"]) == 0
    coco = coco_mod.COCO(str(out))
    assert sorted(c["name"] for c in coco.loadCats(coco.getCatIds())) == ["blue", "green", "red"]
    known = {"red": 1, "Green": 2, "003.blue": 3}  # category id = class index + 1
    assert len(coco.getImgIds()) == 5
    for img in coco.loadImgs(coco.getImgIds()):
        r = ref[img["file_name"]]
        assert [img["width"], img["height"]] == r["image_size"]
        (ann,) = coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]]))
        x0, y0, x1, y1 = r["box"]
        assert ann["bbox"] == pytest.approx([x0, y0, x1 - x0, y1 - y0], abs=0.011)
        assert ann["category_id"] == known[img["file_name"].split("/")[0]]
        assert ann["predicted_category_id"] == r["class_id"] + 1
        assert ann["score"] == pytest.approx(r["score"], abs=1e-6)
    # the annotations also load as detection results against the file itself
    res = coco.loadRes(json.loads(out.read_text())["annotations"])
    assert len(res.getAnnIds()) == 5


def test_coco_without_labels_uses_predicted_class(model_dir, tree, tmp_path):
    ref = _jsonl(model_dir, tree, tmp_path)
    out = tmp_path / "pred.json"
    assert main(["predict", str(tree / "red"), "--model-dir", str(model_dir), "--format", "coco",
                 "--out", str(out)]) == 0
    d = json.loads(out.read_text())
    for img, ann in zip(d["images"], d["annotations"]):
        assert ann["category_id"] == ref["red/" + img["file_name"]]["class_id"] + 1
        assert "predicted_category_id" not in ann


def test_yolo_and_csv_equal_jsonl(model_dir, tree, tmp_path):
    ref = _jsonl(model_dir, tree, tmp_path)
    out = tmp_path / "labels"
    assert main(["predict", str(tree), "--model-dir", str(model_dir), "--format", "yolo",
                 "--out", str(out), "--labels-from-tree"]) == 0
    assert (out / "classes.txt").read_text().split() == ["red", "green", "blue"]
    known = {"red": 0, "Green": 1, "003.blue": 2}
    txts = sorted(p.relative_to(out).as_posix() for p in out.rglob("img*.txt"))
    assert txts == sorted(k[:-4] + ".txt" for k in ref)
    for key, r in ref.items():
        (line,) = (out / (key[:-4] + ".txt")).read_text().splitlines()
        c, cx, cy, bw, bh = line.split()
        w, h = r["image_size"]
        x0, y0, x1, y1 = r["box"]
        assert int(c) == known[key.split("/")[0]]
        assert [float(cx), float(cy), float(bw), float(bh)] == pytest.approx(
            [(x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h], abs=1e-5)
    out_csv = tmp_path / "boxes.csv"
    assert main(["predict", str(tree), "--model-dir", str(model_dir), "--format", "csv",
                 "--out", str(out_csv)]) == 0
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 5
    for row in rows:
        r = ref[row["image_id"]]
        assert [float(row[k]) for k in ("x0", "y0", "x1", "y1")] == r["box"]
        assert int(row["class_id"]) == r["class_id"] and row["label"] == ""


def test_save_maps_wsolevaluation_layout(model_dir, tree, tmp_path):
    maps = tmp_path / "scoremaps"
    assert main(["predict", str(tree), "--model-dir", str(model_dir), "--save-maps", str(maps),
                 "--out", str(tmp_path / "p.jsonl")]) == 0
    umask = os.umask(0)
    os.umask(umask)
    assert maps.stat().st_mode & 0o777 == 0o777 & ~umask  # a normal folder, not mkdtemp's 0700
    api = LocLoc.from_pretrained(model_dir, device="cpu")
    files = sorted(p.relative_to(maps).as_posix() for p in maps.rglob("*.npy"))
    assert files == sorted(f"{folder}/img{k}.png.npy" for folder, s in TREE.items() for k in range(len(s)))
    for folder, sizes in TREE.items():
        for k, (w, h) in enumerate(sizes):
            m = np.load(maps / folder / f"img{k}.png.npy")
            assert m.shape == (h, w) and m.dtype == np.float32
            assert 0.0 <= m.min() and m.max() <= 1.0
            np.testing.assert_allclose(m, api.predict(tree / folder / f"img{k}.png").heatmap, atol=1e-3)  # batch of 5 vs 1: float noise only


def test_root_sets_image_ids(model_dir, tree, tmp_path):
    out = tmp_path / "c.json"
    assert main(["predict", str(tree / "red"), "--model-dir", str(model_dir), "--format", "coco",
                 "--root", str(tree.parent), "--out", str(out)]) == 0
    names = [i["file_name"] for i in json.loads(out.read_text())["images"]]
    assert names == [f"{tree.name}/red/img0.png", f"{tree.name}/red/img1.png"]


def _fails(argv, capsys, *paths):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("locloc predict: error:"), err
    for p in paths:
        assert not p.exists() and not list(p.parent.glob(f".{p.name}*")), p
    return err[0]


def test_bad_outputs_one_line_nothing_written(model_dir, tree, tmp_path, capsys, monkeypatch):
    base = ["predict", str(tree), "--model-dir", str(model_dir)]
    with pytest.raises(SystemExit) as e:  # an unknown format: argparse's own one-line usage error
        main([*base, "--format", "voc", "--out", str(tmp_path / "x")])
    assert e.value.code == 2
    capsys.readouterr()
    assert "does not exist" in _fails([*base, "--out", str(tmp_path / "no" / "x.json")], capsys)
    assert "--format yolo" in _fails([*base, "--format", "yolo"], capsys)
    # a folder that is not one of the model's classes: nothing written
    odd = tmp_path / "odd"
    (odd / "purple").mkdir(parents=True)
    Image.new("RGB", (40, 40), "purple").save(odd / "purple" / "a.png")
    msg = _fails(["predict", str(odd), "--model-dir", str(model_dir), "--format", "coco", "--labels-from-tree",
                  "--out", str(tmp_path / "l.json"), "--save-maps", str(tmp_path / "m")], capsys,
                 tmp_path / "l.json", tmp_path / "m")
    assert "'purple'" in msg and "3 classes" in msg
    # a non-empty maps folder is refused before any work
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("x")
    assert "not an empty folder" in _fails([*base, "--save-maps", str(full)], capsys)
    assert (full / "keep.txt").read_text() == "x"
    # a read-only folder (root ignores permission bits, so the check itself is exercised)
    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, m: False if str(p) == str(ro) else real_access(p, m))
    assert "not writable" in _fails([*base, "--out", str(ro / "x.json")], capsys, ro / "x.json")
