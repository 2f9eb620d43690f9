"""``locloc app``: the Gradio page driven through gradio_client on a tiny model."""

from __future__ import annotations

import json
import socket
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from locloc import LocLoc
from locloc.cli import main
from locloc.metrics import box_from_map, to_uint8
from locloc.models.backbone import build_backbone
from locloc.models.classifier import LFDMClassifier
from locloc.models.generator import LightGenerator
from locloc.models.model_dir import save_model_dir
from locloc.models.pipeline import LocLocModel

# noise from gradio's own use of pandas 3, not from this project
pytestmark = [
    pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting' is deprecated"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]

TINY = dict(img_size=64, patch_size=16, depth=2, embed_dim=48, num_heads=3)
NAMES = ["red", "green", "blue", "grey", "white", "black"]  # 6 classes: top-5 is a real cut


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    bb = build_backbone("vit_small_patch16_224", None, **TINY)
    cls = LFDMClassifier(len(NAMES), embed_dim=48, depth=1, num_heads=3, grid_size=bb.grid_size)
    model = LocLocModel(bb, cls, LightGenerator(in_channels=48))
    d = tmp_path_factory.mktemp("model")
    save_model_dir(d, model.eval(), {"class_names": NAMES})
    return d


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """A 120 x 80 noisy image with a bright rectangle (not square: boxes in original pixels)."""
    rng = np.random.default_rng(0)
    a = rng.integers(0, 90, (80, 120, 3), dtype=np.uint8)
    a[20:60, 30:80] = 230
    path = tmp_path_factory.mktemp("imgs") / "photo.png"
    Image.fromarray(a).save(path)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(model_dir):
    pytest.importorskip("gradio")
    pytest.importorskip("gradio_client")
    from locloc.webapp import build_app

    model = LocLoc.from_pretrained(model_dir, device="cpu")
    calls = []
    run = model.predict_batch
    model.predict_batch = lambda ims: calls.append(len(ims)) or run(ims)  # count network runs
    app = build_app(model)
    port = _free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield {"url": f"http://127.0.0.1:{port}/", "model": model, "calls": calls}
    app.close()


def _client(url):
    from gradio_client import Client

    return Client(url, verbose=False)


def _predict(client, paths, threshold):
    from gradio_client import handle_file

    outs = client.predict([handle_file(str(p)) for p in paths], threshold, api_name="/predict")
    gallery, head, top5, table, status, coco, jsonl = outs
    rows = [json.loads(line) for line in open(jsonl).read().splitlines()] if jsonl else []
    return {"gallery": gallery, "head": head, "top5": top5, "table": table, "status": status,
            "coco": json.load(open(coco)) if coco else None, "rows": rows}


def test_predict_matches_api(server, model_dir, photo):
    ref = LocLoc.from_pretrained(model_dir, device="cpu").predict(photo)
    out = _predict(_client(server["url"]), [photo], ref.threshold)
    (row,) = out["rows"]
    assert row["box"] == ref.box and row["image_size"] == [120, 80]
    assert row["top5"] == ref.top5 and len(row["top5"]) == 5
    assert row["path"] == "photo.png"
    assert [c["label"] for c in out["top5"]["confidences"]] == [t["class_name"] for t in ref.top5]
    assert out["table"]["data"][0][3:7] == ref.box
    assert len(out["gallery"]) == 1 and "photo.png" in out["gallery"][0]["caption"]
    coco = out["coco"]
    assert [c["id"] for c in coco["categories"]] == list(range(1, len(NAMES) + 1))
    assert coco["images"][0]["width"] == 120 and coco["images"][0]["height"] == 80
    x0, y0, x1, y1 = ref.box
    assert coco["annotations"][0]["bbox"] == [x0, y0, x1 - x0, y1 - y0]
    assert coco["annotations"][0]["category_id"] == ref.class_id + 1


def test_threshold_moves_boxes_without_rerunning_the_network(server, photo):
    client = _client(server["url"])
    model = server["model"]
    _predict(client, [photo, photo], model.threshold)
    ref = model.predict(photo)  # its heatmap: what the page cached
    runs = len(server["calls"])
    boxes = {}
    for t in (0.2, 0.8):
        gallery, table, coco, jsonl = client.predict(t, api_name="/rebox")
        rows = [json.loads(line) for line in open(jsonl).read().splitlines()]
        expected = [float(v) for v in box_from_map(to_uint8(ref.heatmap), t)]
        assert [r["box"] for r in rows] == [expected, expected] and rows[0]["threshold"] == t
        assert [r[3:7] for r in table["data"]] == [expected, expected]
        assert len(gallery) == 2
        boxes[t] = expected
    assert boxes[0.2] != boxes[0.8]  # the threshold really moved the box
    assert len(server["calls"]) == runs  # cached heat maps only


def test_bad_uploads_get_a_message_and_the_rest_a_result(server, photo, tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    Image.new("RGB", (1, 1)).save(tmp_path / "dot.png")
    Image.new("L", (20000, 20000)).save(tmp_path / "bomb.png")  # 400 MP: refused from its header
    client = _client(server["url"])
    out = _predict(client, [tmp_path / "notes.txt", photo, tmp_path / "dot.png", tmp_path / "bomb.png"], 0.5)
    assert [r["path"] for r in out["rows"]] == ["photo.png"]
    status = out["status"]
    assert "Skipped **3**" in status and "Traceback" not in status
    assert "notes.txt: not a readable image" in status
    assert "dot.png: image too small (1x1" in status
    assert "bomb.png: refused, image too large" in status
    only_bad = _predict(client, [tmp_path / "notes.txt"], 0.5)  # nothing usable: still a page
    assert only_bad["rows"] == [] and "notes.txt" in only_bad["status"]
    assert len(_predict(client, [photo], 0.5)["rows"]) == 1  # the server still answers


def test_port_in_use_is_one_line_exit_2(model_dir, capsys):
    pytest.importorskip("gradio")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        rc = main(["app", "--model-dir", str(model_dir), "--port", str(port), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert err[0].startswith("locloc app: error: port ") and str(port) in err[0]


def test_without_gradio_says_which_extra(model_dir, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio -> ImportError
    rc = main(["app", "--model-dir", str(model_dir), "--port", str(_free_port())])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == ["locloc app: error: install the extra: pip install 'locloc[app]'"]


def test_examples_are_the_initial_result_and_rebox(model_dir, photo):
    pytest.importorskip("gradio_client")
    from locloc.webapp import build_app

    model = LocLoc.from_pretrained(model_dir, device="cpu")
    app = build_app(model, examples=[photo])
    port = _free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:  # a fresh session starts from the examples: the slider works on them at once
        gallery, table, coco, jsonl = _client(f"http://127.0.0.1:{port}/").predict(0.3, api_name="/rebox")
    finally:
        app.close()
    expected = [float(v) for v in box_from_map(to_uint8(model.predict(photo).heatmap), 0.3)]
    assert [r[0] for r in table["data"]] == ["photo.png"] and table["data"][0][3:7] == expected
    assert json.load(open(coco))["images"][0]["file_name"] == "photo.png"
