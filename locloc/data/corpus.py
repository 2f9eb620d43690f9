"""The pre-training corpus of the embedded backbone: many synthetic classes, none of the demo's.

In the paper the backbone is pretrained elsewhere (ImageNet) and frozen, and the benchmark's
classes are new to it. The embedded default mirrors that: its small ViT is pretrained once on
this corpus and shipped; the demo's classes (``make-synthetic``'s shape x texture pairs, with a
main colour per class) never appear in it.

A corpus class is a (shape, texture) pair over a larger vocabulary than ``make-synthetic``'s
(16 shapes x 12 textures) minus every pair ``make-synthetic`` can produce, so any data set it
writes is disjoint from the corpus. Colours are random per image (no class colour). Backgrounds
use clutter of another kind (multi-scale noise, outlined ellipses, scribbles, tiled patches),
objects cover 15-80 % of the side, with 0-3 smaller distractors of non-class shapes.
"""

from __future__ import annotations

from collections.abc import Iterator

import cv2
import numpy as np

from .synthetic import (
    MAX_CLASSES,
    SHAPES,
    TEXTURES,
    _local_coords,
    _paint,
    _placement,
    _rasterize,
    _regular,
    _shape_polys,
    _texture,
    _two_colours,
    class_spec,
)

CORPUS_SHAPES = SHAPES + (
    "heart", "arrow", "pentagon", "diamond", "ell", "tee", "blob", "semicircle", "trapezoid", "hourglass",
)
CORPUS_TEXTURES = TEXTURES + ("noise", "rings", "zigzag", "grid", "hatch", "halves", "spots")
# more outlines for a second vocabulary (``corpus_classes(extra_shapes=True)``): curves, corners
# and concavities the first one lacks
EXTRA_SHAPES = ("teardrop", "lens", "parallelogram", "octagon", "chevron")
_DISTRACTORS = ("square", "hexagon", "bar")


def corpus_shapes(extra_shapes: bool = False) -> tuple[str, ...]:
    """The corpus's shape vocabulary (with :data:`EXTRA_SHAPES` when ``extra_shapes``)."""
    return CORPUS_SHAPES + (EXTRA_SHAPES if extra_shapes else ())


def corpus_classes(extra_shapes: bool = False) -> list[tuple[str, str]]:
    """Every (shape, texture) pair of the corpus vocabulary that ``make-synthetic`` never makes."""
    demo = {class_spec(k) for k in range(MAX_CLASSES)}
    return [(s, t) for s in corpus_shapes(extra_shapes) for t in CORPUS_TEXTURES if (s, t) not in demo]


def _extra_polys(shape: str, rng: np.random.Generator) -> tuple[list[np.ndarray], list[np.ndarray]]:
    if shape == "heart":
        a = np.linspace(0, 2 * np.pi, 96, endpoint=False)
        x = 16 * np.sin(a) ** 3
        y = -(13 * np.cos(a) - 5 * np.cos(2 * a) - 2 * np.cos(3 * a) - np.cos(4 * a))
        return [np.stack([x, y + 2.5], 1) / 16.5], []
    if shape == "arrow":
        t = rng.uniform(0.2, 0.3)
        return [np.array([[-1, -t], [0.1, -t], [0.1, -0.7], [1, 0], [0.1, 0.7], [0.1, t], [-1, t]])], []
    if shape == "pentagon":
        return [_regular(5, 1.0, -np.pi / 2)], []
    if shape == "diamond":
        return [np.array([[0, -1], [0.6, 0], [0, 1], [-0.6, 0]], dtype=np.float64)], []
    if shape == "ell":
        t = rng.uniform(0.35, 0.5)
        return [np.array([[-1, -1], [-1 + 2 * t, -1], [-1 + 2 * t, 1 - 2 * t], [1, 1 - 2 * t], [1, 1], [-1, 1]],
                         dtype=np.float64)], []
    if shape == "tee":
        t = rng.uniform(0.2, 0.3)
        return [np.array([[-1, -1], [1, -1], [1, -1 + 2 * t], [t, -1 + 2 * t], [t, 1], [-t, 1], [-t, -1 + 2 * t],
                          [-1, -1 + 2 * t]], dtype=np.float64)], []
    if shape == "blob":
        a = np.linspace(0, 2 * np.pi, 96, endpoint=False)
        r = 0.75 + sum(rng.uniform(0, 0.12) * np.cos(k * a + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5))
        return [np.stack([r * np.cos(a), r * np.sin(a)], 1)], []
    if shape == "semicircle":
        a = np.linspace(0, np.pi, 64)
        return [np.stack([np.cos(a), -np.sin(a) + 0.4], 1)], []
    if shape == "trapezoid":
        top = rng.uniform(0.3, 0.55)
        return [np.array([[-top, -0.7], [top, -0.7], [1, 0.7], [-1, 0.7]], dtype=np.float64)], []
    if shape == "teardrop":  # round at one end, drawn out to a point at the other
        a = np.linspace(0, 2 * np.pi, 96, endpoint=False)
        x = 0.8 * np.sin(a) * np.abs(np.sin(a / 2)) ** rng.uniform(1.5, 3.0)
        return [np.stack([x, -np.cos(a)], 1)], []
    if shape == "lens":  # two circular arcs meeting at two corners
        h = rng.uniform(0.35, 0.6)
        a = np.linspace(-1, 1, 48)
        top = np.stack([a, -h * (1 - a ** 2)], 1)
        return [np.concatenate([top, top[::-1] * [1, -1]])], []
    if shape == "parallelogram":
        s = rng.uniform(0.3, 0.5)
        return [np.array([[-1 + s, -0.6], [1, -0.6], [1 - s, 0.6], [-1, 0.6]], dtype=np.float64)], []
    if shape == "octagon":
        return [_regular(8, 1.0, np.pi / 8)], []
    if shape == "chevron":  # a thick V
        t = rng.uniform(0.5, 0.7)
        return [np.array([[-1, -0.8], [0, 0.2], [1, -0.8], [1, -0.8 + t], [0, 0.2 + t], [-1, -0.8 + t]],
                         dtype=np.float64)], []
    if shape == "hourglass":
        w = rng.uniform(0.12, 0.25)
        return [np.array([[-0.8, -1], [0.8, -1], [w, 0], [0.8, 1], [-0.8, 1], [-w, 0]], dtype=np.float64)], []
    return _shape_polys(shape, rng)


