"""``locloc app``: a local web page over a model directory (needs the ``locloc[app]`` extra)."""

from __future__ import annotations

import argparse
import sys

NAME = "app"
HELP = "a local web app: upload images, see heat maps, boxes and top-5, download the boxes"
DESCRIPTION = (
    "Serve a Gradio page on this machine for a trained model directory. Upload one or many "
    "images: each shows its heat map with the predicted box and its top-5 classes; the box "
    "threshold slider redraws the boxes from the cached heat maps (the network is not rerun); "
    "the boxes download as COCO JSON or JSON lines (x0 y0 x1 y1 in original-image pixels; "
    "COCO: x y w h). Needs: pip install 'locloc[app]'."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-dir", required=True, help="a project model directory (locloc convert / train / demo)")
    p.add_argument("--port", type=int, default=7860, help="TCP port to serve on")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (0.0.0.0 exposes the page to your network)")
    p.add_argument("--threshold", type=float, default=None, help="initial box threshold (default: the model's)")
    p.add_argument("--view", choices=("full", "crop"), default="full",
                   help="full: the whole image resized to the input size; crop: eval transform (centre crop)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when present)")
    p.add_argument("--examples", nargs="+", default=(), metavar="IMAGE",
                   help="images predicted when the page opens (a ready-made result to look at)")


def run(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from ..errors import ConfigError, LocLocError
    from ..webapp import INSTALL_HINT, check_port_free

    if args.threshold is not None and not 0.0 <= args.threshold < 1.0:
        raise ConfigError(f"--threshold must be in [0, 1), got {args.threshold}")
    for ex in args.examples:
        if not Path(ex).is_file():
            raise ConfigError(f"--examples {ex}: no such file")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # a local tool: no phoning home
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise LocLocError(INSTALL_HINT) from None
    check_port_free(args.host, args.port)  # fail in a second, before loading the model

    from ..api import LocLoc
    from ..webapp import build_app

    model = LocLoc.from_pretrained(args.model_dir, device=args.device, view=args.view, threshold=args.threshold)
    app = build_app(model, examples=args.examples)
    print(f"locloc app: {args.model_dir} on {model.device}; Ctrl+C to stop", file=sys.stderr)
    try:
        app.launch(server_name=args.host, server_port=args.port, show_error=True, max_file_size="200mb")
    except OSError as e:  # the port was taken between the check and the launch
        raise ConfigError(f"port {args.port} on {args.host}: cannot serve there ({e})") from None
    return 0
