"""Models: frozen ViT backbone, GEG generators, LFDM classifier, checkpoints, full pipeline."""

from . import zoo  # noqa: F401  (registers the small demo ViTs with timm)
from .backbone import BackboneOutput, FrozenViT, build_backbone, patch_map
from .classifier import LFDMClassifier
from .generator import DeconvGenerator, LightGenerator, UNetGenerator, build_generator
from .pipeline import LocLocModel

__all__ = [
    "BackboneOutput",
    "DeconvGenerator",
    "FrozenViT",
    "LFDMClassifier",
    "LightGenerator",
    "LocLocModel",
    "UNetGenerator",
    "build_backbone",
    "build_generator",
    "patch_map",
]
