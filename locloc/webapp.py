"""``locloc app``: a local Gradio page over a trained model.

Upload images, see each one's heat map with its box and top-5 classes, move the box threshold
and watch the boxes follow (recomputed from the cached heat maps; the network is not rerun),
download the boxes as COCO JSON or JSON lines.

Only :func:`build_app` imports gradio (the ``locloc[app]`` extra); the helpers here work
without it. No ``from __future__ import annotations``: gradio reads the event handlers' type
hints (``gr.SelectData``) at run time.
"""

import dataclasses
import json
import logging
import math
import socket
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from PIL import Image

from .errors import ConfigError, DataError, LocLocError
from .fileio import open_image
from .metrics import box_from_map, to_uint8

if TYPE_CHECKING:
    import gradio

    from .api import LocLoc, Prediction

log = logging.getLogger(__name__)

INSTALL_HINT = "install the extra: pip install 'locloc[app]'"
MIN_SIDE = 8  # px; smaller uploads are refused (nothing to localize in a 1x1 image)
DISPLAY_SIDE = 640  # longest side of the overlays shown in the page
CHUNK = 4  # images per network call at most ...
PIXEL_BUDGET = 40_000_000  # ... and fewer when large: bounds the memory of full-size heat maps
TABLE_HEADERS = ["image", "class", "score", "x0", "y0", "x1", "y1", "width", "height"]


@dataclasses.dataclass
class Result:
    """One uploaded image's cached result.

    ``pred`` holds the network's answer at the model's own threshold (heat map stripped);
    ``u8`` is ``to_uint8(heatmap)`` at the original size (H x W uint8), all a new threshold
    needs; ``base`` is the display-size RGB image with the heat map blended in.
    """

    name: str
    pred: "Prediction"
    u8: np.ndarray
    base: np.ndarray

    @property
    def scale(self) -> tuple[float, float]:
        """(x, y) factors from original to display pixels."""
        (w, h), (dh, dw) = self.pred.image_size, self.base.shape[:2]
        return dw / w, dh / h


def box_at(result: Result, threshold: float) -> list[float]:
    """The box (x0 y0 x1 y1, original pixels) of ``result`` at ``threshold``.

    At the model's threshold it is the network's own box (``LocLoc.predict``, found on the
    input-size map); at any other it is ``box_from_map`` on the original-size heat map. The two
    agree to the resampling of the map (about one input pixel).
    """
    if math.isclose(threshold, result.pred.threshold, abs_tol=1e-9):
        return list(result.pred.box)
    return [float(v) for v in box_from_map(result.u8, threshold)]


def check_port_free(host: str, port: int) -> None:
    """Raise :class:`ConfigError` naming ``port`` when it cannot be bound on ``host``."""
    if not 0 < port < 65536:
        raise ConfigError(f"--port {port}: not a TCP port (1-65535)")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ConfigError(f"--host {host}: cannot resolve it ({e.strerror})") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does
        try:
            s.bind(addr)
        except OSError as e:
            raise ConfigError(f"port {port} on {host} is already in use or not allowed ({e.strerror}); "
                              "stop the other server or pick another with --port") from None


def load_upload(path: str | Path) -> Image.Image:
    """Open an uploaded file as RGB, or raise :class:`DataError` with a short reason."""
    im = open_image(path)  # refuses non-images, corrupt files and decompression bombs
    w, h = im.size
    if min(w, h) < MIN_SIDE:
        raise DataError(f"{Path(path).name}: image too small ({w}x{h} px; at least {MIN_SIDE}x{MIN_SIDE} needed)")
    return im


def _display(im: Image.Image, heatmap: np.ndarray) -> np.ndarray:
    """The image with its heat map blended in, longest side ``DISPLAY_SIDE`` (small images are
    enlarged too, so that their box reads on screen)."""
    from .viz import overlay

    w, h = im.size
    s = DISPLAY_SIDE / max(w, h)
    dw, dh = max(1, round(w * s)), max(1, round(h * s))
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    small = cv2.resize(np.asarray(im), (dw, dh), interpolation=interp)
    hm = cv2.resize(heatmap, (dw, dh), interpolation=interp)
    return overlay(small, hm)


def _unique_names(paths: Sequence[str | Path]) -> list[str]:
    seen: dict[str, int] = {}
    names = []
    for p in paths:
        name = Path(p).name
        k = seen.get(name, 0) + 1
        seen[name] = k
        names.append(name if k == 1 else f"{Path(name).stem} ({k}){Path(name).suffix}")
    return names


def _short(msg: str, name: str) -> str:
    """An error message with the (temporary) upload path replaced by the file's name."""
    head, sep, tail = msg.partition(": ")
    return f"{name}: {tail}" if sep and Path(head).name == name else f"{name}: {msg}"


