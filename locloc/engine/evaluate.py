"""The evaluation loop: one backbone pass per batch feeds both heads; metrics accumulate on CPU.

Stage 4 as one call: :func:`evaluate` (an :class:`EvalConfig` in: data set, model dir or the
reference release's files, split, thresholds; an :class:`EvalResult` out, written to
``out/metrics.json`` + ``per_image.csv`` + ``eval_config.yaml`` when ``out`` is set).
:func:`evaluate_samples` is the loop under it (a model and samples in). The metrics dict is
percent. The schema is shared by ``locloc evaluate``, ``locloc pipeline`` and
``locloc demo``::

    {"top1_cls", "top5_cls", "maxboxacc_v2",
     "best": {"threshold", "gt_known_loc", "top1_loc", "top5_loc"},
     "per_threshold": [{"threshold", "gt_known_loc", "top1_loc", "top5_loc"}, ...],
     "num_images", "num_classes", "thresholds", "box_mapping", "gt_boxes", ...}
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..data.datasets import WSOLDataset, collate_wsol, nan_padded_to_list
from ..data.records import Sample
from ..data.transforms import EvalTransform, eval_transform_for
from ..errors import ConfigError, DataError
from ..fileio import atomic_write, write_json
from ..metrics import LocalizationAccumulator, MaxBoxAccV2Accumulator, topk_classes
from ..models.pipeline import LocLocModel
from .config import EvalConfig, save_config

CUB_THRESHOLDS = (0.45, 0.48, 0.50, 0.51, 0.52, 0.53)
ILSVRC_THRESHOLDS = (0.30, 0.34, 0.38, 0.40, 0.42, 0.45)
REFERENCE_MODELS = {"deit_small_lctr": "deit_small_patch16_224"}


@dataclass
class EvalResult:
    """Metrics (``metrics.json`` content) and the per-image rows of the CSV."""

    metrics: dict[str, Any]
    rows: list[dict[str, Any]]


def evaluate_samples(
    model: LocLocModel,
    samples: Sequence[Sample],
    *,
    transform: EvalTransform,
    thresholds: Sequence[float],
    device: str | torch.device = "cpu",
    batch_size: int = 32,
    workers: int = 2,
    first_box_only: bool = False,
    maxboxacc_step: float = 0.01,
    amp_dtype: torch.dtype | None = None,
    class_names: Sequence[str] | None = None,
    metric_workers: int = 1,
    progress: bool = True,
    boxes_only: bool = False,
    row_threshold: float | None = None,
) -> EvalResult:
    """Evaluate ``model`` on ``samples`` (images with GT boxes and labels).

    ``thresholds`` is the box-threshold sweep of the reference rule (fractions of the map
    maximum). ``first_box_only`` reproduces the reference ILSVRC protocol (first GT box
    only); the default takes the best IoU over all GT boxes of an image. ``metric_workers``
    processes extract boxes (contour search) beside the networks. ``amp_dtype`` (e.g.
    ``torch.bfloat16``) runs the networks under autocast; ``boxes_only`` skips the classifier,
    so the classification and Top-k Loc metrics are None. The per-image rows hold the boxes
    at ``row_threshold`` (default: the sweep's best on these samples).
    """
    from tqdm import tqdm

    from .precision import checked_amp

    device = torch.device(device)
    amp_dtype = checked_amp(amp_dtype, device)  # bf16 on a CPU without native bf16: fp32
    model = model.to(device).eval()
    crop = transform.crop
    has_classifier = model.classifier is not None and not boxes_only
    fwd_kwargs = {"boxes_only": True} if boxes_only else {}
    loader = DataLoader(
        WSOLDataset(list(samples), transform),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate_wsol,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    mba = MaxBoxAccV2Accumulator(step=maxboxacc_step, size=crop, workers=metric_workers)
    loc = LocalizationAccumulator(list(thresholds), size=crop, workers=metric_workers, maxboxacc_v2=mba)
    rows: list[dict[str, Any]] = []
    # Box extraction runs on a worker thread (OpenCV releases the GIL) while the next batch
    # goes through the networks.
    pool = ThreadPoolExecutor(max_workers=1)
    pending: Future | None = None
    t0 = time.perf_counter()
    n = 0

    def consume(maps: np.ndarray, top5: np.ndarray | None, labels: np.ndarray, gts: list[np.ndarray]):
        loc.update(maps, gts, top5, labels)  # also feeds MaxBoxAccV2 from the same contour search

    bar = tqdm(total=len(samples), desc="evaluate", unit="img", disable=not progress, dynamic_ncols=True)
    try:
        with torch.inference_mode():
            for batch in loader:
                images = batch["image"].to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                    out = model(images, **fwd_kwargs)
                maps = out["maps"].float()[:, 0]
                top5 = None
                if has_classifier:
                    top5 = topk_classes(out["logits"], 5)
                maps_np = maps.cpu().numpy()
                labels = batch["label"].numpy()
                gts = nan_padded_to_list(batch["boxes"])
                if first_box_only:
                    gts = [g[:1] for g in gts]
                if pending is not None:
                    pending.result()
                pending = pool.submit(consume, maps_np, top5, labels, gts)
                for i in range(len(labels)):
                    rows.append(
                        {
                            "index": int(batch["index"][i]),
                            "label": int(labels[i]),
                            "top5": [int(c) for c in top5[i]] if top5 is not None else [],
                        }
                    )
                n += len(labels)
                bar.update(len(labels))
                bar.set_postfix(img_s=f"{n / (time.perf_counter() - t0):.1f}")
    finally:  # a clean line for an error message
        bar.close()
    if pending is not None:
        pending.result()
    pool.shutdown()
    seconds = time.perf_counter() - t0

    loc_res = loc.compute()
    loc.close()
    metrics = _metrics_dict(loc_res, loc_res["maxboxacc_v2"], has_classifier)
    metrics.update(
        num_images=len(samples),
        num_classes=model.num_classes,
        thresholds=[float(t) for t in thresholds],
        gt_boxes="first" if first_box_only else "all",
        box_mapping=transform.box_mapping,
        boxes_only=bool(boxes_only),
        amp_dtype=str(amp_dtype).replace("torch.", "") if amp_dtype is not None else None,
        seconds=round(seconds, 3),
        images_per_second=round(len(samples) / max(seconds, 1e-9), 2),
    )
    at = metrics["best"]["threshold"] if row_threshold is None else row_threshold
    _fill_rows(rows, samples, loc, at, class_names)
    return EvalResult(metrics=metrics, rows=rows)


def _metrics_dict(loc_res: dict, mba_res: dict, has_classifier: bool) -> dict[str, Any]:
    per = [
        {k: None if r[k] is None else float(r[k]) for k in ("threshold", "gt_known_loc", "top1_loc", "top5_loc")}
        for r in loc_res["per_threshold"]
    ]
    best = dict(loc_res["best"])
    best = {k: best[k] for k in ("threshold", "gt_known_loc", "top1_loc", "top5_loc")}
    return {
        "top1_cls": float(loc_res["top1_cls"]) if has_classifier else None,
        "top5_cls": float(loc_res["top5_cls"]) if has_classifier else None,
        "maxboxacc_v2": float(mba_res["maxboxacc_v2"]),
        "maxboxacc_v2_per_iou": mba_res["per_iou"],
        "best": best,
        "best_selection": loc_res.get("best_selection"),
        "per_threshold": per,
    }


def _fill_rows(
    rows: list[dict[str, Any]],
    samples: Sequence[Sample],
    loc: LocalizationAccumulator,
    threshold: float,
    class_names: Sequence[str] | None,
) -> None:
    """Add image id, box and IoU at ``threshold`` to each per-image row."""
    boxes, ious = loc.per_image(threshold)
    for row, box, iou in zip(rows, boxes, ious):
        s = samples[row["index"]]
        row["image_id"] = s.image_id
        row["relpath"] = s.relpath
        row["box"] = [int(v) for v in box]
        row["iou"] = float(iou)
        if class_names is not None and row["top5"]:
            c = row["top5"][0]
            row["pred_name"] = class_names[c] if c < len(class_names) else str(c)


def write_results(result: EvalResult, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``per_image.csv`` then ``metrics.json`` into ``out_dir``, each atomically."""
    out_dir = Path(out_dir)
    for stale in (*out_dir.glob(".per_image.csv.*.tmp"), *out_dir.glob(".metrics.json.*.tmp")):
        stale.unlink(missing_ok=True)  # left by a run killed while writing
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["image_id", "relpath", "label", "top1", "top5", "x0", "y0", "x1", "y1", "iou"])
    for r in result.rows:
        top5 = r["top5"]
        w.writerow(
            [r["image_id"], r["relpath"], r["label"], top5[0] if top5 else "", " ".join(map(str, top5)),
             *r["box"], f"{r['iou']:.6f}"]
        )
    with atomic_write(out_dir / "per_image.csv", "w") as f:
        f.write(buf.getvalue())
    write_json(out_dir / "metrics.json", result.metrics)  # last: its presence means both are complete
    return out_dir / "metrics.json", out_dir / "per_image.csv"


