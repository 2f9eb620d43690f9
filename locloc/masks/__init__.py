"""Stage 1: GrabCut-enhanced masks from the frozen backbone's CLS attention."""

from .grabcut import FALLBACK_REASONS, GrabCutMasker, TrimapConfig, attention_mask
from .quality import MaskQuality, box_iou, mask_box, mask_iou, quality_report
from .runner import RunStats, mask_samples, parse_shard, resolve_shard, shard_samples
from .store import HDF5Store, MaskStore, import_reference_h5, open_store, pack_hdf5, reference_binarize

__all__ = [
    "FALLBACK_REASONS",
    "GrabCutMasker",
    "HDF5Store",
    "MaskQuality",
    "MaskStore",
    "RunStats",
    "TrimapConfig",
    "attention_mask",
    "box_iou",
    "mask_samples",
    "import_reference_h5",
    "mask_box",
    "mask_iou",
    "open_store",
    "pack_hdf5",
    "parse_shard",
    "quality_report",
    "reference_binarize",
    "resolve_shard",
    "shard_samples",
]
