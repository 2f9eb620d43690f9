"""Python API: ``LocLoc.from_pretrained(model_dir).predict(image)``."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .data.transforms import crop_offset, eval_transform_for, resized_size
from .fileio import open_image_reduced
from .metrics import box_from_map, normalize_map, to_uint8


@dataclass
class Prediction:
    """One image's result. ``box`` is ``x0, y0, x1, y1`` in original-image pixels."""

    path: str | None
    class_id: int | None
    class_name: str | None
    score: float | None
    top5: list[dict[str, Any]]
    box: list[float]
    image_size: tuple[int, int]
    threshold: float
    heatmap: np.ndarray = field(repr=False)  # H x W float32 in [0, 1], original-image size

    def to_json(self) -> dict[str, Any]:
        """JSON-serialisable dict (the heatmap left out)."""
        d = asdict(self)
        d.pop("heatmap")
        d["image_size"] = list(self.image_size)
        return d


def default_device() -> torch.device:
    """CUDA when present, else CPU (:func:`locloc.engine.distributed.select_device`)."""
    from .engine.distributed import select_device

    return select_device(None)


class LocLoc:
    """A trained LocLoc model (backbone + classifier + generator) ready to predict.

    ``view="full"`` resizes the whole image to the model's input size (every part of the
    image is seen; this is also how the generator was trained: square resize then crop);
    ``view="crop"`` uses the evaluation transform (resize shorter side, centre crop), whose
    boxes cannot leave the centre crop. ``amp_dtype`` (e.g. ``torch.bfloat16``) runs the
    networks under autocast; ``boxes_only`` skips the classifier (class fields are None).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        config: dict[str, Any],
        device: str | torch.device | None = None,
        view: str = "full",
        threshold: float | None = None,
        amp_dtype: torch.dtype | None = None,
        boxes_only: bool = False,
    ) -> None:
        if view not in ("full", "crop"):
            raise ValueError(f"view must be 'full' or 'crop', got {view!r}")
        from .engine.distributed import select_device

        self.device = select_device(str(device) if device is not None else None)
        self.model = model.to(self.device).eval()
        self.config = config
        self.view = view
        self._eval_tf = eval_transform_for(config)
        self.crop, self.resize = self._eval_tf.crop, self._eval_tf.resize
        self.mean = torch.tensor(self._eval_tf.mean).view(3, 1, 1)
        self.std = torch.tensor(self._eval_tf.std).view(3, 1, 1)
        th = config.get("thresholds", {})
        self.threshold = float(threshold if threshold is not None else th.get("default", 0.5))
        self.class_names: list[str] = list(config.get("class_names") or [])
        from .engine.precision import checked_amp

        self.amp_dtype = checked_amp(amp_dtype, self.device)  # bf16 on a CPU without it: fp32
        self.boxes_only = bool(boxes_only)  # skip the classifier: predictions carry no class

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, device: str | torch.device | None = None, **kw: Any) -> LocLoc:
        """Load a project model directory (``model.safetensors`` + ``config.json``)."""
        from .engine.distributed import select_device
        from .models.model_dir import load_model_dir

        dev = select_device(str(device) if device is not None else None)
        model, config = load_model_dir(model_dir, device=dev)
        return cls(model, config, device=dev, **kw)

    # -- geometry -------------------------------------------------------------------------
    def _view_geometry(self, w: int, h: int) -> tuple[float, float, int, int, int, int]:
        """(scale_x, scale_y, offset_x, offset_y, resized_w, resized_h) of the input view."""
        if self.view == "full":
            return self.crop / w, self.crop / h, 0, 0, self.crop, self.crop
        rw, rh = resized_size((w, h), self.resize)
        ox, oy = crop_offset((rw, rh), self.crop)
        return rw / w, rh / h, ox, oy, rw, rh

    def _prepare(self, im: Image.Image) -> torch.Tensor:
        if self.view == "crop":
            return self._eval_tf.image(im)
        x = torch.from_numpy(np.asarray(im.resize((self.crop, self.crop), Image.BILINEAR), dtype=np.float32))
        return (x.permute(2, 0, 1) / 255.0 - self.mean) / self.std

    def _to_original(self, box: np.ndarray, w: int, h: int) -> list[float]:
        """A box in input-view pixels -> original-image pixels (exact inverse, clipped)."""
        sx, sy, ox, oy, _, _ = self._view_geometry(w, h)
        x0, y0, x1, y1 = (float(v) for v in box)
        out = np.array([(x0 + ox) / sx, (y0 + oy) / sy, (x1 + ox) / sx, (y1 + oy) / sy])
        out = np.clip(out, 0.0, [w, h, w, h])
        return [round(float(v), 2) for v in out]

    def _heatmap_original(self, cam: np.ndarray, w: int, h: int) -> np.ndarray:
        import cv2

        sx, sy, ox, oy, rw, rh = self._view_geometry(w, h)
        if self.view == "full":
            return cv2.resize(cam, (w, h), interpolation=cv2.INTER_LINEAR)
        canvas = np.zeros((rh, rw), np.float32)
        canvas[oy : oy + self.crop, ox : ox + self.crop] = cam
        return cv2.resize(canvas, (w, h), interpolation=cv2.INTER_LINEAR)

    # -- prediction -----------------------------------------------------------------------
    def _name(self, c: int) -> str:
        return self.class_names[c] if c < len(self.class_names) else f"class_{c}"

    @torch.inference_mode()
    def predict_batch(self, images: Sequence[Image.Image | str | Path]) -> list[Prediction]:
        """Predict class and box for each image (PIL images or paths)."""
        # A large JPEG path is decoded at a reduced scale (never below what the input view
        # shrinks it to); boxes and heat maps are mapped to the size in the file's header.
        pils, paths, sizes = [], [], []
        short = self.resize if self.view == "crop" else self.crop
        for im in images:
            if isinstance(im, (str, Path)):
                paths.append(str(im))
                pil, size = open_image_reduced(im, short)
            else:
                paths.append(None)
                pil = im.convert("RGB")
                size = pil.size
            pils.append(pil)
            sizes.append(size)
        x = torch.stack([self._prepare(im) for im in pils]).to(self.device)
        kw = {"boxes_only": True} if self.boxes_only else {}
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            out = self.model(x, **kw)
        maps = out["maps"].float()[:, 0].cpu().numpy()
        cams = normalize_map(maps, size=self.crop)
        logits = out.get("logits")
        probs = top = None
        if logits is not None:
            probs = logits.float().softmax(dim=1)
            k = min(5, probs.shape[1])
            top = probs.topk(k, dim=1)
            top_v, top_i = top.values.cpu().numpy(), top.indices.cpu().numpy()
        preds = []
        for i, (w, h) in enumerate(sizes):
            box = box_from_map(to_uint8(cams[i]), self.threshold)
            top5 = []
            if probs is not None:
                top5 = [{"class_id": int(c), "class_name": self._name(int(c)), "score": float(s)} for c, s in zip(top_i[i], top_v[i])]
            preds.append(
                Prediction(
                    path=paths[i],
                    class_id=top5[0]["class_id"] if top5 else None,
                    class_name=top5[0]["class_name"] if top5 else None,
                    score=top5[0]["score"] if top5 else None,
                    top5=top5,
                    box=self._to_original(np.asarray(box), w, h),
                    image_size=(w, h),
                    threshold=self.threshold,
                    heatmap=self._heatmap_original(np.nan_to_num(cams[i]).astype(np.float32), w, h),
                )
            )
        return preds

    def predict(self, image: Image.Image | str | Path) -> Prediction:
        """Predict class and box for one image (PIL image or path)."""
        return self.predict_batch([image])[0]

    def predict_many(self, images: Iterable[str | Path], batch_size: int = 16) -> Iterable[Prediction]:
        """Yield predictions for many image paths, ``batch_size`` at a time."""
        buf: list[str | Path] = []
        for p in images:
            buf.append(p)
            if len(buf) == batch_size:
                yield from self.predict_batch(buf)
                buf = []
        if buf:
            yield from self.predict_batch(buf)
