"""ONNX export of a LocLoc model directory, checked against PyTorch with onnxruntime.

The exported graph takes ``images``: a normalized float32 batch ``B x 3 x crop x crop``
(dynamic ``B``) and returns ``logits`` (``B x C``, left out with ``boxes_only`` or for a
localization-only model) and ``maps``: the generator's raw map ``B x 1 x h x w`` at its
native size (8x the patch grid for the UNet and light generators, 4x for the deconv one),
neither upsampled nor normalized. Resizing to the crop and the per-map min-max stay on the
host, exactly as :mod:`locloc.api` does them (``cv2.resize`` + :func:`normalize_map`,
:func:`to_uint8`, :func:`box_from_map`), so boxes from the ``.onnx`` file follow the same
code path as ``locloc predict``. Everything needed to use the file alone (input size,
mean/std, class names, box threshold, the post-processing recipe) is written into the model's
``metadata_props``.

Needs the ``onnx`` extra (``pip install 'locloc[onnx]'``); it is imported only when used.
"""

from __future__ import annotations

import inspect
import io
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from . import __version__
from .data.transforms import resize_for
from .errors import ConfigError, LocLocError
from .fileio import atomic_save
from .metrics import box_from_map, normalize_map, to_uint8

__all__ = [
    "DEFAULT_OPSET",
    "EXPORTERS",
    "ExportReport",
    "VerificationError",
    "VerifyReport",
    "boxes_from_maps",
    "export_onnx",
    "read_metadata",
    "verify_onnx",
]

# Opset 18: the lowest opset the torch.export-based exporter emits natively (below it the
# ONNX version converter fails on Reduce* axes); has LayerNormalization as one op (17+);
# run by every onnxruntime the extra allows (>= 1.18) and by the TorchScript exporter too.
DEFAULT_OPSET = 18
MIN_OPSET = 14  # scaled_dot_product_attention needs it (TorchScript exporter)
EXPORTERS = ("dynamo", "torchscript")
EXPORT_BATCH = 2  # traced batch; verification runs other sizes to prove the dynamic axis
VERIFY_BATCHES = (1, 3)
ATOL = 1e-4
ONNX_FILE_LIMIT = 2**31 - 2**26  # protobuf's 2 GB single-file limit, less room for the graph
EXTRA = "pip install 'locloc[onnx]'"
MAP_RECIPE = (
    "maps are the generator's raw output at its native size (not upsampled, not normalized). "
    "To get a box as locloc does: resize each map to input_size x input_size (bilinear, "
    "cv2.INTER_LINEAR), min-max normalize it to [0, 1] (a constant map -> zeros), uint8 = "
    "floor(map * 255), keep pixels > int(box_threshold * 255), box = bounding rectangle "
    "[x0, y0, x1, y1] of the contour with the largest area (cv2.findContours RETR_TREE); no "
    "contour -> [0, 0, 1, 1]. Boxes are in input-image pixels."
)


class VerificationError(LocLocError):
    """onnxruntime's outputs differ from PyTorch's beyond the tolerance."""


