"""onnxruntime (CPU) against PyTorch fp32 (CPU) on one model directory, as a ratio in one run.

The model is exported with ``locloc.onnx_export.export_onnx`` (verified against PyTorch) into
a temporary folder. Both engines then run the same random normalized batches, interleaved
(PyTorch then onnxruntime on each batch, the order swapped every round), with the same thread
count; each engine's images/s is its best round. Prints one line, with the per-round ratios' range:
a wide range means the machine was busy (PyTorch's OpenMP threads slow down sharply when the
cores are shared; ``--threads 1`` is steadier there).

    python benchmarks/bench_onnx.py --model-dir DIR [--batch-size 16] [--rounds 3]
        [--batches 4] [--boxes-only] [--exporter dynamo|torchscript] [--threads N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", required=True)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batches", type=int, default=4, help="distinct random batches per round")
    p.add_argument("--boxes-only", action="store_true", help="both engines skip the classifier")
    p.add_argument("--exporter", default="dynamo", choices=("dynamo", "torchscript"))
    p.add_argument("--threads", type=int, default=None, help="intra-op threads for both (default: torch's)")
    args = p.parse_args()

    import onnxruntime as ort

    from locloc.models.model_dir import load_model_dir
    from locloc.onnx_export import export_onnx

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    model, cfg = load_model_dir(args.model_dir, device="cpu")
    boxes_only = args.boxes_only or model.classifier is None
    crop = int(cfg.get("input", {}).get("crop", 224))
    with tempfile.TemporaryDirectory() as tmp:
        rep = export_onnx(args.model_dir, Path(tmp) / "model.onnx", boxes_only=boxes_only, exporter=args.exporter)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        # no busy-waiting after a run: spinning ORT threads would steal the cores from the
        # PyTorch call that follows (interleaved timing)
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sess = ort.InferenceSession(str(rep.path), so, providers=["CPUExecutionProvider"])

    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(args.batch_size, 3, crop, crop, generator=gen) for _ in range(args.batches)]
    feeds = [{"images": x.numpy()} for x in xs]

    def run_torch(i: int) -> None:
        with torch.inference_mode():
            model(xs[i], boxes_only=boxes_only)

    def run_ort(i: int) -> None:
        sess.run(None, feeds[i])

    engines = {"torch": run_torch, "ort": run_ort}
    for f in engines.values():  # warm-up: allocator, oneDNN / ORT kernel caches
        f(0)
    best = {k: float("inf") for k in engines}
    ratios = []  # per round: onnxruntime speed / PyTorch speed
    for r in range(args.rounds):
        spent = dict.fromkeys(engines, 0.0)
        order = list(engines) if r % 2 == 0 else list(reversed(engines))
        for i in range(args.batches):
            for k in order:
                t0 = time.perf_counter()
                engines[k](i)
                spent[k] += time.perf_counter() - t0
        for k in engines:
            best[k] = min(best[k], spent[k])
        ratios.append(spent["torch"] / spent["ort"])
    n = args.batch_size * args.batches
    tps, ips = n / best["torch"], n / best["ort"]
    mode = "boxes-only" if boxes_only else "logits+maps"
    print(f"bench_onnx: {args.model_dir} ({mode}, {crop}px, batch {args.batch_size} x {args.batches}, "
          f"best of {args.rounds} rounds, {threads} thread(s)): PyTorch fp32 {tps:.1f} img/s, onnxruntime "
          f"{ort.__version__} CPU {ips:.1f} img/s ({rep.exporter} export, opset {rep.opset}); "
          f"onnxruntime / PyTorch = {ips / tps:.2f}x (per round {min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    main()
