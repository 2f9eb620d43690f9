"""``locloc evaluate`` with the reference release's flags reproduces the golden metrics."""

from __future__ import annotations

import csv
import json

import golden_weights as gw
import pytest

from locloc.cli import main

pytestmark = pytest.mark.slow  # rebuilds 48 M golden weights and runs 6 images x 2 generators


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return gw.write_reference_files(tmp_path_factory.mktemp("golden_eval"))


@pytest.mark.parametrize("generator", ["unet", "deconv"])
def test_evaluate_reference_flags_match_golden(files, golden_dir, tmp_path, capsys, generator):
    expected = json.loads((golden_dir / "expected_metrics.json").read_text())
    out = tmp_path / "out"
    rc = main([
        "evaluate", "--eval", "--model", "deit_small_lctr", "--data-set", "CUB",
        "--data-path", str(golden_dir / "cub_mini" / "images"),
        "--resume", str(files["backbone"]), "--classifier", str(files["classifier"]),
        "--locator", str(files[f"generator_{generator}"]), "--workers", "0", "--out", str(out),
        "--device", "cpu",
    ])
    assert rc == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    ref = expected["engine_evaluate_return_values"][generator]
    assert [r["threshold"] for r in metrics["per_threshold"]] == [r["threshold"] for r in ref]
    for mine, theirs in zip(metrics["per_threshold"], ref):
        assert mine["gt_known_loc"] == pytest.approx(theirs["gt_loc"], abs=1e-9)
        assert mine["top1_loc"] == pytest.approx(theirs["top1_loc"], abs=1e-9)
        assert mine["top5_loc"] == pytest.approx(theirs["top5_loc"], abs=1e-9)
    assert metrics["top1_cls"] == pytest.approx(ref[0]["top1_cls"], abs=1e-5)
    assert metrics["top5_cls"] == pytest.approx(ref[0]["top5_cls"], abs=1e-5)
    assert metrics["num_classes"] == 1000
    # The reference's own printout, one block per threshold, is reproduced verbatim.
    for block in expected["main_eval_printed_text"][generator]:
        assert block in printed
    rows = list(csv.DictReader((out / "per_image.csv").open()))
    assert [r["relpath"] for r in rows] == expected["per_image"]["names"]
    assert [r["top5"] for r in rows] == [" ".join(map(str, t)) for t in expected["per_image"]["top5_pred"]]
