"""``locloc masks`` end to end on a tiny CUB-layout data set with a tiny random ViT."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from locloc.cli import main
from locloc.errors import ConfigError
from locloc.masks.grabcut import GrabCutMasker
from locloc.masks.runner import mask_samples, parse_shard, resolve_shard, shard_samples
from locloc.masks.store import MaskStore

TINY = '{"img_size": 64, "depth": 2, "embed_dim": 48, "num_heads": 3}'
BACKBONE = "vit_small_patch16_224"
N_TRAIN, N_TEST = 10, 2


def _make_cub(root: Path, n_train: int = N_TRAIN, n_test: int = N_TEST) -> Path:
    """Coloured discs on noisy backgrounds, CUB layout, with GT boxes and GT masks."""
    rng = np.random.default_rng(0)
    lines = {k: [] for k in ("images", "labels", "split", "boxes")}
    for i in range(1, n_train + n_test + 1):
        h, w = int(rng.integers(60, 90)), int(rng.integers(60, 90))
        img = rng.integers(40, 120, (h, w, 3)).astype(np.uint8)
        gt = np.zeros((h, w), np.uint8)
        cx, cy, r = int(rng.integers(25, w - 25)), int(rng.integers(25, h - 25)), int(rng.integers(10, 18))
        cv2.circle(gt, (cx, cy), r, 255, -1)
        img[gt > 0] = (200, 40, 220) if i % 2 else (30, 220, 60)
        cls = f"{1 + i % 2:03d}.Shape{i % 2}"
        rel = f"{cls}/img_{i:03d}.jpg"
        (root / "images" / cls).mkdir(parents=True, exist_ok=True)
        (root / "segmentations" / cls).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "images" / rel), img)
        cv2.imwrite(str(root / "segmentations" / cls / f"img_{i:03d}.png"), gt)
        lines["images"].append(f"{i} {rel}")
        lines["labels"].append(f"{i} {1 + i % 2}")
        lines["split"].append(f"{i} {1 if i <= n_train else 0}")
        lines["boxes"].append(f"{i} {cx - r} {cy - r} {2 * r + 1} {2 * r + 1}")
    (root / "images.txt").write_text("\n".join(lines["images"]) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(lines["labels"]) + "\n")
    (root / "train_test_split.txt").write_text("\n".join(lines["split"]) + "\n")
    (root / "bounding_boxes.txt").write_text("\n".join(lines["boxes"]) + "\n")
    (root / "classes.txt").write_text("1 001.Shape1\n2 002.Shape0\n")
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import timm

    base = tmp_path_factory.mktemp("masks_cli")
    data = _make_cub(base / "cub")
    torch.manual_seed(0)
    vit = timm.create_model(BACKBONE, pretrained=False, num_classes=0, img_size=64, depth=2, embed_dim=48, num_heads=3)
    weights = base / "tiny_vit.pth"
    torch.save(vit.state_dict(), weights)
    return data, weights


def _args(data, weights, out, *extra):
    return [
        "masks", "--data-path", str(data), "--out", str(out), "--backbone", BACKBONE,
        "--backbone-args", TINY, "--weights", str(weights), "--iterations", "1",
        "--batch-size", "4", "--no-progress", *extra,
    ]


def _snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def _assert_same_masks(a: dict[str, bytes], b: dict[str, bytes]) -> None:
    """Same files, and each mask equal up to a few pixels: runs that batch the backbone
    differently (shards, batch size, thread count) may differ in the last float bit of the
    attention, which can flip a trimap label at a threshold and GrabCut's answer there."""
    assert sorted(a) == sorted(b)
    for key in a:
        ma = cv2.imdecode(np.frombuffer(a[key], np.uint8), cv2.IMREAD_GRAYSCALE) > 0
        mb = cv2.imdecode(np.frombuffer(b[key], np.uint8), cv2.IMREAD_GRAYSCALE) > 0
        assert ma.shape == mb.shape
        assert (ma != mb).mean() <= 0.02, key


