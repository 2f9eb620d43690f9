"""``locloc evaluate``'s pass against the reference release's own evaluation, side by side.

The reference (github.com/Cliffia123/LocLoc) evaluates by calling ``engine.evaluate`` once per
box threshold (``main_eval.py``: 6 thresholds on CUB), and each call decodes every image, runs
the three networks and draws boxes at that one threshold. ``locloc evaluate`` does one pass
for all 6 thresholds and MaxBoxAccV2. This script times both on the same JPEGs, with the same
deterministic weights, in one process, in fp32 on the CPU:

* a **reference pass**: ``engine.evaluate(...)`` at one threshold (``--threshold``), over a
  ``DataLoader`` of the reference's own ``CUBFEATDataset`` built as ``main_eval.py`` builds it
  (``num_workers`` 0), with the models built and loaded as ``main_eval.py`` does;
* a **LocLoc pass**: :func:`locloc.engine.evaluate.evaluate_samples`, the loop under
  ``locloc evaluate``, on the model that ``locloc convert`` makes from the same three files
  (the same data set read by ``load_dataset``, the same transform and thresholds
  ``evaluate`` picks, no loader processes).

Model loading and process start-up are timed for neither side. The passes are interleaved
(reference, LocLoc, reference, LocLoc, ...; best of ``--rounds``), each started once the
1-minute load average is below ``--load`` (polled for ``--wait`` s; then ``--quiet-flag`` is
created, if given, and polled ``--extra-wait`` s more before running anyway). Each run also
reports the CPU that other processes used while it ran (from ``/proc/stat``); a run where they
used more than ``--max-others`` cores is marked DISTURBED, and up to ``--extra-rounds`` more
rounds run while a side has no undisturbed run. Printed: images/s of each side, the per-pass
ratio (LocLoc / reference single pass) and the end-to-end ratio (the reference's 6 passes, as
``main_eval.py`` runs them, against one LocLoc pass), measured directly with one six-pass
reference run, which also gives the reference's metrics at every threshold: they are compared
with LocLoc's (GT-known / Top-1 / Top-5 Loc, Top-1 / Top-5 Cls).
Then instrumented passes say where the time goes (ms/image: data, backbone, classifier,
generator, boxes, rest): the reference's, LocLoc's as it runs (its box step on a worker thread
beside the networks) and LocLoc's with the box step in line on the main thread (so the parts
add up), first on the model's own maps, then with both generators' outputs swapped for the
same smooth maps (one to three Gaussian blobs, as ``bench_evaluate.py`` uses; the generators
still run), which is what a trained generator gives; the two sides' metrics on the smooth
maps are compared too. Last, the box step alone on both kinds of maps: the reference's code
at one threshold (with and without the heat-map drawing it does and throws away) and at 6,
and LocLoc's sweep at the 6 thresholds alone and with MaxBoxAccV2 (100 levels), with the time
its sweep spends in ``cv2.findContours`` and in ``_boxes_areas``.

Weights: the deterministic reference-layout checkpoints of the golden tests
(``tests/golden_weights.py``); such random weights give noisy generator maps, the worst case
for the box step. Images: ``--n`` JPEGs of ``--size`` (random crops of scikit-image's photos,
as ``bench_evaluate.py`` makes them) in a CUB layout that both sides read; one random GT box
each; labels chosen from the model's own top 5 (an untimed LocLoc pass before the reference is
loaded) so that Top-1 / Top-5 Cls and Loc have hits and misses to compare.

The reference is imported from ``--reference-dir`` (a checkout of the release; nothing of it is
in this repository). To import and run on a CPU with current versions (torch 2, timm 1,
numpy 2) the checkout needs the four import-line edits listed in the golden fixture's README
(``tests/data/golden``): ``modules/models.py`` without ``from torch.functional import
align_tensors`` and with ``to_2tuple`` from ``timm.layers.helpers``; ``utils/vis_tools.py``
without ``from numpy.lib.function_base import blackman``; ``engine.py`` without ``from
numpy.lib.function_base import delete``. Everything else is done here, at run time:
``Tensor.cuda`` / ``Module.cuda`` become no-ops, ``torch.cuda.amp.autocast`` disables
itself without CUDA (so the reference runs in fp32), tqdm in ``engine`` is replaced by a
silent pass-through, and the files the reference reads relative to the working directory
(``datasets/CUB/*.txt``, ``datasets/DinoCAM/cub_grabcut_val.h5``, ``log/top1top5_cub.npy``)
are written to a temporary working directory. The reference's imports need, besides what
LocLoc needs: ``h5py``, ``albumentations``, ``scikit-image``, ``matplotlib`` (``pip install
h5py albumentations scikit-image matplotlib``; ``ptflops`` only for ``main_eval.py``, which
is not imported). Run from the repository root with the project's Python:

    python benchmarks/bench_reference.py --reference-dir DIR [--n 200] [--batch 16 [32]]
        [--rounds 2] [--extra-rounds 2] [--max-others 0.1] [--threshold 0.5] [--size 448 336]
        [--threads 2] [--load 0.6] [--wait 600] [--extra-wait 1200] [--quiet-flag FILE] [--no-profile]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from bench_evaluate import make_images, smooth_maps  # noqa: E402
from golden_weights import write_reference_files  # noqa: E402

CLASSES = [f"{k:03d}.Class_{k:03d}" for k in range(1, 201)]
CUB_TXT = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "bounding_boxes.txt")
PARTS = ("data", "backbone", "classifier", "generator", "boxes")


# --------------------------------------------------------------------------- helpers


class Timer:
    """Seconds per key, summed over calls of wrapped callables."""

    def __init__(self) -> None:
        self.s: dict[str, float] = defaultdict(float)

    def wrap(self, key: str, fn: Callable, keep: Callable | None = None) -> Callable:
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                out = fn(*args, **kwargs)
            finally:
                self.s[key] += time.perf_counter() - t0
            if keep is not None:
                keep(args, kwargs, out)
            return out

        return timed


@contextlib.contextmanager
def patched(*triples) -> Iterator[None]:
    """Set ``(obj, name, value)`` attributes for the block; restore them after (or delete the
    ones that were not the object's own, e.g. a module instance's ``forward``)."""
    saved = []
    for obj, name, value in triples:
        own = name in vars(obj)
        saved.append((obj, name, own, vars(obj).get(name)))
        setattr(obj, name, value)
    try:
        yield
    finally:
        for obj, name, own, old in reversed(saved):
            if own:
                setattr(obj, name, old)
            else:
                delattr(obj, name)


def swapped_output(fn: Callable, pool: np.ndarray | None) -> Callable:
    """``fn`` (a generator's forward), whose output is replaced, when ``pool`` is given, by the
    next maps of ``pool`` (N x 1 x h x w, taken in order) in the output's shape and dtype."""
    if pool is None:
        return fn
    at = [0]

    def forward(*args, **kwargs):
        out = fn(*args, **kwargs)
        k = out.shape[0]
        maps = torch.from_numpy(pool[at[0]:at[0] + k]).to(out.dtype).reshape(out.shape)
        at[0] += k
        return maps

    return forward


class InlineExecutor:
    """A stand-in for ``ThreadPoolExecutor`` that runs each task at once on the caller's
    thread, so that a pass's parts run one after the other and add up to its wall time."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def submit(self, fn: Callable, *args, **kwargs):
        from concurrent.futures import Future

        f: Future = Future()
        f.set_result(fn(*args, **kwargs))
        return f

    def shutdown(self, *args, **kwargs) -> None:
        pass


def wait_for_quiet(args: argparse.Namespace, what: str) -> float:
    """Poll the 1-minute load average until it is below ``--load``; return it."""
    t0 = time.time()
    flag = Path(args.quiet_flag) if args.quiet_flag else None
    while True:
        load = os.getloadavg()[0]
        if load < args.load:
            return load
        waited = time.time() - t0
        if flag is not None and waited >= args.wait and not flag.exists():
            flag.touch()
            print(f"  load {load:.2f} after {waited:.0f} s: created {flag}, waiting up to {args.extra_wait} s more",
                  flush=True)
        if waited >= args.wait + (args.extra_wait if flag is not None else 0):
            print(f"  load still {load:.2f} after {waited:.0f} s: running {what} anyway", flush=True)
            return load
        time.sleep(5)


class Interference:
    """``with Interference() as o:`` times the block (``o.wall``) and measures the CPU time
    other processes used meanwhile (``o.cores``: average cores; None where ``/proc/stat`` is
    missing), from the machine's busy time minus this process's CPU time."""

    @staticmethod
    def _busy() -> float | None:
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
        except OSError:
            return None
        return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")

    def __enter__(self) -> Interference:
        t = os.times()
        self.b0, self.s0, self.t0 = self._busy(), t.user + t.system, time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.t0
        t, b1 = os.times(), self._busy()
        self.cores = None if b1 is None else max(0.0, (b1 - self.b0) - (t.user + t.system - self.s0)) / self.wall

    def __str__(self) -> str:
        return "others' CPU n/a" if self.cores is None else f"others' CPU {self.cores:.2f} cores"


def make_cub(root: Path, n: int, size: tuple[int, int]) -> Path:
    """``n`` JPEGs of ``size`` in a CUB layout under ``root`` (all test images); returns root."""
    samples = make_images(root / "_stage", n, size)
    lines: dict[str, list[str]] = {k: [] for k in CUB_TXT}
    for i, s in enumerate(samples, 1):
        rel = f"{CLASSES[s.label]}/{s.path.name}"
        (root / "images" / CLASSES[s.label]).mkdir(parents=True, exist_ok=True)
        s.path.rename(root / "images" / rel)
        x0, y0, x1, y1 = s.boxes[0]
        lines["images.txt"].append(f"{i} {rel}")
        lines["image_class_labels.txt"].append(f"{i} {s.label + 1}")
        lines["train_test_split.txt"].append(f"{i} 0")
        lines["bounding_boxes.txt"].append(f"{i} {x0:.1f} {y0:.1f} {x1 - x0:.1f} {y1 - y0:.1f}")
    for name, rows in lines.items():  # a newline after every line: the reference cuts each line's last char
        (root / name).write_text("".join(r + "\n" for r in rows))
    (root / "classes.txt").write_text("".join(f"{k} {c}\n" for k, c in enumerate(CLASSES, 1)))
    shutil.rmtree(root / "_stage")
    return root


def relabel(cub: Path, top5: list[list[int]], classes: int = 200) -> str:
    """Rewrite ``image_class_labels.txt`` from the model's predictions, so that the Top-1 /
    Top-5 metrics have hits to agree on: image ``i`` gets the class at rank ``i % 7`` of its
    top 5 when that rank exists and holds a class below ``classes`` (else the first such
    class of its top 5), or, for ``i % 7`` in 5..6 or when none is below ``classes``, a class
    outside its top 5. Returns a summary."""
    labels, kinds = [], [0, 0, 0]
    for i, t in enumerate(top5):
        want = i % 7
        ok = [r for r, c in enumerate(t) if c < classes]
        if want < 5 and ok:
            r = want if want in ok else ok[0]
            labels.append(t[r])
            kinds[0 if r == 0 else 1] += 1
        else:
            c = (37 * i) % classes
            while c in t:
                c = (c + 1) % classes
            labels.append(c)
            kinds[2] += 1
    (cub / "image_class_labels.txt").write_text("".join(f"{i} {c + 1}\n" for i, c in enumerate(labels, 1)))
    return f"{kinds[0]} top-1, {kinds[1]} at ranks 2-5, {kinds[2]} outside the top 5"


def timed_iter(iterable, timer: Timer) -> Iterator:
    """Yield from ``iterable``, adding the time spent getting each item to ``timer``'s ``data``."""
    it = iter(iterable)
    while True:
        t0 = time.perf_counter()
        try:
            item = next(it)
        except StopIteration:
            return
        timer.s["data"] += time.perf_counter() - t0
        yield item


# --------------------------------------------------------------------------- the reference


class _Bar:
    """Stands in for tqdm in the reference's ``engine``: no terminal output; when ``timer``
    is set, the time spent getting each batch from the loader is added to its ``data``."""

    timer: Timer | None = None

    def __init__(self, iterable, *args, **kwargs) -> None:
        self.iterable = iterable

    def __len__(self) -> int:
        return len(self.iterable)

    def set_description(self, *args, **kwargs) -> None:
        pass

    def __iter__(self):
        if _Bar.timer is None:
            return iter(self.iterable)
        return timed_iter(self.iterable, _Bar.timer)


class Reference:
    """The reference release imported from its checkout and run on the CPU.

    ``workdir`` receives the files the reference opens relative to the working directory;
    every call into the reference runs there, with ``.cuda()`` made a no-op.
    """

    def __init__(self, ref_dir: Path, workdir: Path, cub: Path, files: dict[str, Path]) -> None:
        import h5py

        self.workdir, self.images = workdir, cub / "images"
        n = len((cub / "images.txt").read_text().splitlines())
        (workdir / "datasets" / "CUB").mkdir(parents=True)
        for name in CUB_TXT:
            shutil.copy(cub / name, workdir / "datasets" / "CUB" / name)
        (workdir / "datasets" / "DinoCAM").mkdir()
        masks = np.zeros((n, 224, 224), np.float32)  # read (and resized per item) but unused at eval
        masks[:, 56:168, 56:168] = 1.0
        with h5py.File(workdir / "datasets" / "DinoCAM" / "cub_grabcut_val.h5", "w") as f:
            f.create_dataset("dataset", data=masks)
        (workdir / "log").mkdir()
        np.save(workdir / "log" / "top1top5_cub.npy", np.array({}, dtype=object), allow_pickle=True)

        sys.path.insert(0, str(ref_dir))
        with self.cpu():
            import engine
            import modules.models as models
            import utils.utils as ref_utils
            import utils.vis_tools as vis
            from timm.models import create_model
            from utils.cub_feat import CUBFEATDataset
            try:
                from utils.get_args import get_args_parser

                self.args = argparse.ArgumentParser(parents=[get_args_parser()]).parse_args([])
            except ImportError:
                self.args = argparse.Namespace(epochs=200)
            engine.tqdm = _Bar
            self.engine, self.vis, self.utils = engine, vis, ref_utils
            for mod in (engine, models, vis):
                if not str(Path(mod.__file__).resolve()).startswith(str(ref_dir.resolve())):
                    raise SystemExit(f"{mod.__name__} was imported from {mod.__file__}, not from {ref_dir}")
            # the models, built and loaded the way main_eval.py does
            kw = dict(num_classes=200, drop_rate=0.0, drop_path_rate=0.1, drop_block_rate=None)
            self.backbone = create_model("deit_pre_model", **kw)
            own = self.backbone.state_dict()
            ckpt = torch.load(files["backbone"], map_location="cpu")["model"]
            own.update({k: v for k, v in ckpt.items() if k in own})
            self.backbone.load_state_dict(own, strict=False)
            self.classifier = create_model("deit_mini_transformer", **kw)
            ckpt = torch.load(files["classifier"], map_location="cpu")["state_dict"]
            self.classifier.load_state_dict({k.replace("module.", ""): v for k, v in ckpt.items()})
            self.generator = models.UnetNet(num_classes=200).cuda()
            self.generator.load_state_dict(torch.load(files["generator_unet"], map_location="cpu")["state_dict"])
            for m in (self.backbone, self.classifier, self.generator):
                m.eval()
            self.dataset = CUBFEATDataset(root=str(self.images), is_train=False)

    @contextlib.contextmanager
    def cpu(self) -> Iterator[None]:
        """Run in ``workdir`` with ``Tensor.cuda`` / ``Module.cuda`` as no-ops, warnings off
        (``torch.cuda.amp.autocast`` warns that it disables itself without CUDA)."""
        had_tensor_cuda = "cuda" in vars(torch.Tensor)
        saved = vars(torch.Tensor).get("cuda"), torch.nn.Module.cuda
        torch.Tensor.cuda = lambda t, *a, **k: t
        torch.nn.Module.cuda = lambda m, *a, **k: m
        cwd = os.getcwd()
        os.chdir(self.workdir)
        try:
            with warnings.catch_warnings(), open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
                warnings.simplefilter("ignore")
                yield
        finally:
            os.chdir(cwd)
            if had_tensor_cuda:
                torch.Tensor.cuda = saved[0]
            else:
                del torch.Tensor.cuda
            torch.nn.Module.cuda = saved[1]

    def loader(self, batch: int, n: int | None = None):
        ds = self.dataset if n is None else torch.utils.data.Subset(self.dataset, range(n))
        # as main_eval.py builds it, with no worker processes
        return torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=False, num_workers=0, pin_memory=True)

    def evaluate(self, loader, threshold: float) -> dict[str, float]:
        """One reference pass: ``engine.evaluate`` at one box threshold."""
        with self.cpu():
            return self.engine.evaluate(loader, self.backbone, self.classifier, self.generator,
                                        torch.device("cpu"), self.args, threshold_loc=threshold, epoch=0)

    def profiled(self, loader, threshold: float, pool: np.ndarray | None = None) -> tuple[float, Timer, list, list, dict]:
        """An instrumented pass (the generator's maps swapped for ``pool``'s when given): wall
        seconds, the timer, the maps, the ``(map, GT box)`` pairs the box code got, the metrics."""
        tm, maps, calls = Timer(), [], []
        vis = self.vis
        gen_forward = swapped_output(self.generator.forward, pool)
        with patched(
            (_Bar, "timer", tm),
            (self.backbone, "forward_features", tm.wrap("backbone", self.backbone.forward_features)),
            (self.classifier, "forward", tm.wrap("classifier", self.classifier.forward)),
            (self.generator, "forward", tm.wrap("generator", gen_forward,
                                                lambda a, k, out: maps.append(out.detach().clone().numpy()))),
            (self.engine, "return_box_cam", tm.wrap("boxes", self.engine.return_box_cam,
                                                    lambda a, k, out: calls.append((a[0].copy(), a[2])))),
            (vis, "resize_cam", tm.wrap("boxes: resize + min-max", vis.resize_cam)),
            (vis, "intensity_to_rgb", tm.wrap("boxes: jet colour map", vis.intensity_to_rgb)),
            (vis, "get_bboxes", tm.wrap("boxes: threshold + contours + box", vis.get_bboxes)),
            (self.utils, "IoU", tm.wrap("IoU", self.utils.IoU)),
        ):
            t0 = time.perf_counter()
            metrics = self.evaluate(loader, threshold)
            wall = time.perf_counter() - t0
        return wall, tm, maps, calls, metrics

    def boxes_alone(self, calls: list, threshold: float, draw: bool = True) -> float:
        """Seconds for the reference's per-image box step (``return_box_cam`` + ``IoU`` as
        ``engine.evaluate`` calls them, or ``get_bboxes`` on the resized map + ``IoU``
        without the heat-map drawing when ``draw`` is False) over ``calls``."""
        image = np.zeros((224, 224, 3), np.float32)
        vis, iou = self.vis, self.utils.IoU
        t0 = time.perf_counter()
        for cam, gt in calls:
            if draw:
                box, _ = vis.return_box_cam(cam, image, gt, th=threshold)
            else:
                box = np.array(vis.get_bboxes(vis.resize_cam(cam, size=(224, 224)), threshold))
            iou(gt, box)
        return time.perf_counter() - t0


