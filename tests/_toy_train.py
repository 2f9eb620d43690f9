"""A toy model, data set and step function for the training-loop tests (BatchNorm-free, with
dropout and random augmentation so that RNG handling matters). Also runnable as a script:
``python tests/_toy_train.py OUT EPOCHS [--resume] [--kill-after N]`` (torchrun-compatible)."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from locloc.engine.config import TrainConfig
from locloc.engine.trainer import Trainer


class ToyData(Dataset):
    def __init__(self, n: int = 64, augment: bool = True) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 8, generator=g)
        w = torch.randn(8, 1, generator=g)
        self.y = self.x @ w + 0.1
        self.augment = augment

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x = self.x[i]
        if self.augment:
            x = x + 0.01 * torch.randn(8)
        return {"x": x, "y": self.y[i]}


def toy_model(dropout: float = 0.1) -> nn.Module:
    torch.manual_seed(123)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 1))


def toy_step(model: nn.Module, batch: dict) -> torch.Tensor:
    return nn.functional.mse_loss(model(batch["x"]), batch["y"])


def toy_config(**kw) -> TrainConfig:
    base = dict(epochs=3, batch_size=8, lr=0.01, workers=0, sched="cosine", warmup_epochs=1, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def make_validate(data: ToyData):
    def validate(model: nn.Module) -> dict[str, float]:
        loss = toy_step(model, {"x": data.x, "y": data.y}).item()
        return {"neg_loss": -loss}

    return validate


def main(argv: list[str]) -> int:
    out, epochs = Path(argv[0]), int(argv[1])
    resume = "--resume" in argv
    kill_after = int(argv[argv.index("--kill-after") + 1]) if "--kill-after" in argv else None
    batch = int(argv[argv.index("--batch") + 1]) if "--batch" in argv else 8
    augment = "--no-augment" not in argv
    torch.set_num_threads(1)
    cfg = toy_config(epochs=epochs, batch_size=batch)

    def hook(epoch: int, record: dict) -> None:
        if kill_after is not None and epoch + 1 == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    data = ToyData(augment=augment)
    model = toy_model(0.0 if "--no-dropout" in argv else 0.1)
    tr = Trainer(model, data, toy_step, cfg, out, validate_fn=make_validate(data), metric="neg_loss",
                 on_epoch_end=hook, progress=False)
    tr.fit(resume=out / "last.pt" if resume and (out / "last.pt").exists() else None)
    _save_final(tr, out)
    return 0


def _save_final(tr: Trainer, out: Path) -> None:
    from locloc.engine.distributed import cleanup, get_rank

    sd = tr.model.module.state_dict() if hasattr(tr.model, "module") else tr.model.state_dict()
    rank = get_rank()
    torch.save(sd, out / ("final.pt" if rank == 0 else f"final_rank{rank}.pt"))
    cleanup()


TINY_BACKBONE = dict(img_size=64, depth=2, embed_dim=48, num_heads=3)


def make_tiny_data(root: Path, train: int = 8, test: int = 2) -> tuple[Path, Path]:
    """A 2-class 64-px synthetic CUB-layout data set and a PNG mask store of its GT masks."""
    import cv2
    import numpy as np

    from locloc.data import load_dataset
    from locloc.data.synthetic import make_synthetic
    from locloc.masks.store import MaskStore

    data = make_synthetic(root / "data", classes=2, train=train, test=test, size=64, seed=0)
    store = MaskStore(root / "masks")
    for s in load_dataset(data).split("train"):
        m = cv2.imread(str(s.mask_path), cv2.IMREAD_GRAYSCALE)
        store.write(s.relpath, (m > 127).astype(np.uint8))
    return Path(data), root / "masks"


def stage_config(stage: str, data: Path, masks: Path, out: Path, **kw):
    from locloc.engine.config import ClassifierTrainConfig, GeneratorTrainConfig

    base = dict(data_path=str(data), masks=str(masks), out=str(out), backbone="vit_small_patch16_224",
                backbone_kwargs=TINY_BACKBONE, epochs=2, batch_size=4, workers=0, lr=1e-3, device="cpu",
                val_split="test")  # the mechanics under test validate on the (tiny) test split
    if stage == "generator":
        base.update(generator="light", generator_kwargs=dict(mid_channels=8, head_channels=[8, 8, 8]))
        base.update(kw)
        return GeneratorTrainConfig(**base)
    base.update(warmup_epochs=1)
    base.update(kw)
    return ClassifierTrainConfig(**base)


def stage_main(argv: list[str]) -> int:
    """``stage generator|classifier DATA MASKS OUT [--batch B] [--cache V] [--kill-after N] [--resume]``"""
    stage, data, masks, out = argv[0], Path(argv[1]), Path(argv[2]), Path(argv[3])
    torch.set_num_threads(1)
    batch = int(argv[argv.index("--batch") + 1]) if "--batch" in argv else 4
    kill_after = int(argv[argv.index("--kill-after") + 1]) if "--kill-after" in argv else None
    kw = {"batch_size": batch}
    if "--cache" in argv:
        kw["cache_views"] = int(argv[argv.index("--cache") + 1])
    cfg = stage_config(stage, data, masks, out, **kw)
    holder = {}

    def hook(epoch: int, record: dict) -> None:
        if kill_after is not None and epoch + 1 == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    import locloc.engine.trainer as T

    orig_fit = T.Trainer.fit

    def fit(self, resume=None):  # keep a handle on the trainer to save every rank's weights
        holder["tr"] = self
        return orig_fit(self, resume)

    T.Trainer.fit = fit
    if stage == "generator":
        from locloc.engine.train_generator import train_generator as train
    else:
        from locloc.engine.train_classifier import train_classifier as train
    train(cfg, "auto" if "--resume" in argv else None, on_epoch_end=hook, progress=False)
    _save_final(holder["tr"], out)
    return 0


if __name__ == "__main__":
    sys.exit(stage_main(sys.argv[2:]) if sys.argv[1] == "stage" else main(sys.argv[1:]))
