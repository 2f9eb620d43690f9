"""LocLoc: weakly supervised object localization with low-level cues and local-area guides."""

__version__ = "0.1.0"

__all__ = ["LocLoc", "__version__"]


def __getattr__(name: str):
    # Lazy so that ``import locloc`` (and ``locloc --help``) does not import torch.
    if name == "LocLoc":
        from .api import LocLoc

        return LocLoc
    raise AttributeError(name)
