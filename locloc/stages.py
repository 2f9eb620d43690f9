"""LocLoc's four stages, one call each. Every call takes its config dataclass (defaults, then
a YAML file, then command-line flags: :func:`locloc.engine.config.load_config`), writes its
resolved config beside its output, and is what the matching ``locloc`` command runs.

=====  ==========================================  ========================  ====================
stage  call                                        config                    lives in
=====  ==========================================  ========================  ====================
1      ``generate_masks(cfg)`` -> summary dict     :class:`MaskConfig`       ``masks/stage.py``
2      ``train_generator(cfg)`` -> summary dict    :class:`GeneratorTrainConfig`  ``engine/train_generator.py``
3      ``train_classifier(cfg)`` -> summary dict   :class:`ClassifierTrainConfig` ``engine/train_classifier.py``
4      ``evaluate(cfg)`` -> :class:`EvalResult`    :class:`EvalConfig`       ``engine/evaluate.py``
=====  ==========================================  ========================  ====================

``locloc pipeline`` is the four calls in a row over the sections of one YAML file.
"""

from __future__ import annotations

from .engine.config import ClassifierTrainConfig, EvalConfig, GeneratorTrainConfig, MaskConfig, load_config
from .engine.evaluate import EvalResult, evaluate
from .engine.train_classifier import train_classifier
from .engine.train_generator import train_generator
from .masks.stage import generate_masks

__all__ = [
    "ClassifierTrainConfig",
    "EvalConfig",
    "EvalResult",
    "GeneratorTrainConfig",
    "MaskConfig",
    "evaluate",
    "generate_masks",
    "load_config",
    "train_classifier",
    "train_generator",
]
