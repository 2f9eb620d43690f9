"""The shared training loop on a toy model: learning, checkpoints, atomic writes, resume."""

from __future__ import annotations

import json

import pytest
import torch
from _toy_train import ToyData, make_validate, toy_config, toy_model, toy_step

from locloc.engine.distributed import DistInfo, select_device, weighted_mean
from locloc.engine.trainer import Trainer, find_resume, load_checkpoint, resolve_amp
from locloc.errors import CheckpointError, ConfigError

CPU = DistInfo()


def _trainer(tmp_path, name="run", on_epoch_end=None, **cfg_kw):
    torch.set_num_threads(1)
    data = ToyData()
    return Trainer(
        toy_model(), data, toy_step, toy_config(**cfg_kw), tmp_path / name, dist=CPU,
        validate_fn=make_validate(data), metric="neg_loss", on_epoch_end=on_epoch_end, progress=False,
        log=lambda m: None,
    )


def test_loss_decreases_and_files_written(tmp_path):
    tr = _trainer(tmp_path, epochs=4, lr=0.05)
    out = tr.fit()
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3, 4]
    assert lines[-1]["train_loss"] < 0.5 * lines[0]["train_loss"]
    assert out["global_step"] == 4 * (64 // 8)
    assert out["best_metric"] == max(r["neg_loss"] for r in lines)
    for name in ("last.pt", "best.pt", "config.yaml", "config.json"):
        assert (tmp_path / "run" / name).is_file()
    assert not list((tmp_path / "run").glob(".*tmp*"))  # no temporary files left


def test_checkpoint_contents(tmp_path):
    tr = _trainer(tmp_path, epochs=2)
    tr.fit()
    ck = load_checkpoint(tmp_path / "run" / "last.pt")  # weights_only load
    assert ck["epoch"] == 2 and ck["global_step"] == 16
    assert set(ck["model"]) == set(tr.model.state_dict())
    assert torch.equal(ck["model"]["0.weight"], tr.model.state_dict()["0.weight"])
    assert ck["optimizer"]["state"] and ck["scaler"] is None
    assert ck["config"]["epochs"] == 2 and ck["metric"] == "neg_loss"
    assert set(ck["rng"][0]) == {"python", "numpy", "torch", "cuda"}
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    assert best["epoch"] == ck["best_epoch"]


def test_schedule_warmup_then_cosine(tmp_path):
    tr = _trainer(tmp_path, epochs=3, min_lr=1e-5, warmup_lr=1e-4)
    lrs = []
    tr.step_fn = lambda m, b: (lrs.append(tr.optimizer.param_groups[0]["lr"]), toy_step(m, b))[1]
    tr.fit()
    spe = tr.steps_per_epoch
    assert lrs[0] == pytest.approx(1e-4)
    assert all(a < b for a, b in zip(lrs[: spe - 1], lrs[1:spe]))  # warm-up rises
    assert max(lrs) <= 0.01 + 1e-12
    assert all(a >= b for a, b in zip(lrs[spe:], lrs[spe + 1 :]))  # cosine falls
    assert lrs[-1] < 0.01 * 0.2


def test_constant_schedule(tmp_path):
    tr = _trainer(tmp_path, epochs=2, sched="constant", warmup_epochs=0)
    tr.fit()
    assert tr.optimizer.param_groups[0]["lr"] == pytest.approx(0.01)


def test_atomic_checkpoint_keeps_previous_on_failure(tmp_path, monkeypatch):
    tr = _trainer(tmp_path, epochs=1)
    tr.fit()
    before = (tmp_path / "run" / "last.pt").read_bytes()

    def broken_save(obj, path):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        tr.save_checkpoint(0, is_best=False)
    assert (tmp_path / "run" / "last.pt").read_bytes() == before
    assert not list((tmp_path / "run").glob(".*tmp*"))


class _Stop(Exception):
    pass


def test_resume_is_bit_exact(tmp_path):
    full = _trainer(tmp_path, "full", epochs=3)
    full.fit()

    def stop(epoch, record):
        if epoch == 0:
            raise _Stop

    part = _trainer(tmp_path, "part", on_epoch_end=stop, epochs=3)
    with pytest.raises(_Stop):
        part.fit()
    assert load_checkpoint(tmp_path / "part" / "last.pt")["epoch"] == 1
    again = _trainer(tmp_path, "part", epochs=3)
    again.fit(resume=find_resume(tmp_path / "part", "auto"))
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, again.model.state_dict()[k]), k
    lines = (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3]
    full_lines = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["train_loss"] == json.loads(full_lines[-1])["train_loss"]


