"""The torchrun wrapper scripts build the right trainer command line."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


@pytest.mark.parametrize(
    "script,stage,config",
    [("train_cub_loc.sh", "train-generator", "generator_cub.yaml"),
     ("train_cub_cls.sh", "train-classifier", "classifier_cub.yaml"),
     ("train_ilsvrc_loc.sh", "train-generator", "generator_ilsvrc.yaml"),
     ("train_ilsvrc_cls.sh", "train-classifier", "classifier_ilsvrc.yaml")],
)
def test_train_scripts_launch_torchrun(script, stage, config):
    env = {**os.environ, "DATA": "d", "MASKS": "m", "WEIGHTS": "w", "OUT": "o", "NGPUS": "3",
           "GENERATOR_DIR": "g", "TORCHRUN": "echo"}
    out = subprocess.run(["bash", str(SCRIPTS / script), "--epochs", "1"], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out[out.index("--nproc_per_node") + 1] == "3"
    assert stage in out and out[-2:] == ["--epochs", "1"]
    assert Path(out[out.index("--config") + 1]).resolve() == (SCRIPTS.parent / "configs" / config).resolve()
    assert (SCRIPTS.parent / "configs" / config).is_file()
    assert ("--generator-dir" in out) == (stage == "train-classifier")


def test_train_script_refuses_missing_env():
    env = {k: v for k, v in os.environ.items() if k not in ("DATA", "MASKS", "WEIGHTS", "OUT")}
    r = subprocess.run(["bash", str(SCRIPTS / "train_cub_loc.sh")], env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "DATA is not set" in r.stderr
