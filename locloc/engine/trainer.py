"""The one training loop shared by both trainers.

A trainer is built from parts: the *trainable* module (the frozen backbone lives inside the
step function's closure), a step function ``step_fn(model, batch) -> loss`` (a scalar, the
mean over the process's batch), the training dataset, an optional validation function and a
:class:`~locloc.engine.config.TrainConfig`. :meth:`Trainer.fit` then runs

    for each epoch: train_one_epoch -> validate -> metrics.jsonl line -> last.pt (+ best.pt)

Choices, in one place:

- Optimizer: AdamW (timm ``create_optimizer_v2``; no weight decay on biases and norms).
- Schedule: timm ``CosineLRScheduler`` updated **every optimizer step** (``t_in_epochs=False``),
  with ``warmup_epochs`` of linear warm-up from ``warmup_lr``; ``sched="constant"`` holds the
  lr after warm-up. The lr at any step depends only on the step number, so resuming is exact.
- Precision: fp32 on CPU (bf16 autocast with ``amp: bf16`` where the CPU has native bf16); on
  CUDA bf16 autocast, or fp16 autocast with a ``GradScaler``.
- Data: a ``DistributedSampler`` (also in a single process, so that each epoch's order is a
  function of ``seed`` and the epoch only), ``drop_last`` so every process runs the same number
  of steps; worker seeds come from a generator reseeded every epoch.
- Distributed: ``DistributedDataParallel`` (``find_unused_parameters=False``); BatchNorm keeps
  per-process batch statistics (as in the reference) unless ``sync_bn`` (CUDA only: PyTorch's
  ``SyncBatchNorm`` has no CPU kernel); running statistics are averaged over processes after
  every epoch (timm ``distribute_bn``), so all ranks validate and end with identical weights. Seeds are ``seed + rank``; only rank 0 logs and writes.
- Checkpoints (``last.pt`` every epoch, ``best.pt`` on improvement) hold the trainable
  module, optimizer, scheduler, scaler, epoch, every rank's RNG states, the resolved config and
  the best metric; written atomically. Resuming from ``last.pt`` reproduces an uninterrupted
  run bit for bit on CPU.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as tdist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from ..errors import CheckpointError, ConfigError
from ..fileio import atomic_save, atomic_write, dir_lock
from .config import TrainConfig, save_config
from .distributed import DistInfo, all_reduce_sum, barrier, init_distributed

CHECKPOINT_FORMAT = "locloc-train-1"

StepFn = Callable[[nn.Module, Any], torch.Tensor]
ValidateFn = Callable[[nn.Module], dict[str, float]]
EpochHook = Callable[[int, dict[str, Any]], None]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: derive Python/NumPy seeds from the worker's torch seed."""
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)