def test_resume_rejects_other_model(tmp_path):
    _trainer(tmp_path, epochs=1).fit()
    data = ToyData()
    other = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Dropout(0.1), torch.nn.Linear(4, 1))
    tr = Trainer(other, data, toy_step, toy_config(epochs=2), tmp_path / "run", dist=CPU, progress=False,
                 log=lambda m: None)
    with pytest.raises(CheckpointError, match="does not match"):
        tr.fit(resume=tmp_path / "run" / "last.pt")


def test_find_resume_rules(tmp_path):
    assert find_resume(tmp_path, None) is None
    assert find_resume(tmp_path, "auto") is None
    (tmp_path / "last.pt").write_bytes(b"x")
    with pytest.raises(ConfigError, match="--resume"):
        find_resume(tmp_path, None)
    with pytest.raises(CheckpointError, match="not found"):
        find_resume(tmp_path, str(tmp_path / "nope.pt"))
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "last.pt")


def test_second_run_in_the_same_directory_is_refused(tmp_path):
    seen = []

    def start_another(epoch, record):  # runs while the first fit holds the directory
        with pytest.raises(ConfigError, match="another training run is writing"):
            _trainer(tmp_path, epochs=2).fit()
        seen.append(epoch)

    _trainer(tmp_path, epochs=2, on_epoch_end=start_another).fit()
    assert seen == [0, 1]
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]  # the refused run wrote nothing
    _trainer(tmp_path, epochs=3).fit(resume=tmp_path / "run" / "last.pt")  # lock released


def test_batch_larger_than_data_is_config_error(tmp_path):
    with pytest.raises(ConfigError, match="batch size 100"):
        _trainer(tmp_path, batch_size=100)


def test_nonfinite_loss_stops(tmp_path):
    tr = _trainer(tmp_path, epochs=1)
    tr.step_fn = lambda m, b: toy_step(m, b) * float("nan")
    with pytest.raises(ConfigError, match="epoch 1 step 1"):
        tr.fit()


def test_device_and_amp_selection():
    assert select_device("cpu").type == "cpu"
    assert resolve_amp("fp16", torch.device("cpu")) is None  # CPU runs fp32
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            select_device("cuda")
    with pytest.raises(ConfigError):
        select_device("tpu:x")
    assert weighted_mean({"a": 2.0}, 3.0) == {"a": 2.0}


# ---- the two stage trainers on a tiny backbone and generated data ------------------------------

import numpy as np  # noqa: E402
from _toy_train import make_tiny_data, stage_config  # noqa: E402
from PIL import Image  # noqa: E402

from locloc.errors import DataError  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_data(tmp_path_factory.mktemp("tiny"))


def test_prepare_targets_binarizes_after_minmax():
    from locloc.engine.train_generator import prepare_targets

    m = torch.zeros(3, 1, 8, 8)
    m[0, 0, 2:6, 2:6] = 1.0
    m[1] = 0.5 + 0.01 * torch.arange(64.0).view(1, 8, 8) / 64  # narrow range: min-max stretches it
    m[2] = 1.0  # constant mask stays foreground
    t = prepare_targets(m, (4, 4), 0.05)
    assert t.shape == (3, 1, 4, 4) and set(t.unique().tolist()) <= {0.0, 1.0}
    assert t[0, 0].sum() == 4 and t[0, 0, 1:3, 1:3].all()
    assert t[1, 0, 0, 0] == 0 and t[1, 0, -1, -1] == 1
    assert t[2].all()


