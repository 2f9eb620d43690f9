"""A procedurally generated WSOL data set in the CUB-200-2011 layout (the embedded default).

Each class is one (shape, texture) pair: shapes ellipse, star, triangle, cross, ring,
crescent; textures stripes, checker, dots, gradient, waves. Colours are random per image and
carry no class information. Every image has one object of varied scale (about 15-60 % of the
image side), aspect, rotation and position, with soft shading, drawn over a cluttered
background (colour gradient, low-frequency noise, striped and speckled patches, lines) and
1-3 smaller distractors of non-class shapes (square, hexagon, bar) and textures (speckle,
solid). The GT mask is the object's pixels; the GT box is the mask's tight box.

Besides the CUB files, ``sizes.txt`` (``id w h``) is written so that the loader checks boxes
against image sizes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from ..errors import DataError
from ..fileio import atomic_dir
from ..metrics import box_iou
from .records import Sample

SHAPES = ("ellipse", "star", "triangle", "cross", "ring", "crescent")
TEXTURES = ("stripes", "checker", "dots", "gradient", "waves")
MAX_CLASSES = len(SHAPES) * len(TEXTURES)
SCALE_RANGE = (0.15, 0.60)  # object extent / image side
DISTRACTOR_SCALE = (0.07, 0.13)


def class_spec(k: int) -> tuple[str, str]:
    """The (shape, texture) of class ``k``; neighbouring classes differ in both."""
    if not 0 <= k < MAX_CLASSES:
        raise ValueError(f"class index must be in 0..{MAX_CLASSES - 1}")
    # k and k + 6j share a shape; their textures differ by 7j mod 5 != 0: all 30 pairs differ.
    return SHAPES[k % len(SHAPES)], TEXTURES[(k + k // len(SHAPES)) % len(TEXTURES)]


def class_names(n: int) -> list[str]:
    """CUB-style names ``"001.ellipse_stripes"`` for the first ``n`` classes."""
    return [f"{k + 1:03d}.{'_'.join(class_spec(k))}" for k in range(n)]


# ---------------------------------------------------------------------------------------
# Geometry: shapes as polygons in unit coordinates (radius about 1), then placed.


def _regular(n: int, r: float = 1.0, phase: float = 0.0) -> np.ndarray:
    a = phase + 2 * np.pi * np.arange(n) / n
    return np.stack([r * np.cos(a), r * np.sin(a)], 1)


def _star(rng: np.random.Generator) -> np.ndarray:
    n = int(rng.integers(5, 7))
    outer = _regular(n, 1.0, -np.pi / 2)
    inner = _regular(n, rng.uniform(0.38, 0.5), -np.pi / 2 + np.pi / n)
    return np.stack([outer, inner], 1).reshape(-1, 2)


def _cross(rng: np.random.Generator) -> np.ndarray:
    t = rng.uniform(0.28, 0.38)
    return np.array(
        [[-t, -1], [t, -1], [t, -t], [1, -t], [1, t], [t, t],
         [t, 1], [-t, 1], [-t, t], [-1, t], [-1, -t], [-t, -t]],
        dtype=np.float64,
    )


def _shape_polys(shape: str, rng: np.random.Generator) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``(filled, holes)`` polygons of ``shape`` in unit coordinates."""
    circle = _regular(96)
    if shape == "ellipse":
        return [circle], []
    if shape == "star":
        return [_star(rng)], []
    if shape == "triangle":
        return [_regular(3, 1.0, -np.pi / 2) * [1.0, 1.15] + [0, 0.12]], []
    if shape == "cross":
        return [_cross(rng)], []
    if shape == "ring":
        return [circle], [circle * rng.uniform(0.45, 0.6)]
    if shape == "crescent":
        d = rng.uniform(0.45, 0.6)
        return [circle], [circle * rng.uniform(0.8, 0.95) + [d, -0.1]]
    if shape == "square":
        return [np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64) * 0.8], []
    if shape == "hexagon":
        return [_regular(6)], []
    if shape == "bar":
        return [np.array([[-1, -0.22], [1, -0.22], [1, 0.22], [-1, 0.22]], dtype=np.float64)], []
    raise ValueError(f"unknown shape {shape!r}")


