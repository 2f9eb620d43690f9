"""Checkpoint loading (every failure mode), strict loading messages, model directories,
assembling a model from reference-layout files."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file

from locloc.errors import CheckpointError
from locloc.models.backbone import build_backbone
from locloc.models.builder import build_from_reference
from locloc.models.classifier import LFDMClassifier
from locloc.models.generator import DeconvGenerator, LightGenerator, UNetGenerator
from locloc.models.model_dir import load_model_dir, save_model_dir
from locloc.models.pipeline import LocLocModel
from locloc.models.weights import describe_state_dict, load_state_dict_file, load_strict, remap_state_dict

TINY = dict(img_size=64, depth=2, embed_dim=48, num_heads=3)


def _tiny_model(generator="light", num_classes=4):
    torch.manual_seed(0)
    bb = build_backbone("vit_small_patch16_224", **TINY)
    clf = LFDMClassifier(num_classes, embed_dim=48, depth=1, num_heads=3, grid_size=bb.grid_size)
    gens = {"light": lambda: LightGenerator(48, mid_channels=8, head_channels=(8, 4, 4)),
            "unet": lambda: UNetGenerator(48, mid_channels=8, head_channels=8),
            "deconv": lambda: DeconvGenerator(48, hidden_channels=16, deconv_channels=8)}
    model = LocLocModel(bb, clf, gens[generator]())
    for m in model.modules():  # non-trivial BN statistics, so a lost buffer would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _images(b=2):
    return torch.randn(b, 3, 64, 64, generator=torch.Generator().manual_seed(3))


# ----------------------------------------------------------------- load_state_dict_file


def test_wrappers_and_prefixes_are_removed(tmp_path):
    t = torch.arange(3.0)
    for i, obj in enumerate([{"a": t}, {"model": {"a": t}}, {"state_dict": {"module.a": t}, "epoch": 3},
                             {"module": {"_orig_mod.module.a": t}}]):
        path = tmp_path / f"{i}.pth"
        torch.save(obj, path)
        sd = load_state_dict_file(path)
        assert list(sd) == ["a"] and torch.equal(sd["a"], t)


def test_safetensors_file(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"x": torch.ones(2)}, str(path))
    assert torch.equal(load_state_dict_file(path)["x"], torch.ones(2))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "not found"),
        (lambda p: p.mkdir(), "directory"),
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: p.write_text("hello, I am a text file\n"), "not a checkpoint"),
        (lambda p: torch.save([1, 2], p), "not a state dict"),
        (lambda p: torch.save({"epoch": 3, "lr": 0.1}, p), "not tensors"),
    ],
)
def test_bad_files_raise_checkpoint_error_naming_the_file(tmp_path, make, message):
    path = tmp_path / "ckpt.pth"
    make(path)
    with pytest.raises(CheckpointError, match=message) as info:
        load_state_dict_file(path)
    assert str(path) in str(info.value)


def test_truncated_files(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"model": {"w": torch.randn(1000)}}, good)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"bad\.pth.*(truncated|corrupt)"):
        load_state_dict_file(bad)
    st = tmp_path / "w.safetensors"
    save_file({"w": torch.randn(1000)}, str(st))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(st.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors.*safetensors"):
        load_state_dict_file(cut)


class _Malicious:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_malicious_pickle_is_refused_and_not_run(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    obj = {"state_dict": {"w": torch.zeros(1)}, "payload": _Malicious(marker)}
    if writer == "torch":
        torch.save(obj, path)
    else:
        path.write_bytes(pickle.dumps(obj))
    with pytest.raises(CheckpointError, match="refused for safety"):
        load_state_dict_file(path)
    assert not marker.exists()


# ------------------------------------------------------------------------ load_strict


def test_strict_loading_lists_missing_unexpected_and_misshaped_keys():
    clf = LFDMClassifier(4, embed_dim=48, depth=1, num_heads=3, grid_size=(4, 4))
    before = {k: v.clone() for k, v in clf.state_dict().items()}
    sd = {k: v.clone() + 1 for k, v in clf.state_dict().items()}
    del sd["conv.bias"]
    sd["extra.weight"] = torch.zeros(1)
    sd["norm_mini.weight"] = torch.zeros(7)
    with pytest.raises(CheckpointError) as info:
        load_strict(clf, sd, "LFDM classifier", "f.pth")
    msg = str(info.value)
    assert msg.startswith("f.pth: cannot load as LFDM classifier")
    assert "1 missing keys (conv.bias)" in msg
    assert "1 unexpected keys (extra.weight)" in msg
    assert "norm_mini.weight: file [7] vs model [48]" in msg
    for k, v in clf.state_dict().items():  # nothing was half-loaded
        assert torch.equal(v, before[k]), k


def test_many_missing_keys_are_counted_and_abbreviated():
    clf = LFDMClassifier(4, embed_dim=48, depth=2, num_heads=3, grid_size=(4, 4))
    with pytest.raises(CheckpointError, match=r"\d+ missing keys \(.*more\)"):
        load_strict(clf, {}, "LFDM classifier", "f.pth")


def test_wrong_architecture_says_what_the_file_looks_like():
    clf = LFDMClassifier(4, embed_dim=48, depth=1, num_heads=3, grid_size=(4, 4))
    gen_sd = UNetGenerator(48, mid_channels=8, head_channels=8).state_dict()
    with pytest.raises(CheckpointError, match="looks like a UNet generator"):
        load_strict(clf, gen_sd, "LFDM classifier", "gen.pth")
    assert "LFDM classifier checkpoint (4 classes, 1 blocks)" in describe_state_dict(clf.state_dict())


def test_wrong_class_count():
    sd = LFDMClassifier(7, embed_dim=48, depth=1, num_heads=3, grid_size=(4, 4)).state_dict()
    clf = LFDMClassifier(5, embed_dim=48, depth=1, num_heads=3, grid_size=(4, 4))
    with pytest.raises(CheckpointError, match=r"classifier\.0\.weight: file \[7, 48, 3, 3\] vs model \[5, 48, 3, 3\]"):
        load_strict(clf, sd, "LFDM classifier", "c.pth")


def test_remap_unknown_source():
    with pytest.raises(ValueError, match="unknown checkpoint source"):
        remap_state_dict({}, "caffe")


# --------------------------------------------------------------------- model directory


@pytest.mark.parametrize("generator", ["light", "unet", "deconv"])
def test_model_dir_round_trip(tmp_path, generator):
    model = _tiny_model(generator)
    names = ["a", "b", "c", "d"]
    saved = save_model_dir(tmp_path / "m", model, {"class_names": names, "thresholds": {"default": 0.4, "sweep": [0.4]}})
    loaded, cfg = load_model_dir(tmp_path / "m")
    assert cfg == saved and cfg["class_names"] == names and cfg["generator"]["type"] == generator
    assert cfg["input"] == {"resize": 73, "crop": 64}  # 256/224 of the crop, as in the method
    assert cfg["normalization"]["mean"] == list(model.backbone.data_config["mean"])
    x = _images()
    with torch.no_grad():
        a, b = model(x), loaded(x)
    torch.testing.assert_close(a["logits"], b["logits"], atol=0, rtol=0)
    torch.testing.assert_close(a["maps"], b["maps"], atol=0, rtol=0)
    assert loaded.num_classes == 4 and not loaded.training
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]


def test_model_dir_without_classifier(tmp_path):
    model = _tiny_model()
    model.classifier = None
    save_model_dir(tmp_path / "m", model)
    loaded, cfg = load_model_dir(tmp_path / "m")
    assert cfg["classifier"] is None and loaded.num_classes is None
    with torch.no_grad():
        assert loaded(_images())["logits"] is None


def test_save_rejects_bad_config(tmp_path):
    model = _tiny_model()
    with pytest.raises(ValueError, match="unknown model config keys"):
        save_model_dir(tmp_path / "m", model, {"colour": "red"})
    with pytest.raises(ValueError, match="class names"):
        save_model_dir(tmp_path / "m", model, {"class_names": ["a"]})
    assert not (tmp_path / "m" / "model.safetensors").exists()


@pytest.fixture
def saved_dir(tmp_path):
    save_model_dir(tmp_path / "m", _tiny_model())
    return tmp_path / "m"


def test_load_model_dir_errors(tmp_path, saved_dir):
    with pytest.raises(CheckpointError, match="model directory not found"):
        load_model_dir(tmp_path / "nope")
    cfg_path = saved_dir / "config.json"
    cfg = json.loads(cfg_path.read_text())

    cfg_path.write_text(json.dumps({**cfg, "colour": "red"}))
    with pytest.raises(CheckpointError, match=r"config\.json: unknown model config keys \['colour'\]"):
        load_model_dir(saved_dir)

    cfg_path.write_text('{\n  "format": "locloc-model",\n  oops\n}')
    with pytest.raises(CheckpointError, match=r"config\.json:3: model config is not valid JSON"):
        load_model_dir(saved_dir)

    cfg_path.write_text(json.dumps({**cfg, "generator": {"type": "fcn", "kwargs": {}}}))
    with pytest.raises(CheckpointError, match="unknown generator type"):
        load_model_dir(saved_dir)

    cfg_path.write_text(json.dumps(cfg))
    weights = saved_dir / "model.safetensors"
    tensors = load_file(str(weights))
    del tensors["generator.trunk.up_3.conv.UConv.0.weight"]
    save_file(tensors, str(weights))
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*1 missing keys \(generator\.trunk\.up_3\.conv\.UConv\.0\.weight\)"):
        load_model_dir(saved_dir)

    weights.unlink()
    with pytest.raises(CheckpointError, match=r"model\.safetensors: checkpoint file not found"):
        load_model_dir(saved_dir)
    cfg_path.unlink()
    with pytest.raises(CheckpointError, match="model config not found"):
        load_model_dir(saved_dir)


def test_saved_model_backbone_can_be_reused(saved_dir):
    bb = build_backbone("vit_small_patch16_224", saved_dir / "model.safetensors", **TINY)
    ref = _tiny_model().backbone
    torch.testing.assert_close(bb(_images()).patch_tokens, ref(_images()).patch_tokens)


# ------------------------------------------------------------------ reference layouts


def _write_reference_files(tmp_path, model):
    bb_sd = dict(model.backbone.vit.state_dict())
    bb_sd["head.weight"] = torch.zeros(1000, 48)
    bb_sd["head.bias"] = torch.zeros(1000)
    paths = {"backbone": tmp_path / "deit.pth", "classifier": tmp_path / "cls.pth", "locator": tmp_path / "loc.pth"}
    torch.save({"model": bb_sd}, paths["backbone"])
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.classifier.state_dict().items()}}, paths["classifier"])
    torch.save({"state_dict": model.generator.state_dict()}, paths["locator"])
    return paths


@pytest.mark.parametrize("generator", ["unet", "deconv"])
def test_build_from_reference_files(tmp_path, generator):
    model = _tiny_model(generator, num_classes=6)
    p = _write_reference_files(tmp_path, model)
    kw = {"backbone_name": "vit_small_patch16_224", "backbone_kwargs": TINY}
    built = build_from_reference(p["backbone"], p["classifier"], p["locator"], **kw)
    assert built.num_classes == 6 and built.classifier.config["depth"] == 1
    x = _images()
    with torch.no_grad():
        a, b = model(x), built(x)
    torch.testing.assert_close(a["logits"], b["logits"], atol=0, rtol=0)
    torch.testing.assert_close(a["maps"], b["maps"], atol=0, rtol=0)
    other = "deconv" if generator == "unet" else "unet"
    with pytest.raises(CheckpointError, match=f"--generator {other} given"):
        build_from_reference(p["backbone"], p["classifier"], p["locator"], generator=other, **kw)
    with pytest.raises(CheckpointError, match=r"cls\.pth: not a generator checkpoint.*LFDM classifier"):
        build_from_reference(p["backbone"], p["classifier"], p["classifier"], **kw)
    with pytest.raises(CheckpointError, match=r"loc\.pth: not an LFDM classifier checkpoint"):
        build_from_reference(p["backbone"], p["locator"], p["locator"], **kw)
    with pytest.raises(CheckpointError, match=r"cls\.pth: not a backbone checkpoint"):
        build_from_reference(p["classifier"], p["classifier"], p["locator"], **kw)
