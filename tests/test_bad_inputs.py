"""Bad input at every entry point: each row must end with exit code 2 and one line on stderr
naming the file (and line) and the problem, never a traceback; a few odd-but-valid images must
work; ``--skip-bad`` skips and counts unreadable images.

Rows are ``CASES[name](env) -> (argv, needles)``; ``needles`` must all appear in the error line.
"""

from __future__ import annotations

import json
import pickle
import resource
import shutil
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from locloc.cli import main
from locloc.data import load_dataset
from locloc.errors import DataError
from locloc.fileio import open_image

BB = "vit_small_patch16_224"
TINY = dict(img_size=64, patch_size=16, depth=2, embed_dim=48, num_heads=3)
TINY_JSON = json.dumps(TINY)


# ----------------------------------------------------------------------------- crafted files


def bomb_png(path: Path, w: int = 100_000, h: int = 100_000) -> Path:
    """A ~100-byte PNG whose IHDR declares ``w x h`` RGB pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 256)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def truncated_jpeg(path: Path) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path, "JPEG", quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def png16(path: Path) -> Path:
    a = (np.arange(40 * 30, dtype=np.uint16).reshape(30, 40) * 50).astype(np.uint16)
    Image.fromarray(a).save(path, "PNG")
    assert Image.open(path).mode.startswith("I")
    return path


def cmyk_jpeg(path: Path) -> Path:
    Image.new("CMYK", (48, 40), (0, 200, 100, 20)).save(path, "JPEG")
    assert Image.open(path).mode == "CMYK"
    return path


def palette_transparent(path: Path) -> Path:
    im = Image.new("P", (40, 40), 0)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    im.paste(1, (10, 10, 30, 30))
    im.save(path, "PNG", transparency=0)
    assert "transparency" in Image.open(path).info
    return path


def one_pixel(path: Path) -> Path:
    Image.new("RGB", (1, 1), (200, 10, 10)).save(path, "PNG")
    return path


class _Evil:
    """Unpickling this would create ``marker``: weights_only loading must refuse it."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def evil_zip(path: Path, marker: Path) -> Path:
    torch.save({"model": {"w": torch.zeros(1)}, "x": _Evil(marker)}, path)
    return path


def evil_legacy(path: Path, marker: Path) -> Path:
    with open(path, "wb") as f:
        pickle.dump({"state_dict": _Evil(marker)}, f, protocol=2)
    return path


def truncate(path: Path, src: Path) -> Path:
    data = src.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


# ----------------------------------------------------------------------------- fixtures


@dataclass
class Env:
    tmp: Path
    data: Path  # a fresh, writable copy of the tiny data set
    shared: dict[str, Path]

    def __getattr__(self, name: str) -> Path:
        try:
            return self.shared[name]
        except KeyError:
            raise AttributeError(name) from None

    def sample(self, split: str, k: int = 0) -> Path:
        return load_dataset(self.data).split(split)[k].path


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> dict[str, Path]:
    """Read-only inputs: a tiny data set, its GT masks as a store, a tiny backbone file, a
    model directory, a finished generator run and the reference release's file layouts."""
    import cv2
    import timm
    from golden_weights import write_reference_files

    from locloc.data.synthetic import make_synthetic
    from locloc.masks.store import MaskStore
    from locloc.models.backbone import build_backbone
    from locloc.models.classifier import LFDMClassifier
    from locloc.models.generator import LightGenerator
    from locloc.models.model_dir import save_model_dir
    from locloc.models.pipeline import LocLocModel

    base = tmp_path_factory.mktemp("bad_inputs")
    data = make_synthetic(base / "cub", classes=2, train=2, test=2, size=64, seed=0, progress=False)
    store = MaskStore(base / "masks")
    ds = load_dataset(data)
    for s in ds.split("train") + ds.split("test"):
        m = cv2.imread(str(s.mask_path), cv2.IMREAD_GRAYSCALE)
        store.write(s.relpath, (m > 127).astype(np.uint8))
    torch.manual_seed(0)
    vit = timm.create_model(BB, pretrained=False, num_classes=0, **TINY)
    weights = base / "tiny_vit.pth"
    torch.save(vit.state_dict(), weights)
    bb = build_backbone(BB, weights, **TINY)
    cls = LFDMClassifier(2, embed_dim=48, depth=1, num_heads=3, grid_size=bb.grid_size)
    model_dir = base / "model"
    save_model_dir(model_dir, LocLocModel(bb, cls, LightGenerator(in_channels=48)).eval(),
                   {"class_names": list(ds.classes)})
    ref = write_reference_files(base / "reference")
    gen_run = base / "gen_run"
    rc = main(["train-generator", *_train_common(data, store.root, weights, gen_run), "--generator", "light"])
    assert rc == 0 and (gen_run / "last.pt").is_file()
    return {
        "clean": data, "masks": store.root, "weights": weights, "model_dir": model_dir,
        "ref_backbone": ref["backbone"], "ref_classifier": ref["classifier"],
        "ref_unet": ref["generator_unet"], "gen_run": gen_run,
    }


