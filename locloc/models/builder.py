"""Models out of weights: the reference release's three files assembled into a
:class:`LocLocModel`, and a model built from a model-dir config's architecture sections."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ..errors import CheckpointError
from .backbone import FrozenViT, build_backbone
from .classifier import LFDMClassifier
from .generator import GENERATORS, DeconvGenerator, UNetGenerator
from .pipeline import LocLocModel
from .weights import describe_state_dict, detect_kind, load_state_dict_file, load_strict, remap_state_dict

__all__ = ["build_from_reference", "build_model_from_config"]

CONFIG_FILE = "config.json"


# -------------------------------------------------------------------- reference release


def _classifier_from_state_dict(sd: dict[str, Tensor], backbone: FrozenViT, path: Path) -> LFDMClassifier:
    w = sd.get("classifier.0.weight")
    fc1 = sd.get("blocks_mini.0.mlp.fc1.weight")
    norm = sd.get("norm_mini.weight")
    if w is None or fc1 is None or norm is None:
        raise CheckpointError(f"{path}: not an LFDM classifier checkpoint: the file looks like {describe_state_dict(sd)}")
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks_mini.")})
    dim = int(norm.shape[0])
    if dim != backbone.embed_dim:
        raise CheckpointError(
            f"{path}: classifier width {dim} does not match the backbone's {backbone.embed_dim} "
            f"({backbone.name}); pass the matching --backbone"
        )
    return LFDMClassifier(
        num_classes=int(w.shape[0]), embed_dim=dim, depth=depth, num_heads=backbone.num_heads,
        mlp_ratio=fc1.shape[0] / dim, grid_size=backbone.grid_size,
        num_prefix_tokens=backbone.num_prefix_tokens, qkv_bias="blocks_mini.0.attn.qkv.bias" in sd,
    )


def _generator_from_state_dict(sd: dict[str, Tensor], kind: str, path: Path) -> nn.Module:
    if kind == "unet":
        return UNetGenerator(
            in_channels=int(sd["att_layer4.down_1.1.UConv.0.weight"].shape[1]),
            mid_channels=int(sd["att_layer4.up_3.conv.UConv.0.weight"].shape[0]),
            head_channels=int(sd["up1.weight"].shape[1]),
            c_base=int(sd["att_layer4.down_1.1.UConv.0.weight"].shape[0]) // 2,
        )
    if kind == "deconv":
        return DeconvGenerator(
            in_channels=int(sd["conv0.weight"].shape[1]),
            hidden_channels=int(sd["conv0.weight"].shape[0]),
            deconv_channels=int(sd["final_layer.weight"].shape[1]),
        )
    raise CheckpointError(f"{path}: not a generator checkpoint: the file looks like {describe_state_dict(sd)}")


def build_from_reference(
    backbone_path: str | Path,
    classifier_path: str | Path | None,
    locator_path: str | Path,
    backbone_name: str = "deit_small_patch16_224",
    generator: str = "auto",
    backbone_kwargs: dict[str, Any] | None = None,
) -> LocLocModel:
    """Assemble a :class:`LocLocModel` from the reference release's three files.

    The class count comes from the classifier file (``classifier.0.weight.shape[0]``; the
    reference CUB files hold 1000). ``generator`` is ``unet`` | ``deconv`` | ``auto`` (from
    the keys). ``classifier_path=None`` gives a localization-only model. ``backbone_kwargs``
    go to ``timm.create_model`` (e.g. ``img_size``).
    """
    backbone = build_backbone(backbone_name, backbone_path, **(backbone_kwargs or {}))
    classifier = None
    if classifier_path is not None:
        cpath = Path(classifier_path)
        csd = remap_state_dict(load_state_dict_file(cpath), "reference_classifier")
        classifier = _classifier_from_state_dict(csd, backbone, cpath)
        load_strict(classifier, csd, "LFDM classifier", cpath)
    gpath = Path(locator_path)
    gsd = load_state_dict_file(gpath)
    kind = detect_kind(gsd)
    if kind not in ("unet", "deconv"):
        raise CheckpointError(f"{gpath}: not a generator checkpoint: the file looks like {describe_state_dict(gsd)}")
    if generator not in ("auto", kind):
        raise CheckpointError(f"{gpath}: --generator {generator} given, but the file looks like {describe_state_dict(gsd)}")
    gsd = remap_state_dict(gsd, f"reference_{kind}")
    gen = _generator_from_state_dict(gsd, kind, gpath)
    if gen.config["in_channels"] != backbone.embed_dim:
        raise CheckpointError(
            f"{gpath}: generator takes {gen.config['in_channels']} channels, the backbone gives {backbone.embed_dim}"
        )
    load_strict(gen, gsd, f"{kind} generator", gpath)
    return LocLocModel(backbone, classifier, gen).eval()


def build_model_from_config(cfg: dict[str, Any], where: str | Path = CONFIG_FILE) -> LocLocModel:
    """Build an (untrained) :class:`LocLocModel` from a model config's architecture sections."""
    try:
        bcfg, gcfg = cfg["backbone"], cfg["generator"]
        backbone = build_backbone(bcfg["name"], None, **bcfg.get("timm_kwargs", {}))
        ccfg = cfg.get("classifier")
        classifier = LFDMClassifier(**ccfg) if ccfg else None
        gkw = dict(gcfg.get("kwargs", {}))
        gkw.pop("in_channels", None)
        if gcfg["type"] not in GENERATORS:
            raise ValueError(f"unknown generator type {gcfg['type']!r}; choose one of {sorted(GENERATORS)}")
        generator = GENERATORS[gcfg["type"]](in_channels=backbone.embed_dim, **gkw)
    except CheckpointError:
        raise
    except Exception as e:  # a bad architecture section: say where, not a traceback
        raise CheckpointError(f"{where}: cannot build the model from the config ({type(e).__name__}: {e})") from None
    return LocLocModel(backbone, classifier, generator)
