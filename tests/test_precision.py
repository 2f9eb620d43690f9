"""bf16 is checked before use: on a CPU without native bf16 a request falls back to fp32."""

from __future__ import annotations

import pytest
import torch

from locloc.engine import precision


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    precision.cpu_bf16_native.cache_clear()
    monkeypatch.setattr(precision, "_WARNED", set())
    yield
    precision.cpu_bf16_native.cache_clear()


@pytest.mark.parametrize(
    "text,native",
    [
        ("processor : 0\nflags : fpu sse2 avx avx2 fma\n", False),  # AVX2 only: emulated bf16
        ("flags\t\t: fpu avx2 avx512f avx512bw\n", False),  # AVX-512 without its BF16 extension
        ("flags : fpu avx2 avx512f avx512_bf16\n", True),
        ("flags : fpu avx2 amx_bf16 amx_tile\n", True),
        ("Features : fp asimd evtstrm bf16 i8mm\n", True),  # Arm (aarch64 /proc/cpuinfo)
        ("Features : fp asimd evtstrm\n", False),
    ],
)
def test_native_bf16_from_cpuinfo(tmp_path, monkeypatch, text, native):
    f = tmp_path / "cpuinfo"
    f.write_text(text)
    monkeypatch.delenv("LOCLOC_CPU_BF16", raising=False)
    monkeypatch.setattr(precision, "cpuinfo_flags", lambda: precision._parse(f))
    assert precision.cpu_bf16_native() is native


def test_no_cpuinfo_means_none(tmp_path):
    assert precision.cpuinfo_flags(tmp_path / "missing") is None


def test_fallback_is_one_line_and_env_overrides(monkeypatch, capsys):
    monkeypatch.setenv("LOCLOC_CPU_BF16", "0")
    assert precision.checked_amp(torch.bfloat16, "cpu") is None
    assert precision.checked_amp(torch.bfloat16, "cpu") is None  # said once per process
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bf16 ignored" in err[0] and "LOCLOC_CPU_BF16=1" in err[0]
    assert precision.checked_amp(None, "cpu") is None
    precision.cpu_bf16_native.cache_clear()
    monkeypatch.setenv("LOCLOC_CPU_BF16", "1")
    assert precision.checked_amp(torch.bfloat16, "cpu") is torch.bfloat16
    assert capsys.readouterr().err == ""


def test_predict_and_api_fall_back(monkeypatch, tmp_path, capsys):
    from locloc import LocLoc
    from locloc.models.backbone import build_backbone
    from locloc.models.classifier import LFDMClassifier
    from locloc.models.generator import LightGenerator
    from locloc.models.pipeline import LocLocModel

    monkeypatch.setenv("LOCLOC_CPU_BF16", "0")
    torch.manual_seed(0)
    bb = build_backbone("vit_small_patch16_224", None, img_size=64, patch_size=16, depth=1, embed_dim=48, num_heads=3)
    net = LocLocModel(bb, LFDMClassifier(2, embed_dim=48, depth=1, num_heads=3, grid_size=bb.grid_size),
                      LightGenerator(in_channels=48))
    model = LocLoc(net, {"input": {"crop": 64}}, device="cpu", amp_dtype=torch.bfloat16)
    assert model.amp_dtype is None
    assert "bf16 ignored" in capsys.readouterr().err


def test_cpu_training_bf16_only_where_native(monkeypatch, capsys):
    from locloc.engine.trainer import resolve_amp

    cpu = torch.device("cpu")
    monkeypatch.setenv("LOCLOC_CPU_BF16", "1")
    assert resolve_amp("bf16", cpu) is torch.bfloat16
    assert resolve_amp("auto", cpu) is None and resolve_amp("fp16", cpu) is None  # auto stays fp32 on CPU
    precision.cpu_bf16_native.cache_clear()
    monkeypatch.setenv("LOCLOC_CPU_BF16", "0")
    assert resolve_amp("bf16", cpu) is None
    assert "bf16 ignored" in capsys.readouterr().err