@pytest.fixture
def env(shared, tmp_path) -> Env:
    data = tmp_path / "data"
    shutil.copytree(shared["clean"], data)
    return Env(tmp=tmp_path, data=data, shared=shared)


# ----------------------------------------------------------------------------- commands


def _train_common(data, masks, weights, out) -> list[str]:
    return ["--data-path", str(data), "--masks", str(masks), "--out", str(out), "--backbone", BB,
            "--backbone-kwargs", TINY_JSON, "--weights", str(weights), "--epochs", "1",
            "--batch-size", "2", "--workers", "0", "--device", "cpu", "--val-split", "test"]


def evaluate(e: Env, *extra: str, data: Path | None = None, model_dir: Path | None = None) -> list[str]:
    return ["evaluate", "--data-path", str(data or e.data), "--model-dir", str(model_dir or e.model_dir),
            "--device", "cpu", "--workers", "0", "--batch-size", "4", *extra]


def masks(e: Env, *extra: str, weights: Path | None = None) -> list[str]:
    return ["masks", "--data-path", str(e.data), "--out", str(e.tmp / "store"), "--backbone", BB,
            "--backbone-args", TINY_JSON, "--weights", str(weights or e.weights), "--workers", "0",
            "--iterations", "1", "--batch-size", "4", "--no-progress", "--split", "all", *extra]


def train_generator(e: Env, *extra: str, weights: Path | None = None) -> list[str]:
    return ["train-generator", *_train_common(e.data, e.masks, weights or e.weights, e.tmp / "gen"),
            "--generator", "light", *extra]


def train_classifier(e: Env, *extra: str, weights: Path | None = None) -> list[str]:
    return ["train-classifier", *_train_common(e.data, e.masks, weights or e.weights, e.tmp / "cls"),
            "--warmup-epochs", "0", *extra]


def predict(e: Env, *inputs: Path | str, model_dir: Path | None = None) -> list[str]:
    return ["predict", *map(str, inputs), "--model-dir", str(model_dir or e.model_dir), "--device", "cpu",
            "--out", str(e.tmp / "pred.jsonl")]


def convert(e: Env, backbone: Path | None = None, classifier: Path | None = None,
            locator: Path | None = None, *extra: str) -> list[str]:
    argv = ["convert", "--backbone-weights", str(backbone or e.ref_backbone), "--locator",
            str(locator or e.ref_unet), "--out", str(e.tmp / "converted")]
    if classifier is not None:
        argv += ["--classifier", str(classifier)]
    return argv + list(extra)


def _error_line(capsys, argv: list[str]) -> str:
    """Run the CLI; assert exit 2, no traceback and one error line, last on stderr."""
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse rejected an option value: usage line + one error line
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2, f"exit {rc}; stderr: {err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    prefix = f"locloc {argv[0]}: error: "
    assert err.count(prefix) == 1, err[-3000:]
    message = err[err.index(prefix):].rstrip("\n")
    assert "\n" not in message and "\r" not in message, err[-3000:]  # one line, and the last
    return message


# ----------------------------------------------------------------------------- the rows

Case = Callable[[Env], tuple[list[str], tuple[str, ...]]]
CASES: dict[str, Case] = {}


def case(name: str) -> Callable[[Case], Case]:
    def deco(fn: Case) -> Case:
        assert name not in CASES
        CASES[name] = fn
        return fn

    return deco


