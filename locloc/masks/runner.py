"""Stage 1 at data-set scale: batched backbone attention, GrabCut in a process pool.

Resumable (images whose PNG exists are skipped; PNGs appear only complete), shardable
(shard ``i`` of ``n`` takes ``samples[i::n]``; under ``torchrun`` the shard defaults to
``RANK``/``WORLD_SIZE``) and streaming (at most a few batches of attention grids are in
flight; masks are written by the workers and never come back to the parent).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError
from ..fileio import open_image, open_image_reduced
from .grabcut import FALLBACK_REASONS, GrabCutMasker
from .store import MaskStore

if TYPE_CHECKING:  # annotations only: the GrabCut workers stay light
    import torch

    from ..data.records import Sample
    from ..models.backbone import FrozenViT

# (backbone, batch samples, images B x 3 x H x W) -> B x gh x gw seed grids for the trimap
SeedSource = Callable[["FrozenViT", "Sequence[Sample]", "torch.Tensor"], np.ndarray]


@dataclass
class RunStats:
    """What :func:`mask_samples` did."""

    total: int = 0  # samples in this shard
    done: int = 0  # masks written by this run
    skipped: int = 0  # masks that already existed
    grabcut: int = 0
    fallbacks: dict[str, int] = field(default_factory=lambda: {r: 0 for r in FALLBACK_REASONS})
    seconds: float = 0.0
    shard: tuple[int, int] = (0, 1)
    unreadable: list[str] = field(default_factory=list)  # with skip_bad: one message per image left out
    round1: dict[str, Any] | None = None  # class seeds: the round-1 run's stats
    probe: dict[str, Any] | None = None  # class seeds: the probe's metadata

    @property
    def images_per_s(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shard"] = list(self.shard)
        d["images_per_s"] = round(self.images_per_s, 3)
        d["seconds"] = round(self.seconds, 3)
        return d


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` (0-based ``i``) -> ``(i, n)``; ConfigError on bad syntax or range."""
    try:
        i_s, n_s = text.split("/")
        i, n = int(i_s), int(n_s)
    except ValueError:
        raise ConfigError(f"--shard {text!r}: expected i/n, e.g. 0/4 (shard i of n, 0-based)") from None
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"--shard {text!r}: need n >= 1 and 0 <= i < n")
    return i, n


def resolve_shard(shard: tuple[int, int] | None) -> tuple[int, int]:
    """The given shard, else ``(RANK, WORLD_SIZE)`` from torchrun's environment, else (0, 1)."""
    if shard is not None:
        i, n = shard
        if n < 1 or not 0 <= i < n:
            raise ConfigError(f"shard {i}/{n}: need n >= 1 and 0 <= i < n")
        return int(i), int(n)
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        try:
            return resolve_shard((int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])))
        except ValueError:
            raise ConfigError("RANK/WORLD_SIZE environment variables are not integers") from None
    return 0, 1


def shard_samples(samples: Sequence[Sample], shard: tuple[int, int]) -> list[Sample]:
    """Shard ``i`` of ``n``: ``samples[i::n]`` (the shards partition the list)."""
    i, n = shard
    return list(samples[i::n])


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for k in range(0, len(items), size):
        yield items[k : k + size]


def load_backbone_batch(samples: Sequence[Sample], backbone: FrozenViT) -> torch.Tensor:
    """Images resized (whole image, no crop, bilinear) to the backbone's input size and
    normalised with its ``data_config`` mean/std: ``B x 3 x H x W`` float32 tensor."""
    import torch
    from PIL import Image

    h, w = backbone.img_size
    mean = np.asarray(backbone.data_config["mean"], np.float32).reshape(1, 1, 3)
    std = np.asarray(backbone.data_config["std"], np.float32).reshape(1, 1, 3)
    out = np.empty((len(samples), 3, h, w), np.float32)
    for k, s in enumerate(samples):
        # a large JPEG is decoded at a reduced scale that stays above the backbone's input
        im = open_image_reduced(s.path, max(w, h))[0].resize((w, h), Image.BILINEAR)
        a = np.asarray(im, np.float32) / 255.0
        out[k] = ((a - mean) / std).transpose(2, 0, 1)
    return torch.from_numpy(out)