def _f(v: float | None, width: int) -> str:
    return f"{v:{width}.2f}" if v is not None else f"{'-':>{width}}"


def format_table(metrics: dict[str, Any]) -> str:
    """The per-threshold table printed by ``locloc evaluate``."""
    lines = []
    if metrics.get("top1_cls") is not None:
        lines.append(f"Top-1 Cls {metrics['top1_cls']:6.2f}   Top-5 Cls {metrics['top5_cls']:6.2f}")
    lines.append(f"MaxBoxAccV2 {metrics['maxboxacc_v2']:6.2f}")
    lines.append(f"{'threshold':>9}  {'GT-known':>8}  {'Top-1 Loc':>9}  {'Top-5 Loc':>9}")
    best_t = metrics["best"]["threshold"]
    note = metrics.get("best_selection") or ""
    for r in metrics["per_threshold"]:
        mark = " *" if r["threshold"] == best_t else ""
        lines.append(
            f"{r['threshold']:9.2f}  {_f(r['gt_known_loc'], 8)}  {_f(r['top1_loc'], 9)}  {_f(r['top5_loc'], 9)}{mark}"
        )
    if note.startswith("threshold chosen on split"):
        lines.append(f"* {note}")
        opt = metrics.get("test_sweep_best_optimistic")
        if opt:
            lines.append(f"  (this split's own best, optimistic: threshold {opt['threshold']:.2f}, "
                         f"GT-known {_f(opt['gt_known_loc'], 0).strip()})")
    else:
        lines.append("* best GT-known Loc on this sweep (chosen on the evaluated split itself: optimistic; "
                     "--threshold-split val chooses it on another split)")
    return "\n".join(lines)


