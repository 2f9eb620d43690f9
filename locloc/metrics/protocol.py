"""The threshold protocol: choose the box threshold on a held-out split, report the test
split at it (and, labelled optimistic, the test sweep's own best)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConfigError
from .accumulators import LocalizationAccumulator

__all__ = ["choose_threshold", "heldout_protocol"]


def choose_threshold(results: dict[str, Any], metric: str = "gt_known_loc") -> float:
    """The threshold of best ``metric`` in a ``LocalizationAccumulator.compute()`` dict
    (first on ties). Run it on a held-out split, then report the test split at that value."""
    per = results["per_threshold"]
    vals = [r[metric] for r in per]
    if any(v is None for v in vals):
        raise ConfigError(f"metric {metric!r} is not available in these results (no classifier?)")
    return float(per[int(np.argmax(vals))]["threshold"])


def heldout_protocol(
    heldout: dict[str, Any], test: LocalizationAccumulator | dict[str, Any], metric: str = "gt_known_loc"
) -> dict[str, Any]:
    """Honest reporting: the threshold chosen on ``heldout`` results, the test metrics at that
    threshold, and (labelled as such) the test sweep's own best, which is optimistic.

    ``test`` is the test accumulator or its ``compute()`` dict; its sweep must contain the
    chosen threshold.
    """
    t = choose_threshold(heldout, metric)
    held_row = next(r for r in heldout["per_threshold"] if r["threshold"] == t)
    if isinstance(test, LocalizationAccumulator):
        test_row, test_res = test.compute_at(t), test.compute()
    else:
        test_res = test
        rows = [r for r in test["per_threshold"] if abs(r["threshold"] - t) < 1e-9]
        if not rows:
            raise ConfigError(f"threshold {t} chosen on the held-out split is not in the test sweep")
        test_row = rows[0]
    return {
        "threshold_chosen_on": "held-out split",
        "selection_metric": metric,
        "threshold": t,
        "heldout": dict(held_row),
        "test_at_heldout_threshold": dict(test_row),
        "test_sweep_best_optimistic": dict(test_res["best"]),
    }