# --------------------------------------------------------------------------- LocLoc


class Ours:
    """``locloc evaluate``'s pass: the converted model directory, the data set and transform
    as ``locloc.engine.evaluate.evaluate`` prepares them, then ``evaluate_samples``."""

    def __init__(self, cub: Path, model_dir: Path) -> None:
        from locloc.data.transforms import eval_transform_for
        from locloc.models.model_dir import load_model_dir

        self.model, self.config = load_model_dir(model_dir, device="cpu")
        size = getattr(self.model.backbone, "img_size", (224, 224))[0]
        self.transform = eval_transform_for(self.config, size, "reference")
        self.load(cub)

    def load(self, cub: Path) -> None:
        """(Re)read the data set, as ``evaluate`` does."""
        from locloc.data import load_dataset
        from locloc.engine.evaluate import default_thresholds

        data = load_dataset(cub, kind="cub")
        self.samples = data.split("test")
        self.thresholds = default_thresholds(self.config, data.name)
        self.class_names = self.config.get("class_names") or data.classes

    def top5(self, batch: int) -> list[list[int]]:
        """The model's top-5 classes of every image, in data set order (one untimed pass)."""
        from locloc.engine.evaluate import evaluate_samples

        rows = evaluate_samples(self.model, self.samples, transform=self.transform, thresholds=self.thresholds,
                                device="cpu", batch_size=batch, workers=0, progress=False).rows
        return [r["top5"] for r in sorted(rows, key=lambda r: r["index"])]

    def evaluate(self, batch: int, n: int | None = None) -> dict:
        from locloc.engine.evaluate import evaluate_samples

        samples = self.samples if n is None else self.samples[:n]
        return evaluate_samples(self.model, samples, transform=self.transform, thresholds=self.thresholds,
                                device="cpu", batch_size=batch, workers=0, class_names=self.class_names,
                                metric_workers=1, progress=False).metrics

    def profiled(self, batch: int, pool: np.ndarray | None = None, inline: bool = False) -> tuple[float, Timer, dict]:
        """An instrumented pass (the generator's maps swapped for ``pool``'s when given; with
        ``inline`` the box step runs on the main thread, not beside the networks): wall
        seconds, the timer, the metrics."""
        import locloc.engine.evaluate as ev
        from locloc.metrics.accumulators import LocalizationAccumulator

        tm = Timer()

        class TimedLoader(ev.DataLoader):
            def __iter__(self):
                return timed_iter(super().__iter__(), tm)

        m = self.model
        with patched(
            (ev, "DataLoader", TimedLoader),
            (ev, "ThreadPoolExecutor", InlineExecutor if inline else ev.ThreadPoolExecutor),
            (m.backbone, "forward", tm.wrap("backbone", m.backbone.forward)),
            (m.classifier, "forward", tm.wrap("classifier", m.classifier.forward)),
            (m.generator, "forward", tm.wrap("generator", swapped_output(m.generator.forward, pool))),
            (LocalizationAccumulator, "update", tm.wrap("boxes", LocalizationAccumulator.update)),
        ):
            t0 = time.perf_counter()
            metrics = self.evaluate(batch)
            wall = time.perf_counter() - t0
        return wall, tm, metrics

    def boxes_alone(self, maps: np.ndarray, gts: list, labels: np.ndarray, batch: int, mba: bool = True) -> float:
        """Seconds for LocLoc's box step (6 thresholds + MaxBoxAccV2 when ``mba``, one contour
        search) over ``maps`` (N x h x w), in batches, on this thread."""
        from locloc.metrics.accumulators import LocalizationAccumulator, MaxBoxAccV2Accumulator

        crop = self.transform.crop
        v2 = MaxBoxAccV2Accumulator(step=0.01, size=crop) if mba else None
        loc = LocalizationAccumulator(list(self.thresholds), size=crop, maxboxacc_v2=v2)
        t0 = time.perf_counter()
        for i in range(0, len(maps), batch):
            loc.update(maps[i:i + batch], gts[i:i + batch], None, labels[i:i + batch])
        dt = time.perf_counter() - t0
        loc.close()
        return dt


