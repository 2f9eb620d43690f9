"""Faults: a run killed with SIGKILL, then rerun, leaves no partial file and ends with the
result of an uninterrupted run; a full disk while writing a checkpoint or results keeps the
previous file intact and ends with a one-line message.

Covered elsewhere, not repeated here:
- ``locloc masks`` killed mid-run, then resumed: tests/test_masks_cli.py
  ``test_sigkill_then_resume_equals_uninterrupted``;
- the training loop and the generator trainer killed after a checkpoint, then resumed
  (bit-exact): tests/test_train_resume.py.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from locloc.cli import main

BB = "vit_small_patch16_224"
TINY_JSON = json.dumps(dict(img_size=64, depth=2, embed_dim=48, num_heads=3))


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _leftovers(root: Path) -> list[Path]:
    """Temporary files of an interrupted atomic write."""
    return [p for p in root.rglob("*") if p.is_file() and ".tmp" in p.name]


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 120.0) -> bool:
    """SIGKILL ``proc`` as soon as ``ready()``; True when it was still running then."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.005)
    alive = proc.poll() is None
    if alive:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return alive


# ----------------------------------------------------------------------------- evaluate --out


@pytest.fixture(scope="module")
def eval_setup(tmp_path_factory):
    from locloc.data.synthetic import make_synthetic
    from locloc.models.backbone import build_backbone
    from locloc.models.classifier import LFDMClassifier
    from locloc.models.generator import LightGenerator
    from locloc.models.model_dir import save_model_dir
    from locloc.models.pipeline import LocLocModel

    base = tmp_path_factory.mktemp("faults_eval")
    data = make_synthetic(base / "cub", classes=2, train=1, test=12, size=64, seed=1, progress=False)
    torch.manual_seed(0)
    bb = build_backbone(BB, None, **json.loads(TINY_JSON))
    cls = LFDMClassifier(2, embed_dim=48, depth=1, num_heads=3, grid_size=bb.grid_size)
    model_dir = base / "model"
    save_model_dir(model_dir, LocLocModel(bb, cls, LightGenerator(in_channels=48)).eval(),
                   {"class_names": ["a", "b"]})
    return data, model_dir


def _eval_args(data: Path, model_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["evaluate", "--data-path", str(data), "--model-dir", str(model_dir), "--out", str(out),
            "--device", "cpu", "--workers", "0", *extra]


def _metrics(out: Path) -> dict:
    m = json.loads((out / "metrics.json").read_text())
    for volatile in ("seconds", "images_per_second", "data_path"):
        m.pop(volatile, None)
    return m


@pytest.mark.slow
def test_evaluate_killed_then_rerun(eval_setup, tmp_path):
    data, model_dir = eval_setup
    ref, out = tmp_path / "ref", tmp_path / "killed"
    assert main(_eval_args(data, model_dir, ref)) == 0
    # batch 1 slows the run down so that the kill lands while images are being scored
    cmd = [sys.executable, "-m", "locloc", *_eval_args(data, model_dir, out, "--batch-size", "1")]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    started = []

    def ready() -> bool:  # the first stderr line is printed once the model is loaded
        if not started:
            started.append(proc.stderr.readline())
        return True

    _kill_when(proc, ready)
    proc.stderr.close()
    if (out / "metrics.json").exists():  # either absent or complete, and then the CSV too
        json.loads((out / "metrics.json").read_text())
        assert (out / "per_image.csv").is_file()
    assert main(_eval_args(data, model_dir, out)) == 0
    assert _metrics(out) == _metrics(ref)
    assert (out / "per_image.csv").read_text() == (ref / "per_image.csv").read_text()
    assert not _leftovers(tmp_path)


def test_evaluate_disk_full_keeps_previous_results(eval_setup, tmp_path, monkeypatch, capsys):
    data, model_dir = eval_setup
    out = tmp_path / "out"
    assert main(_eval_args(data, model_dir, out, "--limit", "3")) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)  # every atomic write fails at its flush to disk
    assert main(_eval_args(data, model_dir, out)) == 2
    err = capsys.readouterr().err
    line = err[err.index("locloc evaluate: error: "):].rstrip("\n")
    assert "\n" not in line and "Traceback" not in err
    assert str(out) in line and "No space left on device" in line
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not _leftovers(tmp_path)


# ----------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def train_data(tmp_path_factory):
    from _toy_train import make_tiny_data

    return make_tiny_data(tmp_path_factory.mktemp("faults_train"), train=8, test=2)


def _train_args(command: str, data: Path, masks: Path, out: Path, epochs: int, *extra: str) -> list[str]:
    argv = [command, "--data-path", str(data), "--masks", str(masks), "--out", str(out), "--backbone", BB,
            "--backbone-kwargs", TINY_JSON, "--epochs", str(epochs), "--batch-size", "4", "--workers", "0",
            "--device", "cpu", "--lr", "1e-3", "--seed", "3", *extra]
    if command == "train-classifier":
        argv += ["--warmup-epochs", "1"]
    else:
        argv += ["--generator", "light"]
    return argv


def _epoch(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])


@pytest.mark.slow
def test_train_classifier_killed_then_resumed_equals_uninterrupted(train_data, tmp_path):
    data, masks = train_data
    full, part = tmp_path / "full", tmp_path / "part"

    def cli(*argv: str) -> list[str]:  # every run in a fresh process with the same threads
        return [sys.executable, "-m", "locloc", *argv]

    r = subprocess.run(cli(*_train_args("train-classifier", data, masks, full, 3)), env=_env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    cmd = cli(*_train_args("train-classifier", data, masks, part, 3))
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _kill_when(proc, lambda: (part / "last.pt").exists())
    # a write cut short leaves only a temporary file: every final name is complete
    assert 1 <= _epoch(part / "last.pt") <= 3
    if (part / "best.pt").exists():
        _epoch(part / "best.pt")
    r = subprocess.run(cli(*_train_args("train-classifier", data, masks, part, 3, "--resume")), env=_env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    a = load_file(full / "classifier.safetensors")
    b = load_file(part / "classifier.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    epochs = [json.loads(x)["epoch"] for x in (part / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]
    assert not _leftovers(part)


def test_disk_full_while_writing_a_checkpoint(train_data, tmp_path, monkeypatch, capsys):
    data, masks = train_data
    out = tmp_path / "run"
    real_save = torch.save
    calls = {"last": 0}

    def save(obj, f, *args, **kwargs):
        if ".last." in Path(str(f)).name:
            calls["last"] += 1
            if calls["last"] == 2:  # epoch 2: half the bytes reach the disk, then it is full
                real_save(obj, f, *args, **kwargs)
                Path(f).write_bytes(Path(f).read_bytes()[:1000])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    cfg = tmp_path / "small.yaml"  # a smaller generator and no validation: a faster run
    cfg.write_text("generator_kwargs: {mid_channels: 8, head_channels: [8, 8, 8]}\nval_split: none\n")
    small = ("--config", str(cfg))
    assert main(_train_args("train-generator", data, masks, out, 3, *small)) == 2
    err = capsys.readouterr().err
    line = err[err.index("locloc train-generator: error: "):].rstrip("\n")
    assert "\n" not in line and "Traceback" not in err
    assert str(out / "last.pt") in line and "No space left on device" in line and "--resume" in line
    assert _epoch(out / "last.pt") == 1  # the previous checkpoint survives, loadable
    assert not _leftovers(out)
    # once space is back, --resume continues from it
    monkeypatch.setattr(torch, "save", real_save)
    assert main(_train_args("train-generator", data, masks, out, 3, *small, "--resume")) == 0
    assert _epoch(out / "last.pt") == 3