def rng_state() -> dict[str, Any]:
    """This process's RNG states, in types ``torch.load(weights_only=True)`` accepts."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor in a (nested) dict/list/tuple batch to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device) for v in batch)
    return batch


def batch_length(batch: Any) -> int:
    """Number of samples in a batch: the length of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    if isinstance(batch, dict):
        batch = list(batch.values())
    for v in batch:
        n = batch_length(v) if isinstance(v, (torch.Tensor, dict, list, tuple)) else 0
        if n:
            return n
    return 0


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``amp`` on ``device`` (``None``: fp32).

    CUDA: ``auto`` is bf16 where supported, else fp16. CPU: fp32, except ``amp: bf16`` on a
    CPU with native bf16 (:func:`locloc.engine.precision.cpu_bf16_native`); elsewhere that
    request runs fp32 and says so (emulated bf16 is many times slower).
    """
    if amp == "off":
        return None
    if device.type != "cuda":
        if amp == "bf16" and device.type == "cpu":
            from .precision import checked_amp

            return checked_amp(torch.bfloat16, device)
        return None
    if amp == "fp16":
        return torch.float16
    if amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint (``weights_only``); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
        msg = str(e)
        if "Unsupported global" in msg:
            raise CheckpointError(
                f"{path}: refused for safety: the file is a pickle that would import or run code; "
                "only LocLoc training checkpoints (plain tensors) are loaded"
            ) from None
        if "Weights only load failed" in msg:
            raise CheckpointError(f"{path}: cannot read training checkpoint (not a torch.save file)") from None
        first = msg.strip().splitlines()[0] if msg.strip() else ""
        raise CheckpointError(f"{path}: cannot read training checkpoint ({type(e).__name__}: {first})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path}: not a LocLoc training checkpoint (expected format {CHECKPOINT_FORMAT!r})"
        )
    return ckpt


class CheckpointWriteError(CheckpointError, OSError):
    """A checkpoint could not be written (disk full, quota, permissions).

    A :class:`CheckpointError` for the command line (one-line message, exit 2) that library
    callers can still catch as the ``OSError`` it comes from.
    """


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class Trainer:
    """Train ``model`` with ``step_fn`` on ``train_set``; see the module docstring.

    ``sharded=True`` says every process already holds its own part of the data (e.g. a
    per-rank feature cache): the sampler then shuffles locally instead of splitting.
    ``metric`` names the key of ``validate_fn``'s result that selects ``best.pt`` (higher is
    better). ``on_epoch_end(epoch, record)`` runs after the epoch's checkpoint is written.
    """

    def __init__(
        self,
        model: nn.Module,
        train_set: Dataset,
        step_fn: StepFn,
        cfg: TrainConfig,
        run_dir: str | Path,
        *,
        validate_fn: ValidateFn | None = None,
        metric: str | None = None,
        collate_fn: Callable | None = None,
        dist: DistInfo | None = None,
        sharded: bool = False,
        on_epoch_end: EpochHook | None = None,
        log: Callable[[str], None] | None = None,
        progress: bool = True,
    ) -> None:
        self.cfg = cfg
        self.dist = dist or init_distributed(cfg.device)
        self.device = self.dist.device
        self.run_dir = Path(run_dir)
        self.step_fn = step_fn
        self.validate_fn = validate_fn
        self.metric = metric
        self.on_epoch_end = on_epoch_end
        self.progress = progress and self.dist.is_main
        self._log = log or (lambda msg: print(msg, flush=True))
        self.train_set = train_set
        self.collate_fn = collate_fn
        self.sharded = sharded
        self.amp_dtype = resolve_amp(cfg.amp, self.device)

        model = model.to(self.device)
        if self.dist.distributed:
            if cfg.sync_bn:
                if self.device.type != "cuda":
                    raise ConfigError("sync_bn: SyncBatchNorm needs CUDA devices; drop it on CPU")
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=ids, find_unused_parameters=False
            )
        self.model = model
        self.lr = cfg.resolved_lr(self.dist.world_size)

        from timm.optim import create_optimizer_v2
        from timm.scheduler import CosineLRScheduler

        self.optimizer = create_optimizer_v2(
            unwrap(model), opt="adamw", lr=self.lr, weight_decay=cfg.weight_decay
        )
        self.loader, self.sampler, self._loader_gen = self._build_loader()
        n_batches = len(self.loader)
        if n_batches == 0:
            raise ConfigError(
                f"batch size {cfg.batch_size}: the training set has only {self._per_rank_len()} "
                f"images per process; lower --batch-size"
            )
        self.steps_per_epoch = min(n_batches, cfg.steps_per_epoch or n_batches)
        total = max(1, cfg.epochs * self.steps_per_epoch)
        self.scheduler = CosineLRScheduler(
            self.optimizer,
            t_initial=total,
            lr_min=self.lr if cfg.sched == "constant" else min(cfg.min_lr, self.lr),
            warmup_t=cfg.warmup_epochs * self.steps_per_epoch,
            warmup_lr_init=min(cfg.warmup_lr, self.lr),
            t_in_epochs=False,
        )
        self.scaler = (
            torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        )
        self.start_epoch = 0
        self.global_step = 0
        self.best_metric: float | None = None
        self.best_epoch: int | None = None
        self.writer = None

    # ---- setup ---------------------------------------------------------------------------

    def _per_rank_len(self) -> int:
        n = len(self.train_set)
        return n if self.sharded else n // self.dist.world_size

    def _build_loader(self) -> tuple[DataLoader, DistributedSampler, torch.Generator]:
        cfg, d = self.cfg, self.dist
        if self.sharded:
            sampler = DistributedSampler(
                self.train_set, num_replicas=1, rank=0, shuffle=True, seed=cfg.seed + d.rank, drop_last=True
            )
        else:
            sampler = DistributedSampler(
                self.train_set, num_replicas=d.world_size, rank=d.rank, shuffle=True, seed=cfg.seed, drop_last=True
            )
        workers = 2 if cfg.workers is None else cfg.workers
        gen = torch.Generator()
        loader = DataLoader(
            self.train_set,
            batch_size=cfg.batch_size,
            sampler=sampler,
            num_workers=workers,
            collate_fn=self.collate_fn,
            drop_last=True,
            pin_memory=self.device.type == "cuda",
            worker_init_fn=seed_worker,
            generator=gen,
            persistent_workers=False,
        )
        return loader, sampler, gen

    def log(self, msg: str) -> None:
        if self.dist.is_main:
            self._log(msg)

    # ---- checkpoints ---------------------------------------------------------------------

    def _gather_rng(self) -> list[dict[str, Any]]:
        state = rng_state()
        if not self.dist.distributed:
            return [state]
        out: list[Any] = [None] * self.dist.world_size
        tdist.all_gather_object(out, state)
        return out

    def state_dict(self, epoch: int, rngs: list[dict[str, Any]]) -> dict[str, Any]:
        """Everything needed to continue after ``epoch`` (0-based) finished."""
        return {
            "format": CHECKPOINT_FORMAT,
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch": epoch + 1,
            "global_step": self.global_step,
            "rng": rngs,
            "world_size": self.dist.world_size,
            "config": self.cfg.to_dict(),
            "metric": self.metric,
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
        }

    def save_checkpoint(self, epoch: int, is_best: bool) -> None:
        rngs = self._gather_rng()  # collective: every rank takes part
        if not self.dist.is_main:
            return
        ckpt = self.state_dict(epoch, rngs)
        names = ("last.pt", "best.pt") if is_best else ("last.pt",)
        for name in names:
            path = self.run_dir / name
            try:
                atomic_save(path, lambda p: torch.save(ckpt, p))
            except OSError as e:  # disk full, quota, permissions: the previous file is kept
                reason = e.strerror or str(e).splitlines()[0]
                raise CheckpointWriteError(
                    f"{path}: cannot write checkpoint after epoch {epoch + 1} ({reason}); the "
                    "previous checkpoint, if any, is unchanged: free space and rerun with --resume"
                ) from None

    def resume(self, path: str | Path) -> None:
        """Load ``path`` (a ``last.pt``) and continue after its epoch."""
        path = Path(path)
        ckpt = load_checkpoint(path)
        try:
            unwrap(self.model).load_state_dict(ckpt["model"], strict=True)
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            first = str(e).strip().splitlines()[0]
            raise CheckpointError(
                f"{path}: checkpoint does not match this model/config ({first})"
            ) from None
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.start_epoch = int(ckpt["epoch"])
        self.global_step = int(ckpt["global_step"])
        self.scheduler.step_update(self.global_step)
        self.best_metric = ckpt.get("best_metric")
        self.best_epoch = ckpt.get("best_epoch")
        rngs = ckpt.get("rng") or []
        if len(rngs) == self.dist.world_size:
            set_rng_state(rngs[self.dist.rank])
        else:  # a different number of processes: fresh, still deterministic streams
            seed_everything(self.cfg.seed + self.dist.rank + 7919 * self.start_epoch)
        if self.dist.is_main:
            self._truncate_metrics(self.start_epoch)
        self.log(f"resumed from {path} after epoch {self.start_epoch} (step {self.global_step})")

    def _truncate_metrics(self, last_epoch: int) -> None:
        path = self.run_dir / "metrics.jsonl"
        if not path.exists():
            return
        keep = []
        for line in path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                if json.loads(line).get("epoch", 0) <= last_epoch:
                    keep.append(line)
        with atomic_write(path, "w") as f:
            f.write("".join(k + "\n" for k in keep))

    # ---- loop ----------------------------------------------------------------------------

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the (per-process) training data; returns loss, lr and speed."""
        self.model.train()
        self.sampler.set_epoch(epoch)
        self._loader_gen.manual_seed((self.cfg.seed + 1) * 1_000_003 + self.dist.rank * 10_007 + epoch)
        clip = self.cfg.clip_grad
        loss_sum = torch.zeros((), dtype=torch.float64)
        n_images = 0
        t0 = time.perf_counter()
        bar = tqdm(
            total=self.steps_per_epoch,
            desc=f"epoch {epoch + 1}/{self.cfg.epochs}",
            disable=not self.progress,
            dynamic_ncols=True,
            leave=False,
        )
        try:
            for i, batch in enumerate(self.loader):
                if i >= self.steps_per_epoch:
                    break
                batch = move_to_device(batch, self.device)
                with self._autocast():
                    loss = self.step_fn(self.model, batch)
                if not torch.isfinite(loss):
                    raise ConfigError(
                        f"training diverged: loss is {loss.item()} at epoch {epoch + 1} step {i + 1}; "
                        "lower the learning rate (--lr) or set --clip-grad"
                    )
                self.optimizer.zero_grad(set_to_none=True)
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                    if clip:
                        self.scaler.unscale_(self.optimizer)
                        nn.utils.clip_grad_norm_(self.model.parameters(), clip)
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                else:
                    loss.backward()
                    if clip:
                        nn.utils.clip_grad_norm_(self.model.parameters(), clip)
                    self.optimizer.step()
                self.global_step += 1
                self.scheduler.step_update(self.global_step)
                loss_sum += loss.detach().double().cpu()
                n_images += batch_length(batch)
                if self.progress:
                    dt = time.perf_counter() - t0
                    bar.set_postfix(
                        loss=f"{loss.item():.4f}",
                        img_s=f"{n_images * self.dist.world_size / max(dt, 1e-9):.1f}",
                    )
                    bar.update(1)
        finally:  # a clean line for an error message
            bar.close()
        dt = time.perf_counter() - t0
        tot = all_reduce_sum([float(loss_sum), float(self.steps_per_epoch), float(n_images)], self.device)
        return {
            "train_loss": float(tot[0] / tot[1]),
            "lr": float(self.optimizer.param_groups[0]["lr"]),
            "images_per_s": float(tot[2]) / max(dt, 1e-9),
            "epoch_time_s": dt,
        }

    def validate(self) -> dict[str, float]:
        if self.validate_fn is None:
            return {}
        self.model.eval()
        try:
            with torch.no_grad(), self._autocast():
                return dict(self.validate_fn(unwrap(self.model)))
        finally:
            self.model.train()

    def _open_writer(self) -> None:
        if not self.dist.is_main or self.writer is not None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # noqa: BLE001 - tensorboard is optional
            return
        self.writer = SummaryWriter(log_dir=str(self.run_dir / "tb"))

    def fit(self, resume: str | Path | None = None) -> dict[str, Any]:
        """Train from scratch, or from ``resume`` (a checkpoint path); returns a summary."""
        if not self.dist.is_main:
            return self._fit(resume)
        busy = (f"{self.run_dir}: another training run is writing into this directory; wait for it "
                "to finish or choose another --out")
        with dir_lock(self.run_dir, exclusive=True, busy=busy, error=ConfigError):
            return self._fit(resume)

    def _fit(self, resume: str | Path | None) -> dict[str, Any]:
        cfg = self.cfg
        seed_everything(cfg.seed + self.dist.rank)
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temp(self.run_dir)
            save_config(cfg, self.run_dir)
        if resume is not None:
            self.resume(resume)
        self._open_writer()
        self.log(
            f"training {sum(p.numel() for p in self.model.parameters() if p.requires_grad):,} "
            f"parameters on {self.dist.world_size} x {self.device}: {self.steps_per_epoch} steps/epoch, "
            f"global batch {cfg.batch_size * self.dist.world_size}, lr {self.lr:.3g}"
        )
        record: dict[str, Any] = {}
        for epoch in range(self.start_epoch, cfg.epochs):
            record = {"epoch": epoch + 1, **self.train_one_epoch(epoch)}
            if self.dist.distributed:
                # BN running statistics drift apart per process: average them, so validation and
                # the checkpoint see one model
                from timm.utils import distribute_bn

                distribute_bn(self.model, self.dist.world_size, reduce=True)
            last = epoch + 1 == cfg.epochs
            if (epoch + 1) % cfg.val_every == 0 or last:
                record.update(self.validate())
            is_best = False
            if self.metric is not None and self.metric in record:
                value = float(record[self.metric])
                if self.best_metric is None or value > self.best_metric:
                    self.best_metric, self.best_epoch, is_best = value, epoch + 1, True
            record["best_" + (self.metric or "metric")] = self.best_metric
            if self.dist.is_main:
                with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
                    f.write(json.dumps(record) + "\n")
                if self.writer is not None:
                    for k, v in record.items():
                        if isinstance(v, (int, float)) and k != "epoch":
                            self.writer.add_scalar(k, v, epoch + 1)
                shown = {k: v for k, v in record.items() if isinstance(v, (int, float))}
                self.log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items()))
            if (epoch + 1) % cfg.checkpoint_every == 0 or last or is_best:
                self.save_checkpoint(epoch, is_best)
            barrier()
            if self.on_epoch_end is not None:
                self.on_epoch_end(epoch, record)
        if self.writer is not None:
            self.writer.close()
        return {
            "epochs": cfg.epochs,
            "global_step": self.global_step,
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "last": record,
            "run_dir": str(self.run_dir),
        }


