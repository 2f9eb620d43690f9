"""``locloc export``: ONNX file equal to PyTorch (dynamic batch), metadata, boxes-only, bad input."""

from __future__ import annotations

import json
import os
import shutil
import sys

import golden_weights as gw
import numpy as np
import pytest
import torch
from PIL import Image

from locloc import LocLoc
from locloc.cli import main
from locloc.models.backbone import build_backbone
from locloc.models.builder import build_from_reference
from locloc.models.classifier import LFDMClassifier
from locloc.models.generator import LightGenerator
from locloc.models.model_dir import load_model_dir, save_model_dir
from locloc.models.pipeline import LocLocModel
from locloc.onnx_export import DEFAULT_OPSET, boxes_from_maps, export_onnx, read_metadata

ort = pytest.importorskip("onnxruntime")

TINY = dict(img_size=64, patch_size=16, depth=2, embed_dim=48, num_heads=3)
NAMES = ["red", "green", "blue"]


def _tiny(classifier: bool = True) -> LocLocModel:
    torch.manual_seed(0)
    bb = build_backbone("vit_small_patch16_224", None, **TINY)
    cls = LFDMClassifier(3, embed_dim=48, depth=1, num_heads=3, grid_size=bb.grid_size) if classifier else None
    return LocLocModel(bb, cls, LightGenerator(in_channels=48)).eval()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    cfg = {"class_names": NAMES, "thresholds": {"default": 0.4, "sweep": [0.4]},
           "normalization": {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}}
    save_model_dir(d, _tiny(), cfg)
    return d


@pytest.fixture(scope="module")
def exported(model_dir, tmp_path_factory):
    """The tiny model exported through the CLI with the defaults (dynamo exporter, verified)."""
    out = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    assert main(["export", "--model-dir", str(model_dir), "--format", "onnx", "--out", str(out)]) == 0
    return out


def _ort_run(path, x: torch.Tensor) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"images": x.numpy()})))


def _only_file(folder, name):
    """Nothing but ``name`` (when given) in ``folder``: no temporary leftovers."""
    assert sorted(p.name for p in folder.iterdir()) == ([name] if name else [])


@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_equals_pytorch_at_other_batch_sizes(exported, model_dir, batch):
    model, cfg = load_model_dir(model_dir)
    x = torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(batch))
    got = _ort_run(exported, x)
    with torch.inference_mode():
        ref = model(x)
    assert got["logits"].shape == (batch, 3) and got["maps"].shape == (batch, 1, 32, 32)
    assert np.abs(got["logits"] - ref["logits"].numpy()).max() <= 1e-4
    assert np.abs(got["maps"] - ref["maps"].numpy()).max() <= 1e-4
    t = cfg["thresholds"]["default"]
    assert np.array_equal(boxes_from_maps(got["maps"], 64, t), boxes_from_maps(ref["maps"].numpy(), 64, t))


def test_onnx_boxes_equal_the_python_api(exported, model_dir):
    # crop-sized images: LocLoc's box in original pixels is then its box in input pixels
    rng = np.random.default_rng(0)
    ims = []
    for k in range(3):
        a = rng.integers(0, 60, (64, 64, 3), dtype=np.uint8)
        a[8 + 4 * k : 40 + 5 * k, 10 + 3 * k : 50] = 230
        ims.append(Image.fromarray(a))
    api = LocLoc.from_pretrained(model_dir, device="cpu")
    preds = api.predict_batch(ims)
    x = torch.stack([api._prepare(im) for im in ims])
    got = _ort_run(exported, x)
    boxes = boxes_from_maps(got["maps"], api.crop, api.threshold)
    assert [list(map(float, b)) for b in boxes] == [p.box for p in preds]
    assert got["logits"].argmax(1).tolist() == [p.class_id for p in preds]


def test_metadata_lets_the_file_stand_alone(exported):
    meta = read_metadata(exported)
    assert meta["opset"] == str(DEFAULT_OPSET) and meta["locloc_version"]
    assert meta["input_size"] == "64" and meta["input_name"] == "images"
    assert json.loads(meta["mean"]) == [0.5, 0.4, 0.3] and json.loads(meta["std"]) == [0.2, 0.25, 0.3]
    assert json.loads(meta["class_names"]) == NAMES
    assert float(meta["box_threshold"]) == 0.4
    assert meta["outputs"] == "logits,maps" and meta["map_size"] == "32x32"
    assert "native size" in meta["map_note"]
    sess = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    assert sess.get_modelmeta().custom_metadata_map == meta
    assert "opset 18" in sess.get_modelmeta().description
    assert [i.shape for i in sess.get_inputs()] == [["batch", 3, 64, 64]]
    assert oct(exported.stat().st_mode & 0o077) != "0o0"  # not a private mkstemp file