def _edit(path: Path, line: int, text: str | None) -> None:
    """Replace 1-based ``line`` of ``path`` with ``text`` (None: delete it)."""
    lines = path.read_text().splitlines()
    if text is None:
        del lines[line - 1]
    else:
        lines[line - 1] = text
    path.write_text("\n".join(lines) + "\n")


# -- data set paths and annotation files (read before any model is built)


@case("data-path-missing")
def _(e):
    return evaluate(e, data=e.tmp / "nowhere"), ("nowhere", "data set path not found")


@case("data-path-empty-dir")
def _(e):
    (e.tmp / "empty").mkdir()
    return evaluate(e, data=e.tmp / "empty"), ("empty", "not a recognised data set")


@case("data-path-is-a-file")
def _(e):
    return evaluate(e, data=e.sample("test")), (e.sample("test").name, "not a recognised data set")


@case("images.txt-is-a-directory")
def _(e):
    (e.data / "images.txt").unlink()
    (e.data / "images.txt").mkdir()
    return evaluate(e, "--data-set", "CUB"), ("images.txt", "found a directory")


@case("bounding_boxes.txt-missing")
def _(e):
    (e.data / "bounding_boxes.txt").unlink()
    return evaluate(e, "--data-set", "CUB"), ("bounding_boxes.txt", "file not found")


@case("images.txt-column-count")
def _(e):
    _edit(e.data / "images.txt", 2, "2")
    return evaluate(e), ("images.txt:2", "expected 2 columns")


@case("labels-non-numeric")
def _(e):
    _edit(e.data / "image_class_labels.txt", 3, "3 two")
    return evaluate(e), ("image_class_labels.txt:3", "'two' is not an integer")


@case("images.txt-duplicate-id")
def _(e):
    _edit(e.data / "images.txt", 2, (e.data / "images.txt").read_text().splitlines()[0])
    return evaluate(e), ("images.txt:2", "duplicate id 1")


@case("boxes-missing-id")
def _(e):
    _edit(e.data / "bounding_boxes.txt", 4, None)
    return evaluate(e), ("bounding_boxes.txt", "no line for id 4")


@case("labels-unknown-id")
def _(e):
    _edit(e.data / "image_class_labels.txt", 1, "99 1")
    return evaluate(e), ("image_class_labels.txt:1", "id 99 is not in images.txt")


@case("label-out-of-range")
def _(e):
    _edit(e.data / "image_class_labels.txt", 5, "5 3")
    return evaluate(e), ("image_class_labels.txt:5", "label 3 out of range 1..2")


@case("label-zero")
def _(e):
    _edit(e.data / "image_class_labels.txt", 5, "5 0")
    return evaluate(e), ("image_class_labels.txt:5", "label 0 out of range")


@case("box-negative-width")
def _(e):
    _edit(e.data / "bounding_boxes.txt", 1, "1 5 5 -3 10")
    return evaluate(e), ("bounding_boxes.txt:1", "must be > 0")


@case("box-zero-height")
def _(e):
    _edit(e.data / "bounding_boxes.txt", 2, "2 5 5 10 0")
    return evaluate(e), ("bounding_boxes.txt:2", "must be > 0")


@case("box-nan")
def _(e):
    _edit(e.data / "bounding_boxes.txt", 3, "3 nan 5 10 10")
    return evaluate(e), ("bounding_boxes.txt:3", "finite")


@case("box-infinite")
def _(e):
    _edit(e.data / "bounding_boxes.txt", 3, "3 5 5 inf 10")
    return evaluate(e), ("bounding_boxes.txt:3", "finite")


@case("box-non-numeric")
def _(e):
    _edit(e.data / "bounding_boxes.txt", 6, "6 5 five 10 10")
    return evaluate(e), ("bounding_boxes.txt:6", "'five' is not a number")


@case("box-outside-image")
def _(e):
    _edit(e.data / "bounding_boxes.txt", 7, "7 500 500 10 10")
    return evaluate(e), ("bounding_boxes.txt:7", "outside the 64x64 image")


@case("box-column-count")
def _(e):
    _edit(e.data / "bounding_boxes.txt", 8, "8 1 2 3")
    return evaluate(e), ("bounding_boxes.txt:8", "expected 5 columns")


@case("split-flag-invalid")
def _(e):
    _edit(e.data / "train_test_split.txt", 2, "2 7")
    return evaluate(e), ("train_test_split.txt:2", "split flag")


