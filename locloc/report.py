"""``report.html``: metrics, baselines, a gallery with best and worst cases, curves, timings."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np

from .fileio import atomic_write, open_image
from .viz import gallery, overlay, plot_curves, save_png


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def _tiles(g: dict[str, Any], order: np.ndarray, limit: int) -> list[np.ndarray]:
    tf = g["transform"]
    names = g["class_names"]
    tiles = []
    for i in order[:limit]:
        s = g["samples"][i]
        img = open_image(s.path)
        w, h = img.size
        box = tf.to_original(np.asarray(g["boxes_crop"][i], dtype=np.float64)[None], (w, h))[0]
        # the map covers the eval crop: paste it back into the original frame for the overlay
        import cv2

        from .data.transforms import crop_offset, resized_size

        rw, rh = resized_size((w, h), tf.resize)
        ox, oy = crop_offset((rw, rh), tf.crop)
        m = g["maps"][i].astype(np.float32)
        m = (m - m.min()) / max(float(m.max() - m.min()), 1e-12)
        canvas = np.zeros((rh, rw), np.float32)
        canvas[oy : oy + tf.crop, ox : ox + tf.crop] = cv2.resize(m, (tf.crop, tf.crop))
        heat = cv2.resize(canvas, (w, h))
        pred = int(g["top1"][i])
        name = names[pred].split(".", 1)[-1] if pred < len(names) else str(pred)
        ok = "ok" if pred == g["labels"][i] else "wrong"
        cap = f"IoU {g['ious'][i]:.2f} {name} ({ok})"
        arr, gt = np.asarray(img), np.asarray(s.boxes, dtype=np.float64)
        k = 224 / max(w, h)
        if k > 1:  # draw at gallery size so captions and lines stay legible
            arr = cv2.resize(arr, (round(w * k), round(h * k)), interpolation=cv2.INTER_LINEAR)
            heat = cv2.resize(heat, (arr.shape[1], arr.shape[0]))
            box, gt = box * k, gt * k
        tiles.append(overlay(arr, heat, [box], gt, label=cap))
    return tiles


def _table(rows: list[tuple[str, dict[str, Any]]]) -> str:
    def f(v: Any) -> str:
        return "–" if v is None else (f"{v:.2f}" if isinstance(v, float) else html.escape(str(v)))

    head = "<tr><th>method</th><th>GT-known Loc</th><th>Top-1 Loc</th><th>Top-5 Loc</th><th>MaxBoxAccV2</th><th>threshold</th></tr>"
    body = "".join(
        f"<tr><td>{html.escape(n)}</td><td>{f(r.get('gt_known_loc'))}</td><td>{f(r.get('top1_loc'))}</td>"
        f"<td>{f(r.get('top5_loc'))}</td><td>{f(r.get('maxboxacc_v2'))}</td><td>{f(r.get('threshold'))}</td></tr>"
        for n, r in rows
    )
    return f"<table>{head}{body}</table>"


def write_report(out: str | Path, metrics: dict[str, Any], g: dict[str, Any], curves: dict[str, Path]) -> Path:
    """Write ``out/report.html`` and its PNGs; returns the HTML path."""
    out = Path(out)
    fig = out / "report_files"
    fig.mkdir(parents=True, exist_ok=True)
    ious = np.asarray(g["ious"])
    order_best = np.argsort(-ious, kind="stable")
    order_worst = np.argsort(ious, kind="stable")
    rng = np.random.default_rng(0)
    order_random = rng.permutation(len(ious))
    save_png(fig / "gallery_random.png", gallery(_tiles(g, order_random, 12), cols=4, tile=224))
    save_png(fig / "gallery_worst.png", gallery(_tiles(g, order_worst, 8), cols=4, tile=224))
    save_png(fig / "gallery_best.png", gallery(_tiles(g, order_best, 4), cols=4, tile=224))

    plot_curves(fig / "threshold_curve.png", g["threshold_curve"], "box threshold (fraction of map max)",
                "GT-known Loc (%)", f"threshold chosen on held-out: {g['chosen_threshold']:.2f}")
    curve_imgs = []
    for name, path in curves.items():
        rows = _read_jsonl(Path(path))
        if not rows:
            continue
        ep = [r["epoch"] for r in rows]
        series = {"train loss": (ep, [r["train_loss"] for r in rows])}
        plot_curves(fig / f"curve_{name}_loss.png", series, "epoch", "training loss", f"{name}: loss")
        curve_imgs.append(f"curve_{name}_loss.png")
        val_key = next((k for k in ("gt_known_loc", "top1", "val_top1") if k in rows[-1]), None)
        if val_key:
            plot_curves(fig / f"curve_{name}_val.png", {val_key: (ep, [r.get(val_key) for r in rows])},
                        "epoch", f"{val_key} (%) on held-out", f"{name}: validation")
            curve_imgs.append(f"curve_{name}_val.png")

    b = metrics["baselines"]
    rows = [
        ("centre box (size chosen on held-out)", b["centre_box"]),
        ("raw CLS attention, thresholded (TS-CAM style)", b["raw_attention"]),
        ("GrabCut masks directly (stage 1)", b["grabcut_masks"]),
        ("LocLoc: GEG generator + LFDM classifier", {**metrics["best"], "maxboxacc_v2": metrics["maxboxacc_v2"]}),
    ]
    opt = metrics["test_sweep_best_optimistic"]
    timings = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.1f} s</td></tr>" for k, v in metrics.get("timings_s", {}).items())
    data = metrics.get("data", {})
    probe = metrics.get("masks", {}).get("probe")
    stage1 = ("CLS attention &rarr; trimap &rarr; GrabCut (the paper's)" if not probe else
              f"class-aware seeds: round-1 GrabCut masks of {probe.get('images')} training images label the "
              f"patches of a linear probe ({probe.get('samples')} patches, trained with the image labels), whose "
              "own-class probability seeds a second GrabCut round; test images use the largest class probability "
              "(no label)")
    imgs = "".join(f'<img src="report_files/{c}" alt="{c}">' for c in curve_imgs)
    from .demo import embedded_backbone_advice

    advice = embedded_backbone_advice(metrics)
    advice_html = f'<div class="advice">{html.escape(advice)}</div>' if advice else ""
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>LocLoc demo report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #bbb;padding:4px 10px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}img{{max-width:100%;margin:4px}}h2{{margin-top:1.6em}}
.note{{color:#555;font-size:90%}}
.advice{{white-space:pre-wrap;font-family:monospace;font-size:85%;background:#fff8e1;border-left:4px solid #e0a000;
padding:8px 12px;margin:1em 0}}</style></head><body>
<h1>LocLoc demo report</h1>
<p><b>Data:</b> {html.escape(str(data.get('description', '')))} — {data.get('classes')} classes,
{data.get('train')} train, {data.get('heldout')} held-out (carved from train), {data.get('test')} test images.<br>
<b>Backbone:</b> {html.escape(str(metrics.get('backbone', {}).get('description', '')))}<br>
<b>Stage 1:</b> {stage1}<br>
<b>Model directory:</b> <code>{html.escape(str(metrics.get('model_dir', '')))}</code>
(works with <code>locloc predict</code> and <code>locloc evaluate</code>).</p>
<h2>Results on the test split</h2>
<p>Top-1 Cls <b>{metrics['top1_cls']:.2f}</b> · Top-5 Cls {metrics['top5_cls']:.2f} ·
Box threshold <b>{metrics['best']['threshold']:.2f}</b>, chosen on the held-out split.</p>
{_table(rows)}
<p class="note">Every method is scored on the same test images with the same classifier predictions
(Top-1/Top-5 Loc = GT-known and the class right). The test sweep's own best threshold
({opt['threshold']:.2f}: GT-known {opt['gt_known_loc']:.2f}, Top-1 Loc {opt['top1_loc']:.2f}) is
optimistic, since it is chosen on the test images themselves.</p>
{advice_html}
<h2>Gallery</h2>
<p class="note">Green: ground truth box; red: predicted box; heatmap: the GEG generator's map.
Caption: IoU with the GT box, predicted class, and whether it is right.</p>
<h3>Random test images</h3><img src="report_files/gallery_random.png" alt="random">
<h3>Worst cases (lowest IoU)</h3><img src="report_files/gallery_worst.png" alt="worst">
<h3>Best cases</h3><img src="report_files/gallery_best.png" alt="best">
<h2>Threshold curve</h2><img src="report_files/threshold_curve.png" alt="threshold curve">
<h2>Training curves</h2>{imgs}
<h2>Stage timings</h2><table>{timings}</table>
<p class="note">Full numbers: <code>metrics.json</code> (schema of <code>locloc evaluate</code>, baselines under
<code>baselines</code>).</p>
</body></html>
"""
    path = out / "report.html"
    with atomic_write(path, "w") as f:
        f.write(page)
    return path