# --------------------------------------------------------------------------- the run


def compare(ref_rows: dict[float, dict], ours: dict, n: int) -> list[str]:
    """Lines comparing the reference's per-threshold metrics with LocLoc's; the last line
    says whether all were identical."""
    per = {round(r["threshold"], 6): r for r in ours["per_threshold"]}
    out = [f"{'thr':>5} | {'GT-known ref':>12} {'ours':>8} | {'Top-1 Loc ref':>13} {'ours':>8} | "
           f"{'Top-5 Loc ref':>13} {'ours':>8} | {'Top-1 Cls ref':>13} {'ours':>8} | {'Top-5 Cls ref':>13} {'ours':>8}"]
    worst_loc = worst_cls = 0.0
    counts_equal = True
    for th, r in ref_rows.items():
        o = per[round(th, 6)]
        pairs = [(r["gt_loc"], o["gt_known_loc"]), (r["top1_loc"], o["top1_loc"]), (r["top5_loc"], o["top5_loc"])]
        for a, b in pairs:
            worst_loc = max(worst_loc, abs(a - b))
            counts_equal &= round(a * n / 100) == round(b * n / 100)
        cls = [(r["top1_cls"], ours["top1_cls"]), (r["top5_cls"], ours["top5_cls"])]
        for a, b in cls:
            worst_cls = max(worst_cls, abs(a - b))
            counts_equal &= round(a * n / 100) == round(b * n / 100)
        out.append(f"{th:5.2f} | " + " | ".join(f"{a:12.4f}  {b:8.4f}" if k == 0 else f"{a:13.4f} {b:8.4f}"
                                                for k, (a, b) in enumerate(pairs + cls)))
    out.append(f"same counts at every threshold: {counts_equal}; max |difference|: Loc {worst_loc:.3g}, "
               f"Cls {worst_cls:.3g} (the reference's Cls is timm's float32 accuracy averaged over batches)")
    return out