def test_guide_box_and_masked_image():
    from locloc.engine.train_classifier import guide_box, masked_image

    np.random.seed(0)
    areas = []
    for lam in (0.0, 0.5, 0.9):
        x0, y0, x1, y1 = guide_box(100, 100, lam)
        assert 0 <= x0 <= x1 <= 100 and 0 <= y0 <= y1 <= 100
        areas.append((x1 - x0) * (y1 - y0))
    assert areas[0] >= areas[1] >= areas[2]
    img = Image.fromarray(np.full((32, 32, 3), 200, np.uint8))
    mask = np.zeros((16, 16), np.uint8)
    mask[:8] = 1
    out = np.asarray(masked_image(img, mask, 32, 0.05, guide=False, beta=1.0))
    assert out.shape == (32, 32, 3) and (out[:16] == 200).all() and (out[16:] == 0).all()
    np.random.seed(3)
    guided = np.asarray(masked_image(img, mask, 32, 0.05, guide=True, beta=1.0))
    assert (guided[:16] == 200).all() and (guided[16:] == 200).any() and (guided[16:] == 0).any()


def test_train_generator_end_to_end(tiny, tmp_path):
    from locloc.engine.train_generator import train_generator
    from locloc.models.model_dir import load_model_dir

    torch.set_num_threads(1)
    data, masks = tiny
    out = train_generator(stage_config("generator", data, masks, tmp_path / "g"), progress=False, log=lambda m: None)
    rows = [json.loads(x) for x in (tmp_path / "g" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(0 <= r["gt_known_loc"] <= 100 and r["val_images"] == 4 for r in rows)
    model, cfg = load_model_dir(out["model_dir"])
    assert model.classifier is None and cfg["input"] == {"resize": 73, "crop": 64}
    assert model(torch.zeros(1, 3, 64, 64))["maps"].shape == (1, 1, 32, 32)
    # refuses to start over a run with a checkpoint, unless resuming
    with pytest.raises(ConfigError, match="--resume"):
        train_generator(stage_config("generator", data, masks, tmp_path / "g"), progress=False)


def test_train_generator_with_feature_cache(tiny, tmp_path):
    from locloc.engine.train_generator import FeatureCache, train_generator

    torch.set_num_threads(1)
    data, masks = tiny
    cfg = stage_config("generator", data, masks, tmp_path / "c", cache_views=2, val_split="none")
    out = train_generator(cfg, progress=False, log=lambda m: None)
    assert out["global_step"] == 2 * (16 // 4) and np.isfinite(out["last"]["train_loss"])
    fc = FeatureCache(torch.zeros(2, 3, 48, 4, 4, dtype=torch.float16), torch.ones(2, 3, 1, 32, 32, dtype=torch.uint8))
    item = fc[1]
    assert len(fc) == 3 and item["feat"].dtype == torch.float32 and item["target"].shape == (1, 32, 32)


def test_missing_masks_reported(tiny, tmp_path):
    import shutil

    from locloc.engine.train_generator import train_generator

    data, masks = tiny
    partial = tmp_path / "masks"
    shutil.copytree(masks, partial)
    pngs = sorted(partial.rglob("*.png"))
    for p in pngs[:3]:
        p.unlink()
    with pytest.raises(DataError, match=r"3 of 16 training images have no mask \(first: .*\.png\)"):
        train_generator(stage_config("generator", data, partial, tmp_path / "o"), progress=False)
    with pytest.raises(DataError, match="mask store not found"):
        train_generator(stage_config("generator", data, tmp_path / "none", tmp_path / "o"), progress=False)


def test_train_classifier_merges_generator(tiny, tmp_path):
    from locloc.engine.train_classifier import train_classifier
    from locloc.engine.train_generator import train_generator
    from locloc.models.model_dir import load_model_dir

    torch.set_num_threads(1)
    data, masks = tiny
    g = train_generator(stage_config("generator", data, masks, tmp_path / "g", epochs=1), progress=False,
                        log=lambda m: None)
    cfg = stage_config("classifier", data, masks, tmp_path / "c", generator_dir=g["model_dir"])
    out = train_classifier(cfg, progress=False, log=lambda m: None)
    rows = [json.loads(x) for x in (tmp_path / "c" / "metrics.jsonl").read_text().splitlines()]
    assert {"top1_cls", "top5_cls"} <= set(rows[-1]) and rows[-1]["top5_cls"] == 100.0  # 2 classes
    model, mcfg = load_model_dir(out["model_dir"])
    assert model.num_classes == 2 and len(mcfg["class_names"]) == 2
    res = model(torch.zeros(2, 3, 64, 64))
    assert res["logits"].shape == (2, 2) and res["maps"].shape == (2, 1, 32, 32)
    # another backbone (other seed -> other random init) is refused before training
    bad = stage_config("classifier", data, masks, tmp_path / "bad", generator_dir=g["model_dir"], seed=1)
    with pytest.raises(ConfigError, match="other backbone weights"):
        train_classifier(bad, progress=False)


def test_train_classifier_frozen_blocks_stay_at_the_backbone(tiny, tmp_path):
    from safetensors.torch import load_file

    from locloc.engine.train_classifier import train_classifier
    from locloc.models.backbone import build_backbone

    torch.set_num_threads(1)
    data, masks = tiny
    logs: list[str] = []
    cfg = stage_config("classifier", data, masks, tmp_path / "c", epochs=1, classifier_depth=2, frozen_blocks=1)
    out = train_classifier(cfg, progress=False, log=logs.append)
    sd = load_file(out["classifier"])
    torch.manual_seed(cfg.seed)  # the stage's seeded random backbone, rebuilt
    bb = build_backbone(cfg.backbone, **cfg.backbone_kwargs)
    for k, v in bb.vit.blocks[0].state_dict().items():
        torch.testing.assert_close(sd[f"blocks_mini.0.{k}"], v)  # frozen: exactly the backbone's block
    assert any(not torch.equal(sd[f"blocks_mini.1.{k}"], v) for k, v in bb.vit.blocks[1].state_dict().items())
    total = sum(v.numel() for k, v in sd.items() if "running_" not in k and "num_batches" not in k)
    frozen = sum(p.numel() for p in bb.vit.blocks[0].parameters())
    assert any(f"training {total - frozen:,} parameters" in m for m in logs), logs
    with pytest.raises(ConfigError, match=r"frozen_blocks must be in 0\.\.1"):
        train_classifier(stage_config("classifier", data, masks, tmp_path / "bad", classifier_depth=2,
                                      frozen_blocks=2), progress=False)


def test_cli_train_generator(tiny, tmp_path):
    from locloc.cli import main

    data, masks = tiny
    conf = tmp_path / "c.yaml"
    conf.write_text(
        "backbone: vit_small_patch16_224\nbackbone_kwargs: {img_size: 64, depth: 2, embed_dim: 48, num_heads: 3}\n"
        "generator: light\ngenerator_kwargs: {mid_channels: 8, head_channels: [8, 8, 8]}\n"
        "epochs: 5\nbatch_size: 4\nworkers: 0\nval_split: none\n"
    )
    args = ["train-generator", "--config", str(conf), "--data-path", str(data), "--masks", str(masks),
            "--out", str(tmp_path / "run"), "--epochs", "1", "--device", "cpu"]
    assert main(args) == 0
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "epochs: 1" in saved and "generator: light" in saved
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
    assert main(args) == 2  # existing checkpoint without --resume: one-line error
    assert main(args + ["--resume"]) == 0  # already finished: nothing left to do
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 0\n")
    assert main(["train-generator", "--config", str(bad)]) == 2