@case("path-traversal")
def _(e):
    _edit(e.data / "images.txt", 1, "1 ../../../etc/passwd")
    return evaluate(e), ("images.txt:1", "without '..'")


@case("absolute-image-path")
def _(e):
    _edit(e.data / "images.txt", 1, "1 /etc/passwd")
    return evaluate(e), ("images.txt:1", "must be relative")


@case("classes-empty")
def _(e):
    (e.data / "classes.txt").write_text("")
    return evaluate(e), ("classes.txt", "no classes")


@case("images.txt-not-utf8")
def _(e):
    (e.data / "images.txt").write_bytes(b"1 \xff\xfe\x00bad.png\n")
    return evaluate(e), ("images.txt", "not UTF-8")


@case("sizes-non-positive")
def _(e):
    _edit(e.data / "sizes.txt", 1, "1 0 64")
    return evaluate(e), ("sizes.txt:1", "must be positive")


@case("ilsvrc-list-malformed")
def _(e):
    d = e.tmp / "ilsvrc"
    d.mkdir()
    (d / "val_list.txt").write_text("ILSVRC2012_val_00000001.JPEG 65 1 2\nnot a line at all really\n")
    return evaluate(e, data=d), ("val_list.txt:",)


@case("ilsvrc-xml-malformed")
def _(e):
    d = e.tmp / "ilsvrc_xml"
    (d / "val_xml").mkdir(parents=True)
    (d / "val_xml" / "ILSVRC2012_val_00000001.xml").write_text("<annotation><object>\n<oops")
    return evaluate(e, data=d), ("ILSVRC2012_val_00000001.xml", "malformed XML")


@case("ilsvrc-list-path-traversal")
def _(e):
    d = e.tmp / "ilsvrc_list"
    d.mkdir()
    (d / "val_list.txt").write_text("../../secret.JPEG 0 1 1 5 5\n")
    return evaluate(e, data=d), ("val_list.txt:1", "without '..'")


@case("ilsvrc-xml-path-traversal")
def _(e):
    d = e.tmp / "ilsvrc_xml"
    (d / "val_xml").mkdir(parents=True)
    (d / "val_xml" / "a.xml").write_text(
        "<annotation><filename>../../../etc/passwd</filename><object><name>n01</name>"
        "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object></annotation>"
    )
    return evaluate(e, data=d), ("a.xml", "without '..'")


@case("split-unknown")
def _(e):
    return evaluate(e, "--split", "val"), ("no split 'val'",)


# -- model directories (evaluate / predict)


def _model_copy(e: Env) -> Path:
    d = e.tmp / "model"
    shutil.copytree(e.model_dir, d)
    return d


def _edit_config(d: Path, fn: Callable[[dict], None]) -> None:
    cfg = json.loads((d / "config.json").read_text())
    fn(cfg)
    (d / "config.json").write_text(json.dumps(cfg))


@case("model-dir-missing")
def _(e):
    return evaluate(e, model_dir=e.tmp / "nomodel"), ("nomodel", "not found")


@case("model-dir-empty")
def _(e):
    (e.tmp / "m").mkdir()
    return evaluate(e, model_dir=e.tmp / "m"), ("config.json", "model config not found")


@case("model-dir-is-a-file")
def _(e):
    return evaluate(e, model_dir=e.weights), (e.weights.name,)


@case("model-config-unknown-key")
def _(e):
    d = _model_copy(e)
    _edit_config(d, lambda c: c.update(colour="blue"))
    return evaluate(e, model_dir=d), ("config.json", "unknown model config keys", "colour")


@case("model-config-invalid-json")
def _(e):
    d = _model_copy(e)
    (d / "config.json").write_text('{"format": "locloc-model",\n "version": }')
    return evaluate(e, model_dir=d), ("config.json:2", "not valid JSON")


@case("model-config-invalid-value")
def _(e):
    d = _model_copy(e)
    _edit_config(d, lambda c: c["generator"].update(type="transformer"))
    return evaluate(e, model_dir=d), ("config.json", "transformer")


@case("model-config-wrong-class-count")
def _(e):
    d = _model_copy(e)
    _edit_config(d, lambda c: c.update(class_names=["a", "b", "c"]))
    return evaluate(e, model_dir=d), ("config.json", "3 class names for a classifier with 2 outputs")