def test_end_to_end_report_and_hdf5(tiny, tmp_path, capsys):
    data, weights = tiny
    out = tmp_path / "m"
    rc = main(_args(data, weights, out, "--workers", "0", "--report", "--hdf5", str(tmp_path / "m.h5")))
    assert rc == 0
    store = MaskStore(out)
    assert len(store) == N_TRAIN
    for key in store:
        m = store.read(key)
        img = cv2.imread(str(data / "images" / key.replace(".png", ".jpg")))
        assert m.shape == img.shape[:2]
    import json

    report = json.loads((out / "report.json").read_text())["splits"]["train"]
    assert report["grabcut"]["n_boxes"] == N_TRAIN and report["grabcut"]["n_masks"] == N_TRAIN
    assert report["attention"]["n_boxes"] == N_TRAIN
    assert 0.0 <= report["grabcut"]["mean_mask_iou"] <= 1.0
    assert "grabcut" in capsys.readouterr().out
    from locloc.masks.store import HDF5Store

    with HDF5Store(tmp_path / "m.h5") as h:
        assert len(h) == N_TRAIN
        for key in store:
            assert np.array_equal(h.read(key), store.read(key))
    # Rerun: everything is skipped, nothing changes.
    before = _snapshot(out)
    assert main(_args(data, weights, out, "--workers", "0")) == 0
    assert _snapshot(out) == before


def test_two_shards_partition_and_match_single_run(tiny, tmp_path):
    data, weights = tiny
    full, sharded = tmp_path / "full", tmp_path / "sharded"
    assert main(_args(data, weights, full, "--workers", "0")) == 0
    assert main(_args(data, weights, sharded, "--workers", "2", "--shard", "0/2")) == 0
    first = set(_snapshot(sharded))
    assert main(_args(data, weights, sharded, "--workers", "0", "--shard", "1/2")) == 0
    second = set(_snapshot(sharded)) - first
    assert first and second and not first & second
    assert len(first) + len(second) == N_TRAIN
    # Workers or not, sharded or not: the same masks (fixed cv2 RNG seed).
    _assert_same_masks(_snapshot(sharded), _snapshot(full))