def test_cli_prints_one_summary_line(model_dir, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export", "--model-dir", str(model_dir), "--out", str(out), "--exporter", "torchscript"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    assert str(out) in lines[0] and "MB" in lines[0] and "opset 18" in lines[0]
    assert "logits" in lines[0] and "maps" in lines[0] and "boxes identical 4/4" in lines[0]
    _only_file(tmp_path, "m.onnx")


def test_boxes_only_has_no_logits(model_dir, tmp_path):
    rep = export_onnx(model_dir, tmp_path / "b.onnx", boxes_only=True, exporter="torchscript")
    assert rep.verify is not None and rep.verify.ok and rep.verify.max_abs_logits is None
    assert list(rep.outputs) == ["maps"] and rep.boxes_only
    sess = ort.InferenceSession(str(rep.path), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["maps"]
    meta = read_metadata(rep.path)
    assert meta["boxes_only"] == "true" and meta["outputs"] == "maps"


def test_model_without_classifier_exports_maps_only(tmp_path):
    save_model_dir(tmp_path / "loc", _tiny(classifier=False))
    rep = export_onnx(tmp_path / "loc", tmp_path / "loc.onnx", exporter="torchscript", batch_sizes=(1, 4))
    assert list(rep.outputs) == ["maps"] and rep.verify.ok and rep.verify.boxes_checked == 5


@pytest.mark.slow  # ~20 s: 52 M golden weights through the dynamo exporter and onnxruntime
def test_reference_architecture_with_golden_weights(tmp_path):
    files = gw.write_reference_files(tmp_path / "ref")
    model = build_from_reference(files["backbone"], files["classifier"], files["generator_unet"])
    save_model_dir(tmp_path / "model", model)
    rep = export_onnx(tmp_path / "model", tmp_path / "ref.onnx")
    assert rep.verify.ok and rep.verify.max_abs_logits <= 1e-4 and rep.verify.max_abs_maps <= 1e-4
    assert rep.outputs == {"logits": ["batch", 1000], "maps": ["batch", 1, 112, 112]}
    # the reference release's own numbers and boxes, on its six images (batch 6)
    exp = gw.expected()
    got = _ort_run(rep.path, torch.from_numpy(exp["input_images"]))
    assert np.abs(got["logits"] - exp["logits"]).max() <= 1e-4
    assert np.abs(got["maps"] - exp["unet_maps"]).max() <= 1e-4
    for j, t in enumerate(exp["thresholds"]):  # boxes are [threshold][image]
        boxes = boxes_from_maps(got["maps"], 224, float(t))
        stable = exp["unet_box_stable"][j]
        assert np.array_equal(boxes[stable], exp["unet_boxes"][j][stable])


# ---------------------------------------------------------------------------- bad input


def _fails(capsys, argv, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    for n in needles:
        assert n in err[0], err[0]
    return err[0]


def test_unknown_format(model_dir, tmp_path, capsys):
    out = tmp_path / "m.tflite"
    _fails(capsys, ["export", "--model-dir", str(model_dir), "--format", "tflite", "--out", str(out)], "tflite", "onnx")
    _only_file(tmp_path, None)


def test_output_in_missing_folder(model_dir, tmp_path, capsys):
    out = tmp_path / "nowhere" / "m.onnx"
    _fails(capsys, ["export", "--model-dir", str(model_dir), "--out", str(out)], "does not exist")
    assert not (tmp_path / "nowhere").exists()


def test_output_in_read_only_folder(model_dir, tmp_path, capsys, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):  # root ignores the mode bits: make the check see them
            real = os.access
            monkeypatch.setattr(os, "access", lambda p, m, **kw: False if str(p) == str(ro) else real(p, m, **kw))
        _fails(capsys, ["export", "--model-dir", str(model_dir), "--out", str(ro / "m.onnx")], "not writable")
        _only_file(ro, None)
    finally:
        ro.chmod(0o755)


@pytest.mark.parametrize("missing", ["config.json", "model.safetensors"])
def test_model_dir_missing_a_file(model_dir, tmp_path, capsys, missing):
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    (broken / missing).unlink()
    out = tmp_path / "m.onnx"
    _fails(capsys, ["export", "--model-dir", str(broken), "--out", str(out)], missing)
    assert not out.exists()


@pytest.mark.parametrize("module", ["onnxruntime", "onnx"])
def test_missing_extra(model_dir, tmp_path, capsys, monkeypatch, module):
    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    out = tmp_path / "m.onnx"
    _fails(capsys, ["export", "--model-dir", str(model_dir), "--out", str(out)], module, "pip install 'locloc[onnx]'")
    _only_file(tmp_path, None)


def test_help_works_without_the_extra(monkeypatch, capsys):
    for m in ("onnx", "onnxruntime", "onnxscript"):
        monkeypatch.setitem(sys.modules, m, None)
    for argv in (["--help"], ["export", "--help"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0
    assert "opset" in capsys.readouterr().out


def test_failed_verification_writes_nothing(model_dir, tmp_path, capsys, monkeypatch):
    import locloc.onnx_export as ox

    real = ox.verify_onnx

    def off(*a, **kw):
        r = real(*a, **kw)
        r.max_abs_maps = 1.0
        return r

    monkeypatch.setattr(ox, "verify_onnx", off)
    out = tmp_path / "m.onnx"
    out.write_text("previous")
    line = _fails(capsys, ["export", "--model-dir", str(model_dir), "--out", str(out), "--exporter", "torchscript"],
                  "differs from PyTorch", "--no-verify")
    assert "maps 1.0e+00" in line
    assert out.read_text() == "previous"
    _only_file(tmp_path, "m.onnx")
    # --no-verify writes it
    assert main(["export", "--model-dir", str(model_dir), "--out", str(out), "--no-verify",
                 "--exporter", "torchscript"]) == 0
    assert "not verified" in capsys.readouterr().out and out.stat().st_size > 1000


def test_bad_opset(model_dir, tmp_path, capsys):
    _fails(capsys, ["export", "--model-dir", str(model_dir), "--out", str(tmp_path / "m.onnx"), "--opset", "9"], "--opset 9")
    _only_file(tmp_path, None)


def test_write_failure_leaves_nothing(model_dir, tmp_path, capsys, monkeypatch):
    import errno

    import onnx

    def full(proto, path, *a, **kw):
        with open(path, "wb") as f:
            f.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(onnx, "save", full)
    _fails(capsys, ["export", "--model-dir", str(model_dir), "--out", str(tmp_path / "m.onnx"),
                    "--exporter", "torchscript"], "No space left")
    _only_file(tmp_path, None)