def attention_grids(backbone: FrozenViT, images: torch.Tensor, device: str | torch.device = "cpu") -> np.ndarray:
    """CLS->patch attention (the backbone's ``attention_blocks``), heads averaged:
    ``B x gh x gw`` float32."""
    import torch

    with torch.inference_mode():
        out = backbone(images.to(device), with_attention=True)
    att = out.attention.float().mean(dim=1)  # B x N
    gh, gw = backbone.grid_size
    return att.reshape(-1, gh, gw).cpu().numpy()


def _spawn_can_start() -> bool:
    """False when ``__main__`` names a file that does not exist (a script piped to
    ``python -``): spawned workers re-import it and die at start, leaving a pool that never
    answers."""
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    return main_file is None or os.path.exists(main_file)


def exit_if_reimported_by_worker() -> None:
    """Exit at once (one line, no traceback) in a spawned worker that is still re-importing the
    parent's main script, i.e. a script that calls LocLoc at import time: without this the worker
    would redo the parent's work up to the point where it cannot spawn, then die anyway."""
    if getattr(mp.current_process(), "_inheriting", False):
        raise SystemExit("locloc: a worker process re-imported the main script, which calls LocLoc when "
                         "imported; put those calls under `if __name__ == '__main__':` (this worker stops here)")


# -- worker side (module-level and torch-free so that spawned workers start fast) -----------

_WORKER: dict[str, Any] = {}


def _init_worker(masker_cfg: dict, store_root: str) -> None:
    import cv2

    cv2.setNumThreads(1)
    _WORKER["masker"] = GrabCutMasker.from_config(masker_cfg)
    _WORKER["store"] = MaskStore(store_root)


def _mask_one(task: tuple[str, str, np.ndarray]) -> tuple[str, str | None]:
    path, relpath, attention = task
    masker: GrabCutMasker = _WORKER["masker"]
    image = np.asarray(open_image(path))
    mask = masker.generate(image, attention)
    _WORKER["store"].write(relpath, mask)
    return relpath, masker.last_reason


def _mask_many(tasks: list[tuple[str, str, np.ndarray]]) -> list[tuple[str, str | None]]:
    return [_mask_one(t) for t in tasks]


def attention_source(device: Any = "cpu") -> SeedSource:
    """The paper's seeds: :func:`attention_grids` of the batch."""

    def source(backbone: FrozenViT, batch: Sequence[Sample], images: torch.Tensor) -> np.ndarray:
        return attention_grids(backbone, images, device)

    return source


def _start_pool(workers: int, masker: GrabCutMasker, out_store: MaskStore) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                               initargs=(masker.config(), str(out_store.root)))


