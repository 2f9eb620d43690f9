"""Numerical parity with the reference LocLoc release on the golden fixtures.

The four reference checkpoints are rebuilt by the deterministic rule (tests/golden_weights.py),
written in the reference file layouts, and loaded through the public loaders and the
``locloc convert`` command.
"""

from __future__ import annotations

import json

import golden_weights as gw
import pytest
import torch

from locloc.cli import main
from locloc.models.backbone import patch_map
from locloc.models.builder import build_from_reference
from locloc.models.model_dir import load_model_dir

pytestmark = pytest.mark.slow  # ~30 s: rebuilds and round-trips 70 M golden weights


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return gw.write_reference_files(tmp_path_factory.mktemp("golden"))


@pytest.fixture(scope="module")
def expected():
    return {k: torch.from_numpy(v) if v.dtype != object and v.dtype.kind in "fiub" else v
            for k, v in gw.expected().items()}


@pytest.fixture(scope="module")
def unet_model(files):
    return build_from_reference(files["backbone"], files["classifier"], files["generator_unet"])


def _close(actual, expected, atol):
    diff = (actual - expected).abs().max().item()
    assert diff <= atol, f"max abs difference {diff:.3g} > {atol}"


@pytest.mark.parametrize("name", gw.FILES)
def test_rebuilt_weights_match_manifest(name):
    assert gw.check_against_manifest(name) == []


def test_backbone_tokens_and_patch_tokens(unet_model, expected):
    with torch.inference_mode():
        out = unet_model.backbone(expected["input_images"], with_attention=True)
    _close(out.tokens, expected["x_ori"], 1e-5)
    _close(out.patch_tokens, expected["patch_tokens"], 5e-5)
    assert out.attention.shape == (6, 6, 196)


def test_classifier_logits_and_top5(unet_model, expected):
    assert unet_model.num_classes == 1000  # read from classifier.0.weight, not assumed
    with torch.inference_mode():
        logits = unet_model.classifier(expected["x_ori"])
    _close(logits, expected["logits"], 1e-5)
    assert torch.equal(logits.topk(5, 1).indices, expected["top5_pred"])


def test_unet_generator(unet_model, expected):
    feat = patch_map(expected["patch_tokens"], (14, 14))
    gen = unet_model.generator
    with torch.inference_mode():
        _close(gen.att_layer4(feat), expected["unet_att_layer4_out"], 5e-5)
        _close(gen(feat), expected["unet_maps"], 1e-5)


def test_deconv_generator(files, expected):
    model = build_from_reference(files["backbone"], None, files["generator_deconv"], generator="deconv")
    assert model.classifier is None
    with torch.inference_mode():
        maps = model.generator(patch_map(expected["patch_tokens"], (14, 14)))
    _close(maps, expected["deconv_maps"], 1e-5)


def test_whole_pipeline_one_pass(unet_model, expected):
    with torch.inference_mode():
        out = unet_model(expected["input_images"])
    _close(out["logits"], expected["logits"], 1e-5)
    _close(out["maps"], expected["unet_maps"], 1e-5)


def test_convert_command_end_to_end(files, expected, tmp_path, capsys):
    out_dir = tmp_path / "cub_model"
    classes = gw.GOLDEN / "cub_mini" / "classes.txt"
    rc = main(["convert", "--backbone-weights", str(files["backbone"]), "--classifier", str(files["classifier"]),
               "--locator", str(files["generator_unet"]), "--out", str(out_dir), "--classes", str(classes)])
    assert rc == 0 and "unet generator" in capsys.readouterr().out
    model, cfg = load_model_dir(out_dir)
    assert cfg["thresholds"]["sweep"] == [0.45, 0.48, 0.50, 0.51, 0.52, 0.53]
    names = cfg["class_names"]
    assert len(names) == 1000 and names[86] == "087.Mallard" and names[199] == "200.Common_Yellowthroat"
    assert names[200] == "unused_200" and cfg["source"]["num_named_classes"] == 200
    assert cfg["normalization"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert cfg["input"] == {"resize": 256, "crop": 224}
    with torch.inference_mode():
        out = model(expected["input_images"])
    _close(out["logits"], expected["logits"], 1e-5)
    _close(out["maps"], expected["unet_maps"], 1e-5)
    assert json.loads((out_dir / "config.json").read_text())["generator"]["type"] == "unet"


def test_convert_reports_user_errors(files, tmp_path, capsys):
    rc = main(["convert", "--backbone-weights", str(files["backbone"]), "--classifier", str(files["generator_unet"]),
               "--locator", str(files["generator_unet"]), "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert rc == 2 and "not an LFDM classifier checkpoint" in err and "UNet generator" in err
    assert not (tmp_path / "m").exists()
    many = tmp_path / "names.txt"
    many.write_text("".join(f"name{i}\n" for i in range(1001)))
    rc = main(["convert", "--backbone-weights", str(files["backbone"]), "--classifier", str(files["classifier"]),
               "--locator", str(files["generator_deconv"]), "--out", str(tmp_path / "m"), "--classes", str(many)])
    assert rc == 2 and "1001 class names" in capsys.readouterr().err