def format_reference(metrics: dict[str, Any]) -> str:
    """The reference ``main_eval.py`` printout, one block per threshold."""
    blocks = []
    for r in metrics["per_threshold"]:
        blocks.append(
            f"Evaluation Result:\nLoc GT:{r['gt_known_loc']:.3f}\n"
            f"Loc Top1:{r['top1_loc'] or 0.0:.3f} Loc Top5:{r['top5_loc'] or 0.0:.3f}\n"
            f"Cls Top1: {metrics['top1_cls'] or 0.0:.3f} Cls Top5:{metrics['top5_cls'] or 0.0:.3f}"
        )
    return "\n".join(blocks)


# ------------------------------------------------------------------------- the stage-4 call


def _stderr(msg: str) -> None:
    import sys

    print(msg, file=sys.stderr)


def load_eval_model(cfg: EvalConfig) -> tuple[LocLocModel, dict[str, Any]]:
    """The model of ``cfg``: a project model dir (with its config) or the reference release's
    three files (``reference_backbone/classifier/locator``; config ``{}``)."""
    from ..models.builder import build_from_reference
    from ..models.model_dir import load_model_dir

    ref = {"--resume": cfg.reference_backbone, "--classifier": cfg.reference_classifier,
           "--locator": cfg.reference_locator}
    if cfg.model_dir:
        if any(ref.values()):
            raise ConfigError("give either --model-dir or the reference files (--resume/--classifier/--locator), not both")
        return load_model_dir(cfg.model_dir, device="cpu")
    missing = [f for f, v in ref.items() if not v]
    if missing:
        raise ConfigError(
            "no model given: pass --model-dir DIR, or the reference release's files with "
            f"--resume/--classifier/--locator (missing: {', '.join(missing)})"
        )
    name = REFERENCE_MODELS.get(cfg.reference_model or "deit_small_lctr")
    if name is None:
        raise ConfigError(f"--model {cfg.reference_model!r} is not a reference model; known: {', '.join(REFERENCE_MODELS)}")
    model = build_from_reference(cfg.reference_backbone, cfg.reference_classifier, cfg.reference_locator,
                                 backbone_name=name, generator=cfg.locator_type)
    return model, {}


def default_thresholds(config: dict[str, Any], dataset_name: str) -> list[float]:
    """The model's own sweep, else the reference's for the data set (ILSVRC or CUB)."""
    sweep = (config.get("thresholds") or {}).get("sweep")
    if sweep:
        return [float(t) for t in sweep]
    return list(ILSVRC_THRESHOLDS if dataset_name.lower().startswith("ilsvrc") else CUB_THRESHOLDS)


