"""A run killed with SIGKILL after an epoch's checkpoint, then resumed, ends with the same
weights as an uninterrupted run (single process, CPU, bit-exact)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest
import torch
from test_train_ddp import HERE, _env

PY = sys.executable


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PY, str(HERE / "_toy_train.py"), *args], env=_env(), capture_output=True,
                          text=True, timeout=120)


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    assert _run(str(full), "3").returncode == 0
    r = _run(str(part), "3", "--kill-after", "2")
    assert r.returncode == -signal.SIGKILL
    assert not (part / "final.pt").exists()
    assert torch.load(part / "last.pt", weights_only=True)["epoch"] == 2
    r = _run(str(part), "3", "--resume")
    assert r.returncode == 0, r.stderr[-2000:]
    a = torch.load(full / "final.pt", weights_only=True)
    b = torch.load(part / "final.pt", weights_only=True)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    epochs = [json.loads(x)["epoch"] for x in (part / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]


def _stage(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PY, str(HERE / "_toy_train.py"), "stage", *args], env=_env(), capture_output=True,
                          text=True, timeout=120)


@pytest.mark.slow
def test_generator_sigkill_then_resume(tmp_path):
    from _toy_train import make_tiny_data

    data, masks = make_tiny_data(tmp_path)
    common = ["generator", str(data), str(masks)]
    assert _stage(*common, str(tmp_path / "full")).returncode == 0
    part = tmp_path / "part"
    assert _stage(*common, str(part), "--kill-after", "1").returncode == -signal.SIGKILL
    assert not (part / "model").exists()
    r = _stage(*common, str(part), "--resume")
    assert r.returncode == 0, r.stderr[-2000:]
    a = torch.load(tmp_path / "full" / "final.pt", weights_only=True)
    b = torch.load(part / "final.pt", weights_only=True)
    for k in a:
        assert torch.equal(a[k], b[k]), k
