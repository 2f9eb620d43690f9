"""``locloc import-backbone``: any backbone layout (or an ONNX export of an HF ViT) -> a timm
safetensors file that every LocLoc command takes as ``--weights``."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "import-backbone"
HELP = "turn a backbone file (DINO, DINOv2, Hugging Face, ONNX export, ...) into timm safetensors"
DESCRIPTION = (
    "Read backbone weights in any layout LocLoc knows (DeiT, DINO v1, DINOv2 with or without "
    "registers, Hugging Face Dinov2Model / ViTModel / DeiTModel, timm, safetensors) or an ONNX "
    "export of a Hugging Face ViT (needs: pip install 'locloc[onnx]'), check that it loads "
    "strictly into --backbone at the file's own input size, and write timm-keyed safetensors "
    "(native position grid; the source's resampling rule recorded in the metadata). With "
    "--verify and an ONNX source, compare timm's final tokens with onnxruntime's on a real photo "
    "or random input."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="FILE", help="backbone file (.onnx, .pth, .safetensors, ...)")
    p.add_argument("--out", required=True, metavar="FILE.safetensors", help="file to write")
    p.add_argument("--backbone", default="vit_small_patch14_dinov2", metavar="NAME",
                   help="timm ViT the weights are for")
    p.add_argument("--backbone-kwargs", default=None, metavar="JSON",
                   help='extra timm arguments besides img_size (read from the file), e.g. \'{"depth": 6}\'')
    p.add_argument("--verify", action="store_true",
                   help="ONNX source: compare with onnxruntime at the export's input size")
    p.add_argument("--image", default=None, metavar="FILE", help="photo for --verify (default: random input)")


def run(args: argparse.Namespace) -> int:
    import math

    from ..errors import CheckpointError, ConfigError
    from ..models.backbone import build_backbone
    from ..models.layouts import POS_EMBED_RULES, detect_layout
    from ..models.weights import fit_to_vit, load_strict, read_checkpoint, remap_state_dict, save_backbone_file

    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise ConfigError(f"--out {out}: the output is a safetensors file; name it *.safetensors")
    if not out.parent.is_dir():
        raise ConfigError(f"--out {out}: directory {out.parent} does not exist")
    src = Path(args.source)
    if src.suffix == ".onnx":
        from ..models.onnx_import import import_onnx_vit

        sd, rule, source = import_onnx_vit(src), "hf", f"ONNX export {src.name}"
    else:
        ck = read_checkpoint(src)
        layout = detect_layout(ck.state_dict, ck.wrapper, ck.file_kind)
        sd = remap_state_dict(ck.state_dict, layout)
        rule = ck.metadata.get("locloc.pos_embed_rule", POS_EMBED_RULES[layout])
        source = f"{layout} file {src.name}"
    # build the backbone at the file's own grid, so nothing is resampled before the check
    pe, pw = sd.get("pos_embed"), sd.get("patch_embed.proj.weight")
    if pe is None or pw is None:
        raise CheckpointError(f"{src}: no position embedding or patch embedding: not a ViT backbone")
    kw = _kwargs(args.backbone_kwargs)
    probe = build_backbone(args.backbone, None, **kw)
    prefix = 0 if getattr(probe.vit, "no_embed_class", False) else probe.num_prefix_tokens
    side = math.isqrt(pe.shape[1] - prefix)
    size = side * int(pw.shape[-1])
    backbone = build_backbone(args.backbone, None, **{**kw, "img_size": size})
    load_strict(backbone.vit, fit_to_vit(dict(sd), backbone.vit, rule), f"backbone {args.backbone}", src)

    save_backbone_file(sd, out, args.backbone, source, rule)
    n = sum(v.numel() for v in sd.values())
    print(f"wrote {out}: {args.backbone}, {n:,} parameters, native input {size} px "
          f"({side}x{side} grid), position resampling rule '{rule}'")
    if args.verify:
        if src.suffix != ".onnx":
            raise ConfigError("--verify compares against onnxruntime: the source must be an .onnx file")
        from ..models.onnx_import import read_onnx_hf_state_dict, verify_against_onnxruntime

        _, onnx_prefix = read_onnx_hf_state_dict(src)
        crop = _onnx_input_size(src)
        model = build_backbone(args.backbone, out, **{**kw, "img_size": crop})
        x = _verify_input(args.image, crop, model.data_config)
        diff = verify_against_onnxruntime(src, model.vit, x, onnx_prefix)
        print(f"verify: timm vs onnxruntime final tokens at {crop} px: max abs difference {diff:.2e}")
        if diff > 1e-4:
            raise CheckpointError(f"{src}: the imported weights differ from onnxruntime by {diff:.2e} (> 1e-4)")
    return 0


def _kwargs(text: str | None) -> dict:
    import json

    from ..errors import ConfigError

    if text is None:
        return {}
    try:
        kw = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--backbone-kwargs is not valid JSON ({e.msg}): {text}") from None
    if not isinstance(kw, dict):
        raise ConfigError(f"--backbone-kwargs must be a JSON object, got {text}")
    kw.pop("img_size", None)
    return kw


def _onnx_input_size(path: Path) -> int:
    import onnx

    dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    side = dims[-1].dim_value if dims else 0
    return int(side) or 224


def _verify_input(image: str | None, crop: int, data_config: dict):
    import torch

    if image is None:
        torch.manual_seed(0)
        return torch.randn(2, 3, crop, crop)
    from ..data.transforms import EvalTransform, resize_for
    from ..fileio import open_image

    tf = EvalTransform(resize=resize_for(crop), crop=crop, mean=data_config["mean"], std=data_config["std"])
    return tf(open_image(image))[0][None]
