"""Two-process DDP (torchrun, Gloo on CPU) against a one-process run with the same global batch."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent
PY = sys.executable


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=f"{HERE}{os.pathsep}{env.get('PYTHONPATH', '')}")
    return env


# A rare abort of one Gloo worker process on this torch (seen once in a CI run, 0 in 11 reruns;
# torch's own issue: Gloo threads outliving the interpreter, pytorch/pytorch#179291): the
# run is retried once from scratch on exactly that signature, never on any other failure.
GLOO_ABORT = "terminate called without an active exception"


def torchrun(nproc: int, *args: str, out: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    cmd = [PY, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--standalone",
           *args]
    if nproc == 1:
        cmd = [PY, *args]
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0 and GLOO_ABORT in r.stderr and "SIGABRT" in r.stderr:
        shutil.rmtree(out, ignore_errors=True)
        r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.mark.slow
def test_toy_ddp_matches_single_process(tmp_path):
    script = str(HERE / "_toy_train.py")
    # BN-free toy model, no augmentation or dropout: the only difference is the data split
    torchrun(2, script, str(tmp_path / "ddp"), "2", "--batch", "4", "--no-augment", "--no-dropout",
             out=tmp_path / "ddp")
    torchrun(1, script, str(tmp_path / "one"), "2", "--batch", "8", "--no-augment", "--no-dropout",
             out=tmp_path / "one")
    a = torch.load(tmp_path / "ddp" / "final.pt", weights_only=True)
    b = torch.load(tmp_path / "one" / "final.pt", weights_only=True)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    ck = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)
    assert ck["world_size"] == 2 and len(ck["rng"]) == 2  # both ranks' RNG states kept
    # ranks are seeded seed + rank: different torch streams
    assert not torch.equal(ck["rng"][0]["torch"], ck["rng"][1]["torch"])


@pytest.mark.slow
@pytest.mark.parametrize("stage, extra", [("generator", ["--cache", "2"]), ("classifier", [])])
def test_stage_trainers_under_ddp(tmp_path, stage, extra):
    """Each trainer runs under 2-process DDP and both ranks end with identical weights.

    Not compared with a 1-process run: both heads hold BatchNorm, whose batch statistics are
    per process under DDP on CPU (SyncBatchNorm is CUDA-only); the toy test above covers the
    gradient averaging itself.
    """
    from _toy_train import make_tiny_data

    data, masks = make_tiny_data(tmp_path)
    out = tmp_path / stage
    torchrun(2, str(HERE / "_toy_train.py"), "stage", stage, str(data), str(masks), str(out), *extra, out=out)
    a = torch.load(out / "final.pt", weights_only=True)
    b = torch.load(out / "final_rank1.pt", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ck = torch.load(out / "last.pt", weights_only=True)
    assert ck["world_size"] == 2 and ck["epoch"] == 2
    for k in a:  # last.pt holds the final weights
        assert torch.equal(ck["model"][k], a[k]), k
