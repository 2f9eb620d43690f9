"""Opt-in hub weights: ``hf-hub:ORG/NAME[@REVISION]`` names resolved through huggingface_hub.

Nothing in LocLoc downloads on its own: a hub name is used only when the user passes one as
the backbone weights (``--weights hf-hub:timm/vit_small_patch14_dinov2.lvd142m``). Only the
repository's ``model.safetensors`` is fetched (no pickles). Offline (``HF_HUB_OFFLINE=1``)
the file comes from the local Hugging Face cache or the call fails with one line.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import CheckpointError

__all__ = ["HUB_PREFIX", "is_hub_name", "parse_hub_name", "resolve_weights"]

HUB_PREFIX = "hf-hub:"
HUB_FILE = "model.safetensors"
_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_name(weights: str | Path) -> bool:
    """True for ``hf-hub:...`` strings."""
    return isinstance(weights, str) and weights.startswith(HUB_PREFIX)


def parse_hub_name(name: str) -> tuple[str, str | None]:
    """``hf-hub:ORG/NAME[@REVISION]`` -> ``(repo_id, revision or None)``."""
    body = name[len(HUB_PREFIX):]
    repo, _, revision = body.partition("@")
    if not _REPO.match(repo) or ".." in repo or (revision == "" and "@" in body):
        raise CheckpointError(
            f"{name}: not a hub weights name; expected hf-hub:ORG/NAME or hf-hub:ORG/NAME@REVISION "
            "(e.g. hf-hub:timm/vit_small_patch14_dinov2.lvd142m)"
        )
    return repo, revision or None


def resolve_weights(weights: str | Path) -> Path:
    """A local path as it is; a hub name -> the cached (or freshly fetched) safetensors file."""
    if not is_hub_name(weights):
        return Path(weights)
    repo, revision = parse_hub_name(str(weights))
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import (
            EntryNotFoundError,
            HfHubHTTPError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:  # pragma: no cover - timm depends on huggingface_hub
        raise CheckpointError(f"{weights}: hub names need huggingface_hub (pip install huggingface_hub)") from None
    try:
        return Path(hf_hub_download(repo, HUB_FILE, revision=revision))
    except LocalEntryNotFoundError:
        raise CheckpointError(
            f"{weights}: {HUB_FILE} is not in the local Hugging Face cache and cannot be fetched "
            "(offline, HF_HUB_OFFLINE set, or no network); fetch it once where the hub is reachable, "
            "or pass a local weights file"
        ) from None
    except RepositoryNotFoundError:
        raise CheckpointError(f"{weights}: no such repository on the hub (or it is private); check the name") from None
    except RevisionNotFoundError:
        raise CheckpointError(f"{weights}: the repository has no revision {revision!r}") from None
    except EntryNotFoundError:
        raise CheckpointError(
            f"{weights}: the repository has no {HUB_FILE}; LocLoc loads hub weights as safetensors only"
        ) from None
    except (HfHubHTTPError, OSError, ValueError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{weights}: cannot fetch {HUB_FILE} ({first})") from None
