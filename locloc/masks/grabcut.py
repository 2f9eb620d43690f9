"""Stage 1: CLS attention -> GrabCut trimap -> ``cv2.grabCut`` -> binary object mask.

The backbone's CLS->patch attention (a ``gh x gw`` grid) says roughly where the object is;
GrabCut (colour GMMs + a graph cut over pixel neighbours) then snaps the mask to colour and
edge cues. OpenCV's ``cv2.grabCut`` is used in mask-initialisation mode.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

from ..errors import ConfigError

# Fallback reasons, in the order they are checked. Each is a key of ``GrabCutMasker.stats``.
FALLBACK_REASONS = (
    "fallback_bad_attention",  # empty grid, or NaN/inf values
    "fallback_flat_attention",  # constant attention: no spatial information
    "fallback_small_image",  # image smaller than the attention grid or than ``min_side``
    "fallback_constant_image",  # one colour only: GrabCut's colour models are undefined
    "fallback_no_fg",  # trimap has no (sure or probable) foreground pixel
    "fallback_no_bg",  # trimap has no (sure or probable) background pixel
    "fallback_error",  # cv2.grabCut raised
    "fallback_empty",  # GrabCut kept less than ``min_mask_frac`` of the image
)


@dataclass
class TrimapConfig:
    """Rules turning an attention grid into a GrabCut trimap.

    The attention (``gh x gw``) is upsampled bilinearly to the (working) image size and
    min-max normalised to [0, 1] (min-max rather than ``/ max`` because softmax attention
    never reaches 0, so ``/ max`` would leave every pixel above a low threshold). Then,
    with ``a`` the normalised attention at a pixel:

    - ``rule="fraction"``: thresholds are fractions of the range: ``a >= fg_frac`` is sure
      foreground (``GC_FGD``), ``a <= bg_frac`` sure background (``GC_BGD``), and the band
      between is probable foreground (``a >= mid``) or probable background (``a < mid``),
      where ``mid = bg_frac + (fg_frac - bg_frac) / 20`` unless ``mid_frac`` is given (low:
      a trained ViT's attention is peaky, so only clearly unattended pixels start as
      probable background).
    - ``rule="quantile"``: the same with ``fg_frac``, ``bg_frac`` and ``mid`` read as
      quantile levels of ``a`` over the pixels (``fg_frac=0.9``: the top 10 % is sure fg).
    - A band of ``border_frac x min(H, W)`` pixels (at least 1 when ``border_frac > 0``)
      along the image border is forced to sure background: objects rarely touch all four
      sides, and GrabCut needs background colour samples.

    Defaults (``fraction``, fg 0.6, bg 0.0, mid 0.03, border 0.06) come from grids on
    *real* attention: the demo's ViT (``locloc_vit_tiny_cs8`` trained on the synthetic
    labels), scored against the GT boxes and masks (``benchmarks/grid_trimap.py``). A
    trained ViT's CLS attention is peaky (a few hot patches on the object), so everything
    but the peaks must stay *probable* for GrabCut to grow the object from colour and edges.
    First grid (80 test images, an earlier 85 %-accurate backbone):

    ============================  ===========  ============  ============
    trimap (fg / bg / mid)        box IoU>=.5  mean box IoU  mean mask IoU
    ============================  ===========  ============  ============
    thresholded attention (0.1)   0.45         0.41          0.35
    0.8 / 0.2 / 0.5 (first)       0.08         0.13          0.13
    0.4 / 0.02 / 0.1              0.53         0.49          0.48
    0.5 / 0.0 / 0.05              0.75         0.68          0.67
    0.6 / 0.0 / 0.1               0.74         0.68          0.67
    0.7 / 0.0 / 0.1               0.74         0.68          0.68
    ============================  ===========  ============  ============

    Second grid (160 *training* images, so the test split stays untouched; two backbones:
    the earlier one (A) and the current demo's 95 %-accurate one (B)), box IoU >= 0.5:

    ============================  ======  ======
    trimap (fg / bg / mid)        A       B
    ============================  ======  ======
    0.6 / 0.0 / 0.1               0.738   0.762
    0.5 / 0.0 / 0.05              0.738   0.825
    0.5 / 0.0 / 0.03              0.756   0.812
    0.6 / 0.0 / 0.03 (default)    0.781   0.825
    0.4 / 0.0 / 0.03              0.688   0.800
    0.3 / 0.0 / 0.03              0.669   0.756
    ============================  ======  ======

    The better the backbone, the peakier its attention and the lower the best ``mid``;
    ``mid = bg_frac + (fg_frac - bg_frac) / 20`` (0.03 at the defaults) was best or tied
    for both.

    Any sure-background cut above 0 hurts (it swallows the object's weak-attention parts);
    fg from 0.4 to 0.7 is a plateau; border 0.03-0.1 and 2-5 iterations change < 0.02. The
    earlier grid on simulated attention (blurred, shifted GT) had favoured fg 0.8 / bg 0.2:
    simulated attention is smooth, real attention is not. Re-check with
    ``locloc masks --report`` on your data.
    """

    rule: str = "fraction"
    fg_frac: float = 0.6
    bg_frac: float = 0.0
    mid_frac: float | None = None
    border_frac: float = 0.06

    def __post_init__(self) -> None:
        if self.rule not in ("fraction", "quantile"):
            raise ConfigError(f"trimap rule must be 'fraction' or 'quantile', got {self.rule!r}")
        if not 0.0 <= self.bg_frac < self.fg_frac <= 1.0:
            raise ConfigError(
                f"trimap needs 0 <= bg_frac < fg_frac <= 1, got bg_frac={self.bg_frac}, "
                f"fg_frac={self.fg_frac}"
            )
        if not self.bg_frac <= self.mid <= self.fg_frac:
            raise ConfigError(f"trimap mid_frac={self.mid_frac} must lie in [bg_frac, fg_frac]")
        if not 0.0 <= self.border_frac < 0.5:
            raise ConfigError(f"trimap border_frac must be in [0, 0.5), got {self.border_frac}")

    @property
    def mid(self) -> float:
        """Split between probable foreground and probable background."""
        if self.mid_frac is not None:
            return self.mid_frac
        return self.bg_frac + (self.fg_frac - self.bg_frac) / 20.0


def normalize_attention(attention: np.ndarray, size: tuple[int, int]) -> np.ndarray | None:
    """Upsample a ``gh x gw`` attention grid bilinearly to ``size=(H, W)`` and min-max it.

    Returns float32 ``H x W`` in [0, 1], or None when the attention is empty, non-finite
    or constant (no spatial information).
    """
    a = np.asarray(attention, dtype=np.float32)
    if a.ndim != 2 or a.size == 0 or not np.isfinite(a).all():
        return None
    lo, hi = float(a.min()), float(a.max())
    if not hi > lo:
        return None
    a = (a - lo) / (hi - lo)
    h, w = size
    up = cv2.resize(a, (int(w), int(h)), interpolation=cv2.INTER_LINEAR)
    # Bilinear upsampling of a [0, 1] grid stays in [0, 1]; re-normalise so the max is 1.
    lo, hi = float(up.min()), float(up.max())
    return (up - lo) / (hi - lo) if hi > lo else up


def attention_mask(attention: np.ndarray, size: tuple[int, int], threshold: float) -> np.ndarray:
    """Thresholded attention (TS-CAM style): the baseline mask and GrabCut's fallback.

    The grid is upsampled bilinearly to ``size=(H, W)``, min-max normalised and kept where
    ``>= threshold``. An attention without information (empty, non-finite or constant)
    gives an all-ones mask: "object somewhere in the image", which leaves an image unchanged
    when it is multiplied by the mask. Returns ``H x W`` uint8 in {0, 1}.
    """
    h, w = int(size[0]), int(size[1])
    a = normalize_attention(attention, (h, w))
    if a is None:
        return np.ones((h, w), np.uint8)
    return (a >= threshold).astype(np.uint8)


def _border_width(h: int, w: int, frac: float) -> int:
    if frac <= 0:
        return 0
    return max(1, int(round(frac * min(h, w))))


def open_mask(mask: np.ndarray, frac: float) -> np.ndarray:
    """Morphological opening of a 0/1 ``H x W`` uint8 mask with an elliptic kernel of
    ``frac x min(H, W)`` px (rounded to an odd size, at least 3); ``frac=0`` returns the mask.
    Removes what is thinner than the kernel (lines, thin spurs); when nothing would be left,
    returns the mask unchanged."""
    if frac <= 0:
        return mask
    k = max(3, int(round(frac * min(mask.shape))))
    k += 1 - k % 2  # odd: the opening stays centred
    opened = cv2.morphologyEx(mask, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    return opened if opened.any() else mask


def family_trimap(name: str) -> dict[str, float]:
    """Trimap cuts measured for a backbone family, on top of the library's (``{}``: those).

    DINOv2-family ViTs (``*dinov2*``): fg 0.6 / bg 0.02 / mid 0.03, the library's cuts plus a
    small sure-background cut. Their CLS attention (mean of the last two blocks) has a faint
    floor over clutter that the cut removes. Measured with a real DINOv2-family ViT-S/14 at
    224 px (``benchmarks/grid_trimap.py --rules``), GrabCut box IoU >= 0.5 on 120 of the
    demo's synthetic *training* images (A) and on the seven hand-boxed real photos (B), mean
    box IoU in brackets:

    ==============================  ==============  ==============
    trimap (fg / bg / mid)          A               B
    ==============================  ==============  ==============
    thresholded attention (0.1)     0.717 (0.613)   0.714 (0.677)
    0.6 / 0.0 / 0.03 (library)      0.717 (0.666)   1.000 (0.754)
    0.6 / 0.02 / 0.03 (family)      0.792 (0.717)   1.000 (0.753)
    0.6 / 0.03 / 0.04               0.817 (0.747)   0.857 (0.622)
    0.6 / 0.04 / 0.05               0.817 (0.746)   0.714 (0.571)
    0.6 / 0.02 / 0.05               0.783 (0.724)   0.857 (0.639)
    0.7 / 0.02 / 0.03               0.800 (0.728)   -
    0.6 / 0.0 / 0.10                0.792 (0.741)   0.571 (0.478)
    0.7 / 0.02 / 0.10               0.858 (0.769)   0.571 (0.478)
    0.9 / 0.02 / 0.10               0.867 (0.774)   -
    0.8 / 0.2 / 0.5                 0.283 (0.280)   -
    ==============================  ==============  ==============

    A wider probable band (mid 0.1) is best on the synthetic shapes but loses three of the
    seven photos (the coffee cup, the cameraman, the rocket shrink to a part): the family
    default is the best rule that keeps every photo.
    """
    if "dinov2" in name:
        return {"fg_frac": 0.6, "bg_frac": 0.02, "mid_frac": 0.03}
    return {}


def family_open_frac(name: str) -> float:
    """The mask opening (:func:`open_mask`) measured for a backbone family: 0.02 for
    DINOv2-family ViTs (``*dinov2*``), none (0) for the others.

    GrabCut's pairwise term glues thin lines and clutter that touch the object to its mask,
    and one such line can double the mask's box. Measured with a real DINOv2-family ViT-S/14
    at 224 px, family trimap, GrabCut box IoU >= 0.5 (mean box IoU) with
    ``benchmarks/grid_trimap.py --open``:

    ===========  ===============================  ======================
    opening      120 synthetic training images    7 real photos
    ===========  ===============================  ======================
    none         0.792 (0.717)                    7/7 (0.753)
    0.02         0.892 (0.788)                    7/7 (0.762)
    0.03         0.883 (0.767)                    7/7 (0.734)
    ===========  ===============================  ======================

    The embedded backbone (``locloc_vit_tiny_cs8``, 128-px images, its own trimap) loses a
    little (240 training images: 0.971 without, 0.958 with 0.02), so the opening is a family
    default, not the library's.
    """
    return 0.02 if "dinov2" in name else 0.0


def open_frac_for(backbone: object, override: float | None = None) -> float:
    """The mask opening for ``backbone``: ``override`` when given, else its weights file's
    (``stage1["open_frac"]``; a file whose stage-1 metadata has a trimap but no opening was
    tuned without one: 0), else its family's (:func:`family_open_frac`)."""
    if override is not None:
        return float(override)
    from_file = dict(getattr(backbone, "stage1", {}))
    if "open_frac" in from_file:
        return float(from_file["open_frac"])
    if from_file.get("trimap"):
        return 0.0
    return family_open_frac(str(getattr(backbone, "name", "")))


def trimap_for(backbone: object, **overrides: float | str | None) -> TrimapConfig:
    """The trimap for ``backbone``: the library's cuts, then its family's
    (:func:`family_trimap`), then its weights file's stage-1 defaults (``backbone.stage1``,
    recorded in the safetensors metadata by whoever tuned them, e.g. the embedded backbone's
    pre-training script), with ``overrides`` that are not None on top."""
    base = family_trimap(str(getattr(backbone, "name", "")))
    from_file = dict(getattr(backbone, "stage1", {}).get("trimap", {}))
    if from_file:
        base = from_file  # tuned for these very weights: the family's cuts do not apply
    given = {k: v for k, v in overrides.items() if v is not None}
    if ("fg_frac" in given or "bg_frac" in given) and "mid_frac" not in given:
        base.pop("mid_frac", None)  # new cuts: the library's mid rule between them
    base.update(given)
    try:
        return TrimapConfig(**base)
    except TypeError as e:
        raise ConfigError(f"bad trimap settings {base}: {e}") from None


class GrabCutMasker:
    """Turns (image, attention grid) pairs into binary masks with ``cv2.grabCut``.

    Args:
        trimap: attention -> trimap rules.
        iterations: GrabCut iterations. 2 by default: box accuracy (IoU >= 0.5 with the GT
            box) at 1 / 2 / 3 / 5 iterations, 256-px working size: the real DINOv2-family
            ViT-S/14's attention on 240 of the demo's training images 0.858 / 0.887 / 0.887 /
            0.887, its class seeds (400 images) - / 0.968 / - / 0.968, the seven photos 7/7 at
            every count (mean box IoU 0.757 / 0.762 / 0.762 / 0.762), the embedded backbone on
            240 of its demo's training images 0.967 / 0.971 / 0.971 / 0.971; 2 iterations cost
            0.4-0.6x of 5.
        work_size: GrabCut runs on a copy whose longer side is at most ``work_size`` px
            (images are only shrunk, never enlarged); the mask is resized back with
            nearest-neighbour. ``None`` runs at full resolution. 256 by default: smaller sizes
            are faster and as good on the demo's 256-px synthetic images (128 px: 0.912 vs
            0.887) but lose real photos (128 px: 5/7, mean box IoU 0.58; 192: 7/7, 0.75; 320:
            7/7, 0.77).
        seed: passed to ``cv2.setRNGSeed`` before every call, so masks are repeatable.
        min_side: images whose shorter side is below this (or smaller than the grid) are
            not cut; they get the fallback mask.
        min_mask_frac: a GrabCut mask covering less than this fraction of the image is
            replaced by the fallback mask.
        open_frac: after the cut, a morphological opening (elliptic kernel of
            ``open_frac x`` the working image's shorter side, odd, at least 3 px) removes
            structures thinner than the kernel, chiefly lines and thin clutter that GrabCut's
            pairwise term glued to the object and that stretch its box; components the opening
            leaves are kept. ``0`` disables it. If the opening would empty the mask, the cut
            is kept as it was. :func:`open_frac_for` gives a backbone's default.

    Every degenerate case gives the *fallback mask*: :func:`attention_mask` at the
    trimap's ``mid`` threshold (fraction rule; the ``mid`` quantile for the quantile
    rule). ``stats`` counts ``total``, ``grabcut`` (successful cuts) and each reason in
    :data:`FALLBACK_REASONS`; ``last_reason`` is the reason for the latest call (None when
    GrabCut succeeded).
    """

    def __init__(
        self,
        trimap: TrimapConfig | None = None,
        iterations: int = 2,
        work_size: int | None = 256,
        seed: int = 0,
        min_side: int = 8,
        min_mask_frac: float = 0.001,
        open_frac: float = 0.0,
    ) -> None:
        if iterations < 1:
            raise ConfigError(f"GrabCut iterations must be >= 1, got {iterations}")
        if work_size is not None and work_size < 8:
            raise ConfigError(f"GrabCut work size must be >= 8 px, got {work_size}")
        if not 0.0 <= open_frac < 0.5:
            raise ConfigError(f"mask opening fraction must be in [0, 0.5), got {open_frac}")
        self.trimap_config = trimap if trimap is not None else TrimapConfig()
        self.iterations = int(iterations)
        self.work_size = work_size
        self.seed = int(seed)
        self.min_side = int(min_side)
        self.min_mask_frac = float(min_mask_frac)
        self.open_frac = float(open_frac)
        self.stats: dict[str, int] = {}
        self.reset_stats()
        self.last_reason: str | None = None

    def reset_stats(self) -> None:
        """Zero the counters."""
        self.stats = {"total": 0, "grabcut": 0, **{r: 0 for r in FALLBACK_REASONS}}

    def config(self) -> dict:
        """Plain-dict settings (for reports and for rebuilding the masker in a worker)."""
        return {
            "trimap": asdict(self.trimap_config),
            "iterations": self.iterations,
            "work_size": self.work_size,
            "seed": self.seed,
            "min_side": self.min_side,
            "min_mask_frac": self.min_mask_frac,
            "open_frac": self.open_frac,
        }

    @classmethod
    def from_config(cls, cfg: dict) -> GrabCutMasker:
        """Inverse of :meth:`config`."""
        cfg = dict(cfg)
        return cls(trimap=TrimapConfig(**cfg.pop("trimap")), **cfg)

    # -- trimap -------------------------------------------------------------------------

    def _thresholds(self, a: np.ndarray) -> tuple[float, float, float]:
        t = self.trimap_config
        if t.rule == "fraction":
            return t.fg_frac, t.bg_frac, t.mid
        fg, bg, mid = np.quantile(a, [t.fg_frac, t.bg_frac, t.mid])
        return float(fg), float(bg), float(mid)

    def trimap(self, image_shape: tuple[int, ...], attention: np.ndarray) -> np.ndarray:
        """GrabCut labels for an image of ``image_shape`` (``H, W[, C]``).

        Returns ``H x W`` uint8 with values ``cv2.GC_BGD`` (0), ``GC_FGD`` (1),
        ``GC_PR_BGD`` (2), ``GC_PR_FGD`` (3). Attention without information gives all
        ``GC_PR_BGD`` (no seeds at all).
        """
        h, w = int(image_shape[0]), int(image_shape[1])
        labels = np.full((h, w), cv2.GC_PR_BGD, np.uint8)
        a = normalize_attention(attention, (h, w))
        if a is None:
            return labels
        fg, bg, mid = self._thresholds(a)
        labels[a >= mid] = cv2.GC_PR_FGD
        labels[a >= fg] = cv2.GC_FGD
        labels[a <= bg] = cv2.GC_BGD
        b = _border_width(h, w, self.trimap_config.border_frac)
        if b:
            labels[:b, :] = cv2.GC_BGD
            labels[-b:, :] = cv2.GC_BGD
            labels[:, :b] = cv2.GC_BGD
            labels[:, -b:] = cv2.GC_BGD
        return labels

    # -- masks --------------------------------------------------------------------------

    def fallback_mask(self, attention: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """The mask used when GrabCut cannot run: ``H x W`` uint8 in {0, 1}."""
        t = self.trimap_config
        if t.rule == "fraction":
            return attention_mask(attention, size, t.mid)
        a = normalize_attention(attention, size)
        if a is None:
            return np.ones(size, np.uint8)
        return (a >= float(np.quantile(a, t.mid))).astype(np.uint8)

    def _work_shape(self, h: int, w: int) -> tuple[int, int]:
        if self.work_size is None or max(h, w) <= self.work_size:
            return h, w
        s = self.work_size / max(h, w)
        return max(1, int(round(h * s))), max(1, int(round(w * s)))

    def _reason(self, image: np.ndarray, attention: np.ndarray) -> str | None:
        a = np.asarray(attention, dtype=np.float64)
        if a.ndim != 2 or a.size == 0 or not np.isfinite(a).all():
            return "fallback_bad_attention"
        if not a.max() > a.min():
            return "fallback_flat_attention"
        h, w = image.shape[:2]
        if min(h, w) < self.min_side or h < a.shape[0] or w < a.shape[1]:
            return "fallback_small_image"
        if int(image.max()) == int(image.min()):
            return "fallback_constant_image"
        return None

    def generate(self, image: np.ndarray, attention: np.ndarray) -> np.ndarray:
        """Mask for one image.

        Args:
            image: ``H x W x 3`` uint8 RGB (``H x W`` grayscale is accepted).
            attention: ``gh x gw`` float CLS->patch attention covering the whole image.

        Returns:
            ``H x W`` uint8 mask in {0, 1}. Never raises on degenerate inputs: see the
            class docstring for the fallback.
        """
        image = np.asarray(image)
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image must be H x W x 3, got shape {image.shape}")
        if image.dtype != np.uint8:
            image = np.clip(image, 0, 255).astype(np.uint8)
        h, w = image.shape[:2]
        self.stats["total"] += 1
        reason = self._reason(image, attention) if h > 0 and w > 0 else "fallback_small_image"
        mask = None
        if reason is None:
            mask, reason = self._cut(image, np.asarray(attention, dtype=np.float32))
        if reason is not None:
            self.stats[reason] += 1
            self.last_reason = reason
            return self.fallback_mask(attention, (h, w)) if h > 0 and w > 0 else np.zeros((h, w), np.uint8)
        self.stats["grabcut"] += 1
        self.last_reason = None
        return mask

    def _cut(self, image: np.ndarray, attention: np.ndarray) -> tuple[np.ndarray | None, str | None]:
        h, w = image.shape[:2]
        wh, ww = self._work_shape(h, w)
        small = image if (wh, ww) == (h, w) else cv2.resize(image, (ww, wh), interpolation=cv2.INTER_AREA)
        labels = self.trimap(small.shape, attention)
        if not ((labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)).any():
            return None, "fallback_no_fg"
        if not ((labels == cv2.GC_BGD) | (labels == cv2.GC_PR_BGD)).any():
            return None, "fallback_no_bg"
        bgd = np.zeros((1, 65), np.float64)
        fgd = np.zeros((1, 65), np.float64)
        bgr = np.ascontiguousarray(small[:, :, ::-1])
        try:
            cv2.setRNGSeed(self.seed)
            cv2.grabCut(bgr, labels, None, bgd, fgd, self.iterations, cv2.GC_INIT_WITH_MASK)
        except cv2.error:
            return None, "fallback_error"
        mask = open_mask(((labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)).astype(np.uint8), self.open_frac)
        if mask.mean() < self.min_mask_frac:
            return None, "fallback_empty"
        if (wh, ww) != (h, w):
            mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)
        return mask, None