def _stop_pool(pool: ProcessPoolExecutor) -> None:
    """Drop queued chunks and stop the workers now (an error or Ctrl-C must not wait on GrabCut)."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join()


def _mask_loop(
    todo: Sequence[Sample], backbone: FrozenViT, out_store: MaskStore, masker: GrabCutMasker, stats: RunStats,
    batch_size: int, workers: int, seeds: SeedSource, max_in_flight: int, bar: Any,
) -> None:
    """Seed grids on this process, GrabCut in ``workers`` spawned processes (or here when 0);
    counts results into ``stats`` and ``bar``, which it closes. Workers that die (e.g. at start,
    when the calling script runs LocLoc at import time) leave the rest to this process."""
    backbone.eval()
    collected: set[str] = set()

    def _collect(results: list[tuple[str, str | None]]) -> None:
        for relpath, reason in results:
            collected.add(relpath)
            stats.done += 1
            if reason is None:
                stats.grabcut += 1
            else:
                stats.fallbacks[reason] += 1
        bar.update(len(results))

    def _tasks(batch: Sequence[Sample]) -> list[tuple[str, str, np.ndarray]]:
        grids = seeds(backbone, batch, load_backbone_batch(batch, backbone))
        return [(str(s.path), s.relpath, g) for s, g in zip(batch, grids)]

    def _in_process(samples: Sequence[Sample]) -> None:
        _init_worker(masker.config(), str(out_store.root))
        for batch in _batches(samples, batch_size):
            for t in _tasks(batch):
                _collect([_mask_one(t)])

    if workers > 0 and not _spawn_can_start():
        print(f"locloc masks: the main script {sys.modules['__main__'].__file__!r} is not a file that "
              "spawned GrabCut workers can import (stdin?); running GrabCut in this process instead",
              file=sys.stderr, flush=True)
        workers = 0
    pool = _start_pool(workers, masker, out_store) if workers > 0 else None
    try:
        if pool is None:
            _in_process(todo)
            return
        try:
            pending: deque[list[Future]] = deque()
            for batch in _batches(todo, batch_size):
                tasks = _tasks(batch)
                # Small chunks keep both workers busy to the end of each batch.
                chunk = max(1, len(tasks) // (workers * 4))
                pending.append([pool.submit(_mask_many, tasks[k : k + chunk]) for k in range(0, len(tasks), chunk)])
                while len(pending) >= max_in_flight:
                    for f in pending.popleft():
                        _collect(f.result())
            while pending:
                for f in pending.popleft():
                    _collect(f.result())
        except BrokenProcessPool:
            _stop_pool(pool)
            pool = None
            main_file = getattr(sys.modules.get("__main__"), "__file__", None) or "the main script"
            print(f"locloc masks: a GrabCut worker process died (killed, out of memory, or, most often, "
                  f"spawned workers re-import {main_file!r} and it runs LocLoc when imported: put those "
                  "calls under `if __name__ == '__main__':`); running GrabCut in this process instead",
                  file=sys.stderr, flush=True)
            _in_process([s for s in todo if s.relpath not in collected])
    finally:
        bar.close()
        if pool is not None:
            _stop_pool(pool)


def mask_samples(
    samples: Sequence[Sample],
    backbone: FrozenViT,
    out_store: MaskStore,
    masker: GrabCutMasker,
    batch_size: int = 32,
    workers: int = 0,
    shard: tuple[int, int] | None = None,
    device: Any = "cpu",
    progress: bool = True,
    max_in_flight: int = 2,
    skip_bad: bool = False,
    seeds: SeedSource | None = None,
) -> RunStats:
    """Write a GrabCut mask for every sample of this shard that has none yet.

    Args:
        samples: records with ``path`` and ``relpath`` (e.g. ``DataSet.split("train")``).
        backbone: a :class:`~locloc.models.backbone.FrozenViT` (``img_size``, ``grid_size``,
            ``data_config``, ``forward(x, with_attention=True).attention``: B x heads x N).
        out_store: where masks go (``out_store.root``).
        masker: GrabCut settings; with ``workers > 0`` each worker builds its own copy.
        workers: GrabCut processes (spawned); 0 runs GrabCut in this process.
        shard: ``(i, n)``; None takes torchrun's ``RANK``/``WORLD_SIZE`` or (0, 1).
        max_in_flight: batches handed to the pool but not finished; bounds memory.
        skip_bad: decode the images to do first and leave out the unreadable ones (listed in
            ``RunStats.unreadable``) instead of stopping at the first with a DataError.
        seeds: ``(backbone, batch samples, images B x 3 x H x W) -> B x gh x gw`` grids that
            seed the trimap; None: the CLS attention (:func:`attention_source`).
    """
    from tqdm import tqdm

    exit_if_reimported_by_worker()
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    if workers < 0:
        raise ConfigError(f"workers must be >= 0, got {workers}")
    shard = resolve_shard(shard)
    with out_store.writer_lock(exclusive=shard[1] == 1):
        mine = shard_samples(samples, shard)
        stats = RunStats(total=len(mine), shard=shard)
        # A single writer owns the store (it holds the lock exclusively): temporary files are
        # leftovers of a killed run. Shards only remove old ones.
        out_store.clean_temp(older_than_s=0.0 if shard[1] == 1 else 3600.0)
        todo = [s for s in mine if not out_store.has(s.relpath)]
        stats.skipped = len(mine) - len(todo)
        if skip_bad:
            from ..data.datasets import check_images

            todo, stats.unreadable = check_images(todo, workers=max(1, workers))
        t0 = time.perf_counter()
        _mask_loop(todo, backbone, out_store, masker, stats, batch_size, workers,
                   seeds or attention_source(device), max_in_flight,
                   tqdm(total=len(todo), unit="img", desc=f"masks {shard[0]}/{shard[1]}", disable=not progress))
        stats.seconds = time.perf_counter() - t0
        return stats
