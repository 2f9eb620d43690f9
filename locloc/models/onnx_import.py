"""Recover a ViT's weights from an ONNX export of a Hugging Face ``Dinov2Model`` / ``ViTModel``.

Exporters keep LayerNorm weights, biases and layer scales as named initializers
(``backbone.encoder.layer.N.norm1.weight``, ...), but the weight matrices of the linear layers
become anonymous MatMul inputs (``onnx::MatMul_1966``, stored ``in x out``): their names come
from the MatMul *node* (``/backbone/encoder/layer.N/attention/attention/query/MatMul``). A
position embedding that the exporter resampled in the graph is split into its CLS row
(``1 x 1 x D``, into ``/embeddings/Concat_*``) and its patch grid (``1 x N x D``, into
``/embeddings/Reshape_*``). This module puts the pieces back into an HF state dict and maps it
to timm keys (:func:`locloc.models.layouts.hf_to_timm`).

Needs the ``onnx`` extra (``pip install 'locloc[onnx]'``).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import CheckpointError
from .layouts import hf_to_timm

__all__ = ["import_onnx_vit", "read_onnx_hf_state_dict", "verify_against_onnxruntime"]

_MATMUL = re.compile(r"^/(?:(\w+)/)?(encoder/layer\.\d+/.+)/MatMul$")


def _onnx():
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise CheckpointError(
            "importing ONNX files needs the onnx extra: pip install 'locloc[onnx]'"
        ) from None
    return onnx, numpy_helper


def read_onnx_hf_state_dict(path: str | Path) -> tuple[dict[str, Tensor], str]:
    """The HF-keyed state dict of the ViT inside an ONNX export, and the prefix it sat under
    (``backbone``, ``dinov2``, ``vit`` or ``""``). Heads beside the ViT are left out."""
    onnx, numpy_helper = _onnx()
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: ONNX file not found")
    try:
        model = onnx.load(str(path))
    except Exception as e:  # protobuf DecodeError, truncated files, external data missing
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path}: not a readable ONNX model (truncated or corrupt: {first})") from None
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    if not inits:
        raise CheckpointError(f"{path}: the ONNX model holds no weights (initializers)")

    def arr(name: str) -> np.ndarray:
        return numpy_helper.to_array(inits[name])

    named = [n for n in inits if re.search(r"(?:^|\.)(?:embeddings|encoder|layernorm)\.", n)]
    prefixes = {n.split(".embeddings.")[0] for n in named if ".embeddings." in n}
    prefix = next(iter(prefixes)) if len(prefixes) == 1 else ""
    if not any(n.startswith(f"{prefix}.embeddings." if prefix else "embeddings.") for n in named):
        raise CheckpointError(
            f"{path}: no Hugging Face ViT inside (no initializer named '[prefix.]embeddings.*'); "
            "the importer reads exports of Dinov2Model / ViTModel / DeiTModel"
        )
    lead = f"{prefix}." if prefix else ""
    sd: dict[str, Tensor] = {}
    for n in named:
        if n.startswith(lead) and not n.startswith(f"{lead}pooler."):
            sd[n[len(lead):]] = torch.from_numpy(arr(n).copy())
    # linear weights: MatMul inputs named by their node, stored in x out
    for node in graph.node:
        if node.op_type != "MatMul":
            continue
        m = _MATMUL.match(node.name)
        if m is None or (m.group(1) or "") != prefix:
            continue
        weight = next((i for i in node.input if i in inits), None)
        if weight is None:
            continue  # attention scores: activations, not weights
        key = m.group(2).replace("/", ".") + ".weight"
        sd[key] = torch.from_numpy(arr(weight).T.copy())
    if "embeddings.position_embeddings" not in sd:
        sd["embeddings.position_embeddings"] = _split_position_embedding(graph, inits, arr, prefix, path)
    return sd, prefix


def _split_position_embedding(graph, inits, arr, prefix: str, path: Path) -> Tensor:
    """Rebuild ``1 x (1 + N) x D`` from the CLS row and patch grid the exporter folded apart."""
    scope = f"/{prefix}/embeddings/" if prefix else "/embeddings/"
    cls_row = grid = None
    for node in graph.node:
        if not node.name.startswith(scope):
            continue
        for i in node.input:
            if i not in inits or not i.startswith("onnx::"):
                continue
            a = arr(i)
            if a.ndim != 3 or a.shape[0] != 1:
                continue
            if node.op_type == "Concat" and a.shape[1] == 1 and cls_row is None:
                cls_row = a
            elif node.op_type == "Reshape" and a.shape[1] > 1 and grid is None:
                grid = a
    if cls_row is None or grid is None:
        raise CheckpointError(
            f"{path}: cannot find the position embedding (neither 'embeddings.position_embeddings' nor "
            f"the CLS row + patch grid feeding {scope}Concat / Reshape)"
        )
    return torch.from_numpy(np.concatenate([cls_row, grid], axis=1).copy())


def import_onnx_vit(path: str | Path) -> dict[str, Tensor]:
    """timm-keyed ViT weights (``vit_*`` layout, native position grid) from an ONNX export."""
    sd, _ = read_onnx_hf_state_dict(path)
    try:
        return hf_to_timm(sd)
    except KeyError as e:
        raise CheckpointError(f"{path}: unknown ViT weight {e.args[0]!r} in the ONNX export") from None


def verify_against_onnxruntime(
    onnx_path: str | Path, vit: torch.nn.Module, images: Tensor, prefix: str = "backbone"
) -> float:
    """Max abs difference between ``vit.forward_features(images)`` (timm, after the final norm)
    and the ONNX graph's own final-LayerNorm output on ``images`` (``B x 3 x H x W`` at the
    export's input size), computed by onnxruntime."""
    onnx, _ = _onnx()
    try:
        import onnxruntime as ort
    except ImportError:
        raise CheckpointError("checking against onnxruntime needs the onnx extra: pip install 'locloc[onnx]'") from None
    model = onnx.load(str(onnx_path))
    scope = f"/{prefix}/layernorm/" if prefix else "/layernorm/"
    last = [n for n in model.graph.node if n.name.startswith(scope)]
    if not last:
        raise CheckpointError(f"{onnx_path}: no final LayerNorm ({scope}) to compare against")
    name = last[-1].output[0]
    model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: images.numpy().astype(np.float32)}
    ref = sess.run([name], feed)[0]
    with torch.no_grad():
        ours = vit.forward_features(images).numpy()
    if ours.shape != ref.shape:
        raise CheckpointError(f"{onnx_path}: token shapes differ: timm {ours.shape} vs ONNX {ref.shape}")
    return float(np.abs(ours - ref).max())