def remove_stale_temp(run_dir: str | Path) -> int:
    """Remove temporary files (``.NAME.*.tmp*``) that a killed run's atomic writes left in
    ``run_dir`` and ``run_dir/model``; returns how many. Only the main process writes there."""
    n = 0
    for d in (Path(run_dir), Path(run_dir) / "model"):
        if d.is_dir():
            for p in d.glob(".*.tmp*"):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                    n += 1
    return n


def find_resume(run_dir: str | Path, resume: str | None) -> Path | None:
    """Interpret ``--resume``: ``None`` (fresh; refuses to overwrite a run that has a
    ``last.pt``), ``"auto"`` (``run_dir/last.pt`` if present) or a checkpoint path."""
    run_dir = Path(run_dir)
    last = run_dir / "last.pt"
    if resume is None:
        if last.exists():
            raise ConfigError(
                f"{last}: the run directory already holds a checkpoint; pass --resume to "
                "continue it or choose another --out"
            )
        return None
    if resume == "auto":
        return last if last.exists() else None
    p = Path(resume)
    if not p.is_file():
        raise CheckpointError(f"{p}: --resume checkpoint not found")
    return p


__all__ = [
    "CheckpointWriteError",
    "Trainer",
    "find_resume",
    "load_checkpoint",
    "move_to_device",
    "remove_stale_temp",
    "resolve_amp",
    "rng_state",
    "seed_everything",
    "set_rng_state",
]