def _placement(
    rng: np.random.Generator, size: int, extent: float, free: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """A random 2x2 linear map (rotation x aspect x scale) and a centre keeping it in the image."""
    theta = rng.uniform(0, 2 * np.pi)
    aspect = np.exp(rng.uniform(-0.3, 0.3))
    half = extent * size / 2
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    lin = rot @ np.diag([half * aspect, half / aspect])
    reach = np.abs(lin).sum(1)  # half-extent of the transformed unit square, per axis
    lo, hi = reach + 1, size - 1 - reach
    centre = np.array([rng.uniform(lo[i], hi[i]) if hi[i] > lo[i] else size / 2 for i in range(2)])
    return lin, centre


def _rasterize(
    polys: Sequence[np.ndarray],
    holes: Sequence[np.ndarray],
    lin: np.ndarray,
    centre: np.ndarray,
    size: int,
) -> np.ndarray:
    shift = 4  # sub-pixel vertex precision for cv2.fillPoly
    m = np.zeros((size, size), np.uint8)

    def pts(p: np.ndarray) -> list[np.ndarray]:
        q = p @ lin.T + centre
        return [np.round(q * (1 << shift)).astype(np.int32)]

    for p in polys:
        cv2.fillPoly(m, pts(p), 1, lineType=cv2.LINE_8, shift=shift)
    for p in holes:
        cv2.fillPoly(m, pts(p), 0, lineType=cv2.LINE_8, shift=shift)
    return m


# ---------------------------------------------------------------------------------------
# Appearance.


def _local_coords(lin: np.ndarray, centre: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Object-frame coordinates (u, v) of every pixel: the unit shape spans about [-1, 1]."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    inv = np.linalg.inv(lin)
    dx, dy = xs + 0.5 - centre[0], ys + 0.5 - centre[1]
    return inv[0, 0] * dx + inv[0, 1] * dy, inv[1, 0] * dx + inv[1, 1] * dy


def _texture(name: str, u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A pattern in [0, 1] over object coordinates."""
    if name == "stripes":
        return 0.5 + 0.5 * np.sign(np.sin(np.pi * rng.uniform(3.0, 4.5) * u))
    if name == "checker":
        k = rng.uniform(2.0, 3.0)
        return ((np.floor(u * k) + np.floor(v * k)) % 2).astype(np.float64)
    if name == "dots":
        k = rng.uniform(2.2, 3.2)
        fu, fv = (u * k) % 1 - 0.5, (v * k) % 1 - 0.5
        return (fu * fu + fv * fv < 0.3**2).astype(np.float64)
    if name == "gradient":
        return np.clip((u + v) / 2.8 + 0.5, 0, 1)
    if name == "waves":
        f = rng.uniform(2.5, 3.5)
        return 0.5 + 0.5 * np.sign(np.sin(np.pi * f * (v + 0.25 * np.sin(np.pi * 2.0 * u))))
    if name == "speckle":
        small = rng.uniform(0, 1, (16, 16))
        return cv2.resize(small, u.shape[::-1], interpolation=cv2.INTER_NEAREST).astype(np.float64)
    if name == "solid":
        return np.zeros_like(u)
    raise ValueError(f"unknown texture {name!r}")


def _two_colours(rng: np.random.Generator, min_dist: float = 90.0) -> tuple[np.ndarray, np.ndarray]:
    while True:
        a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        if np.linalg.norm(a - b) >= min_dist:
            return a, b


def _background(rng: np.random.Generator, size: int, clutter: float = 1.0) -> np.ndarray:
    ys, xs = np.mgrid[0:size, 0:size] / size
    a, b = rng.uniform(30, 225, 3), rng.uniform(30, 225, 3)
    theta = rng.uniform(0, 2 * np.pi)
    t = np.clip((np.cos(theta) * (xs - 0.5) + np.sin(theta) * (ys - 0.5)) + 0.5, 0, 1)[..., None]
    img = a * (1 - t) + b * t
    low = rng.normal(0, 35, (5, 5, 3))
    img += cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC)
    for _ in range(int(round(int(rng.integers(3, 7)) * clutter))):  # textured patches
        lin, centre = _placement(rng, size, rng.uniform(0.2, 0.5))
        patch = _rasterize([_regular(4, 1.2, np.pi / 4)], [], lin, centre, size).astype(bool)
        f = rng.uniform(6, 14)
        phase = rng.uniform(0, 2 * np.pi)
        along = np.cos(phase) * xs[patch] + np.sin(phase) * ys[patch]
        tex = 0.5 + 0.5 * np.sin(2 * np.pi * f * along)
        c1, c2 = _two_colours(rng, 40)
        alpha = rng.uniform(0.25, 0.55) * min(clutter, 1.0)
        col = c1 * (1 - tex[:, None]) + c2 * tex[:, None]
        img[patch] = (1 - alpha) * img[patch] + alpha * col
    for _ in range(int(round(int(rng.integers(2, 6)) * clutter))):  # clutter lines
        p0, p1 = rng.uniform(0, size, 2), rng.uniform(0, size, 2)
        colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
        a, b = tuple(int(c) for c in p0), tuple(int(c) for c in p1)
        cv2.line(img, a, b, colour, int(rng.integers(1, 3)), cv2.LINE_AA)
    return img


def class_hue(k: int) -> float:
    """A hue (degrees) for class ``k``; consecutive classes are ~137.5 degrees apart."""
    return (k * 137.508) % 360.0


def _hue_colour(hue: float, rng: np.random.Generator) -> np.ndarray:
    """An RGB colour (0..255 floats) of ``hue`` degrees, high saturation and value."""
    hsv = np.uint8([[[int(hue % 360) // 2, int(rng.uniform(170, 255)), int(rng.uniform(170, 255))]]])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float64)


def _paint(
    img: np.ndarray,
    mask: np.ndarray,
    tex: np.ndarray,
    u: np.ndarray,
    v: np.ndarray,
    rng: np.random.Generator,
    shade: bool,
    hue: float | None = None,
) -> None:
    """Blend a textured, optionally shaded object into ``img`` (in place) through ``mask``.

    With ``hue`` (degrees) the first colour is a saturated colour of about that hue.
    """
    c1, c2 = _two_colours(rng)
    if hue is not None:
        c1 = _hue_colour(hue + rng.uniform(-12, 12), rng)
        while np.linalg.norm(c1 - c2) < 90:
            c2 = rng.uniform(0, 255, 3)
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return
    # Work inside the mask's box (+ blur margin): the rest of the image is untouched.
    y0, y1 = max(ys.min() - 4, 0), ys.max() + 5
    x0, x1 = max(xs.min() - 4, 0), xs.max() + 5
    win = (slice(y0, y1), slice(x0, x1))
    t, u, v = tex[win], u[win], v[win]
    col = c1 * (1 - t[..., None]) + c2 * t[..., None]
    if shade:
        light = rng.uniform(-1, 1, 2)
        directional = np.clip(light[0] * u + light[1] * v, -1.5, 1.5)
        s = 1.0 + 0.22 * directional - 0.15 * np.clip(u * u + v * v, 0, 1.5)
        col = col * s[..., None]
    alpha = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 0.7)[win]
    alpha = alpha[..., None].astype(np.float64)
    img[win] = img[win] * (1 - alpha) + col * alpha


def render(
    k: int,
    rng: np.random.Generator,
    size: int = 224,
    clutter: float = 1.0,
    scale: tuple[float, float] = SCALE_RANGE,
    class_colours: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """One image of class ``k``: ``(H x W x 3 uint8 RGB image, H x W uint8 mask in {0, 1})``.

    ``clutter`` scales the number and opacity of background patches and lines (1 = default,
    0 = a plain gradient); ``scale`` is the range of the object's extent / image side;
    ``class_colours`` gives each class's objects a main colour of its own hue (as bird
    species have), on top of shape and texture.
    """
    shape, texture = class_spec(k)
    img = _background(rng, size, clutter)
    for _ in range(int(rng.integers(1, 4))):
        dshape = ("square", "hexagon", "bar")[int(rng.integers(0, 3))]
        lin, centre = _placement(rng, size, rng.uniform(*DISTRACTOR_SCALE))
        polys, holes = _shape_polys(dshape, rng)
        dm = _rasterize(polys, holes, lin, centre, size)
        u, v = _local_coords(lin, centre, size)
        tex = _texture(("speckle", "solid")[int(rng.integers(0, 2))], u, v, rng)
        _paint(img, dm, tex, u, v, rng, False)
    extent = float(np.exp(rng.uniform(np.log(scale[0]), np.log(scale[1]))))
    while True:
        lin, centre = _placement(rng, size, extent)
        polys, holes = _shape_polys(shape, rng)
        mask = _rasterize(polys, holes, lin, centre, size)
        if mask.sum() >= 16:
            break
    u, v = _local_coords(lin, centre, size)
    _paint(img, mask, _texture(texture, u, v, rng), u, v, rng, True, class_hue(k) if class_colours else None)
    img += rng.normal(0, 5, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), mask


def mask_box_xywh(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Tight box of a binary mask as CUB ``x, y, w, h`` (exclusive far edge: ``x + w``)."""
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    return x0, y0, int(xs.max()) + 1 - x0, int(ys.max()) + 1 - y0


def _png(arr: np.ndarray) -> bytes:
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", arr)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def _prepare_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise DataError(
                f"{out}: directory is not empty; choose another or pass --force to replace it"
            )
        if not (out / "images.txt").is_file():
            raise DataError(
                f"{out}: not empty and not a CUB-layout data set (no images.txt); "
                "refusing to replace it even with --force"
            )


def make_synthetic(
    out: str | Path,
    classes: int = 6,
    train: int = 40,
    test: int = 20,
    size: int = 224,
    seed: int = 0,
    *,
    clutter: float = 1.0,
    scale: tuple[float, float] = SCALE_RANGE,
    class_colours: bool = False,
    force: bool = False,
    progress: bool | None = None,
) -> Path:
    """Write a synthetic CUB-layout data set to ``out``; returns its absolute path.

    ``train`` and ``test`` are images per class. The output is the same, byte for byte, for
    the same arguments. It is built in a temporary folder beside ``out`` and renamed into
    place, so ``out`` never holds half a data set. A non-empty ``out`` is replaced only with
    ``force=True`` and only when it holds a CUB-layout data set. ``progress=None`` shows a
    bar on terminals only.
    """
    if not 1 <= classes <= MAX_CLASSES:
        raise DataError(f"--classes must be in 1..{MAX_CLASSES}, got {classes}")
    if train < 1 or test < 0:
        raise DataError(f"need --train >= 1 and --test >= 0 per class, got {train} and {test}")
    if size < 32:
        raise DataError(f"--size must be at least 32 pixels, got {size}")
    if not 0.0 <= clutter <= 2.0:
        raise DataError(f"--clutter must be in [0, 2], got {clutter}")
    if not 0.05 <= scale[0] <= scale[1] <= 0.95:
        raise DataError(f"--scale must satisfy 0.05 <= min <= max <= 0.95, got {scale}")
    out = Path(out).expanduser().absolute()
    _prepare_out(out, force)
    with atomic_dir(out, replace=True) as tmp:  # out never holds half a data set
        _write(tmp, classes, train, test, size, seed, progress, clutter, tuple(scale), class_colours)
    return out


def _write(
    root: Path,
    classes: int,
    train: int,
    test: int,
    size: int,
    seed: int,
    progress: bool | None,
    clutter: float = 1.0,
    scale: tuple[float, float] = SCALE_RANGE,
    class_colours: bool = False,
) -> None:
    names = class_names(classes)
    rows: dict[str, list[str]] = {k: [] for k in ("images", "labels", "split", "boxes", "sizes")}
    total = classes * (train + test)
    image_id = 0
    disable = None if progress is None else not progress  # None: a bar on terminals only
    with tqdm(total=total, desc="make-synthetic", unit="img", disable=disable) as bar:
        for k, cname in enumerate(names):
            (root / "images" / cname).mkdir(parents=True)
            (root / "segmentations" / cname).mkdir(parents=True)
            for j in range(train + test):
                is_train = j < train
                rng = np.random.default_rng([seed, k, j])
                img, mask = render(k, rng, size, clutter, scale, class_colours)
                stem = f"{cname.split('.', 1)[1]}_{j:04d}"
                rel = f"{cname}/{stem}.png"
                (root / "images" / rel).write_bytes(_png(img))
                (root / "segmentations" / rel).write_bytes(_png(mask * 255))
                image_id += 1
                x, y, w, h = mask_box_xywh(mask)
                rows["images"].append(f"{image_id} {rel}")
                rows["labels"].append(f"{image_id} {k + 1}")
                rows["split"].append(f"{image_id} {int(is_train)}")
                rows["boxes"].append(f"{image_id} {x:.1f} {y:.1f} {w:.1f} {h:.1f}")
                rows["sizes"].append(f"{image_id} {size} {size}")
                bar.update(1)
    files = {
        "images.txt": rows["images"],
        "image_class_labels.txt": rows["labels"],
        "train_test_split.txt": rows["split"],
        "bounding_boxes.txt": rows["boxes"],
        "sizes.txt": rows["sizes"],
        "classes.txt": [f"{i + 1} {n}" for i, n in enumerate(names)],
    }
    for name, lines in files.items():
        (root / name).write_text("".join(line + "\n" for line in lines))


def centre_box_baseline(samples: Sequence[Sample], iou_threshold: float = 0.5) -> dict[str, float]:
    """GT-known Loc (%) of constant centred boxes, a floor a localizer must beat.

    ``centre_50``: the centred box covering 50 % of the image area; ``best_centre``: the best
    centred box over side fractions 0.05..1 (chosen on these very samples, so optimistic),
    with its fraction as ``best_fraction``. Samples need ``size`` and boxes.
    """
    fractions = np.linspace(0.05, 1.0, 96)
    half = np.sqrt(0.5)
    hits = np.zeros(len(fractions))
    hits50 = 0
    n = 0
    for s in samples:
        if s.size is None or len(s.boxes) == 0:
            raise ValueError(f"sample {s.image_id} needs a size and boxes")
        w, h = s.size
        n += 1
        fs = np.append(fractions, half)
        boxes = np.stack([w * (1 - fs) / 2, h * (1 - fs) / 2, w * (1 + fs) / 2, h * (1 + fs) / 2], axis=1)
        best = box_iou(boxes, s.boxes).max(axis=1)  # each centred box vs every GT box
        hits += best[:-1] >= iou_threshold
        hits50 += bool(best[-1] >= iou_threshold)
    if n == 0:
        raise ValueError("no samples")
    i = int(np.argmax(hits))
    return {
        "centre_50": float(100.0 * hits50 / n),
        "best_centre": float(100.0 * hits[i] / n),
        "best_fraction": float(fractions[i]),
    }