def test_sigkill_then_resume_equals_uninterrupted(tiny, tmp_path):
    data, weights = tiny
    ref, out = tmp_path / "ref", tmp_path / "killed"
    assert main(_args(data, weights, ref, "--workers", "0", "--iterations", "3")) == 0
    # Slow the run down (many iterations, batch 1) so the kill lands mid-way.
    cmd = [sys.executable, "-m", "locloc", *_args(data, weights, out, "--workers", "0", "--iterations", "3", "--batch-size", "1")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None and len(_snapshot(out) if out.exists() else {}) < 2:
        time.sleep(0.01)
    killed_mid_run = proc.poll() is None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = _snapshot(out)
    for data_bytes in partial.values():  # whatever is visible is complete
        assert cv2.imdecode(np.frombuffer(data_bytes, np.uint8), cv2.IMREAD_GRAYSCALE) is not None
    if killed_mid_run:
        assert len(partial) < N_TRAIN
    assert main(_args(data, weights, out, "--workers", "0", "--iterations", "3")) == 0
    _assert_same_masks(_snapshot(out), _snapshot(ref))
    leftovers = [p for p in out.rglob("*") if p.name.startswith(".") or ".tmp" in p.name]
    assert leftovers == [out / ".lock"]  # the writers' lock file (empty) is the only hidden file


def test_concurrent_writers_are_refused_but_shards_share(tiny, tmp_path, capsys):
    data, weights = tiny
    out = tmp_path / "m"
    store = MaskStore(out)
    with store.writer_lock(exclusive=True):  # a whole-split run is writing
        assert main(_args(data, weights, out)) == 2
        assert "another run is writing masks" in capsys.readouterr().err
        assert main(_args(data, weights, out, "--shard", "0/2")) == 2
        assert not list(out.rglob("*.png"))
    with store.writer_lock(exclusive=False):  # shard 1/2 is writing
        assert main(_args(data, weights, out, "--shard", "0/2")) == 0  # another shard may join
        assert main(_args(data, weights, out)) == 2  # a whole-split run may not
        assert "another run is writing masks" in capsys.readouterr().err
    assert main(_args(data, weights, out)) == 0  # lock released (also on exit or kill)
    assert len(MaskStore(out)) == N_TRAIN


def test_cli_errors(tiny, tmp_path, capsys):
    data, weights = tiny
    assert main(_args(data, weights, tmp_path / "o", "--shard", "2/2")) == 2
    assert "--shard" in capsys.readouterr().err
    assert main(_args(data, weights, tmp_path / "o", "--shard", "x")) == 2
    assert "expected i/n" in capsys.readouterr().err
    assert main(_args(data, tmp_path / "missing.pth", tmp_path / "o")) == 2
    assert "missing.pth: backbone weights file not found" in capsys.readouterr().err
    args = [a for a in _args(data, weights, tmp_path / "o") if a not in ("--weights", str(weights))]
    assert main(args) == 2
    assert "--weights FILE is required" in capsys.readouterr().err
    assert main(args + ["--allow-random-backbone", "--split", "test"]) == 0
    assert len(MaskStore(tmp_path / "o")) == N_TEST
    assert main(_args(data, weights, tmp_path / "o", "--split", "val")) == 2
    assert "no split 'val'" in capsys.readouterr().err


def test_import_h5_via_cli(tiny, tmp_path, capsys):
    import h5py

    data, weights = tiny
    with h5py.File(tmp_path / "test.h5", "w") as f:
        f["dataset"] = np.ones((N_TEST, 16, 16), np.float32)
    out = tmp_path / "imp"
    assert main(["masks", "--data-path", str(data), "--split", "test", "--out", str(out), "--import-h5", str(tmp_path / "test.h5"), "--report"]) == 0
    assert len(MaskStore(out)) == N_TEST
    with h5py.File(tmp_path / "bad.h5", "w") as f:
        f["dataset"] = np.ones((N_TEST + 1, 16, 16), np.float32)
    assert main(["masks", "--data-path", str(data), "--split", "test", "--out", str(out), "--import-h5", str(tmp_path / "bad.h5")]) == 2
    assert "holds 3 masks but the split has 2 images" in capsys.readouterr().err


def test_shard_helpers(monkeypatch):
    assert parse_shard("1/3") == (1, 3)
    for bad in ("3/3", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(ConfigError):
            parse_shard(bad)
    items = list(range(11))
    parts = [shard_samples(items, (i, 3)) for i in range(3)]
    assert sorted(sum(parts, [])) == items
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert resolve_shard(None) == (1, 4)
    assert resolve_shard((0, 2)) == (0, 2)
    monkeypatch.delenv("RANK")
    assert resolve_shard(None) == (0, 1)


class _FakeBackbone:
    """Attention = a blob at the image centre; enough for the runner's plumbing."""

    img_size = (32, 32)
    grid_size = (4, 4)
    data_config = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}

    def eval(self):
        return self

    def __call__(self, x, with_attention=False):
        from types import SimpleNamespace

        att = torch.zeros(x.shape[0], 2, 16)
        att[:, :, [5, 6, 9, 10]] = 1.0
        return SimpleNamespace(attention=att)


def test_runner_stats_with_fake_backbone(tiny, tmp_path):
    from locloc.data import load_dataset

    data, _ = tiny
    samples = load_dataset(data).split("train")
    store = MaskStore(tmp_path / "s")
    stats = mask_samples(samples, _FakeBackbone(), store, GrabCutMasker(iterations=1), batch_size=3, progress=False)
    assert stats.done == N_TRAIN and stats.skipped == 0
    assert stats.grabcut + sum(stats.fallbacks.values()) == N_TRAIN
    assert stats.images_per_s > 0
    stats = mask_samples(samples, _FakeBackbone(), store, GrabCutMasker(iterations=1), progress=False)
    assert stats.done == 0 and stats.skipped == N_TRAIN


def test_workers_from_a_piped_script_fall_back_to_one_process(tiny, tmp_path):
    """A script piped to ``python -`` cannot be re-imported by spawned workers; the run must
    say so and finish in-process rather than hang or fail inside multiprocessing."""
    data, weights = tiny
    out = tmp_path / "masks"
    script = (
        "import sys\nfrom locloc.cli import main\n"
        f"sys.exit(main({_args(data, weights, out, '--workers', '2')!r}))\n"
    )
    r = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "running GrabCut in this process" in r.stderr
    assert len(list(out.rglob("*.png"))) == N_TRAIN


def test_class_seeds_from_the_command_line(tiny, tmp_path, capsys):
    import json

    data, weights = tiny
    out = tmp_path / "cs"
    assert main(_args(data, weights, out, "--workers", "0", "--split", "all", "--class-seeds",
                      "--probe-patches", "8", "--open", "0")) == 0
    assert len(MaskStore(out)) == N_TRAIN + N_TEST  # round 2 covers both splits
    assert len(MaskStore(out / ".round1")) == N_TRAIN  # round 1 and the probe: training images only
    stats = json.loads((out / "run_stats.json").read_text())
    assert stats["class_seeds"] is True and stats["round2_masker"]["trimap"]["bg_frac"] == 0.1
    assert stats["masker"]["open_frac"] == 0.0
    assert stats["splits"]["train"]["probe"]["samples"] == N_TRAIN * 8
    assert "class probe:" in capsys.readouterr().err
    # a data set without a train split has nothing to fit the probe on: one line, nothing written
    only_test = tmp_path / "only_test"
    import shutil

    shutil.copytree(data, only_test)
    (only_test / "train_test_split.txt").write_text(
        "".join(f"{i} 0\n" for i in range(1, N_TRAIN + N_TEST + 1)))
    rc = main(_args(only_test, weights, tmp_path / "none", "--split", "test", "--class-seeds"))
    assert rc != 0 and "train" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


def test_workers_from_an_unguarded_script_fall_back_to_one_process(tiny, tmp_path):
    """A script that runs stage 1 at import time (no ``if __name__ == "__main__":``) makes each
    spawned worker re-run it and die at start; the run must notice, say what to add, and finish
    in-process instead of waiting forever on workers that never come up (it used to hang)."""
    data, weights = tiny
    out = tmp_path / "masks"
    script = tmp_path / "unguarded.py"
    script.write_text(
        "from locloc.stages import MaskConfig, generate_masks\n"
        f"cfg = MaskConfig(data_path={str(data)!r}, out={str(out)!r}, backbone={BACKBONE!r}, "
        f"backbone_kwargs={TINY}, weights={str(weights)!r}, iterations=1, batch_size=4, workers=2, "
        ")\n"
        "generate_masks(cfg, progress=False)\nprint('DONE')\n"
    )
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    assert "DONE" in r.stdout.splitlines()
    assert "if __name__ == '__main__'" in r.stderr and "running GrabCut in this process" in r.stderr
    # each worker stops with one line before redoing the parent's work; no tracebacks
    assert "this worker stops here" in r.stderr and "Traceback" not in r.stderr
    assert len(MaskStore(out)) == N_TRAIN


def test_workers_that_die_leave_the_rest_to_this_process(tiny, tmp_path, monkeypatch, capsys):
    """Workers that die (here each one exits as it starts, as an OOM kill or a crash would end
    it) used to leave the run waiting forever; now the parent finishes the masks itself, and they
    match a run without workers."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from locloc.data import load_dataset
    from locloc.masks import runner

    data, _ = tiny
    samples = load_dataset(data).split("train")
    ref = MaskStore(tmp_path / "ref")
    mask_samples(samples, _FakeBackbone(), ref, GrabCutMasker(iterations=1), batch_size=3, progress=False)
    monkeypatch.setattr(runner, "_start_pool", lambda workers, masker, store: ProcessPoolExecutor(
        workers, mp_context=mp.get_context("spawn"), initializer=os._exit, initargs=(3,)))
    store = MaskStore(tmp_path / "s")
    stats = mask_samples(samples, _FakeBackbone(), store, GrabCutMasker(iterations=1), batch_size=3, workers=2,
                         progress=False)
    assert "GrabCut worker process died" in capsys.readouterr().err
    assert stats.done == N_TRAIN and stats.grabcut + sum(stats.fallbacks.values()) == N_TRAIN
    _assert_same_masks(_snapshot(ref.root), _snapshot(store.root))