@dataclass
class VerifyReport:
    """onnxruntime vs PyTorch on random batches of each size in ``batch_sizes``."""

    batch_sizes: tuple[int, ...]
    max_abs_logits: float | None  # None without a logits output
    max_abs_maps: float
    boxes_checked: int
    boxes_mismatched: int
    atol: float

    @property
    def ok(self) -> bool:
        close = self.max_abs_maps <= self.atol and (self.max_abs_logits is None or self.max_abs_logits <= self.atol)
        return close and self.boxes_mismatched == 0

    def summary(self) -> str:
        sizes = ", ".join(map(str, self.batch_sizes))
        logits = "no logits" if self.max_abs_logits is None else f"logits {self.max_abs_logits:.1e}"
        same = self.boxes_checked - self.boxes_mismatched
        return (f"onnxruntime vs PyTorch at batch {sizes}: max abs diff {logits}, maps {self.max_abs_maps:.1e} "
                f"(tolerance {self.atol:.0e}); boxes identical {same}/{self.boxes_checked}")


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote."""

    path: Path
    size_bytes: int
    opset: int
    exporter: str
    outputs: dict[str, list[int | str]]  # output name -> shape ("batch" for the dynamic axis)
    metadata: dict[str, str] = field(repr=False)
    verify: VerifyReport | None = None

    @property
    def boxes_only(self) -> bool:
        return "logits" not in self.outputs

    def summary(self) -> str:
        """One line: path, size, opset, outputs and (when verified) the differences."""
        outs = ", ".join(f"{k} {' x '.join(map(str, v))}" for k, v in self.outputs.items())
        line = (f"wrote {self.path} ({self.size_bytes / 1e6:.1f} MB, ONNX opset {self.opset}, {self.exporter} "
                f"exporter; outputs {outs})")
        return line + ("; " + self.verify.summary() if self.verify else "; not verified")


# ------------------------------------------------------------------------------ extras


def _require(module: str, why: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:  # includes sys.modules[module] = None
        raise LocLocError(f"{why} needs the {module} package (the onnx extra): {EXTRA}") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ----------------------------------------------------------------------------- the graph


class _ExportGraph(nn.Module):
    """``images B x 3 x S x S`` -> ``(logits B x C, maps B x 1 x h x w)``, or ``maps`` alone."""

    def __init__(self, model: nn.Module, boxes_only: bool):
        super().__init__()
        self.model = model
        self.boxes_only = boxes_only

    def forward(self, images: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        out = self.model(images, boxes_only=self.boxes_only)
        if self.boxes_only:
            return out["maps"]
        return out["logits"], out["maps"]


def boxes_from_maps(maps: np.ndarray, crop: int, threshold: float) -> np.ndarray:
    """Raw maps ``B x 1 x h x w`` -> boxes ``B x 4`` (int64 ``x0y0x1y1``, input-image pixels).

    The path :class:`locloc.api.LocLoc` takes: :func:`normalize_map` to ``crop x crop``,
    :func:`to_uint8`, :func:`box_from_map` at ``threshold``.
    """
    cams = normalize_map(np.asarray(maps, dtype=np.float32)[:, 0], size=crop)
    return np.stack([box_from_map(to_uint8(c), threshold) for c in cams]) if len(cams) else np.zeros((0, 4), np.int64)


# --------------------------------------------------------------------------------- checks


def check_out_path(out: str | Path) -> Path:
    """``out`` must name a file in an existing, writable folder (:class:`ConfigError` if not)."""
    p = Path(out)
    parent = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise ConfigError(f"--out {p}: is a folder; give the path of the .onnx file to write")
    if not parent.is_dir():
        raise ConfigError(f"--out {p}: the folder {parent} does not exist; create it first or choose another path")
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"--out {p}: the folder {parent} is not writable; choose another path")
    return p


def _check_opset(opset: int) -> None:
    onnx = _require("onnx", "ONNX export")
    top = int(onnx.defs.onnx_opset_version())
    if not MIN_OPSET <= int(opset) <= top:
        raise ConfigError(f"--opset {opset}: choose {MIN_OPSET} to {top} (the installed onnx's newest); default {DEFAULT_OPSET}")


def _has_dynamo_exporter() -> bool:
    return "dynamo" in inspect.signature(torch.onnx.export).parameters


# -------------------------------------------------------------------------------- export


def _metadata(model: nn.Module, config: dict[str, Any], opset: int, exporter: str, boxes_only: bool,
              map_hw: tuple[int, int]) -> dict[str, str]:
    inp = config.get("input", {})
    crop = int(inp.get("crop", 224))
    norm = config.get("normalization", {})
    names = [] if boxes_only else list(config.get("class_names") or [])
    th = float(config.get("thresholds", {}).get("default", 0.5))
    gen = config.get("generator", {})
    outputs = "maps" if boxes_only else "logits,maps"
    return {
        "locloc_version": __version__,
        "opset": str(opset),
        "exporter": exporter,
        "input_name": "images",
        "input_shape": f"batch x 3 x {crop} x {crop}",
        "input_size": str(crop),
        "resize": str(int(inp.get("resize", resize_for(crop)))),
        "input_note": "RGB float32, (pixel / 255 - mean) / std; the whole image resized to "
        "input_size x input_size (locloc's default 'full' view)",
        "mean": json.dumps([float(v) for v in norm.get("mean", [0.485, 0.456, 0.406])]),
        "std": json.dumps([float(v) for v in norm.get("std", [0.229, 0.224, 0.225])]),
        "outputs": outputs,
        "boxes_only": json.dumps(boxes_only),
        "class_names": json.dumps(names),
        "num_classes": str(len(names)) if not boxes_only else "0",
        "box_threshold": repr(th),
        "map_size": f"{map_hw[0]}x{map_hw[1]}",
        "map_applies_sigmoid": json.dumps(bool(getattr(model.generator, "applies_sigmoid", False))),
        "map_note": MAP_RECIPE,
        "backbone": str(config.get("backbone", {}).get("name", "")),
        "generator": str(gen.get("type", "")),
    }


def _doc_string(meta: dict[str, str]) -> str:
    s = meta["input_size"]
    logits = "" if meta["boxes_only"] == "true" else f"logits: batch x {meta['num_classes']} class scores (pre-softmax); "
    return (f"LocLoc {meta['locloc_version']} weakly supervised localization model (ONNX opset {meta['opset']}). "
            f"Input images: batch x 3 x {s} x {s}, normalized with mean {meta['mean']} and std {meta['std']}. "
            f"Outputs: {logits}maps: batch x 1 x {meta['map_size'].replace('x', ' x ')} localization maps. "
            f"{MAP_RECIPE} Default box threshold: {meta['box_threshold']}. Class names, sizes and "
            "normalization are in metadata_props.")


def _torch_export(graph: nn.Module, example: Tensor, names: list[str], opset: int, exporter: str) -> bytes:
    """Run ``torch.onnx.export``; returns the serialized ModelProto."""
    dims = {"images": {0: "batch"}, **{n: {0: "batch"} for n in names}}
    with warnings.catch_warnings():
        # the exporters' own chatter (deprecation of the TorchScript path, tracer notes on
        # timm's shape asserts); the verification below is what proves the graph right
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.simplefilter("ignore", category=UserWarning)
        if exporter == "dynamo":
            batch = torch.export.Dim("batch", min=1)
            prog = torch.onnx.export(
                graph, (example,), dynamo=True, input_names=["images"], output_names=names,
                opset_version=opset, dynamic_shapes={"images": {0: batch}}, external_data=False,
                verbose=False,  # no progress lines
            )
            return prog.model_proto.SerializeToString()
        buf = io.BytesIO()
        kw = {"dynamo": False} if _has_dynamo_exporter() else {}
        torch.onnx.export(
            graph, (example,), buf, input_names=["images"], output_names=names, opset_version=opset,
            dynamic_axes=dims, do_constant_folding=True, **kw,
        )
        return buf.getvalue()


def export_onnx(
    model_dir: str | Path,
    out: str | Path,
    boxes_only: bool = False,
    opset: int = DEFAULT_OPSET,
    verify: bool = True,
    batch_sizes: Sequence[int] = VERIFY_BATCHES,
    exporter: str = "dynamo",
    atol: float = ATOL,
    seed: int = 0,
) -> ExportReport:
    """Export the model in ``model_dir`` (``model.safetensors`` + ``config.json``) to ``out``.

    The graph is traced at batch :data:`EXPORT_BATCH` with a dynamic batch axis. With
    ``verify`` (default) onnxruntime is run on random batches of each of ``batch_sizes`` and
    compared with PyTorch (:func:`verify_onnx`); on a difference above ``atol`` or any
    differing box, :class:`VerificationError` is raised and nothing is written. The file
    appears atomically: a failure at any step leaves ``out`` as it was. A model without a
    classifier is exported as with ``boxes_only``.
    """
    from .models.model_dir import load_model_dir

    if exporter not in EXPORTERS:
        raise ConfigError(f"unknown exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}")
    onnx = _require("onnx", "ONNX export")
    if verify:
        _require("onnxruntime", "checking the export against onnxruntime")
    if exporter == "dynamo":
        if not _has_dynamo_exporter():
            raise ConfigError(f"torch {torch.__version__} has no dynamo ONNX exporter; use --exporter torchscript")
        _require("onnxscript", "the dynamo ONNX exporter")
    _check_opset(opset)
    sizes = tuple(int(b) for b in batch_sizes)
    if verify and (not sizes or min(sizes) < 1):
        raise ConfigError(f"verification batch sizes must be >= 1, got {list(batch_sizes)}")
    out = check_out_path(out)

    model, config = load_model_dir(model_dir, device="cpu")
    boxes_only = bool(boxes_only or model.classifier is None)
    weight_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    if weight_bytes > ONNX_FILE_LIMIT:
        raise ConfigError(f"{model_dir}: {weight_bytes / 2**30:.1f} GiB of weights, over ONNX's 2 GB single-file limit")
    crop = int(config.get("input", {}).get("crop", 224))
    graph = _ExportGraph(model, boxes_only).eval()
    example = torch.randn(EXPORT_BATCH, 3, crop, crop, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ref = graph(example)
    map_hw = tuple(int(s) for s in (ref if boxes_only else ref[1]).shape[-2:])
    names = ["maps"] if boxes_only else ["logits", "maps"]

    try:
        blob = _torch_export(graph, example, names, opset, exporter)
    except Exception as e:  # an exporter failure: one line, and the other exporter to try
        other = next(x for x in EXPORTERS if x != exporter)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise LocLocError(f"ONNX export failed ({exporter} exporter, opset {opset}): {first}; "
                          f"try --exporter {other}") from None
    proto = onnx.load_from_string(blob)
    got = {imp.domain or "ai.onnx": imp.version for imp in proto.opset_import}.get("ai.onnx")
    if got != opset:
        raise LocLocError(f"ONNX export wrote opset {got}, not the requested {opset}; try --exporter "
                          f"{'torchscript' if exporter == 'dynamo' else 'dynamo'} or another --opset")
    meta = _metadata(model, config, opset, exporter, boxes_only, map_hw)
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, meta)
    proto.doc_string = _doc_string(meta)
    proto.producer_name, proto.producer_version, proto.model_version = "locloc", __version__, 1
    notes = {"logits": "batch x C class scores (pre-softmax), in class_names order",
             "maps": f"batch x 1 x {map_hw[0]} x {map_hw[1]} raw localization maps (see map_note)"}
    for o in proto.graph.output:
        o.doc_string = notes.get(o.name, "")
    proto.graph.input[0].doc_string = meta["input_note"]
    onnx.checker.check_model(proto)

    report: dict[str, VerifyReport] = {}

    def write(tmp: str) -> None:
        onnx.save(proto, tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would make a shared export unreadable
        if verify:
            r = verify_onnx(tmp, model, config, sizes, boxes_only=boxes_only, atol=atol, seed=seed + 1)
            report["verify"] = r
            if not r.ok:
                raise VerificationError(f"{out}: not written, the export differs from PyTorch: {r.summary()}; "
                                        "pass --no-verify to write it anyway")

    try:
        atomic_save(out, write)
    except OSError as e:  # read-only file system, disk full, permissions the check could not see
        raise ConfigError(f"--out {out}: cannot write ({e.strerror or e}); choose another path") from None
    shapes = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in proto.graph.output}
    return ExportReport(out, out.stat().st_size, opset, exporter, shapes, meta, report.get("verify"))


# ---------------------------------------------------------------------------- verification


def verify_onnx(
    onnx_path: str | Path,
    model: nn.Module,
    config: dict[str, Any],
    batch_sizes: Sequence[int] = VERIFY_BATCHES,
    boxes_only: bool = False,
    atol: float = ATOL,
    seed: int = 1,
) -> VerifyReport:
    """Run onnxruntime (CPU) and ``model`` (PyTorch, CPU) on the same random normalized batches
    ``b x 3 x crop x crop`` for each ``b`` in ``batch_sizes``; compare logits and maps (max abs
    difference) and the boxes at the model's default threshold (:func:`boxes_from_maps`)."""
    ort = _require("onnxruntime", "checking the export against onnxruntime")
    crop = int(config.get("input", {}).get("crop", 224))
    threshold = float(config.get("thresholds", {}).get("default", 0.5))
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    gen = torch.Generator().manual_seed(seed)
    d_logits: float | None = None if boxes_only else 0.0
    d_maps, checked, mismatched = 0.0, 0, 0
    model = model.to("cpu").eval()
    for b in batch_sizes:
        x = torch.randn(int(b), 3, crop, crop, generator=gen)
        with torch.inference_mode():
            ref = model(x, boxes_only=boxes_only)
        got = dict(zip(names, sess.run(None, {"images": x.numpy()})))
        ref_maps = ref["maps"].float().numpy()
        if got["maps"].shape != ref_maps.shape:
            raise VerificationError(f"{onnx_path}: maps shape {got['maps'].shape} at batch {b}, PyTorch gives {ref_maps.shape}")
        d_maps = max(d_maps, float(np.abs(got["maps"] - ref_maps).max()))
        if d_logits is not None:
            ref_logits = ref["logits"].float().numpy()
            if got["logits"].shape != ref_logits.shape:
                raise VerificationError(
                    f"{onnx_path}: logits shape {got['logits'].shape} at batch {b}, PyTorch gives {ref_logits.shape}")
            d_logits = max(d_logits, float(np.abs(got["logits"] - ref_logits).max()))
        a, c = boxes_from_maps(ref_maps, crop, threshold), boxes_from_maps(got["maps"], crop, threshold)
        checked += len(a)
        mismatched += int((a != c).any(axis=1).sum())
    return VerifyReport(tuple(int(b) for b in batch_sizes), d_logits, d_maps, checked, mismatched, atol)


def read_metadata(onnx_path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an exported file (as onnxruntime's ``custom_metadata_map``)."""
    onnx = _require("onnx", "reading ONNX metadata")
    proto = onnx.load(str(onnx_path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}