@case("model-safetensors-missing-tensor")
def _(e):
    from safetensors.torch import load_file, save_file

    d = _model_copy(e)
    sd = load_file(d / "model.safetensors")
    gone = next(k for k in sd if k.startswith("generator."))
    del sd[gone]
    save_file(sd, d / "model.safetensors")
    return evaluate(e, model_dir=d), ("model.safetensors", gone)


@case("model-safetensors-truncated")
def _(e):
    d = _model_copy(e)
    truncate(d / "model.safetensors", e.model_dir / "model.safetensors")
    return evaluate(e, model_dir=d), ("model.safetensors",)


@case("model-safetensors-is-a-pickle")
def _(e):
    d = _model_copy(e)
    marker = e.tmp / "PWNED"
    evil_zip(d / "model.safetensors", marker)
    return evaluate(e, model_dir=d), ("model.safetensors",)


@case("predict-model-wrong-class-count")
def _(e):
    d = _model_copy(e)
    _edit_config(d, lambda c: c.update(class_names=["a"]))
    return predict(e, e.sample("test"), model_dir=d), ("config.json", "1 class names")


# -- predict inputs


@case("predict-missing")
def _(e):
    return predict(e, e.tmp / "ghost.png"), ("ghost.png", "no such file")


@case("predict-empty-dir")
def _(e):
    (e.tmp / "imgs").mkdir()
    return predict(e, e.tmp / "imgs"), ("imgs", "no image files")


@case("predict-glob-no-match")
def _(e):
    return predict(e, str(e.tmp / "*.png")), ("matches no image files",)


@case("predict-zero-byte")
def _(e):
    (e.tmp / "zero.png").write_bytes(b"")
    return predict(e, e.tmp / "zero.png"), ("zero.png", "empty")


@case("predict-truncated-jpeg")
def _(e):
    return predict(e, truncated_jpeg(e.tmp / "cut.jpg")), ("cut.jpg", "truncated")


@case("predict-text-as-jpg")
def _(e):
    (e.tmp / "notes.jpg").write_text("hello, not a JPEG\n")
    return predict(e, e.tmp / "notes.jpg"), ("notes.jpg", "not a readable image")


@case("predict-bomb")
def _(e):
    return predict(e, bomb_png(e.tmp / "bomb.png")), ("bomb.png", "image too large")


# -- checkpoints: convert (reference release files)


@case("convert-backbone-missing")
def _(e):
    return convert(e, backbone=e.tmp / "no.pth"), ("no.pth", "not found")


@case("convert-backbone-zero-byte")
def _(e):
    (e.tmp / "zero.pth").write_bytes(b"")
    return convert(e, backbone=e.tmp / "zero.pth"), ("zero.pth", "empty")


@case("convert-backbone-not-a-checkpoint")
def _(e):
    (e.tmp / "notes.pth").write_text("these are my notes\n")
    return convert(e, backbone=e.tmp / "notes.pth"), ("notes.pth", "not a")


@case("convert-backbone-truncated")
def _(e):
    return convert(e, backbone=truncate(e.tmp / "cut.pth", e.ref_backbone)), ("cut.pth", "truncated or corrupt")


@case("convert-backbone-other-architecture")
def _(e):
    return convert(e, backbone=e.ref_unet), (e.ref_unet.name, "not a backbone checkpoint")


@case("convert-backbone-wrong-size")
def _(e):
    return convert(e, backbone=e.weights), (e.weights.name, "cannot load as backbone")


@case("convert-backbone-is-a-directory")
def _(e):
    return convert(e, backbone=e.tmp), (str(e.tmp), "directory")


@case("convert-classifier-other-architecture")
def _(e):
    return convert(e, classifier=e.ref_unet), (e.ref_unet.name, "not an LFDM classifier checkpoint")


@case("convert-classes-more-than-outputs")
def _(e):
    names = e.tmp / "classes.txt"
    names.write_text("".join(f"{i} c{i}\n" for i in range(1, 1002)))
    return convert(e, None, e.ref_classifier, None, "--classes", str(names)), (
        "classes.txt", "1001 class names", "1000 outputs")


