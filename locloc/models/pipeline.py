"""LocLocModel: frozen backbone + LFDM classifier + generator, one backbone pass for both heads."""

from __future__ import annotations

from torch import Tensor, nn

from .backbone import FrozenViT, patch_map

__all__ = ["LocLocModel"]


class LocLocModel(nn.Module):
    """``images B x 3 x H x W`` (normalized) -> ``{"logits": B x C or None, "maps": B x 1 x h x w}``.

    The backbone's token embedding feeds the classifier, its last-block patch tokens (as a
    ``B x D x gh x gw`` map) feed the generator. ``classifier=None`` gives a
    localization-only model. Everything stays on the input's device.
    """

    def __init__(self, backbone: FrozenViT, classifier: nn.Module | None, generator: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.classifier = classifier
        self.generator = generator

    @property
    def num_classes(self) -> int | None:
        """Number of classifier outputs (None without a classifier)."""
        return None if self.classifier is None else int(self.classifier.num_classes)

    def forward(
        self, images: Tensor, with_attention: bool = False, boxes_only: bool = False
    ) -> dict[str, Tensor | None]:
        """``with_attention`` adds ``"attention"``: the backbone's CLS attention, B x heads x N.

        ``boxes_only`` skips the classifier (the costlier head): ``"logits"`` is then None.
        """
        out = self.backbone(images, with_attention=with_attention)
        run_classifier = self.classifier is not None and not boxes_only
        logits = self.classifier(out.tokens) if run_classifier else None
        maps = self.generator(patch_map(out.patch_tokens, self.backbone.grid_size))
        result = {"logits": logits, "maps": maps}
        if with_attention:
            result["attention"] = out.attention
        return result
