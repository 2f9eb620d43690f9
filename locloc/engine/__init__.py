"""Training machinery (config, distributed set-up, the shared loop) and the two trainers.

Submodules are imported on use so that ``import locloc.engine`` stays light.
"""

from __future__ import annotations

from .config import ClassifierTrainConfig, GeneratorTrainConfig, TrainConfig, load_config

__all__ = ["ClassifierTrainConfig", "GeneratorTrainConfig", "TrainConfig", "load_config"]