@case("convert-locator-other-architecture")
def _(e):
    return convert(e, locator=e.ref_classifier), (e.ref_classifier.name, "not a generator checkpoint")


@case("convert-locator-safetensors-missing-tensor")
def _(e):
    from safetensors.torch import save_file

    sd = torch.load(e.ref_unet, weights_only=True)
    sd = sd.get("model", sd.get("state_dict", sd)) if isinstance(sd, dict) else sd
    sd = {k: v.contiguous() for k, v in sd.items()}
    gone = sorted(sd)[len(sd) // 2]
    del sd[gone]
    save_file(sd, e.tmp / "loc.safetensors")
    return convert(e, locator=e.tmp / "loc.safetensors"), ("loc.safetensors", "missing")


@case("convert-thresholds-out-of-range")
def _(e):
    return convert(e, None, None, None, "--thresholds", "0.5", "1.5"), ("--thresholds", "1.5")


# -- checkpoints that run code when unpickled: refused, and the marker is never created

for _kind, _maker in (("zip", evil_zip), ("legacy", evil_legacy)):

    @case(f"convert-malicious-pickle-{_kind}")
    def _(e, _maker=_maker):
        return convert(e, backbone=_maker(e.tmp / "evil.pth", e.tmp / "PWNED")), ("evil.pth", "refused for safety")

    @case(f"masks-weights-malicious-pickle-{_kind}")
    def _(e, _maker=_maker):
        return masks(e, weights=_maker(e.tmp / "evil.pth", e.tmp / "PWNED")), ("evil.pth", "refused for safety")

    @case(f"train-resume-malicious-pickle-{_kind}")
    def _(e, _maker=_maker):
        evil = _maker(e.tmp / "evil.pt", e.tmp / "PWNED")
        return train_generator(e, "--resume", str(evil)), ("evil.pt", "refused for safety")


# -- masks / trainer options and checkpoints


@case("masks-weights-truncated")
def _(e):
    return masks(e, weights=truncate(e.tmp / "cut.pth", e.weights)), ("cut.pth", "truncated or corrupt")


@case("masks-weights-other-architecture")
def _(e):
    return masks(e, weights=e.ref_unet), (e.ref_unet.name, "not a backbone checkpoint")


@case("masks-backbone-args-invalid-json")
def _(e):
    argv = masks(e)
    argv[argv.index("--backbone-args") + 1] = "{img_size: 64"
    return argv, ("--backbone-kwargs", "not valid JSON")


@case("masks-backbone-args-checkpoint-path")
def _(e):
    argv = masks(e)
    argv[argv.index("--backbone-args") + 1] = json.dumps({**TINY, "checkpoint_path": str(e.weights)})
    return argv, ("checkpoint_path", "--weights")


@case("model-config-backbone-checkpoint-path")
def _(e):
    d = _model_copy(e)
    evil = evil_zip(e.tmp / "evil.pth", e.tmp / "PWNED")
    _edit_config(d, lambda c: c["backbone"]["timm_kwargs"].update(checkpoint_path=str(evil)))
    return evaluate(e, model_dir=d), ("config.json", "checkpoint_path")


@case("masks-import-h5-garbage")
def _(e):
    (e.tmp / "masks.h5").write_text("not hdf5")
    return masks(e, "--import-h5", str(e.tmp / "masks.h5"), "--split", "test"), ("masks.h5",)


@case("masks-trimap-mid-outside-the-cuts")
def _(e):
    return masks(e, "--fg", "0.5", "--bg", "0.1", "--mid", "0.8"), ("mid_frac=0.8", "[bg_frac, fg_frac]")


@case("masks-trimap-mid-not-a-fraction")
def _(e):
    return masks(e, "--mid", "1.5"), ("mid",)


@case("masks-out-is-a-file")
def _(e):
    (e.tmp / "store").write_text("a file")
    return masks(e), ("store",)


@case("train-masks-missing")
def _(e):
    argv = train_generator(e)
    argv[argv.index("--masks") + 1] = str(e.tmp / "nomasks")
    return argv, ("nomasks", "mask store not found")


@case("train-masks-incomplete")
def _(e):
    part = e.tmp / "some_masks"
    shutil.copytree(e.masks, part)
    next(p for p in sorted(part.rglob("*.png"))).unlink()
    argv = train_classifier(e)
    argv[argv.index("--masks") + 1] = str(part)
    return argv, ("some_masks", "have no mask")


@case("train-weights-other-architecture")
def _(e):
    return train_generator(e, weights=e.ref_unet), (e.ref_unet.name, "not a backbone checkpoint")


@case("train-resume-truncated")
def _(e):
    cut = truncate(e.tmp / "cut.pt", e.gen_run / "last.pt")
    return train_generator(e, "--resume", str(cut)), ("cut.pt", "cannot read training checkpoint")


@case("train-resume-not-a-checkpoint")
def _(e):
    torch.save({"weights": torch.zeros(2)}, e.tmp / "other.pt")
    return train_generator(e, "--resume", str(e.tmp / "other.pt")), ("other.pt", "not a LocLoc training checkpoint")


@case("train-resume-other-architecture")
def _(e):
    return train_classifier(e, "--resume", str(e.gen_run / "last.pt")), ("last.pt", "does not match")


@case("train-resume-missing")
def _(e):
    return train_classifier(e, "--resume", str(e.tmp / "gone.pt")), ("gone.pt", "not found")


@case("train-generator-dir-other-backbone")
def _(e):
    return train_classifier(e, "--generator-dir", str(e.ref_unet.parent)), (str(e.ref_unet.parent),)


@case("train-backbone-kwargs-not-json")
def _(e):
    argv = train_generator(e)
    argv[argv.index("--backbone-kwargs") + 1] = "{img_size"
    return argv, ("--backbone-kwargs",)


# -- trainer YAML configs


def _with_config(e: Env, text: str, trainer=train_generator) -> list[str]:
    (e.tmp / "cfg.yaml").write_text(text)
    return trainer(e, "--config", str(e.tmp / "cfg.yaml"))


@case("config-unknown-key")
def _(e):
    return _with_config(e, "epochs: 1\nlearning_rate: 0.1\n"), ("cfg.yaml", "unknown key 'learning_rate'")


@case("config-invalid-value")
def _(e):
    return _with_config(e, "mask_threshold: 2.0\n"), ("cfg.yaml", "mask_threshold", "[0, 1)")


@case("config-wrong-type")
def _(e):
    return _with_config(e, "warmup_epochs: many\n", train_classifier), ("cfg.yaml", "warmup_epochs", "integer")


@case("config-bad-choice")
def _(e):
    return _with_config(e, "generator: resnet\n"), ("cfg.yaml", "generator", "must be one of")


@case("config-invalid-yaml")
def _(e):
    return _with_config(e, "epochs: 1\nlr: [0.1\nseed: 3\n"), ("cfg.yaml:", "invalid YAML")


@case("config-not-a-mapping")
def _(e):
    return _with_config(e, "- epochs\n- 1\n"), ("cfg.yaml", "expected a mapping")


@case("config-missing")
def _(e):
    return train_generator(e, "--config", str(e.tmp / "absent.yaml")), ("absent.yaml", "config file not found")


@case("config-is-a-directory")
def _(e):
    return train_generator(e, "--config", str(e.tmp)), (str(e.tmp),)


# -- unreadable images inside a data set, for every command that reads a data set

IMAGE_DEFECTS: dict[str, tuple[Callable[[Path], None], str]] = {
    "zero-byte": (lambda p: p.write_bytes(b""), "empty"),
    "truncated-jpeg": (truncated_jpeg, "truncated"),
    "text-as-image": (lambda p: p.write_text("this is text, not an image\n"), "not a readable image"),
    "bomb": (lambda p: bomb_png(p), "image too large"),
    "missing": (lambda p: p.unlink(), "not found"),
    "directory": (lambda p: (p.unlink(), p.mkdir()), "directory"),
}
DATA_COMMANDS = {
    "evaluate": (evaluate, "test"),
    "masks": (masks, "train"),
    "train-generator": (train_generator, "train"),
    "train-classifier": (train_classifier, "train"),
}

for _defect, (_make, _needle) in IMAGE_DEFECTS.items():
    for _cmd, (_builder, _split) in DATA_COMMANDS.items():

        @case(f"{_cmd}-image-{_defect}")
        def _(e, _make=_make, _needle=_needle, _builder=_builder, _split=_split):
            bad = e.sample(_split, 1)
            _make(bad)
            return _builder(e), (bad.name, _needle)


@case("evaluate-image-truncated-with-loader-workers")
def _(e):
    bad = truncated_jpeg(e.sample("test", 2))
    argv = evaluate(e)
    argv[argv.index("--workers") + 1] = "2"
    return argv, (bad.name, "truncated")


@case("train-generator-image-bomb-with-loader-workers")
def _(e):
    bad = e.sample("train", 0)
    bomb_png(bad)
    argv = train_generator(e)
    argv[argv.index("--workers") + 1] = "2"
    return argv, (bad.name, "image too large")


# ----------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gives_one_line_error(name, env, capsys):
    argv, needles = CASES[name](env)
    line = _error_line(capsys, argv)
    for n in needles:
        assert n in line, (n, line)
    assert not (env.tmp / "PWNED").exists(), "a checkpoint ran code while loading"
    assert not [p for p in env.tmp.rglob("*.tmp*") if p.is_file()], "a partial file was left"


def test_case_count():
    assert len(CASES) >= 40


def test_bomb_is_refused_without_decoding(tmp_path):
    path = bomb_png(tmp_path / "bomb.png")
    assert path.stat().st_size < 200
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(DataError, match="image too large"):
        open_image(path)
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kb < 100_000  # 10^10 RGB pixels would need 30 GB


ODD_IMAGES = {"png16": png16, "cmyk": cmyk_jpeg, "palette-transparency": palette_transparent,
              "one-pixel": one_pixel}


@pytest.mark.parametrize("kind", list(ODD_IMAGES))
def test_odd_but_valid_images_are_read_as_rgb(kind, tmp_path):
    path = ODD_IMAGES[kind](tmp_path / f"{kind}.img")
    im = open_image(path)
    assert im.mode == "RGB" and im.size == Image.open(path).size
    a = np.asarray(im)
    if kind == "palette-transparency":  # transparent areas composited on white, opaque red kept
        assert tuple(a[0, 0]) == (255, 255, 255) and tuple(a[20, 20]) == (255, 0, 0)
    if kind == "png16":  # scaled to 8 bits, not clipped
        assert a.max() > 100 and a.min() < 10


def test_odd_images_work_in_predict_evaluate_and_masks(env, capsys):
    paths = []
    for k, make in enumerate(ODD_IMAGES.values()):
        p = env.sample("test", k)
        make(p)  # keeps the file name; PIL reads by content
        paths.append(p)
    assert main(predict(env, *paths)) == 0
    rows = [json.loads(x) for x in (env.tmp / "pred.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and rows[3]["image_size"] == [1, 1]
    for r in rows:
        w, h = r["image_size"]
        x0, y0, x1, y1 = r["box"]
        assert 0 <= x0 <= x1 <= w and 0 <= y0 <= y1 <= h
    assert main(evaluate(env, "--out", str(env.tmp / "ev"))) == 0
    assert json.loads((env.tmp / "ev" / "metrics.json").read_text())["num_images"] == 4
    assert main(masks(env, "--split", "test")) == 0
    assert len(list((env.tmp / "store").rglob("*.png"))) == 4
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("command", list(DATA_COMMANDS))
def test_skip_bad_skips_and_counts(command, env, capsys):
    builder, split = DATA_COMMANDS[command]
    bad = [env.sample(split, 0), env.sample(split, 1)]
    truncated_jpeg(bad[0])
    bomb_png(bad[1])
    assert main(builder(env, "--skip-bad")) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"skipped 2 unreadable image(s): first {bad[0]}" in err
    if command == "masks":
        made = {p.name for p in (env.tmp / "store").rglob("*.png")}
        assert len(made) == 6 and not {b.name for b in bad} & made
    # without the flag the same data set stops at the first bad image
    shutil.rmtree(env.tmp / {"evaluate": "x", "masks": "store", "train-generator": "gen",
                             "train-classifier": "cls"}[command], ignore_errors=True)
    line = _error_line(capsys, builder(env))
    assert bad[0].name in line


def test_skip_bad_with_every_image_bad_is_an_error(env, capsys):
    for s in load_dataset(env.data).split("test"):
        s.path.write_bytes(b"")
    line = _error_line(capsys, evaluate(env, "--skip-bad"))
    assert "no readable images" in line and "skipped 4 unreadable image(s)" in line
