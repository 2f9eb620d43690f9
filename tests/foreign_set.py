"""A CUB-layout data set from a generator that shares no code with ``make-synthetic``.

Drawn with Pillow's ``ImageDraw`` only: 8 classes = 4 outlines (ellipse, rounded box, kite,
pie slice) x 2 fills (stripes, speckles), random colours, objects of many sizes and aspect
ratios, look-alike distractors (a smaller shape of another class), images of mixed sizes
saved as PNG or JPEG. Used to check that the shipped backbone transfers to data it has never
seen (``benchmarks/demo_transfer.py``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

OUTLINES = ("ellipse", "roundbox", "kite", "pie")
FILLS = ("stripes", "speckles")
CLASSES = [(o, f) for o in OUTLINES for f in FILLS]
SIZES = ((160, 120), (200, 150), (144, 192), (176, 176))


def _outline_mask(kind: str, box: tuple[int, int, int, int], size: tuple[int, int], angle: float) -> Image.Image:
    m = Image.new("L", size, 0)
    d = ImageDraw.Draw(m)
    x0, y0, x1, y1 = box
    if kind == "ellipse":
        d.ellipse(box, fill=255)
    elif kind == "roundbox":
        d.rounded_rectangle(box, radius=max(2, min(x1 - x0, y1 - y0) // 4), fill=255)
    elif kind == "kite":
        cx = (x0 + x1) / 2
        d.polygon([(cx, y0), (x1, y0 + (y1 - y0) * 0.35), (cx, y1), (x0, y0 + (y1 - y0) * 0.35)], fill=255)
    else:
        d.pieslice(box, start=30, end=330, fill=255)
    return m.rotate(angle, center=((x0 + x1) / 2, (y0 + y1) / 2))


def _fill(kind: str, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    w, h = size
    a, b = (tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(2))
    img = Image.new("RGB", size, a)
    d = ImageDraw.Draw(img)
    if kind == "stripes":
        step = int(rng.integers(4, 8))
        for x in range(-h, w, step * 2):
            d.polygon([(x, 0), (x + step, 0), (x + step + h, h), (x + h, h)], fill=b)
    else:
        for _ in range(int(w * h / 40)):
            x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
            r = int(rng.integers(1, 3))
            d.ellipse((x - r, y - r, x + r, y + r), fill=b)
    return img


def _background(size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    w, h = size
    top, bottom = rng.integers(30, 226, 3), rng.integers(30, 226, 3)
    t = np.linspace(0, 1, h)[:, None, None]
    grad = (top * (1 - t) + bottom * t) * np.ones((1, w, 1))
    img = Image.fromarray(np.clip(grad + rng.normal(0, 6, grad.shape), 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 6))):  # clutter: lines and hollow boxes
        p = [int(v) for v in rng.integers(0, max(w, h), 4)]
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.uniform() < 0.5:
            d.line(p, fill=colour, width=int(rng.integers(1, 3)))
        else:
            d.rectangle((min(p[0], p[2]), min(p[1], p[3]), max(p[0], p[2]), max(p[1], p[3])), outline=colour)
    return img.filter(ImageFilter.GaussianBlur(0.6))


def _paste(img: Image.Image, k: int, extent: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """Paste an object of class ``k``; returns its tight box (x0, y0, x1, y1)."""
    w, h = img.size
    side = extent * min(w, h)
    aspect = float(np.exp(rng.uniform(np.log(0.6), np.log(1.6))))
    bw, bh = max(6, int(side * np.sqrt(aspect))), max(6, int(side / np.sqrt(aspect)))
    bw, bh = min(bw, w - 2), min(bh, h - 2)
    x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
    outline, fill = CLASSES[k]
    mask = _outline_mask(outline, (x0, y0, x0 + bw, y0 + bh), img.size, float(rng.uniform(-25, 25)))
    img.paste(_fill(fill, img.size, rng), (0, 0), mask)
    ys, xs = np.nonzero(np.asarray(mask) > 127)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def write_foreign_set(out: str | Path, train: int = 60, test: int = 20, seed: int = 0) -> Path:
    """Write the set (``len(CLASSES)`` classes) in the CUB layout under ``out``."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    rows, labels, split, boxes = [], [], [], []
    for k, (outline, fill) in enumerate(CLASSES):
        (out / "images" / f"{k + 1:02d}.{outline}_{fill}").mkdir(parents=True, exist_ok=True)
        for j in range(train + test):
            size = SIZES[int(rng.integers(0, len(SIZES)))]
            img = _background(size, rng)
            for _ in range(int(rng.integers(0, 3))):  # look-alike distractors of other classes
                _paste(img, int((k + rng.integers(1, len(CLASSES))) % len(CLASSES)), rng.uniform(0.12, 0.2), rng)
            box = _paste(img, k, float(rng.uniform(0.35, 0.85)), rng)
            ext = "jpg" if j % 3 == 0 else "png"
            rel = f"{k + 1:02d}.{outline}_{fill}/{outline}_{fill}_{j:03d}.{ext}"
            img.save(out / "images" / rel, quality=92) if ext == "jpg" else img.save(out / "images" / rel)
            i = len(rows) + 1
            rows.append(f"{i} {rel}")
            labels.append(f"{i} {k + 1}")
            split.append(f"{i} {1 if j < train else 0}")
            x0, y0, x1, y1 = box
            boxes.append(f"{i} {x0}.0 {y0}.0 {x1 - x0}.0 {y1 - y0}.0")
    (out / "classes.txt").write_text("".join(f"{k + 1} {k + 1:02d}.{o}_{f}\n" for k, (o, f) in enumerate(CLASSES)))
    for name, lines in (("images.txt", rows), ("image_class_labels.txt", labels),
                        ("train_test_split.txt", split), ("bounding_boxes.txt", boxes)):
        (out / name).write_text("\n".join(lines) + "\n")
    return out