def parts_line(name: str, wall: float, tm: Timer, n: int, overlapped: bool) -> str:
    ms = {k: 1e3 * tm.s.get(k, 0.0) / n for k in PARTS}
    main_thread = sum(ms[k] for k in PARTS if not (overlapped and k == "boxes"))
    rest = 1e3 * wall / n - main_thread
    cells = " ".join(f"{ms[k]:10.1f}" for k in PARTS)
    return f"{name:>24} {1e3 * wall / n:7.1f} {cells} {rest:7.1f} {n / wall:6.2f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference-dir", required=True, type=Path, help="a checkout of the reference release")
    p.add_argument("--n", type=int, default=200, help="images")
    p.add_argument("--batch", type=int, nargs="+", default=[16], help="batch sizes (both sides)")
    p.add_argument("--rounds", type=int, default=2, help="best of N, the two sides interleaved")
    p.add_argument("--extra-rounds", type=int, default=2,
                   help="more rounds (at most) while a side has no undisturbed run (see --max-others)")
    p.add_argument("--max-others", type=float, default=0.1,
                   help="a run is disturbed when other processes used more than this many cores on average")
    p.add_argument("--threshold", type=float, default=0.5, help="the reference's single-pass box threshold")
    p.add_argument("--size", type=int, nargs=2, default=(448, 336), metavar=("W", "H"), help="JPEG size")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--load", type=float, default=0.6, help="start each timed run below this 1-min load")
    p.add_argument("--wait", type=float, default=600, help="seconds to wait for --load before each run")
    p.add_argument("--extra-wait", type=float, default=1200,
                   help="with --quiet-flag: seconds to wait more after creating it")
    p.add_argument("--quiet-flag", default=None, metavar="FILE",
                   help="file to create when the load stays high (a note to others sharing the machine)")
    p.add_argument("--no-profile", dest="profile", action="store_false",
                   help="skip the instrumented passes and the box step alone")
    args = p.parse_args()
    os.environ.setdefault("MPLBACKEND", "Agg")
    torch.set_num_threads(args.threads)
    ref_dir = args.reference_dir.expanduser().resolve()
    if not (ref_dir / "engine.py").is_file():
        raise SystemExit(f"{ref_dir}: no engine.py; --reference-dir must be a checkout of the reference release")
    flag = Path(args.quiet_flag) if args.quiet_flag else None
    flag_existed = flag is not None and flag.exists()

    from locloc.cli import main as locloc_main

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}; "
          f"{os.cpu_count()} CPUs; N = {args.n} JPEGs of {args.size[0]}x{args.size[1]}, batch {args.batch}, "
          f"no loader processes, fp32; reference at {ref_dir}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench_ref_"))
    try:
        files = write_reference_files(tmp / "weights")
        cub = make_cub(tmp / "cub", args.n, tuple(args.size))
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
            rc = locloc_main(["convert", "--backbone-weights", str(files["backbone"]), "--classifier",
                              str(files["classifier"]), "--locator", str(files["generator_unet"]),
                              "--generator", "unet", "--classes", str(cub / "classes.txt"), "--out",
                              str(tmp / "model")])
        if rc:
            raise SystemExit(f"locloc convert failed ({rc})")
        ours = Ours(cub, tmp / "model")
        # labels from the model's own predictions (an untimed LocLoc pass, also its warm-up)
        mix = relabel(cub, ours.top5(args.batch[0]))
        ours.load(cub)
        ref = Reference(ref_dir, tmp / "refwork", cub, files)
        n = len(ours.samples)
        if len(ref.dataset) != n:
            raise SystemExit(f"the reference sees {len(ref.dataset)} test images, LocLoc {n}")
        print(f"thresholds {ours.thresholds}; reference single pass at {args.threshold}; labels: {mix}", flush=True)
        # warm-up of the reference: one batch (one-time initialisations out of the timed runs)
        ref.evaluate(ref.loader(args.batch[0], args.batch[0]), args.threshold)

        results = {}
        for batch in args.batch:
            loader = ref.loader(batch)
            best = {"ref": (1e9, 0.0, 0.0), "ours": (1e9, 0.0, 0.0)}  # seconds, load before, others' cores
            clean = {"ref": 0, "ours": 0}
            r = 0
            while r < args.rounds or (min(clean.values()) == 0 and r < args.rounds + args.extra_rounds):
                r += 1
                for side in ("ref", "ours"):
                    load = wait_for_quiet(args, f"{side} pass")
                    with Interference() as other:
                        if side == "ref":
                            ref.evaluate(loader, args.threshold)
                        else:
                            ours_metrics = ours.evaluate(batch)
                    dt = other.wall
                    clean[side] += other.cores is None or other.cores < args.max_others
                    if dt < best[side][0]:
                        best[side] = (dt, load, other.cores or 0.0)
                    label = "reference pass" if side == "ref" else "LocLoc pass   "
                    print(f"batch {batch} round {r}: {label} {dt:7.2f} s = {n / dt:6.2f} img/s "
                          f"(load before {load:.2f}; {other}){'' if other.cores is None or other.cores < args.max_others else ' DISTURBED'}",
                          flush=True)
            results[batch] = dict(best=best, metrics=ours_metrics)

        # the reference end to end as main_eval.py runs it: one pass per threshold
        batch = args.batch[0]
        load = wait_for_quiet(args, "six-pass reference run")
        loader = ref.loader(batch)
        ref_rows, six = {}, []
        with Interference() as other:
            for th in ours.thresholds:
                t0 = time.perf_counter()
                ref_rows[th] = ref.evaluate(loader, th)
                six.append(time.perf_counter() - t0)
        print(f"batch {batch}: reference six passes (main_eval.py's loop) {sum(six):.1f} s "
              f"({', '.join(f'{s:.1f}' for s in six)}; load before {load:.2f}; {other})", flush=True)

        print("\nper pass (best of rounds), images/s:")
        print(f"{'batch':>5} {'reference':>9} {'LocLoc':>8} {'LocLoc/ref':>10} {'end to end: 6 x best ref':>25} "
              f"{'measured 6 passes':>17}")
        for b, res in results.items():
            (t_ref, l_ref, o_ref), (t_our, l_our, o_our) = res["best"]["ref"], res["best"]["ours"]
            e2e_meas = f"{sum(six) / t_our:16.2f}x" if b == batch else f"{'-':>17}"
            print(f"{b:5d} {n / t_ref:9.2f} {n / t_our:8.2f} {t_ref / t_our:9.2f}x {6 * t_ref / t_our:24.2f}x {e2e_meas}"
                  f"   (best runs: load before {l_ref:.2f} / {l_our:.2f}, others' CPU {o_ref:.2f} / {o_our:.2f} cores)")

        print(f"\nmetrics, reference (engine.evaluate per threshold) vs LocLoc (one pass), batch {batch}:")
        for line in compare(ref_rows, results[batch]["metrics"], n):
            print(line)
        print(f"LocLoc MaxBoxAccV2 (no reference counterpart): {results[batch]['metrics'].get('maxboxacc_v2')}")

        if args.profile:
            pool = smooth_maps(n, size=112).numpy()  # the generators' output size
            prof = {}
            for kind in ("model", "smooth"):
                load = wait_for_quiet(args, f"instrumented passes ({kind} maps)")
                use = None if kind == "model" else pool
                with Interference() as other:
                    prof[kind] = dict(
                        ref=ref.profiled(ref.loader(batch), args.threshold, use),
                        ours=ours.profiled(batch, use),
                        inline=ours.profiled(batch, use, inline=True),
                    )
                print(f"\nwhere the time goes on the {kind}'s maps, ms/image (one instrumented pass each, batch "
                      f"{batch}, load before {load:.2f}, {other}):" if kind == "model" else
                      f"\nthe same with the generators' maps swapped for smooth ones (the generators still run; "
                      f"load before {load:.2f}, {other}):")
                print(f"{'':>24} {'pass':>7} " + " ".join(f"{k:>10}" for k in PARTS) + f" {'rest':>7} {'img/s':>6}")
                wall_r, tm_r, _, _, m_r = prof[kind]["ref"]
                wall_o, tm_o, m_o = prof[kind]["ours"]
                wall_i, tm_i, _ = prof[kind]["inline"]
                print(parts_line(f"reference, {args.threshold} only", wall_r, tm_r, n, overlapped=False))
                print(parts_line("LocLoc as it runs", wall_o, tm_o, n, overlapped=True))
                print(parts_line("LocLoc, boxes in line", wall_i, tm_i, n, overlapped=False))
                sub = ", ".join(f"{k.split(': ')[1]} {1e3 * v / n:.2f}" for k, v in tm_r.s.items()
                                if k.startswith("boxes: "))
                print(f"reference boxes split: {sub}; IoU {1e3 * tm_r.s['IoU'] / n:.2f}. Per pass LocLoc / reference: "
                      f"as it runs {wall_r / wall_o:.2f}x, boxes in line {wall_r / wall_i:.2f}x")
                if kind == "smooth":
                    row = next(r for r in m_o["per_threshold"] if abs(r["threshold"] - args.threshold) < 1e-9)
                    same = [m_r["gt_loc"], m_r["top1_loc"], m_r["top5_loc"]] == [
                        row["gt_known_loc"], row["top1_loc"], row["top5_loc"]]
                    print(f"smooth maps at {args.threshold}: reference GT-known / Top-1 / Top-5 Loc {m_r['gt_loc']:.2f} / "
                          f"{m_r['top1_loc']:.2f} / {m_r['top5_loc']:.2f}, LocLoc {row['gt_known_loc']:.2f} / "
                          f"{row['top1_loc']:.2f} / {row['top5_loc']:.2f}: {'identical' if same else 'DIFFERENT'}")

            # the box step alone, on the model's maps and on smooth maps, on this thread
            _, _, maps, calls, _ = prof["model"]["ref"]
            model_maps = np.concatenate(maps)  # N x 1 x h x w
            gts = [np.asarray(g, np.float64).reshape(1, 4) for _, g in calls]
            labels = np.array([s.label for s in ours.samples], np.int64)
            side = model_maps.shape[-1]
            print(f"\nthe box step alone, ms/image ({side}x{side} maps, resized to 224; best of 2):")
            print(f"{'maps':>7} {'ref 1 thr':>9} {'ref 1 thr, no drawing':>21} {'ref 6 thr':>9} "
                  f"{'LocLoc 6 thr':>12} {'LocLoc 6 thr + MaxBoxAccV2':>26} {'of which findContours':>21} "
                  f"{'_boxes_areas':>12} {'LocLoc / ref 1 thr':>18}")
            import cv2

            import locloc.metrics.sweep as sweep_mod

            for name, mp in (("model", model_maps), ("smooth", pool)):
                ref_calls = [(m.transpose(1, 2, 0).astype("float32"), g) for m, (_, g) in zip(mp, calls)]
                r1 = min(ref.boxes_alone(ref_calls, args.threshold) for _ in range(2))
                r1n = min(ref.boxes_alone(ref_calls, args.threshold, draw=False) for _ in range(2))
                r6 = sum(ref.boxes_alone(ref_calls, th) for th in ours.thresholds)
                o6 = min(ours.boxes_alone(mp[:, 0], gts, labels, batch, mba=False) for _ in range(2))
                o = min(ours.boxes_alone(mp[:, 0], gts, labels, batch) for _ in range(2))
                tm = Timer()
                with patched((cv2, "findContours", tm.wrap("fc", cv2.findContours)),
                             (sweep_mod, "_boxes_areas", tm.wrap("ba", sweep_mod._boxes_areas))):
                    ours.boxes_alone(mp[:, 0], gts, labels, batch)
                print(f"{name:>7} {1e3 * r1 / n:9.2f} {1e3 * r1n / n:21.2f} {1e3 * r6 / n:9.2f} {1e3 * o6 / n:12.2f} "
                      f"{1e3 * o / n:26.2f} {1e3 * tm.s['fc'] / n:21.2f} {1e3 * tm.s['ba'] / n:12.2f} {o / r1:17.2f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if flag is not None and flag.exists() and not flag_existed:
            flag.unlink()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