def _extra_texture(name: str, u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if name == "noise":
        small = rng.uniform(0, 1, (6, 6))
        big = cv2.resize(small, (64, 64), interpolation=cv2.INTER_CUBIC)
        iu = np.clip(((u + 1.2) / 2.4 * 63).astype(int), 0, 63)
        iv = np.clip(((v + 1.2) / 2.4 * 63).astype(int), 0, 63)
        return (big[iv, iu] > 0.5).astype(np.float64)
    if name == "rings":
        f = rng.uniform(2.5, 4.0)
        return 0.5 + 0.5 * np.sign(np.sin(np.pi * f * np.sqrt(u * u + v * v)))
    if name == "zigzag":
        f = rng.uniform(2.5, 3.5)
        tri = np.abs((u * 2.0) % 2 - 1)
        return 0.5 + 0.5 * np.sign(np.sin(np.pi * f * (v + 0.5 * tri)))
    if name == "grid":
        k = rng.uniform(2.5, 4.0)
        fu, fv = (u * k) % 1, (v * k) % 1
        return ((fu < 0.2) | (fv < 0.2)).astype(np.float64)
    if name == "hatch":
        f = rng.uniform(3.0, 5.0)
        return ((np.sin(np.pi * f * (u + v)) > 0.5) | (np.sin(np.pi * f * (u - v)) > 0.5)).astype(np.float64)
    if name == "halves":
        a = rng.uniform(0, np.pi)
        return (np.cos(a) * u + np.sin(a) * v > 0).astype(np.float64)
    if name == "spots":
        out = np.zeros_like(u)
        for _ in range(int(rng.integers(4, 9))):
            c = rng.uniform(-0.8, 0.8, 2)
            out[(u - c[0]) ** 2 + (v - c[1]) ** 2 < rng.uniform(0.03, 0.08)] = 1.0
        return out
    return _texture(name, u, v, rng)


def _count(rng: np.random.Generator, lo: int, hi: int, clutter: float) -> int:
    """A random count in ``[lo, hi)`` scaled by ``clutter`` (1: the count itself)."""
    return int(round(int(rng.integers(lo, hi)) * clutter))


def _corpus_background(rng: np.random.Generator, size: int, clutter: float = 1.0) -> np.ndarray:
    """Clutter of another kind than ``make-synthetic``'s: noise at two scales, outlined
    ellipses, scribbles and tiled patches over a flat or two-tone base. ``clutter`` scales the
    number of ellipses, scribbles and patches (1: the recipe of the shipped backbone)."""
    base = rng.uniform(20, 235, 3)
    img = np.ones((size, size, 3)) * base
    for cells, amp in ((int(rng.integers(3, 6)), rng.uniform(15, 45)), (int(rng.integers(10, 20)), rng.uniform(5, 20))):
        img += cv2.resize(rng.normal(0, amp, (cells, cells, 3)), (size, size), interpolation=cv2.INTER_LINEAR)
    if rng.uniform() < 0.5:  # a second tone over a random half-plane
        ys, xs = np.mgrid[0:size, 0:size] / size
        a = rng.uniform(0, 2 * np.pi)
        half = (np.cos(a) * (xs - 0.5) + np.sin(a) * (ys - 0.5)) > rng.uniform(-0.3, 0.3)
        img[half] = img[half] * 0.5 + rng.uniform(20, 235, 3) * 0.5
    for _ in range(_count(rng, 1, 5, clutter)):  # outlined ellipses
        c = tuple(int(x) for x in rng.uniform(0, size, 2))
        ax = tuple(int(x) for x in rng.uniform(0.05, 0.3, 2) * size)
        cv2.ellipse(img, c, ax, float(rng.uniform(0, 180)), 0, 360, tuple(float(x) for x in rng.uniform(0, 255, 3)),
                    int(rng.integers(1, 3)), cv2.LINE_AA)
    for _ in range(_count(rng, 0, 4, clutter)):  # scribbles
        pts = np.cumsum(rng.normal(0, size * 0.08, (6, 2)), 0) + rng.uniform(0, size, 2)
        cv2.polylines(img, [pts.astype(np.int32)], False, tuple(float(x) for x in rng.uniform(0, 255, 3)), 1,
                      cv2.LINE_AA)
    # tiled patches: one with probability 1/2 at clutter 1 (the shipped corpus's draw), Poisson(clutter / 2) else
    for _ in range(int(rng.uniform() < 0.5) if clutter == 1.0 else int(rng.poisson(0.5 * clutter))):
        s = int(rng.uniform(0.15, 0.35) * size)
        x0, y0 = (int(v) for v in rng.integers(0, size - s, 2))
        k = int(rng.integers(3, 7))
        yy, xx = np.mgrid[0:s, 0:s]
        tile = (((yy * k) // s + (xx * k) // s) % 2)[..., None]
        c1, c2 = _two_colours(rng, 40)
        alpha = rng.uniform(0.2, 0.5)
        img[y0:y0 + s, x0:x0 + s] = (1 - alpha) * img[y0:y0 + s, x0:x0 + s] + alpha * (c1 * (1 - tile) + c2 * tile)
    return img


def render_corpus(
    shape: str, texture: str, rng: np.random.Generator, size: int = 128, scale: tuple[float, float] = (0.15, 0.8),
    clutter: float = 1.0, stretch: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """One corpus image: ``(H x W x 3 uint8 RGB, H x W uint8 mask in {0, 1})``.

    ``scale``: range of the object's extent / image side (log-uniform); ``clutter``: scales the
    background clutter and the number of distractors (1: the shipped backbone's corpus);
    ``stretch``: the object's outline is stretched along one axis by ``exp(U(-stretch, stretch))``
    before placement (0: no draw, the shipped corpus).
    """
    img = _corpus_background(rng, size, clutter)
    for _ in range(_count(rng, 0, 4, clutter)):
        lin, centre = _placement(rng, size, rng.uniform(0.06, 0.15))
        polys, holes = _shape_polys(_DISTRACTORS[int(rng.integers(0, 3))], rng)
        u, v = _local_coords(lin, centre, size)
        _paint(img, _rasterize(polys, holes, lin, centre, size), _texture("solid", u, v, rng), u, v, rng, False)
    extent = float(np.exp(rng.uniform(np.log(scale[0]), np.log(scale[1]))))
    while True:
        lin, centre = _placement(rng, size, extent)
        polys, holes = _extra_polys(shape, rng)
        if stretch > 0:  # kept inside the unit square that _placement keeps in the image
            r = float(np.exp(rng.uniform(-stretch, stretch)))
            f = np.array([r, 1 / r]) / max(r, 1 / r)
            polys, holes = [q * f for q in polys], [q * f for q in holes]
        mask = _rasterize(polys, holes, lin, centre, size)
        if mask.sum() >= 16:
            break
    u, v = _local_coords(lin, centre, size)
    _paint(img, mask, _extra_texture(texture, u, v, rng), u, v, rng, True)
    img += rng.normal(0, 5, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), mask


def iter_corpus(per_class: int, seed: int, size: int = 128) -> Iterator[tuple[np.ndarray, int]]:
    """``(image, label)`` for ``per_class`` images of every corpus class, deterministic per seed."""
    for k, (shape, texture) in enumerate(corpus_classes()):
        for j in range(per_class):
            img, _ = render_corpus(shape, texture, np.random.default_rng([seed, 1000 + k, j]), size)
            yield img, k


__all__ = ["CORPUS_SHAPES", "CORPUS_TEXTURES", "EXTRA_SHAPES", "corpus_classes", "corpus_shapes", "iter_corpus",
           "render_corpus"]
