"""``locloc export``: a trained model directory -> one ONNX file, checked against PyTorch."""

from __future__ import annotations

import argparse

NAME = "export"
HELP = "export a model directory to ONNX (checked against PyTorch with onnxruntime)"
DESCRIPTION = (
    "Write a model directory as one ONNX file (opset 18 by default; needs: pip install "
    "'locloc[onnx]'). Input 'images': a normalized float32 batch B x 3 x crop x crop with a "
    "dynamic batch axis. Outputs 'logits' (B x C, pre-softmax; left out with --boxes-only or for "
    "a model without classifier) and 'maps' (B x 1 x h x w): the generator's raw map at its "
    "native size (8x the patch grid, e.g. 112 x 112 for a 224 input with the UNet or light "
    "generator), not upsampled and not normalized: resize it to crop x crop and min-max "
    "normalize it as locloc does to get a box. The file's metadata_props record the locloc "
    "version, opset, input size, normalization mean/std, class names, default box threshold "
    "and that recipe. By default onnxruntime is run on random batches of 1 and 3 images (the "
    "graph is traced at 2) and compared with PyTorch: max abs difference <= 1e-4 on logits and "
    "maps and identical boxes at the model's threshold, or nothing is written."
)
FORMATS = ("onnx",)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..onnx_export import DEFAULT_OPSET, EXPORTERS

    p.add_argument("--model-dir", required=True, help="a project model directory (model.safetensors + config.json)")
    p.add_argument("--format", default="onnx", metavar="FORMAT", help=f"output format: {', '.join(FORMATS)}")
    p.add_argument("--out", required=True, metavar="FILE.onnx", help="file to write (its folder must exist)")
    p.add_argument("--boxes-only", action="store_true",
                   help="leave the classifier out: the graph has the 'maps' output only")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                   help="ONNX opset (18: the dynamo exporter's native opset, run by onnxruntime >= 1.14)")
    p.add_argument("--exporter", choices=EXPORTERS, default="dynamo",
                   help="torch.onnx exporter: dynamo (torch.export-based, torch's default) or "
                   "torchscript (the older tracer, deprecated in torch >= 2.9)")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip the onnxruntime vs PyTorch check")


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..onnx_export import export_onnx

    if args.format not in FORMATS:
        raise ConfigError(f"--format {args.format}: unknown export format; choose one of {', '.join(FORMATS)}")
    report = export_onnx(args.model_dir, args.out, boxes_only=args.boxes_only, opset=args.opset,
                         verify=args.verify, exporter=args.exporter)
    print(report.summary())
    return 0