def evaluate(cfg: EvalConfig, *, progress: bool = True, log: Callable[[str], None] = _stderr) -> EvalResult:
    """Stage 4: score a model on ``cfg.split`` of a data set with boxes.

    The box threshold is the sweep's best on the split itself (optimistic, labelled so), or,
    with ``threshold_split``, the best on that split, reported on ``split`` (the honest
    protocol). When the model stores its own threshold, the result at it is added
    (``at_model_threshold``). With ``out``, writes ``metrics.json``, ``per_image.csv`` and the
    resolved ``eval_config.yaml`` there, each atomically.
    """
    from ..data import load_dataset
    from ..data.datasets import check_images, skipped_message, worker_errors
    from ..metrics import choose_threshold, heldout_protocol
    from .distributed import select_device

    if not cfg.data_path:
        raise ConfigError("evaluate: data_path is required")
    kind = {"CUB": "cub", "IMNET": "ilsvrc", "ILSVRC": "ilsvrc"}.get(cfg.data_set or "", "auto")
    data = load_dataset(cfg.data_path, kind=kind, images_root=cfg.images_root)
    split = cfg.split or ("test" if "test" in data.splits else next(iter(data.splits)))
    samples = data.split(split)
    select = data.split(cfg.threshold_split) if cfg.threshold_split else None
    if cfg.threshold_split == split:
        raise ConfigError(f"--threshold-split {split} is the evaluated split itself; choose another (e.g. val)")
    if cfg.limit:
        samples = samples[: cfg.limit]
    device = select_device(cfg.device)
    workers = cfg.workers if cfg.workers is not None else (0 if device.type == "cpu" else 2)
    skipped: list[str] = []
    if cfg.skip_bad:
        samples, skipped = check_images(samples, workers=max(1, workers))
        if not samples:
            raise DataError(f"{cfg.data_path}: no readable images in split {split!r} ({skipped_message(skipped)})")
    model, config = load_eval_model(cfg)
    transform = eval_transform_for(config, getattr(model.backbone, "img_size", (224, 224))[0], cfg.box_mapping)
    thresholds = cfg.thresholds or default_thresholds(config, data.name)
    class_names = config.get("class_names") or data.classes
    common = dict(
        transform=transform, thresholds=thresholds, device=device, batch_size=cfg.batch_size,
        workers=workers, first_box_only=cfg.first_box_only, progress=progress,
        amp_dtype=torch.bfloat16 if cfg.bf16 else None, metric_workers=cfg.metric_workers,
    )
    chosen = None
    if select is not None:
        log(f"choosing the box threshold on {len(select)} images of {data.name} ({cfg.threshold_split})")
        with worker_errors():  # GT-known Loc needs no class: the classifier is skipped here
            sel = evaluate_samples(model, select, boxes_only=True, **common)
        chosen = choose_threshold(sel.metrics)
    log(f"evaluating {len(samples)} images of {data.name} ({split}) on {device}")
    with worker_errors():
        result = evaluate_samples(model, samples, class_names=class_names, boxes_only=cfg.boxes_only,
                                  row_threshold=chosen, **common)
    m = result.metrics
    if select is not None:
        proto = heldout_protocol(sel.metrics, m)
        proto["threshold_chosen_on"] = f"split {cfg.threshold_split!r}"
        m["test_sweep_best_optimistic"] = proto["test_sweep_best_optimistic"]
        m["best"] = proto["test_at_heldout_threshold"]
        m["best_selection"] = (f"threshold chosen on split {cfg.threshold_split!r} "
                               f"(max GT-known Loc there, {len(select)} images)")
        m["threshold_protocol"] = proto
    th_cfg = config.get("thresholds") or {}
    if select is None and "default" in th_cfg:
        # the threshold stored with the model (chosen on its validation split during training)
        rows = [r for r in m["per_threshold"] if abs(r["threshold"] - th_cfg["default"]) < 1e-9]
        if rows:
            m["at_model_threshold"] = {**rows[0], "chosen_on": th_cfg.get("chosen_on", "unknown")}
    m.update(data_path=str(Path(cfg.data_path)), split=split, skipped_images=len(skipped))
    if skipped:
        m["skipped"] = skipped
    if cfg.out:
        try:
            write_results(result, cfg.out)
            save_config(cfg, cfg.out, "eval_config")
        except OSError as e:  # disk full, permissions, --out names a file: nothing half-written
            raise DataError(
                f"{cfg.out}: cannot write metrics.json and per_image.csv here ({e.strerror or e})"
            ) from None
    return result


def format_model_threshold(metrics: dict[str, Any]) -> str | None:
    """One line: the result at the model's stored threshold, and where it was chosen."""
    at = metrics.get("at_model_threshold")
    if at is None:
        return None
    where = {"heldout": "held-out training images", "test": "the test images (optimistic)"}.get(
        at["chosen_on"], f"split {at['chosen_on']!r}")
    line = (f"at the model's own threshold {at['threshold']:.2f} (chosen during training on {where}): "
            f"GT-known {at['gt_known_loc']:.2f}")
    if at["top1_loc"] is not None:
        line += f", Top-1 Loc {at['top1_loc']:.2f}"
    return line
