"""Overlays (heatmap + boxes + label), galleries and curves, written as PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from .fileio import atomic_save

GT_COLOUR = (40, 220, 40)  # RGB
PRED_COLOUR = (240, 40, 40)


def overlay(
    image: np.ndarray,
    heatmap: np.ndarray | None = None,
    pred_boxes: Sequence[Sequence[float]] = (),
    gt_boxes: Sequence[Sequence[float]] = (),
    label: str | None = None,
    alpha: float = 0.45,
) -> np.ndarray:
    """Draw a heatmap (H x W in [0, 1]), boxes (x0y0x1y1 px) and a caption on an RGB image.

    Returns a new H x W x 3 uint8 RGB image; predicted boxes red, GT boxes green.
    """
    out = np.ascontiguousarray(image[..., :3]).astype(np.uint8).copy()
    h, w = out.shape[:2]
    if heatmap is not None:
        hm = np.nan_to_num(heatmap.astype(np.float32))
        if hm.shape != (h, w):
            hm = cv2.resize(hm, (w, h), interpolation=cv2.INTER_LINEAR)
        hm = np.clip(hm, 0, 1)
        colour = cv2.applyColorMap((hm * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
        out = (out * (1 - alpha) + colour * alpha).astype(np.uint8)
    thick = max(1, round(min(h, w) / 150))
    for boxes, col in ((gt_boxes, GT_COLOUR), (pred_boxes, PRED_COLOUR)):
        for b in boxes:
            x0, y0, x1, y1 = (int(round(float(v))) for v in b)
            cv2.rectangle(out, (x0, y0), (max(x0, x1 - 1), max(y0, y1 - 1)), col, thick)
    if label:
        scale = max(0.35, min(h, w) / 500)
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        cv2.rectangle(out, (0, 0), (min(w, tw + 6), th + base + 6), (0, 0, 0), -1)
        cv2.putText(out, label, (3, th + 3), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def save_png(path: str | Path, rgb: np.ndarray) -> Path:
    """Write an RGB uint8 image as PNG, atomically."""
    path = Path(path)

    def _write(tmp: str) -> None:
        if not cv2.imwrite(tmp, np.ascontiguousarray(rgb[..., ::-1])):
            raise OSError(f"could not write {path}")

    atomic_save(path, _write)
    return path


def gallery(tiles: Sequence[np.ndarray], cols: int = 4, tile: int = 192, pad: int = 4) -> np.ndarray:
    """Arrange RGB images in a grid of ``tile`` x ``tile`` cells on a white canvas."""
    if not tiles:
        return np.full((tile, tile, 3), 255, np.uint8)
    rows = (len(tiles) + cols - 1) // cols
    canvas = np.full((rows * (tile + pad) + pad, cols * (tile + pad) + pad, 3), 255, np.uint8)
    for i, t in enumerate(tiles):
        h, w = t.shape[:2]
        s = tile / max(h, w)
        t = cv2.resize(t, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
        r, c = divmod(i, cols)
        y, x = pad + r * (tile + pad), pad + c * (tile + pad)
        canvas[y : y + t.shape[0], x : x + t.shape[1]] = t
    return canvas


def plot_curves(
    path: str | Path,
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    xlabel: str,
    ylabel: str,
    title: str = "",
) -> Path:
    """Line plot of named (x, y) series with matplotlib (Agg), saved as PNG atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.4), dpi=110)
    for name, (x, y) in series.items():
        ax.plot(list(x), list(y), marker="o" if len(x) < 30 else None, ms=3, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    atomic_save(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return path
