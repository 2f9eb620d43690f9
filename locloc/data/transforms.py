"""Image, box and mask transforms (torchvision + PIL).

- :class:`EvalTransform`: resize the short side, centre crop; maps GT boxes into the crop
  either as the reference does (``box_mapping="reference"``, for metric parity) or exactly.
- :func:`crop_to_original`: the exact inverse of the eval geometry, for predicted boxes.
- :class:`JointTrainTransform`: square resize, then one random crop and flip applied to the
  image and its mask together.

Boxes are ``(K, 4)`` float64 ``x0, y0, x1, y1`` in pixels, exclusive far edges.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import functional as F1
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BOX_MAPPINGS = ("reference", "exact")


def resized_size(orig_size: tuple[int, int], resize: int) -> tuple[int, int]:
    """``(w, h)`` after torchvision ``Resize(resize)``: short side ``resize``, long truncated."""
    w, h = orig_size
    if w <= h:
        return resize, int(resize * h / w)
    return int(resize * w / h), resize


def crop_offset(resized: tuple[int, int], crop: int) -> tuple[int, int]:
    """``(left, top)`` of torchvision ``CenterCrop(crop)`` on an image of size ``resized``."""
    w, h = resized
    return int(round((w - crop) / 2.0)), int(round((h - crop) / 2.0))


def _as_boxes(boxes: np.ndarray | Sequence) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64)
    if b.size == 0:
        return np.zeros((0, 4), dtype=np.float64)
    b = b.reshape(-1, 4) if b.ndim == 1 else b
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"boxes must be (K, 4) x0,y0,x1,y1, got shape {b.shape}")
    return b


def map_boxes_reference(
    boxes: np.ndarray, orig_size: tuple[int, int], resize: int = 256, crop: int = 224
) -> np.ndarray:
    """GT boxes -> crop pixels with the reference's arithmetic (for metric parity).

    x, y, w, h are truncated to integers (w = x1 - x0, floored with a 1e-6 slack so that a
    file's ``w`` read back through ``x1 - x0`` truncates as the file value does); they are
    scaled by the unrounded ``resize / short``; the crop offset is
    ``round((n - crop + 1) / 2)`` (half-even) of the unrounded resized side ``n``, which can
    be one pixel off the image's real offset; ``x1 = x0 + w`` before clipping to ``[0, crop]``.
    """
    b = _as_boxes(boxes)
    w_img, h_img = orig_size
    short = min(w_img, h_img)
    n_w = w_img * resize / short
    n_h = h_img * resize / short
    off_x = int(round((n_w - crop + 1) / 2))
    off_y = int(round((n_h - crop + 1) / 2))
    out = np.zeros_like(b)
    for k, (x0, y0, x1, y1) in enumerate(b):
        x, y = int(x0), int(y0)
        w, h = int(np.floor(x1 - x0 + 1e-6)), int(np.floor(y1 - y0 + 1e-6))
        bx = x * n_w / w_img - off_x
        by = y * n_h / h_img - off_y
        bw = w * n_w / w_img
        bh = h * n_h / h_img
        out[k] = (bx, by, bx + bw, by + bh)
    return np.clip(out, 0, crop)


def map_boxes_exact(
    boxes: np.ndarray, orig_size: tuple[int, int], resize: int = 256, crop: int = 224
) -> np.ndarray:
    """Original-pixel boxes -> crop pixels, consistent with the image transform; clipped."""
    b = _as_boxes(boxes)
    rw, rh = resized_size(orig_size, resize)
    left, top = crop_offset((rw, rh), crop)
    sx, sy = rw / orig_size[0], rh / orig_size[1]
    out = b * np.array([sx, sy, sx, sy]) - np.array([left, top, left, top], dtype=np.float64)
    return np.clip(out, 0, crop)


def crop_to_original(
    boxes_crop: np.ndarray, orig_size: tuple[int, int], resize: int = 256, crop: int = 224
) -> np.ndarray:
    """Crop-pixel boxes ``(K, 4)`` -> original-image pixels, clipped to the image.

    The exact inverse of :class:`EvalTransform`'s image geometry (used by prediction).
    """
    b = _as_boxes(boxes_crop)
    rw, rh = resized_size(orig_size, resize)
    left, top = crop_offset((rw, rh), crop)
    sx, sy = orig_size[0] / rw, orig_size[1] / rh
    out = (b + np.array([left, top, left, top], dtype=np.float64)) * np.array([sx, sy, sx, sy])
    return np.clip(out, 0, np.array([orig_size[0], orig_size[1]] * 2, dtype=np.float64))


def resize_for(crop: int) -> int:
    """The short-side resize that goes with a ``crop`` (the ImageNet 256 / 224 rule)."""
    return int(round(crop * 256 / 224))


def eval_transform_for(
    config: dict, default_crop: int = 224, box_mapping: str = "reference"
) -> EvalTransform:
    """The evaluation transform a model-dir ``config`` describes (``input.resize``/``crop``,
    ``normalization.mean``/``std``; missing entries: ``default_crop``, :func:`resize_for`,
    ImageNet statistics). Every evaluation path (``locloc evaluate``, the pipeline, the demo,
    the API's ``view="crop"``) builds its transform here."""
    inp = config.get("input") or {}
    crop = int(inp.get("crop", default_crop))
    norm = config.get("normalization") or {}
    return EvalTransform(
        resize=int(inp.get("resize", resize_for(crop))), crop=crop,
        mean=norm.get("mean", IMAGENET_MEAN), std=norm.get("std", IMAGENET_STD), box_mapping=box_mapping,
    )


class EvalTransform:
    """Resize the short side to ``resize``, centre crop ``crop``, normalize.

    ``__call__(img, boxes)`` takes a PIL RGB image and ``(K, 4)`` boxes in its pixels, and
    returns a ``3 x crop x crop`` float32 tensor and ``(K, 4)`` float64 boxes in crop pixels.
    """

    def __init__(
        self,
        resize: int = 256,
        crop: int = 224,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        box_mapping: str = "reference",
    ) -> None:
        if box_mapping not in BOX_MAPPINGS:
            raise ValueError(f"box_mapping must be one of {BOX_MAPPINGS}, got {box_mapping!r}")
        if crop > resize:
            raise ValueError(f"crop ({crop}) must not exceed resize ({resize})")
        self.resize, self.crop, self.box_mapping = resize, crop, box_mapping
        self.mean, self.std = tuple(mean), tuple(std)

    def image(self, img: Image.Image) -> torch.Tensor:
        """The image part alone: ``3 x crop x crop`` float32."""
        bilinear = F1.InterpolationMode.BILINEAR
        img = F1.resize(img, self.resize, interpolation=bilinear, antialias=True)
        img = F1.center_crop(img, [self.crop, self.crop])
        return F1.normalize(F1.to_tensor(img), self.mean, self.std)

    def boxes(self, boxes: np.ndarray, orig_size: tuple[int, int]) -> np.ndarray:
        """The box part alone: ``(K, 4)`` original pixels -> crop pixels."""
        fn = map_boxes_reference if self.box_mapping == "reference" else map_boxes_exact
        return fn(boxes, orig_size, self.resize, self.crop)

    def to_original(self, boxes_crop: np.ndarray, orig_size: tuple[int, int]) -> np.ndarray:
        """Crop-pixel boxes back to the original image (see :func:`crop_to_original`)."""
        return crop_to_original(boxes_crop, orig_size, self.resize, self.crop)

    def __call__(
        self, img: Image.Image, boxes: np.ndarray | None = None
    ) -> tuple[torch.Tensor, np.ndarray]:
        b = _as_boxes([] if boxes is None else boxes)
        return self.image(img), self.boxes(b, img.size)

    def __repr__(self) -> str:
        return (
            f"EvalTransform(resize={self.resize}, crop={self.crop}, "
            f"box_mapping={self.box_mapping!r})"
        )


def _mask_tensor(mask: np.ndarray | Image.Image | torch.Tensor) -> torch.Tensor:
    """A mask as ``1 x H x W`` float32 in [0, 1]; uint8 masks are read as 0..255 unless <= 1."""
    if isinstance(mask, Image.Image):
        mask = np.asarray(mask.convert("L"))
    if isinstance(mask, torch.Tensor):
        m = mask.detach().cpu().clone()
    else:
        m = torch.from_numpy(np.array(mask))
    if m.ndim == 3 and m.shape[0] == 1:
        m = m[0]
    if m.ndim != 2:
        raise ValueError(f"mask must be H x W, got shape {tuple(m.shape)}")
    if m.dtype == torch.bool:
        m = m.float()
    elif not m.is_floating_point():
        m = m.float()
        if m.max() > 1:
            m = m / 255.0
    return m.float().clamp(0, 1)[None]


class JointTrainTransform:
    """Training geometry shared by an image and its mask.

    Both are resized to ``resize x resize`` (image: bilinear with antialias; mask: nearest,
    so the mask may come at any resolution), then one random ``crop`` window and one random
    horizontal flip (probability ``flip_p``) are applied to both. Random draws use
    ``generator`` when given, else torch's global RNG (so ``torch.manual_seed`` fixes them).

    ``__call__(img, mask)`` -> ``(3 x crop x crop`` normalized float32,
    ``1 x crop x crop`` float32 in [0, 1]).
    """

    def __init__(
        self,
        resize: int = 256,
        crop: int = 224,
        flip_p: float = 0.5,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        generator: torch.Generator | None = None,
    ) -> None:
        if crop > resize:
            raise ValueError(f"crop ({crop}) must not exceed resize ({resize})")
        self.resize, self.crop, self.flip_p = resize, crop, flip_p
        self.mean, self.std = tuple(mean), tuple(std)
        self.generator = generator
        self._to_float = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])

    def __call__(
        self, img: Image.Image, mask: np.ndarray | Image.Image | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        size = [self.resize, self.resize]
        image = self._to_float(F.resize(img, size, antialias=True))
        m = tv_tensors.Mask(_mask_tensor(mask))
        m = F.resize(m, size, interpolation=v2.InterpolationMode.NEAREST)
        g = self.generator
        top = int(torch.randint(0, self.resize - self.crop + 1, (1,), generator=g))
        left = int(torch.randint(0, self.resize - self.crop + 1, (1,), generator=g))
        flip = bool(torch.rand((), generator=g) < self.flip_p)
        image = F.crop(image, top, left, self.crop, self.crop)
        m = F.crop(m, top, left, self.crop, self.crop)
        if flip:
            image, m = F.horizontal_flip(image), F.horizontal_flip(m)
        image = F.normalize(image, list(self.mean), list(self.std))
        return image.as_subclass(torch.Tensor), m.as_subclass(torch.Tensor)

    def __repr__(self) -> str:
        return (
            f"JointTrainTransform(resize={self.resize}, crop={self.crop}, flip_p={self.flip_p})"
        )