def predict_files(
    model: "LocLoc", paths: Sequence[str | Path], progress: Callable[[float, str], Any] | None = None
) -> tuple[list[Result], list[str]]:
    """Run the model on each file -> (results, one message per file that could not be used).

    A bad file never stops the others: files are opened one by one, the good ones predicted
    up to ``CHUNK`` at a time (fewer when they are large: ``PIXEL_BUDGET``).
    """
    names = _unique_names(paths)
    results: list[Result] = []
    errors: list[str] = []
    pending: list[tuple[str, Image.Image]] = []

    def flush() -> None:
        if not pending:
            return
        try:
            preds = model.predict_batch([im for _, im in pending])
        except Exception as e:  # noqa: BLE001 - e.g. out of memory: report, keep serving
            log.exception("prediction failed")
            errors.extend(f"{name}: the model failed ({type(e).__name__}: {e})" for name, _ in pending)
        else:
            for (name, im), pred in zip(pending, preds):
                results.append(Result(
                    name=name,
                    pred=dataclasses.replace(pred, path=name, heatmap=np.zeros((0, 0), np.float32)),
                    u8=to_uint8(pred.heatmap),
                    base=_display(im, pred.heatmap),
                ))
        pending.clear()

    for i, (p, name) in enumerate(zip(paths, names)):
        if progress is not None:
            progress(i / len(paths), f"image {i + 1} of {len(paths)}")
        try:
            pending.append((name, load_upload(p)))
        except LocLocError as e:
            errors.append(_short(str(e), name))
        except Exception as e:  # noqa: BLE001 - a page must not die on one odd file
            log.exception("cannot open %s", p)
            errors.append(f"{name}: cannot open ({type(e).__name__}: {e})")
        if len(pending) == CHUNK or sum(im.width * im.height for _, im in pending) >= PIXEL_BUDGET:
            flush()
    flush()
    return results, errors


def predictions_at(results: Sequence[Result], threshold: float) -> list["Prediction"]:
    """The cached predictions with their boxes at ``threshold``."""
    return [dataclasses.replace(r.pred, box=box_at(r, threshold), threshold=float(threshold)) for r in results]


def render(results: Sequence[Result], preds: Sequence["Prediction"]) -> tuple[list, list[list]]:
    """Gallery items ``(overlay, caption)`` and table rows for the predictions."""
    from .viz import overlay

    items, rows = [], []
    for r, p in zip(results, preds):
        sx, sy = r.scale
        x0, y0, x1, y1 = p.box
        shown = overlay(r.base, None, [[x0 * sx, y0 * sy, x1 * sx, y1 * sy]])
        cap = r.name if p.class_name is None else f"{r.name}: {p.class_name} ({p.score:.2f})"
        items.append((shown, cap))
        rows.append([r.name, p.class_name or "", None if p.score is None else round(p.score, 4),
                     *p.box, *p.image_size])
    return items, rows


def top5_of(result: Result | None) -> dict[str, float]:
    """``{class name: score}`` of the top-5, for ``gr.Label``."""
    if result is None:
        return {}
    return {t["class_name"]: float(t["score"]) for t in result.pred.top5}


def write_downloads(
    preds: Sequence["Prediction"], class_names: Sequence[str], folder: str | Path
) -> tuple[Path | None, Path, str | None]:
    """Write ``boxes_coco.json`` and ``boxes.jsonl`` into ``folder``.

    Returns (COCO path or None, JSONL path, why COCO could not be written or None).
    """
    from .boxfiles import to_coco, to_jsonl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    jsonl = folder / "boxes.jsonl"
    jsonl.write_text(to_jsonl(preds))
    try:
        coco_dict = to_coco(preds, class_names, image_ids=[p.path for p in preds])
    except LocLocError as e:  # e.g. a boxes-only model has no class to give
        return None, jsonl, str(e)
    coco = folder / "boxes_coco.json"
    coco.write_text(json.dumps(coco_dict, indent=1) + "\n")
    return coco, jsonl, None


def _status(results: Sequence[Result], errors: Sequence[str], seconds: float, coco_error: str | None) -> str:
    lines = []
    if results:
        lines.append(f"Localized **{len(results)}** image(s) in {seconds:.1f} s. Click an image for its top-5.")
    if errors:
        lines.append(f"Skipped **{len(errors)}** file(s):")
        lines.extend(f"- {e}" for e in errors)
    if coco_error:
        lines.append(f"No COCO file: {coco_error}")
    return "\n".join(lines) or "No images uploaded."


def title_of(model: "LocLoc") -> str:
    """``LocLoc: <backbone> · <n> classes``."""
    backbone = (model.config.get("backbone") or {}).get("name") or "unknown backbone"
    n = len(model.class_names) or (model.config.get("classifier") or {}).get("num_classes") or 0
    return f"LocLoc: {backbone} · {n} classes"


def build_app(model: "LocLoc", examples: Sequence[str | Path] = ()) -> "gradio.Blocks":
    """The page: uploads, threshold slider, gallery, top-5, box table, downloads.

    ``examples`` (image paths) are predicted once, here, and are the page's initial result
    (every visitor sees them; the slider works on them). API (for ``gradio_client``):
    ``/predict`` (files, threshold) and ``/rebox`` (threshold; the session's cached heat
    maps). Handlers return plain values, not component updates, so that clients receive the
    data and files themselves.
    """
    try:
        import gradio as gr
    except ImportError:
        raise LocLocError(INSTALL_HINT) from None

    tmp = tempfile.TemporaryDirectory(prefix="locloc_app_")
    counter = iter(range(1 << 62))
    title = title_of(model)
    thr0 = round(model.threshold, 2)

    def downloads(preds: list) -> tuple[str | None, str | None, str | None]:
        if not preds:
            return None, None, None
        coco, jsonl, err = write_downloads(preds, model.class_names, Path(tmp.name) / str(next(counter)))
        return (str(coco) if coco else None), str(jsonl), err

    def heading(r: Result | None) -> str:
        return f"**Top-5 classes: {r.name}**" if r is not None else "**Top-5 classes**"

    def predict(files: list | None, threshold: float, progress=gr.Progress()):  # noqa: B008
        t0 = time.perf_counter()
        paths = [f if isinstance(f, str) else getattr(f, "name", str(f)) for f in (files or [])]
        results, errors = predict_files(model, paths, None if progress is None else lambda f, d: progress(f, desc=d))
        for e in errors:
            if progress is not None:  # inside a page event (not building the examples)
                gr.Warning(e)
        preds = predictions_at(results, threshold)
        items, rows = render(results, preds)
        coco, jsonl, coco_err = downloads(preds)
        first = results[0] if results else None
        status = _status(results, errors, time.perf_counter() - t0, coco_err)
        return results, items, heading(first), top5_of(first), rows, status, coco, jsonl

    def rebox(results: list, threshold: float):
        preds = predictions_at(results, threshold)
        items, rows = render(results, preds)
        coco, jsonl, _ = downloads(preds)
        return items, rows, coco, jsonl

    def select(results: list, evt: gr.SelectData):
        if not results or not isinstance(evt.index, int) or not 0 <= evt.index < len(results):
            return heading(None), {}
        return heading(results[evt.index]), top5_of(results[evt.index])

    def clear():
        return [], [], heading(None), {}, [], "No images yet.", None, None

    init = predict([str(p) for p in examples], thr0, None) if examples else clear()
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(3600, 3600)) as app:
        gr.Markdown(
            f"# {title}\n"
            "Upload one or more images: each shows its localization heat map (red = strong) with the "
            "predicted box, and its top-5 classes. The box threshold slider redraws the boxes from "
            "the cached heat maps, without rerunning the network."
        )
        state = gr.State(init[0])
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                files = gr.File(label="Images (drop one or many)", file_count="multiple")
                thr = gr.Slider(
                    0.0, 0.99, value=thr0, step=0.01, label="Box threshold",
                    info=f"part of the heat map's peak a pixel must exceed to be in the box "
                    f"(model default {model.threshold:g})",
                )
                status = gr.Markdown(init[5])
                coco_btn = gr.DownloadButton("Download boxes: COCO JSON", value=init[6])
                jsonl_btn = gr.DownloadButton("Download boxes: JSON lines", value=init[7])
                top5_head = gr.Markdown(init[2])
                top5 = gr.Label(init[3], show_label=False, num_top_classes=5)
            with gr.Column(scale=3):
                gallery = gr.Gallery(init[1], label="Heat map and box (click an image for its top-5)", columns=4,
                                     height="auto", object_fit="contain", allow_preview=True)
                table = gr.Dataframe(init[4] or None, headers=TABLE_HEADERS, interactive=False, wrap=True,
                                     label="Boxes: x0 y0 x1 y1 in original-image pixels")

        outs = [state, gallery, top5_head, top5, table, status, coco_btn, jsonl_btn]
        files.upload(predict, inputs=[files, thr], outputs=outs, api_name="predict")
        files.clear(clear, outputs=outs, api_visibility="private")
        thr.change(rebox, inputs=[state, thr], outputs=[gallery, table, coco_btn, jsonl_btn],
                   api_name="rebox", trigger_mode="always_last", show_progress="hidden")
        gallery.select(select, inputs=[state], outputs=[top5_head, top5], api_visibility="private")
    app._locloc_tmp = tmp  # the download files live as long as the app
    return app
